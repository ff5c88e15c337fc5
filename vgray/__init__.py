"""vgray: Visual GloVe on Ray: per-clip video features -> visual words -> GloVe embeddings."""

__version__ = "0.1.0"
