"""vgray: Visual GloVe on Ray: per-clip video features -> visual words -> GloVe embeddings."""

__version__ = "0.1.0"


def __getattr__(name):  # `from vgray import VisualGlove` without importing torch up front
    if name == "VisualGlove":
        from .model import VisualGlove

        return VisualGlove
    if name == "make_corpus":
        from .commands.synth import make_corpus

        return make_corpus
    raise AttributeError(f"module 'vgray' has no attribute {name!r}")
