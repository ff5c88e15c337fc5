"""The GloVe trainer: loss decreasing, matching a direct evaluation, dense == sparse, and the
state kept being the epoch of lowest J of a float64 reference trainer."""

import numpy as np
import pytest

from vgray.algo import cooccur, glove
from vgray.algo.glove import GloVe


def topic_cooccur(k=40, topics=4, videos=200, seed=0):
    rng = np.random.default_rng(seed)
    per = k // topics
    seqs = [rng.integers(t * per, (t + 1) * per, size=rng.integers(10, 40))
            for t in rng.integers(topics, size=videos)]
    i, j, s = cooccur.count(seqs, k, 5)
    return i, j, cooccur.weights(s, 5), per


def test_loss_decreases_and_matches_direct_evaluation():
    i, j, x, _ = topic_cooccur()
    model = GloVe(dim=8, epochs=150, seed=0).fit(i, j, x, 40)
    losses = np.array(model.loss_)
    assert len(losses) == 151
    assert losses[-1] < 0.05 * losses[0]
    assert (np.diff(losses[100:]) <= 1e-9).mean() > 0.95  # settles into a monotone descent
    # The returned state is the epoch of lowest J; its J, evaluated independently in float64.
    assert losses[model.best_epoch_] == losses.min()
    assert model.loss(i, j, x) == pytest.approx(losses.min(), rel=1e-4)
    np.testing.assert_allclose(model.vectors_, model.w_ + model.w_context_, rtol=1e-6)


def test_direct_loss_by_hand():
    w = np.array([[1.0, 0.0], [0.0, 2.0]])
    wc = np.array([[0.5, 0.5], [1.0, 1.0]])
    b, bc = np.array([0.1, 0.2]), np.array([0.0, -0.1])
    i, j, x = np.array([0, 1]), np.array([1, 0]), np.array([50.0, 200.0])
    # pair (0,1): 1 + 0.1 - 0.1 - log 50 ; f = (50/100)^0.75
    e0 = 1.0 - np.log(50.0)
    e1 = 1.0 + 0.2 - np.log(200.0)
    want = ((0.5 ** 0.75) * e0 ** 2 + 1.0 * e1 ** 2) / 2
    assert glove.loss((w, wc, b, bc), (i, j, x), x_max=100.0, alpha=0.75) == pytest.approx(want)


@pytest.mark.parametrize("steps", ["csr", "chunked"])
def test_dense_and_sparse_steps_agree(steps):
    i, j, x, _ = topic_cooccur(k=20, videos=60)
    dense = GloVe(dim=4, epochs=30, seed=1, steps="dense").fit(i, j, x, 20)
    other = GloVe(dim=4, epochs=30, seed=1, steps=steps).fit(i, j, x, 20)
    np.testing.assert_allclose(dense.loss_, other.loss_, rtol=1e-4)
    np.testing.assert_allclose(dense.vectors_, other.vectors_, rtol=1e-3, atol=1e-4)


def test_auto_steps_by_device_density_and_size(monkeypatch):
    i, j, x, _ = topic_cooccur(k=20, videos=60)  # most of the 400 pairs co-occur
    seen = []
    for name, steps in (("_dense_step", "dense"), ("_csr_step", "csr"), ("_sparse_step", "chunked")):
        monkeypatch.setattr(GloVe, name, lambda self, *a, steps=steps: seen.append(steps))
    cpu, cuda = glove.torch.device("cpu"), glove.torch.device("cuda")
    for device, k, pairs in ((cpu, 20, len(x)), (cpu, 20, 10), (cpu, 5000, 10 ** 8),
                             (cuda, 20, 10), (cuda, 5000, 10)):
        GloVe()._step(i, j, np.ones(pairs), k, device)
    assert seen == ["dense", "csr", "csr", "dense", "chunked"]
    with pytest.raises(ValueError, match="steps must be one of"):
        GloVe(steps="fast")


