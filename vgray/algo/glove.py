"""GloVe (Pennington et al. 2014) on a co-occurrence matrix, in torch on CPU or CUDA.

J = mean over X_ij > 0 of f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2, f(x) = min(1, (x/x_max)^alpha).
Each epoch is one full-batch Adam step on J with analytic gradients (GloVe's `steps`): as dense
K x K matrix products for vocabularies up to a few thousand words; on a CPU where few pairs
co-occur, or past that size, as sparse ones (the non-zeros' predictions sampled from w w~^T, the
gradient as two CSR x dense products); on a GPU past that size, over the non-zeros in chunks.
The state kept is the epoch's of lowest J (the step computes J anyway), not the last one's: Adam
at a fixed step size can climb back from a minimum it reached. Training stops at `epochs`, or
earlier once the lowest J has gained less than `tol` of itself over the last `window` epochs.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from ..config import TrainConfig

DENSE_MAX_WORDS = 4096
SYNC_SECONDS = 0.25  # on a GPU, how often the host reads the epochs' J
_SPARSE_CHUNK = 1 << 18
WINDOW = 50  # epochs over which convergence is judged
STEPS = ("auto", "dense", "csr", "chunked")
# Below this share of co-occurring pairs, a CPU takes its epochs sparse ("csr"; measured on one
# core and two: csr and dense cost the same at ~20% of the pairs; benchmarks/README.md).
CSR_MAX_SHARE = 0.2


def _row_starts(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Where each of the K rows starts among non-zeros in row-major order (CSR's crow)."""
    starts = torch.zeros(k + 1, dtype=torch.int64, device=rows.device)
    starts[1:] = torch.cumsum(torch.bincount(rows, minlength=k), 0)
    return starts


