"""Run settings: the one place where vgray's defaults live."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import SettingError
from .features.formats import (FORMATS as INPUT_FORMATS)  # the registry's: the one list of input formats

STREAMS = ("rgb", "flow", "rgb+flow")
# How embed writes: files, embeddings/{id}.npy and concat/{id}_rgb.npy (what BMT and MDVC read);
# parquet, one embeddings/part-{shard}.parquet per shard, a row per clip (video_id, clip, token,
# embedding) and no concatenation: no second copy of the features at HowTo100M's scale.
EMBEDDINGS = ("files", "parquet")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a `vgray train` run; saved resolved in RUN/manifest.json."""

    # The model behind the paper's results (Estevam et al., 2112.08455): K 1500, window 5,
    # dim 128 (BMT's audio width, MDVC's 1024 + 128), x_max 20; alpha is GloVe's.
    vocab_size: int = 1500
    window: int = 5
    dim: int = 128
    x_max: float = 20.0
    alpha: float = 0.75
    epochs: int = 300  # the most; GloVe stops earlier once converged (glove_tol)
    learning_rate: float = 0.05
    # GloVe has converged when its lowest J gained less than this share over the last
    # glove.WINDOW (50) epochs; 0 runs every epoch.
    glove_tol: float = 1e-4
    streams: str = "rgb"
    seed: int = 0
    workers: int | None = None  # None: as the work needs, up to the CPUs the cluster can grow to
    device: str = "auto"
    gpu_wait: float | None = None  # None: 600 s where a node type has a GPU, 120 s where unknown
    strict: bool = False
    follow_symlinks: bool = False  # symlinks in FEATURES to files outside it are used
    kmeans_iters: int = 25
    kmeans_sample: int | None = None  # None: 256 clips per word, as faiss does
    shard_clips: int = 50_000  # clips per unit of work; fixes the shards, not the workers
    batch_clips: int = 8192  # clips held in memory at once by one worker
    reducers: int = 4
    embeddings: str = "files"
    # How FEATURES is read (formats.py): None detects the format from what FEATURES is; for an
    # HDF5 file, the dataset (or MDVC-style group of rgb and flow) in each video's group.
    input_format: str | None = None
    hdf5_key: str | None = None
    hdf5_flow_key: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.vocab_size >= 2, "--vocab-size must be at least 2"),
            (1 <= self.window <= 24, "--window must be between 1 and 24"),
            (self.dim >= 1, "--dim must be at least 1"),
            (self.x_max > 0, "--x-max must be positive"),
            (self.alpha > 0, "--alpha must be positive"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.learning_rate > 0, "--learning-rate must be positive"),
            (0 <= self.glove_tol < 1, "--glove-tol must be at least 0 and below 1"),
            (self.streams in STREAMS, f"--streams must be one of {', '.join(STREAMS)}"),
            (self.workers is None or self.workers >= 1, "--workers must be at least 1"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.gpu_wait is None or self.gpu_wait >= 0, "--gpu-wait must be at least 0"),
            (self.kmeans_iters >= 1, "--kmeans-iters must be at least 1"),
            (self.kmeans_sample is None or self.kmeans_sample >= self.vocab_size,
             "--kmeans-sample must be at least --vocab-size"),
            (self.shard_clips >= 1, "--shard-clips must be at least 1"),
            (self.batch_clips >= 1, "--batch-clips must be at least 1"),
            (self.reducers >= 1, "--reducers must be at least 1"),
            (self.embeddings in EMBEDDINGS,
             f"--embeddings must be one of {', '.join(EMBEDDINGS)}"),
            (self.input_format is None or self.input_format in INPUT_FORMATS,
             f"--format must be one of {', '.join(INPUT_FORMATS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingError(message)

    @property
    def sample_size(self) -> int:
        """Clips drawn from the training videos for k-means."""
        return self.kmeans_sample if self.kmeans_sample is not None else 256 * self.vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def reading(self):
        """How FEATURES is read (corpus.Reading)."""
        from .features.corpus import Reading

        return Reading(self.input_format, self.hdf5_key, self.hdf5_flow_key)

    # Settings that fix what a RUN holds on disk (results or their layout); the others (workers,
    # device, strict, batch_clips) only change how it is made.
    RESULT_KEYS = ("vocab_size", "window", "dim", "x_max", "alpha", "epochs", "learning_rate",
                   "glove_tol",
                   "streams", "seed", "kmeans_iters", "kmeans_sample", "shard_clips", "reducers",
                   "embeddings", "input_format", "hdf5_key", "hdf5_flow_key")
    # Result keys added since RUNs were first made, with the value an older RUN was made with.
    # glove_tol: RUNs made before it ran every epoch; they count as made with the default, so
    # that re-running one with its own settings resumes it instead of refusing a changed setting.
    ADDED = {"embeddings": "files", "input_format": None, "hdf5_key": None,
             "hdf5_flow_key": None, "glove_tol": 1e-4}
