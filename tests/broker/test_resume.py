"""Resuming a run: what the store keeps with each round, and a coordinator rebuilt from it.

The process-level test (a broker killed with SIGKILL and restarted) is tests/network/test_resume.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import HARNESS_BROKER, CoordinatorHarness, harness_config, harness_weights, tasked

from federated.broker.errors import StoreError
from federated.broker.service import _resume
from federated.broker.store import RoundStore
from federated.config import FederatedConfig


def _play(h: CoordinatorHarness, rounds: int, rng: np.random.Generator, *, fail: set[int] = frozenset()) -> None:
    """Run ``rounds`` rounds with workers w1..w5 (3 per round); rounds in ``fail`` get one answer only."""
    for _ in range(rounds):
        h.tick()
        rnd = h.coord.round
        assert rnd is not None, "no round started"
        rid = rnd.round_id
        answering = sorted(rnd.cohort)[:1] if rid in fail else sorted(rnd.cohort)
        for wid in answering:
            values = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in harness_weights().items()}
            h.send(wid, h.update(wid, values, metrics={"loss": float(rng.random())}))
        if rid in fail:
            h.advance(HARNESS_BROKER.round_timeout_s + 1, alive=["w1", "w2", "w3", "w4", "w5"])
        h.advance(0.5, alive=["w1", "w2", "w3", "w4", "w5"])


def _config(**kw: Any) -> FederatedConfig:
    base: dict[str, Any] = {"num_clients": 5, "clients_per_round": 3, "num_rounds": 8, "selection": "performance",
                            "broker": HARNESS_BROKER.__class__(**{**HARNESS_BROKER.__dict__, "server_optimizer": "fedadam"})}
    base.update(kw)
    return harness_config(**base)


def _started(store: RoundStore, config: FederatedConfig) -> CoordinatorHarness:
    """A broker on a fresh run in ``store`` (as ``serve`` starts one) with workers w1..w5 joined."""
    store.set_meta("config", config.to_dict(resolved=True))
    store.save_initial(harness_weights())
    h = CoordinatorHarness(config, store=store)
    h.join("w1", "w2", "w3", "w4", "w5")
    return h


def test_a_coordinator_restored_from_the_store_continues_exactly(tmp_path: Path) -> None:
    config = _config()
    with RoundStore(tmp_path / "s.db") as store:
        store.set_meta("config", config.to_dict(resolved=True))
        store.save_initial(harness_weights())
        h = CoordinatorHarness(config, store=store)
        live = h.coord
        seen: list[tuple[Any, ...]] = []
        # The live state as each round is recorded (later the live broker starts the next round).
        live.on_round = lambda rec: seen.append((
            live.rng.getstate(), live.selector.state_dict(), live.server_optimizer.state_dict(),
            live.next_round_id))
        h.join("w1", "w2", "w3", "w4", "w5")
        _play(h, 4, np.random.default_rng(1), fail={3})

        restored = CoordinatorHarness(config, store=store).coord
        _resume(store, config, restored)

    assert [r.status for r in live.history] == ["complete", "complete", "failed", "complete"]
    rng_state, selector_state, optimizer_state, next_round = seen[3]
    # The live broker had already started round 5 when it "stopped": that id is burnt, never rerun.
    assert live.round is not None and live.round.round_id == 5
    assert (restored.next_round_id, restored.completed, restored.consecutive_failures) == (next_round + 1, 3, 0)
    assert next_round == 5
    assert restored.rng.getstate() == rng_state
    assert restored.selector.state_dict() == selector_state
    restored_state = restored.server_optimizer.state_dict()
    assert optimizer_state.keys() == restored_state.keys() and optimizer_state
    for name in optimizer_state:
        assert np.array_equal(optimizer_state[name], restored_state[name])
    with RoundStore(tmp_path / "s.db", readonly=True) as store:
        last = store.load_checkpoint(4)
    for name in last:
        assert np.array_equal(last[name], restored.weights[name])


def test_only_the_newest_state_file_is_kept_and_a_failed_round_keeps_the_optimizer_state(tmp_path: Path) -> None:
    config = _config()
    with RoundStore(tmp_path / "s.db") as store:
        h = _started(store, config)
        _play(h, 3, np.random.default_rng(2), fail={3})
        files = sorted(p.name for p in (tmp_path / "checkpoints").glob("state_*"))
        loaded = store.load_resume()
    assert files == ["state_000003.safetensors"]
    assert loaded is not None
    resume, arrays = loaded
    assert resume["round"] == 3 and resume["consecutive_failures"] == 1 and resume["completed"] == 2
    assert {k.split("/")[0] for k in arrays} == {"server_optimizer"}


def test_a_store_of_another_run_is_refused_naming_the_settings(tmp_path: Path) -> None:
    config = _config()
    with RoundStore(tmp_path / "s.db") as store:
        h = _started(store, config)
        _play(h, 1, np.random.default_rng(3))
        other = _config(seed=5, compression="q8")
        with pytest.raises(StoreError, match=r"other settings \(compression, seed\)"):
            _resume(store, other, CoordinatorHarness(other).coord)
        # More rounds, another port: the same run.
        longer = _config(num_rounds=20)
        coordinator = CoordinatorHarness(longer).coord
        _resume(store, longer, coordinator)
        assert coordinator.completed == 1 and not coordinator.done


def test_missing_state_file_is_an_error_not_a_silent_reset(tmp_path: Path) -> None:
    config = _config()
    with RoundStore(tmp_path / "s.db") as store:
        h = _started(store, config)
        _play(h, 1, np.random.default_rng(4))
        for path in (tmp_path / "checkpoints").glob("state_*"):
            path.unlink()
        with pytest.raises(StoreError, match="resume state file .* is missing"):
            _resume(store, config, CoordinatorHarness(config).coord)


def test_a_hello_repeated_on_the_same_connection_is_not_a_reconnection() -> None:
    h = CoordinatorHarness()
    tasks = tasked(h, h.join("w1", "w2", "w3"))
    assert len(tasks) == 3
    h.hello("w1")  # e.g. queued heartbeats refused by a restarted broker, each answered with a HELLO
    h.hello("w1")
    assert h.coord.round is not None and "w1" in h.coord.round.pending
    assert "w1" not in h.coord.round.dropped