def _csr(starts: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """The K x K CSR matrix of `values` in row-major order (row starts, column of each)."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(starts, cols, values, (k, k))


def weighting(x: np.ndarray, x_max: float, alpha: float) -> np.ndarray:
    """f(x) = min(1, (x / x_max)^alpha)."""
    return np.minimum(1.0, (np.asarray(x, dtype=np.float64) / x_max) ** alpha)


def loss(state, nonzeros, *, x_max: float, alpha: float) -> float:
    """J evaluated directly in float64 numpy: the reference the trainer is checked against.
    `state`: (w, w~, b, b~), as initial_state gives them; `nonzeros`: (i, j, x), X[i, j] = x."""
    w, w_context, b, b_context = (np.asarray(p, np.float64) for p in state)
    i, j, x = nonzeros
    pred = (w[i] * w_context[j]).sum(axis=1) + b[i] + b_context[j]
    err = pred - np.log(x)
    return float(np.mean(weighting(x, x_max, alpha) * err * err))


def initial_state(vocab_size: int, dim: int, seed: int) -> list[torch.Tensor]:
    """w, w~, b, b~ before the first epoch: uniform in [-0.5, 0.5) / dim, drawn on the CPU from
    `seed`, so the same on every device (`vgray evaluate` recomputes it for the held-out J)."""
    gen = torch.Generator().manual_seed(seed)

    def init(*shape):
        return (torch.rand(*shape, generator=gen) - 0.5) / dim

    return [init(vocab_size, dim), init(vocab_size, dim), init(vocab_size), init(vocab_size)]


class Adam:
    """torch.optim.Adam's update (betas 0.9 / 0.999, eps 1e-8, no weight decay), the same
    operations in the same order as its single-tensor step, on plain tensors updated in place.
    torch.optim's first optimizer in a process imports torch._dynamo and sympy: 1.4 s on every
    fresh worker that fits GloVe, for four tensors' update."""

    def __init__(self, params: list[torch.Tensor], lr: float, *, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def step(self, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        step_size = self.lr / (1 - beta1 ** self.steps)
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        for p, g, avg, avg_sq in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            avg.lerp_(g, 1 - beta1)
            avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(avg, denom, value=-step_size)


def _nonzeros(i, j, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zeros as int64 rows and columns and float64 values, checked."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        raise ValueError("the co-occurrence matrix is empty: no training video has 2 clips")
    if (x <= 0).any():
        raise ValueError("co-occurrence values must be positive")
    return i, j, x


class _Kept:
    """The state of lowest J so far and the stopping rule, both kept on the device: chosen there
    by J (no host sync), so a GPU fit keeps running ahead of the host, and stopped there, so a GPU
    fit stops at the same epoch as a CPU one whenever its host looks (the epochs it ran ahead
    change nothing it keeps). A strict < keeps the first of equal minima."""

    def __init__(self, params: list[torch.Tensor], *, epochs: int, tol: float, window: int):
        dev = params[0].device
        self.params, self.tol, self.window = params, tol, max(1, window)
        self.best = [p.clone() for p in params]
        self.best_loss = torch.tensor(math.inf, dtype=torch.float64, device=dev)
        self.best_epoch = torch.zeros((), dtype=torch.int64, device=dev)
        self.lowest = torch.full((self.window,), math.inf, dtype=torch.float64, device=dev)  # ring of J
        self.stopped = torch.zeros((), dtype=torch.bool, device=dev)
        self.stop_epoch = torch.full((), epochs, dtype=torch.int64, device=dev)

    def update(self, epoch: int, value: torch.Tensor) -> None:
        """After `epoch`, of J `value`: keep its state if the lowest yet, stop if converged."""
        better = (value < self.best_loss) & ~self.stopped
        for kept, p in zip(self.best, self.params):
            torch.where(better, p, kept, out=kept)
        self.best_epoch.masked_fill_(better, epoch)
        torch.where(better, value, self.best_loss, out=self.best_loss)
        if self.tol > 0:
            # lowest[epoch % window] held the lowest J as of `window` epochs ago
            slot = epoch % self.window
            converged = (self.lowest[slot] - self.best_loss <= self.tol * self.best_loss) & ~self.stopped
            self.lowest[slot] = self.best_loss
            self.stop_epoch.masked_fill_(converged, epoch)
            self.stopped |= converged


class GloVe:
    """GloVe trainer, scikit-learn style: hyperparameters in __init__, learned state ends in _."""

    def __init__(self, dim: int = 128, *, x_max: float = TrainConfig.x_max, alpha: float = 0.75,
                 epochs: int = 300, learning_rate: float = 0.05, seed: int = 0, device: str = "cpu",
                 tol: float = 0.0, window: int = WINDOW, steps: str = "auto"):
        self.dim = dim
        self.x_max = x_max
        self.alpha = alpha
        self.epochs = epochs  # the most epochs run
        self.learning_rate = learning_rate
        self.seed = seed
        self.device = device
        # Converged: the lowest J gained less than `tol` of itself over the last `window` epochs
        # (0: always run `epochs`).
        self.tol = tol
        self.window = window
        # How an epoch is computed (the same J and gradient, summed in another order): "dense"
        # (K x K products), "csr" (sparse products over the non-zeros), "chunked" (gathers over
        # the non-zeros in chunks), or "auto": on a CPU csr where under CSR_MAX_SHARE of the pairs
        # co-occur or past DENSE_MAX_WORDS, else dense; on a GPU dense up to DENSE_MAX_WORDS,
        # chunked past.
        if steps not in STEPS:
            raise ValueError(f"steps must be one of {', '.join(STEPS)}")
        self.steps = steps

    def fit(self, i: np.ndarray, j: np.ndarray, x: np.ndarray, vocab_size: int, *,
            on_epoch=None) -> "GloVe":
        """Train on the non-zeros X[i, j] = x > 0; loss_[e] is J after e epochs (loss_[0]: init).

        Stops after n_epochs_ epochs: at `epochs`, or earlier once converged (stop_reason_ says
        which: "converged" or "epochs"). The fitted state (w_, w_context_, b_, b_context_,
        vectors_) is that of epoch best_epoch_, the first epoch of lowest J; loss_[-1] is the
        last epoch's J."""
        i, j, x = _nonzeros(i, j, x)
        dev = torch.device(self.device)
        params = [p.to(dev) for p in initial_state(vocab_size, self.dim, self.seed)]
        kept = _Kept(params, epochs=self.epochs, tol=self.tol, window=self.window)
        self.loss_ = []
        self._run_epochs(self._step(i, j, x, vocab_size, dev), params, kept, on_epoch)
        self.n_epochs_ = int(kept.stop_epoch)
        self.stop_reason_ = "converged" if bool(kept.stopped) else "epochs"
        del self.loss_[self.n_epochs_ + 1:]  # epochs a GPU ran past the stop
        self.best_epoch_ = int(kept.best_epoch)
        w, wc, b, bc = (p.cpu().numpy() for p in kept.best)
        self.w_, self.w_context_, self.b_, self.b_context_ = w, wc, b, bc
        self.vectors_ = (w + wc).astype(np.float32)
        return self

    def _run_epochs(self, step, params: list[torch.Tensor], kept: "_Kept", on_epoch) -> None:
        """Epochs 0..epochs (or to the stop) of step and Adam, each epoch's J into loss_."""
        dev = params[0].device
        grads = [torch.zeros_like(p) for p in params]
        optimizer = Adam(params, self.learning_rate)
        # J stays on the device; the host reads it every epoch on CPU, where that is free, and
        # every SYNC_SECONDS on a GPU, which then runs epoch after epoch without waiting for
        # the host. loss_ and on_epoch see every epoch's exact J either way.
        pending, synced = [], time.monotonic()

        def sync():
            values = torch.stack(pending).tolist()
            for value in values:
                if on_epoch is not None:
                    on_epoch(len(self.loss_), value)
                self.loss_.append(value)
            pending.clear()

        for epoch in range(self.epochs + 1):
            with torch.no_grad():
                value = step(params, grads)
                kept.update(epoch, value)
                pending.append(value)
            last = epoch == self.epochs
            if dev.type == "cpu" or last or time.monotonic() - synced >= SYNC_SECONDS:
                sync()
                synced = time.monotonic()
                last = last or (self.tol > 0 and bool(kept.stopped))
            if last:
                break
            optimizer.step(grads)

    def _step(self, i, j, x, k, dev):
        """The epoch's step(params, grads) -> J, as `steps` says."""
        steps = self.steps
        if steps == "auto":
            sparse = k > DENSE_MAX_WORDS or len(x) < CSR_MAX_SHARE * k * k
            steps = ("csr" if sparse else "dense") if dev.type == "cpu" else (
                "dense" if k <= DENSE_MAX_WORDS else "chunked")
        make = {"dense": self._dense_step, "csr": self._csr_step, "chunked": self._sparse_step}
        return make[steps](i, j, x, k, dev)

    def _dense_step(self, i, j, x, k, dev):
        """J and its gradient with K x K matrices: three matmuls per epoch."""
        n = len(x)
        log_x = torch.zeros(k, k, dtype=torch.float32, device=dev)
        f = torch.zeros(k, k, dtype=torch.float32, device=dev)
        ii, jj = torch.from_numpy(i).to(dev), torch.from_numpy(j).to(dev)
        log_x[ii, jj] = torch.from_numpy(np.log(x)).float().to(dev)
        f[ii, jj] = torch.from_numpy(weighting(x, self.x_max, self.alpha)).float().to(dev)

        pred = torch.empty(k, k, dtype=torch.float32, device=dev)  # buffers reused every epoch
        fe = torch.empty_like(pred)

        def step(params, grads):
            w, wc, b, bc = params
            torch.mm(w, wc.T, out=pred)
            pred.add_(b.unsqueeze(1)).add_(bc.unsqueeze(0)).sub_(log_x)  # the error
            torch.mul(f, pred, out=fe)  # zero where X is zero, since f is
            value = torch.mul(fe, pred, out=pred).sum(dtype=torch.float64) / n  # J, on the device
            g = fe.mul_(2.0 / n)
            torch.mm(g, wc, out=grads[0])
            torch.mm(g.T, w, out=grads[1])
            torch.sum(g, dim=1, out=grads[2])
            torch.sum(g, dim=0, out=grads[3])
            return value

        return step

    def _csr_step(self, i, j, x, k, dev):
        """J over the non-zeros, with their predictions sampled from w w~^T, and its gradient as
        two sparse K x K matrix products (CSR): nothing K x K is held."""
        n = len(x)
        order = np.lexsort((j, i))  # row-major, as a CSR matrix holds them
        i, j, x = i[order], j[order], x[order]
        ii, jj = torch.from_numpy(i).to(dev), torch.from_numpy(j).to(dev)
        log_x = torch.from_numpy(np.log(x)).float().to(dev)
        f = torch.from_numpy(weighting(x, self.x_max, self.alpha)).float().to(dev)
        starts, flip = _row_starts(ii, k), torch.from_numpy(np.lexsort((i, j))).to(dev)
        starts_t, jj_t = _row_starts(jj, k), ii[flip]  # the transpose, in its row-major order
        pattern = _csr(starts, jj, torch.zeros(n, device=dev), k)

        def step(params, grads):
            w, wc, b, bc = params
            err = torch.sparse.sampled_addmm(pattern, w, wc.T, beta=0.0).values()
            err.add_(b[ii]).add_(bc[jj]).sub_(log_x)
            fe = f * err
            value = (fe * err).sum(dtype=torch.float64) / n  # J, on the device
            g = fe.mul_(2.0 / n)
            torch.mm(_csr(starts, jj, g, k), wc, out=grads[0])
            torch.mm(_csr(starts_t, jj_t, g[flip], k), w, out=grads[1])
            grads[2].zero_().index_add_(0, ii, g)
            grads[3].zero_().index_add_(0, jj, g)
            return value

        return step

    def _sparse_step(self, i, j, x, k, dev):
        """J and its gradient over the non-zeros, in chunks that bound memory ("chunked")."""
        n = len(x)
        ii, jj = torch.from_numpy(i).to(dev), torch.from_numpy(j).to(dev)
        log_x = torch.from_numpy(np.log(x)).float().to(dev)
        f = torch.from_numpy(weighting(x, self.x_max, self.alpha)).float().to(dev)

        def step(params, grads):
            w, wc, b, bc = params
            for g in grads:
                g.zero_()
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for s in range(0, n, _SPARSE_CHUNK):
                ci, cj = ii[s:s + _SPARSE_CHUNK], jj[s:s + _SPARSE_CHUNK]
                wi, wj = w[ci], wc[cj]
                err = (wi * wj).sum(1) + b[ci] + bc[cj] - log_x[s:s + _SPARSE_CHUNK]
                fe = f[s:s + _SPARSE_CHUNK] * err
                total += (fe.double() * err.double()).sum()
                g = fe.mul_(2.0 / n)
                grads[0].index_add_(0, ci, g.unsqueeze(1) * wj)
                grads[1].index_add_(0, cj, g.unsqueeze(1) * wi)
                grads[2].index_add_(0, ci, g)
                grads[3].index_add_(0, cj, g)
            return total / n

        return step

    def loss(self, i, j, x) -> float:
        """J of the fitted state on the given non-zeros (float64 reference evaluation)."""
        return loss((self.w_, self.w_context_, self.b_, self.b_context_), (i, j, x),
                    x_max=self.x_max, alpha=self.alpha)