def test_neighbours_share_topic():
    from vgray.commands.quality import nearest_neighbours

    i, j, x, per = topic_cooccur(k=40, topics=4, videos=400)
    model = GloVe(dim=16, epochs=300, seed=0).fit(i, j, x, 40)
    words = np.arange(40)
    nn = nearest_neighbours(model.vectors_, words, k=3)
    assert (nn // per == (words // per)[:, None]).mean() >= 0.95


def test_rejects_empty_and_nonpositive():
    with pytest.raises(ValueError, match="empty"):
        GloVe().fit(np.zeros(0, int), np.zeros(0, int), np.zeros(0), 3)
    with pytest.raises(ValueError):
        GloVe().fit(np.array([0]), np.array([1]), np.array([0.0]), 3)


def reference_fit(i, j, x, k, dim, epochs, lr, seed, x_max, alpha):
    """GloVe by hand in float64 numpy from the trainer's initial state: J and the state of every
    epoch, each epoch one full-batch Adam step (torch's update, betas 0.9 / 0.999, eps 1e-8)."""
    params = [p.double().numpy() for p in glove.initial_state(k, dim, seed)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    f, n = glove.weighting(x, x_max, alpha), len(x)
    losses, states = [], []
    for t in range(epochs + 1):
        w, wc, b, bc = params
        err = (w[i] * wc[j]).sum(1) + b[i] + bc[j] - np.log(x)
        losses.append(float(np.mean(f * err * err)))
        states.append([p.copy() for p in params])
        g = 2.0 / n * f * err
        grads = [np.zeros_like(p) for p in params]
        np.add.at(grads[0], i, g[:, None] * wc[j])
        np.add.at(grads[1], j, g[:, None] * w[i])
        np.add.at(grads[2], i, g)
        np.add.at(grads[3], j, g)
        for q, (p, grad) in enumerate(zip(params, grads)):
            m[q] = 0.9 * m[q] + 0.1 * grad
            v[q] = 0.999 * v[q] + 0.001 * grad * grad
            p -= (lr / (1 - 0.9 ** (t + 1)) * m[q]
                  / (np.sqrt(v[q]) / np.sqrt(1 - 0.999 ** (t + 1)) + 1e-8))
    return np.array(losses), states


DEVICES = ["cpu"] + (["cuda"] if __import__("torch").cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", ["dense", "csr", "chunked"])
def test_the_saved_state_is_the_epoch_of_lowest_j(steps, device):
    # A step size this large overshoots: J reaches its lowest at epoch 12 of 14 and climbs back.
    rng = np.random.default_rng(0)
    i, j, s = cooccur.count([rng.integers(0, 5, size=8) for _ in range(6)], 5, 2)
    x = cooccur.weights(s, 2)
    settings = dict(dim=3, x_max=20.0, alpha=0.75, learning_rate=0.5, seed=0, device=device,
                    steps=steps)
    want, states = reference_fit(i, j, x, 5, 3, 14, 0.5, 0, 20.0, 0.75)
    best = int(np.argmin(want))
    assert 0 < best < 14 and want[-1] > 1.1 * want.min()
    model = GloVe(epochs=14, **settings).fit(i, j, x, 5)
    np.testing.assert_allclose(model.loss_, want, rtol=1e-4)
    assert model.best_epoch_ == best
    assert model.loss(i, j, x) == pytest.approx(want.min(), rel=1e-4)
    for got, ref in zip((model.w_, model.w_context_, model.b_, model.b_context_), states[best]):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    # The kept state is, bit for bit, the one a fit of that many epochs ends with.
    short = GloVe(epochs=best, **settings).fit(i, j, x, 5)
    assert short.best_epoch_ == best
    assert np.array_equal(short.vectors_, model.vectors_) and np.array_equal(short.b_, model.b_)


def first_converged(curve, tol, window):
    """The first epoch at which the lowest J gained <= tol of itself over `window` epochs."""
    lowest = np.minimum.accumulate(curve)
    return next((e for e in range(window, len(curve))
                 if lowest[e - window] - lowest[e] <= tol * lowest[e]), None)


@pytest.mark.parametrize("device", DEVICES)
def test_stops_once_converged_and_keeps_what_a_shorter_fit_keeps(device):
    i, j, x, _ = topic_cooccur(k=40, videos=200)
    settings = dict(dim=2, seed=1, x_max=20.0, device=device)
    full = GloVe(epochs=3000, **settings).fit(i, j, x, 40)
    assert full.stop_reason_ == "epochs" and full.n_epochs_ == 3000 and len(full.loss_) == 3001
    want = first_converged(np.array(full.loss_), 1e-3, 40)
    assert want is not None and want < 3000  # this problem flattens out well before
    model = GloVe(epochs=3000, tol=1e-3, window=40, **settings).fit(i, j, x, 40)
    assert model.stop_reason_ == "converged" and model.n_epochs_ == want
    np.testing.assert_allclose(model.loss_, full.loss_[:want + 1], rtol=1e-5)
    # Stopping changes nothing of what the fit keeps: a fit of exactly that many epochs.
    short = GloVe(epochs=want, **settings).fit(i, j, x, 40)
    assert model.best_epoch_ == short.best_epoch_
    assert np.array_equal(model.vectors_, short.vectors_) and np.array_equal(model.b_, short.b_)


def test_reaching_epochs_before_converging_is_said_so():
    i, j, x, _ = topic_cooccur(k=20, videos=60)
    model = GloVe(dim=4, epochs=30, tol=1e-6, seed=1).fit(i, j, x, 20)
    assert model.stop_reason_ == "epochs" and model.n_epochs_ == 30 and len(model.loss_) == 31


def test_the_glove_line_says_how_many_epochs_ran_and_why():
    from vgray.run.stages import glove_line

    fit = {"device": "cpu", "nonzeros": 2501, "initial_loss": 0.1838, "final_loss": 9.428e-05,
           "last_loss": 0.000113}
    converged = glove_line("glove", {**fit, "epochs": 1872, "max_epochs": 3000,
                                     "stopped": "converged", "kept_epoch": 1850}, 1.25)
    assert converged == ("glove: converged at epoch 1872 of --epochs 3000 on 2501 non-zeros, loss "
                         "0.1838 -> 9.428e-05 (last epoch 0.000113), kept epoch 1850 of 1872 "
                         "(lowest J), on cpu (1.2 s)")
    reached = glove_line("glove", {**fit, "epochs": 300, "max_epochs": 300, "stopped": "epochs",
                                   "kept_epoch": 300}, 2.0)
    assert reached == ("glove: 300 epochs (reached --epochs) on 2501 non-zeros, loss 0.1838 -> "
                       "9.428e-05, on cpu (2.0 s)")
    # a RUN made before the stopping rule: its record has no "stopped"
    older = glove_line("glove", {**fit, "epochs": 300, "kept_epoch": 300}, 2.0)
    assert older.startswith("glove: 300 epochs on 2501 non-zeros")
