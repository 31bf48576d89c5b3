"""Tests of Byzantine detection on synthetic non-IID-like updates, and of its edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from federated.aggregation import Detection, detect_byzantine_clients

WORKERS, ATTACKERS, CLASSES = 20, 4, 10


def honest_updates(rng: np.random.Generator, count: int, directions: np.ndarray, common: np.ndarray,
                   alpha: float) -> np.ndarray:
    """Non-IID-like updates: each worker's mix of per-class directions (label shares ~ Dirichlet(alpha)),
    a shared direction, a little isotropic noise, and a per-worker size factor (data size, steps)."""
    shares = rng.dirichlet(np.full(CLASSES, alpha), size=count)
    noise = 0.3 * rng.standard_normal((count, directions.shape[1])) / np.sqrt(directions.shape[1])
    size = rng.lognormal(0.0, 0.3, size=(count, 1))
    updates: np.ndarray = size * (shares @ directions + common + noise)
    return updates


def round_of_updates(rng: np.random.Generator, attack: str, *, alpha: float = 0.5, common_scale: float = 0.5,
                     d: int = 4000) -> np.ndarray:
    """WORKERS rows, the last ATTACKERS of them Byzantine."""
    directions = 3.0 * rng.standard_normal((CLASSES, d)) / np.sqrt(d)
    common = common_scale * rng.standard_normal(d) / np.sqrt(d)
    honest = honest_updates(rng, WORKERS - ATTACKERS, directions, common, alpha)
    if attack == "sign_flip":  # what the attacker would have sent, negated
        bad = -honest_updates(rng, ATTACKERS, directions, common, alpha)
    else:  # Gaussian noise whose per-coordinate std is `scale` times the honest RMS
        scale = float(attack.removeprefix("noise_x"))
        bad = scale * np.sqrt(np.mean(honest**2)) * rng.standard_normal((ATTACKERS, d))
    return np.vstack([honest, bad]).astype(np.float32)


@pytest.mark.parametrize("attack", ["sign_flip", "noise_x1", "noise_x3"])
@pytest.mark.parametrize("common_scale", [0.0, 1.0])
def test_detection_finds_attackers_among_non_iid_workers(attack: str, common_scale: float) -> None:
    rng = np.random.default_rng(12345)
    ids = [f"w{i}" for i in range(WORKERS)]
    found = false_alarms = 0
    rounds = 15
    for _ in range(rounds):
        detection = detect_byzantine_clients(round_of_updates(rng, attack, common_scale=common_scale), ids)
        suspects = {int(s[1:]) for s in detection.suspects}
        found += len(suspects & set(range(WORKERS - ATTACKERS, WORKERS)))
        false_alarms += len(suspects - set(range(WORKERS - ATTACKERS, WORKERS)))
    assert found / (rounds * ATTACKERS) >= 0.9
    assert false_alarms / (rounds * (WORKERS - ATTACKERS)) <= 0.1


def test_detection_reports_scores_for_every_id_in_order() -> None:
    rng = np.random.default_rng(1)
    x = round_of_updates(rng, "sign_flip")
    ids = [f"worker-{i}" for i in range(WORKERS)]
    detection = detect_byzantine_clients(x, ids, threshold=3.0)
    assert isinstance(detection, Detection)
    assert list(detection.scores) == ids
    assert list(detection.suspects) == [i for i in ids if detection.scores[i] > 3.0]
    strict = detect_byzantine_clients(x, ids, threshold=1e9)
    assert strict.suspects == () and strict.scores == detection.scores
    with pytest.raises(AttributeError):
        detection.suspects = ()  # type: ignore[misc]


def test_identical_honest_updates_zero_mad_still_flag_the_odd_one() -> None:
    x = np.tile(np.array([1.0, 2.0, 3.0]), (7, 1))
    x[5] = [1.0, 2.0, 3.5]
    detection = detect_byzantine_clients(x, [str(i) for i in range(7)])
    assert detection.suspects == ("5",)
    assert all(np.isfinite(list(detection.scores.values())))


def test_all_identical_updates_are_not_suspicious() -> None:
    detection = detect_byzantine_clients(np.ones((6, 4)), list("abcdef"))
    assert detection.suspects == () and set(detection.scores.values()) == {0.0}


def test_zero_updates_and_a_zero_median_do_not_break_scoring() -> None:
    x = np.zeros((5, 3))
    x[0] = [1.0, 0.0, 0.0]
    detection = detect_byzantine_clients(x, list("abcde"))
    assert all(np.isfinite(list(detection.scores.values())))


def test_tiny_cohorts_get_zero_scores() -> None:
    assert detect_byzantine_clients(np.array([[1.0], [100.0]]), ["a", "b"]) == Detection((), {"a": 0.0, "b": 0.0})


@pytest.mark.parametrize("ids, match", [(["a", "b"], "3 updates but 2 ids"), (["a", "a", "b"], "unique")])
def test_detection_rejects_bad_ids(ids: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detect_byzantine_clients(np.zeros((3, 2)), ids)


def test_detection_rejects_non_finite_updates() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        detect_byzantine_clients(np.array([[1.0], [np.nan], [2.0]]), ["a", "b", "c"])


def test_detection_survives_float32_overflow() -> None:
    x = np.random.default_rng(2).standard_normal((8, 100)).astype(np.float32)
    x[3] = 3e38
    detection = detect_byzantine_clients(x, [str(i) for i in range(8)])
    assert detection.suspects == ("3",)


def test_more_attackers_than_a_quarter_need_a_matching_byzantine_fraction() -> None:
    """Each statistic's spread ignores a quarter of the cohort, or byzantine_fraction of it if more: four
    identical outliers among ten then stand out, which the default quarter (two set aside) lets mask one
    another."""
    rng = np.random.default_rng(4)
    x = 1.0 + 0.1 * rng.standard_normal((10, 50))
    x[6:] = -3.0 + 0.1 * rng.standard_normal((4, 50))
    ids = [str(i) for i in range(10)]
    assert detect_byzantine_clients(x, ids, byzantine_fraction=0.4).suspects == ("6", "7", "8", "9")
    with pytest.raises(ValueError, match="byzantine_fraction"):
        detect_byzantine_clients(x, ids, byzantine_fraction=0.5)
