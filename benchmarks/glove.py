"""GloVe training: vgray.algo.glove.GloVe against the original Visual GloVe script's training loop.

    python benchmarks/glove.py [--tokens 375000] [--vocab 1500] [--reference-epochs 1500]

The reference is the loop of the original script, re-implemented here: nn.Embedding weights drawn
from U(-1, 1), zero biases, Adagrad (lr 0.05), shuffled mini-batches of 2048 non-zeros, the batch
mean of f(X) (pred - log X)^2. Both train on the same X and are scored by the same J (the mean
over all non-zeros, float64, vgray.algo.glove.loss); J is evaluated after every reference epoch with
the clock stopped.

The target is the J the reference reaches after --target-epochs (1500, the script's default).
Running those takes ~25 minutes at the default size, so the reference runs --reference-epochs
(300) and J after 1500 epochs is extrapolated by a power law J = a e^b fitted to the second half
of the measured curve. Training curves flatten towards a floor, so the power law predicts a
lower J than the script would reach: the target is harder than the real one. The reference time
for 1500 epochs is its measured time per epoch times 1500. With --reference-epochs equal to
--target-epochs nothing is extrapolated. The figure at the J actually measured after
--reference-epochs is reported too. Writes benchmarks/results/glove.json.
"""

import argparse
import time

import numpy as np
import torch

from common import machine, topic_tokens, write_result
from vgray.algo import cooccur
from vgray.config import TrainConfig
from vgray.algo.glove import GloVe, loss


def reference_training(i, j, x, vocab, dim, epochs, x_max, alpha, batch=2048, seed=0):
    """The original script's loop; returns [(seconds so far, J)] after each epoch."""
    torch.manual_seed(seed)
    wi, wj = torch.nn.Embedding(vocab, dim), torch.nn.Embedding(vocab, dim)
    bi, bj = torch.nn.Embedding(vocab, 1), torch.nn.Embedding(vocab, 1)
    for e in (wi, wj):
        e.weight.data.uniform_(-1, 1)
    for e in (bi, bj):
        e.weight.data.zero_()
    params = [p for m in (wi, wj, bi, bj) for p in m.parameters()]
    opt = torch.optim.Adagrad(params, lr=0.05)
    ii, jj = torch.from_numpy(i.astype(np.int64)), torch.from_numpy(j.astype(np.int64))
    xx = torch.from_numpy(x.astype(np.float32))
    curve, spent = [], 0.0
    for _ in range(epochs):
        t = time.perf_counter()
        order = torch.randperm(len(xx))
        for s in range(0, len(order), batch):
            b = order[s:s + batch]
            opt.zero_grad()
            pred = (wi(ii[b]) * wj(jj[b])).sum(1) + bi(ii[b]).squeeze(1) + bj(jj[b]).squeeze(1)
            weight = torch.clamp((xx[b] / x_max) ** alpha, max=1.0)
            batch_loss = (weight * (pred - torch.log(xx[b])) ** 2).mean()
            batch_loss.backward()
            opt.step()
        spent += time.perf_counter() - t
        curve.append((spent, loss((wi.weight.data.numpy(), wj.weight.data.numpy(), bi.weight.data.numpy()[:, 0],
                                   bj.weight.data.numpy()[:, 0]), (i, j, x), x_max=x_max, alpha=alpha)))
    return curve


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=375_000)
    ap.add_argument("--vocab", type=int, default=1500)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--x-max", type=float, default=TrainConfig().x_max)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--reference-epochs", type=int, default=300)
    ap.add_argument("--target-epochs", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=2000, help="vgray epochs (stops at the target J)")
    ap.add_argument("--learning-rate", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    seqs = topic_tokens(args.tokens, args.vocab)
    i, j, s = cooccur.count(seqs, args.vocab, args.window)
    x = cooccur.weights(s, args.window)
    print(f"X: {len(x)} non-zeros from {sum(map(len, seqs))} tokens, K = {args.vocab}, window {args.window}")

    ref = reference_training(i, j, x, args.vocab, args.dim, args.reference_epochs, args.x_max, args.alpha)
    measured_seconds, measured_j = ref[-1]
    per_epoch = measured_seconds / args.reference_epochs
    print(f"reference: {args.reference_epochs} epochs in {measured_seconds:.1f} s "
          f"({per_epoch:.3f} s/epoch), J = {measured_j:.6f}")
    if args.reference_epochs >= args.target_epochs:
        target, ref_seconds, how = ref[args.target_epochs - 1][1], ref[args.target_epochs - 1][0], "measured"
    else:
        half = np.arange(args.reference_epochs // 2, args.reference_epochs)
        slope, intercept = np.polyfit(np.log(half + 1), np.log([ref[e][1] for e in half]), 1)
        target = float(np.exp(intercept) * args.target_epochs ** slope)
        ref_seconds, how = per_epoch * args.target_epochs, f"power law J = {np.exp(intercept):.4g} e^{slope:.3f}"
        print(f"reference after {args.target_epochs} epochs, extrapolated: J = {target:.6f} in {ref_seconds:.0f} s")

    times = []
    start = time.perf_counter()

    def on_epoch(epoch, value):
        times.append((time.perf_counter() - start, value))

    model = GloVe(args.dim, x_max=args.x_max, alpha=args.alpha, epochs=args.epochs,
                  learning_rate=args.learning_rate, seed=0)
    model.fit(i, j, x, args.vocab, on_epoch=on_epoch)
    reached = next(((e, t) for e, (t, v) in enumerate(times) if v <= target), None)
    at_measured = next(((e, t) for e, (t, v) in enumerate(times) if v <= measured_j), None)
    final = model.loss(i, j, x)
    result = {
        "machine": machine(),
        "tokens": int(sum(map(len, seqs))), "vocab": args.vocab, "window": args.window,
        "nonzeros": int(len(x)), "dim": args.dim, "x_max": args.x_max, "alpha": args.alpha,
        "reference": "original script's loop (Adagrad 0.05, batch 2048, U(-1,1) init)",
        "reference_epochs_run": args.reference_epochs,
        "reference_seconds_per_epoch": round(per_epoch, 4),
        "reference_J_measured": round(measured_j, 6),
        "target_epochs": args.target_epochs, "target_J": round(target, 6), "target_J_from": how,
        "reference_seconds_for_target": round(ref_seconds, 1),
        "reference_J_curve": {e + 1: round(ref[e][1], 6) for e in range(len(ref))
                              if (e + 1) % max(1, args.reference_epochs // 10) == 0 or e == 0},
        "vgray_epochs_run": args.epochs, "vgray_final_J": round(final, 6),
        "vgray_epochs_to_target": reached[0] if reached else None,
        "vgray_seconds_to_target": round(reached[1], 3) if reached else None,
        "speedup": round(ref_seconds / reached[1], 1) if reached else None,
        "vgray_seconds_to_measured_J": round(at_measured[1], 3) if at_measured else None,
        "speedup_at_measured_J": round(measured_seconds / at_measured[1], 1) if at_measured else None,
    }
    write_result("glove", result)
    if reached is None:
        raise SystemExit(f"vgray did not reach J = {target:.5f} in {args.epochs} epochs")


if __name__ == "__main__":
    main()
