"""GloVe: does a step-size schedule or a larger step reach a lower J by epoch 300, and where does
the convergence rule (--glove-tol) stop a long run?

    python benchmarks/glove_schedule.py [--tokens 375000] [--vocab 1500] [--long 1500]

On glove.py's corpus (topic-shaped tokens, dense K x K steps), each variant trains from the same
init with vgray's step: Adam at 0.05 (vgray's default) or 0.1, with or without reduce-on-plateau
(step halved after 10 epochs without a 0.01% gain). Prints the lowest J at epochs 100/200/300
and, for a --long run at the default step, the epoch where --glove-tol 1e-4 (window 50) stops it.
Writes benchmarks/results/glove_schedule.json.
"""

import argparse
import math
import time

import numpy as np
import torch

from common import machine, topic_tokens, write_result
from vgray.algo import cooccur
from vgray.algo.glove import GloVe, initial_state


def curve(i, j, x, k, dim, epochs, lr, plateau, x_max, alpha):
    model = GloVe(dim, x_max=x_max, alpha=alpha, epochs=epochs, learning_rate=lr)
    params = initial_state(k, dim, 0)
    grads = [torch.zeros_like(p) for p in params]
    optimizer = torch.optim.Adam([torch.nn.Parameter(p) for p in params], lr=lr)
    params = optimizer.param_groups[0]["params"]
    step = model._dense_step(i, j, x, k, torch.device("cpu"))
    values, best, since = [], math.inf, 0
    for epoch in range(epochs + 1):
        with torch.no_grad():
            value = float(step([p.data for p in params], grads))
        values.append(value)
        best, since = (value, 0) if value < best * (1 - 1e-4) else (best, since + 1)
        if plateau and since >= 10:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            since = 0
        if epoch == epochs:
            break
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    return np.minimum.accumulate(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=375_000)
    ap.add_argument("--vocab", type=int, default=1500)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--long", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seqs = topic_tokens(args.tokens, args.vocab)
    i, j, s = cooccur.count(seqs, args.vocab, 5)
    x = cooccur.weights(s, 5)
    result = {"machine": machine(), "nonzeros": len(x), "vocab": args.vocab, "dim": args.dim}
    for lr in (0.05, 0.1):
        for plateau in (False, True):
            lowest = curve(i, j, x, args.vocab, args.dim, 300, lr, plateau, 20.0, 0.75)
            name = f"adam {lr}" + (" + plateau" if plateau else "")
            result[name] = {f"J@{e}": round(float(lowest[e]), 6) for e in (100, 200, 300)}
            print(name, result[name], flush=True)
    t = time.perf_counter()
    model = GloVe(args.dim, x_max=20.0, alpha=0.75, epochs=args.long, learning_rate=0.05,
                  tol=1e-4).fit(i, j, x, args.vocab)
    result["long_run"] = {"max_epochs": args.long, "epochs": model.n_epochs_,
                          "stopped": model.stop_reason_, "J": round(min(model.loss_), 6),
                          "seconds": round(time.perf_counter() - t, 1)}
    write_result("glove_schedule", result)


if __name__ == "__main__":
    main()
