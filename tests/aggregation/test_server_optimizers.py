"""Server optimizers (Reddi et al. 2021) against hand-computed steps, and their saved state."""

from __future__ import annotations

import numpy as np
import pytest

from federated.aggregation import AdaptiveServer, FedAvgServer, make_server_optimizer

W = {"w": np.array([1.0, -1.0], np.float32)}
G = {"w": np.array([0.5, -0.2], np.float32)}


def test_fedavg_is_a_plain_step() -> None:
    np.testing.assert_allclose(FedAvgServer(1.0).step(W, G)["w"], [1.5, -1.2])


def test_fedavgm_accumulates_momentum() -> None:
    opt = AdaptiveServer("fedavgm", 1.0, beta1=0.5)
    w1 = opt.step(W, G)
    w2 = opt.step(w1, G)
    np.testing.assert_allclose(w2["w"], W["w"] + G["w"] + (0.5 * G["w"] + G["w"]), rtol=1e-6)


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_first_step_matches_the_formula(kind: str) -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    g = G["w"].astype(np.float64)
    m = (1 - b1) * g
    v0 = np.full_like(g, tau**2)
    v = {"fedadam": b2 * v0 + (1 - b2) * g**2, "fedadagrad": v0 + g**2,
         "fedyogi": v0 - (1 - b2) * g**2 * np.sign(v0 - g**2)}[kind]
    got = AdaptiveServer(kind, lr, beta1=b1, beta2=b2, tau=tau).step(W, G)["w"]
    np.testing.assert_allclose(got, W["w"] + lr * m / (np.sqrt(v) + tau), rtol=1e-5)


def test_state_round_trip_continues_identically() -> None:
    a = make_server_optimizer("fedyogi")
    w = a.step(W, G)
    b = make_server_optimizer("fedyogi")
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.step(w, G)["w"], b.step(w, G)["w"])
    with pytest.raises(ValueError):
        b.load_state_dict({"x.w": np.zeros(2, np.float32)})


def test_unknown_optimizer_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fedyogi"):
        make_server_optimizer("sgd")
