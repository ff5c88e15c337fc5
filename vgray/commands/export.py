"""A trained run in the formats other tools read (no Ray).

- glove-text: `vectors.txt`, one line per visual word: `w17 0.12 -0.03 ...` (Stanford GloVe's).
- word2vec: `vectors.w2v.txt`, the same lines after a `K dim` header (gensim's
  `KeyedVectors.load_word2vec_format(path, binary=False)`).
- projector: `vectors.tsv` and `metadata.tsv` (word, clips using it) for the TensorBoard
  Embedding Projector.
- parquet: `clips.parquet`, one row per clip of the run's corpus: video_id, clip, token and the
  embedding as a fixed-size list of float32; written one tokens part at a time.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

from ..files import fs
from ..errors import VgrayError
from ..progress import Progress
from ..rundir.store import (TOKENS_SCHEMA, RunDir, atomic_path, clips_schema, clips_table, load_run,
                            read_table, read_tokens, write_text)

FORMATS = ("glove-text", "word2vec", "projector", "parquet")


def word_name(k: int) -> str:
    return f"w{k}"


def _lines(vectors: np.ndarray) -> str:
    return "".join(word_name(k) + " " + " ".join(f"{v:.8g}" for v in row) + "\n"
                   for k, row in enumerate(vectors))


def usage(run: RunDir, vocab_size: int) -> np.ndarray:
    """Clips per visual word over the run's corpus."""
    counts = np.zeros(vocab_size, np.int64)
    for part in run.tokens_parts():
        tokens = read_table(part, schema=TOKENS_SCHEMA).column("tokens").combine_chunks()
        counts += np.bincount(tokens.flatten().to_numpy(), minlength=vocab_size)
    return counts


def export(run_dir: str, fmt: str, out: str, echo=None) -> list[str]:
    """Write RUN's vectors as `fmt` into directory OUT; return the files written. The parquet
    export shows its progress through `echo`."""
    if fmt not in FORMATS:
        raise VgrayError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _, _, vectors = load_run(run_dir, need_vectors=True)
    run = RunDir(run_dir)
    if not fs.is_uri(out):
        os.makedirs(out, exist_ok=True)
    k, dim = vectors.shape
    if fmt == "glove-text":
        files = {"vectors.txt": _lines(vectors)}
    elif fmt == "word2vec":
        files = {"vectors.w2v.txt": f"{k} {dim}\n" + _lines(vectors)}
    elif fmt == "projector":
        counts = usage(run, k)
        files = {"vectors.tsv": "".join("\t".join(f"{v:.8g}" for v in row) + "\n" for row in vectors),
                 "metadata.tsv": "word\tclips\n" + "".join(f"{word_name(w)}\t{counts[w]}\n" for w in range(k))}
    else:
        return [_clips_parquet(run, vectors, fs.join(out, "clips.parquet"), echo)]
    written = []
    for name, text in files.items():
        write_text(fs.join(out, name), text)
        written.append(fs.join(out, name))
    return written


def _clips_parquet(run: RunDir, vectors: np.ndarray, target: str, echo=None) -> str:
    schema = clips_schema(vectors.shape[1])
    parts = run.tokens_parts()
    if not parts:
        raise VgrayError(f"{run.root} has no tokens/part-*.parquet")
    progress = Progress(echo, "export", len(parts), "shards")
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            tokens = read_tokens([part])
            writer.write_table(clips_table(list(tokens), list(tokens.values()), vectors))
            progress.advance(1)
    progress.close()
    return target
