"""Runs a broker: opens the store, builds the coordinator and the ROUTER loop, handles signals.

This is what ``flbroker`` / ``fl broker`` and ``fl simulate``'s broker process call. It needs no MLX: the
initial weights, the evaluator and the model description come from the caller.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from federated.broker.coordinator import Coordinator, Evaluator
from federated.broker.errors import StoreError
from federated.broker.lock import StoreLock
from federated.broker.loop import BrokerLoop
from federated.broker.resume import restore
from federated.broker.store import RoundRecord, RoundStore
from federated.config import FederatedConfig
from federated.keys import BrokerKeys, Enrolment, load_broker_keys

__all__ = ["RESUMABLE_CHANGES", "BrokerOutcome", "serve"]

log = logging.getLogger("federated.broker")


@dataclass(frozen=True)
class BrokerOutcome:
    """How a broker run ended: rounds completed, whether it stopped on failure, and why."""

    completed: int
    failed: bool
    interrupted: bool
    reason: str
    history: tuple[RoundRecord, ...]
    weights: dict[str, np.ndarray]
    privacy: dict[str, Any] | None = None  # the ledger's summary: epsilon spent, delta, sigma, budget


#: Settings that may change between a run and its resumption: where and how fast the broker serves, and
#: how many rounds it runs in total. Every other setting shapes the model's trajectory, so it must match.
RESUMABLE_CHANGES = frozenset({
    "num_rounds", "broker.bind", "broker.store", "broker.round_timeout_s", "broker.start_timeout_s",
    "broker.heartbeat_interval_s", "broker.heartbeat_timeout_s", "broker.max_failed_rounds", "broker.keys_dir",
    "secure.stage_timeout_s",
})


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two config dicts."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _resume(store: RoundStore, config: FederatedConfig, coordinator: Coordinator) -> None:
    """Load the newest round's state into ``coordinator``. Raises StoreError if the store holds another
    run (different settings) or its state is unusable."""
    stored = store.get_meta("config")
    if not isinstance(stored, dict):
        raise StoreError(f"store {config.broker.store} holds rounds but no run configuration")
    changed = [k for k in _differences(stored, config.to_dict(resolved=True)) if k not in RESUMABLE_CHANGES]
    if changed:
        raise StoreError(f"store {config.broker.store} holds a run with other settings ({', '.join(changed)}); "
                         "resume it with the same settings, or use a new --store path")
    loaded = store.load_resume()
    latest = store.latest_weights()
    if loaded is None or latest is None:
        raise StoreError(f"store {config.broker.store} holds rounds but no resume state; use a new --store path")
    resume, arrays = loaded
    try:
        restore(coordinator, resume, arrays, latest[1])
        privacy = store.get_meta("privacy")
        if coordinator.privacy is not None and privacy is not None:
            # Includes a round that was under way when the broker stopped: it is charged again on rerun.
            coordinator.privacy.load(privacy)  # type: ignore[arg-type]
    except ValueError as exc:
        raise StoreError(f"store {config.broker.store}: cannot resume: {exc}") from exc
    store.set_meta("config", config.to_dict(resolved=True))
    log.info("resuming after round %d (%d complete rounds of %d)", resume["round"], coordinator.completed,
             config.num_rounds)


def _transport_keys(config: FederatedConfig) -> tuple[BrokerKeys | None, Enrolment | None]:
    """The broker's CURVE keys and the enrolment, if ``broker.keys_dir`` is set. Raises KeyFileError."""
    if config.broker.keys_dir is None:
        if not config.broker.bind.startswith(("tcp://127.", "tcp://localhost:", "ipc://", "inproc://")):
            log.warning("no broker.keys_dir: plain TCP on %s; anyone who can reach it can join and read models",
                        config.broker.bind)
        return None, None
    keys_dir = Path(config.broker.keys_dir)
    keys, enrolment = load_broker_keys(keys_dir), Enrolment(keys_dir)
    if not len(enrolment):
        log.warning("no worker is enrolled in %s: nobody can join until one is (fl keys enrol)", keys_dir)
    log.info("CurveZMQ on; %d enrolled workers", len(enrolment))
    return keys, enrolment


def serve(
    config: FederatedConfig,
    initial_weights: Mapping[str, np.ndarray],
    *,
    evaluate: Evaluator | None = None,
    task_config: Mapping[str, Any] | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_listening: Callable[[str], None] | None = None,
    on_evaluation: Callable[[RoundRecord], None] | None = None,
) -> BrokerOutcome:
    """Serve ``config.num_rounds`` rounds on ``config.broker.bind``, recording into ``config.broker.store``.

    A store that already holds rounds of the same run (same settings, except those in
    ``RESUMABLE_CHANGES``) is resumed: training continues after the last recorded round with the global
    model, server-optimizer state, RNG and selection state saved with it; a round that was running when
    the broker died runs again from its start. Workers reconnect by themselves.

    With ``broker.keys_dir`` set the broker speaks CurveZMQ and admits only enrolled workers.

    Raises :class:`KeyFileError` for missing or unsafe key files; :class:`StoreError` if the store cannot be
    opened, holds a run with other settings, its resume state is unusable, or another broker runs on it
    (:class:`StoreInUseError`); :class:`BindError` if the address cannot be listened on. SIGINT and SIGTERM
    stop the loop after the current step.
    """
    keys, enrolment = _transport_keys(config)
    if config.secure.enabled and config.clients_per_round < 4:
        # Three workers: k = 2 neighbours, so the majority threshold is t = 2 = k, and one worker lost
        # after the keys are shared leaves each survivor's self-mask seed with one holder, fewer than t.
        log.warning("a secure round of %d workers cannot survive a worker lost after its keys are shared "
                    "(the round then fails, model unchanged); use 4 or more workers to tolerate one",
                    config.clients_per_round)
    lock = StoreLock(config.broker.store)
    lock.acquire()  # one broker per store: StoreInUseError before anything is read or written
    try:
        store = RoundStore(config.broker.store)
    except BaseException:
        lock.release()
        raise
    try:
        coordinator = Coordinator(config, initial_weights, store=store, evaluate=evaluate,
                                  on_round=on_round, task_config=task_config, enrolment=enrolment,
                                  on_evaluation=on_evaluation)
        if store.list_rounds():
            _resume(store, config, coordinator)
        else:
            store.set_meta("config", config.to_dict(resolved=True))
            store.save_initial({k: np.asarray(v, np.float32) for k, v in initial_weights.items()})
        model = (task_config or {}).get("model")
        if isinstance(model, Mapping):
            # How to build the network: checkpoints and exported models carry it in their model card.
            store.set_meta("model", dict(model))
        loop = BrokerLoop(coordinator, config.broker.bind, keys=keys)
        interrupted = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal interrupted
            interrupted = True
            loop.stop()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if on_listening is not None:
                loop.on_bound = on_listening
            if not coordinator.done:
                loop.run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            coordinator.admission.flush_log()  # how many refusals went unlogged since its last line
        privacy = coordinator.privacy.summary() if coordinator.privacy is not None else None
        store.set_meta("outcome", {"completed": coordinator.completed, "failed": coordinator.failed,
                                   "interrupted": interrupted, "reason": coordinator.exit_reason,
                                   "privacy": privacy})
        return BrokerOutcome(coordinator.completed, coordinator.failed, interrupted,
                             coordinator.exit_reason or ("interrupted" if interrupted else ""),
                             tuple(coordinator.history), coordinator.weights, privacy)
    finally:
        store.close()
        lock.release()
