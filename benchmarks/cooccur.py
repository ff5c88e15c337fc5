"""Co-occurrence throughput: vgray.algo.cooccur.count against a Python dict loop (the way the
original Visual GloVe script counts), on the same synthetic token corpus.

    python benchmarks/cooccur.py [--tokens 10000000] [--vocab 1500] [--window 5]

Prints tokens/s of both (vgray: the median of --repeat calls in one process, as a long-lived
worker counts shard after shard; and its first call) and the ratio, checks that both give the same X on the reference
subset, and writes benchmarks/results/cooccur.json.
"""

import argparse
import collections
import time

import numpy as np

from common import machine, write_result
from vgray.algo import cooccur


def corpus(tokens: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 81, size=tokens // 20)
    lengths = lengths[np.cumsum(lengths) <= tokens]
    return [rng.integers(0, vocab, size=n).astype(np.int32) for n in lengths]


def dict_loop(seqs, window):
    """The reference: one dict update per pair, both directions, weight 1/d."""
    x = collections.defaultdict(float)
    for seq in seqs:
        seq = seq.tolist()
        for p in range(len(seq)):
            for q in range(p + 1, min(len(seq), p + window + 1)):
                x[seq[p], seq[q]] += 1.0 / (q - p)
                x[seq[q], seq[p]] += 1.0 / (q - p)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--reference-tokens", type=int, default=300_000)
    ap.add_argument("--vocab", type=int, default=1500)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5, help="timed calls; the median is reported")
    args = ap.parse_args()

    seqs = corpus(args.tokens, args.vocab)
    n = int(sum(len(s) for s in seqs))
    cooccur.count(seqs[:100], args.vocab, args.window)  # warm-up
    times = []
    for _ in range(args.repeat):  # the first call pays the page faults of fresh memory
        t = time.perf_counter()
        i, j, s = cooccur.count(seqs, args.vocab, args.window)
        times.append(time.perf_counter() - t)
    first, ours = times[0], float(np.median(times))

    sub, m = [], 0
    for seq in seqs:
        if m >= args.reference_tokens:
            break
        sub.append(seq)
        m += len(seq)
    t = time.perf_counter()
    ref = dict_loop(sub, args.window)
    ref_s = time.perf_counter() - t
    si, sj, ss = cooccur.count(sub, args.vocab, args.window)
    got = dict(zip(zip(si.tolist(), sj.tolist()), cooccur.weights(ss, args.window).tolist()))
    exact = got.keys() == ref.keys() and all(abs(got[k] - ref[k]) <= 1e-9 * max(1.0, ref[k]) for k in ref)

    result = {
        "machine": machine(),
        "vocab": args.vocab, "window": args.window,
        "vgray_tokens": n, "vgray_seconds": round(ours, 3), "vgray_calls": args.repeat,
        "vgray_tokens_per_s": round(n / ours), "vgray_first_call_tokens_per_s": round(n / first), "nonzeros": int(len(i)),
        "reference": "Python dict loop", "reference_tokens": m,
        "reference_seconds": round(ref_s, 3), "reference_tokens_per_s": round(m / ref_s),
        "speedup": round((n / ours) / (m / ref_s), 1), "same_x_on_reference_subset": exact,
    }
    write_result("cooccur", result)


if __name__ == "__main__":
    main()
