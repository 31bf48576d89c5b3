"""What a restarted broker needs to continue a run, and putting it back.

With every recorded round the store keeps a JSON payload (:func:`resume_payload`: the round counters
after it, the coordinator's RNG and selection state, the run id, the adaptive clip) and arrays
(:func:`resume_arrays`: the server optimizer's state). :func:`restore` reads them back into a fresh
coordinator's parts.

Two things outlive a round in the store's meta rather than in the payload: ``started_round``, the id of
the last round that sent TASKs (a round under way when the broker stopped is *burnt*: the resumed run
continues with the next id and never reruns it, since a worker refuses a round it already contributed to
and two runs of one secure round under different survivor sets would let the sums be subtracted); and the
run id, kept across resumes, which workers key their round ledger with.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from federated.aggregation import ServerOptimizer, check_compatible
from federated.broker.selection import Selector
from federated.broker.store import RoundStore
from federated.config import FederatedConfig
from federated.privacy.clipping import AdaptiveClipper
from federated.privacy.ledger import PrivacyLedger

__all__ = ["OPTIMIZER_PREFIX", "Resumable", "restore", "resume_arrays", "resume_payload"]

#: The store's array names for the server optimizer's state: this prefix, then the optimizer's own name.
OPTIMIZER_PREFIX = "server_optimizer/"


class Resumable(Protocol):
    """The parts of a coordinator that a resume saves and puts back."""

    config: FederatedConfig
    store: RoundStore | None
    rng: random.Random
    selector: Selector
    server_optimizer: ServerOptimizer
    privacy: PrivacyLedger | None
    weights: dict[str, np.ndarray]
    next_round_id: int
    completed: int
    consecutive_failures: int
    run_id: str
    done: bool
    exit_reason: str


def resume_payload(broker: Resumable, status: str) -> dict[str, Any]:
    """What a restarted broker needs, besides arrays, to continue after the round being recorded with
    ``status`` (the counters are those *after* that round)."""
    version, internal, gauss = broker.rng.getstate()
    privacy = broker.privacy
    return {
        "next_round": broker.next_round_id,
        "completed": broker.completed + (status == "complete"),
        "consecutive_failures": 0 if status == "complete" else broker.consecutive_failures + 1,
        "rng": [version, list(internal), gauss],
        "selector": broker.selector.state_dict(),
        "run_id": broker.run_id,
        "clipper": None if privacy is None or privacy.clipper is None else privacy.clipper.to_dict(),
    }


def resume_arrays(broker: Resumable) -> dict[str, np.ndarray]:
    """The arrays a restarted broker needs: the server optimizer's state."""
    return {f"{OPTIMIZER_PREFIX}{k}": v for k, v in broker.server_optimizer.state_dict().items()}


def restore(broker: Resumable, resume: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
            weights: Mapping[str, np.ndarray]) -> None:
    """Continue a run in ``broker`` from the state :meth:`RoundStore.load_resume` returned and the global
    model ``weights`` of the last complete round: RNG, selection state, counters, run id (kept; a fresh
    one only if the state has none), adaptive clip, server optimizer, model. A ``started_round`` in the
    store's meta at or past the state's next round is burnt. Raises ValueError if the state does not fit
    ``broker``."""
    try:
        version, internal, gauss = resume["rng"]
        broker.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
        broker.selector.load_state_dict(resume["selector"])
        broker.next_round_id = int(resume["next_round"])
        broker.completed = int(resume["completed"])
        broker.consecutive_failures = int(resume["consecutive_failures"])
        broker.run_id = str(resume.get("run_id", broker.run_id))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"resume state is malformed: {exc!r}") from exc
    started = broker.store.get_meta("started_round") if broker.store is not None else None
    if isinstance(started, int) and not isinstance(started, bool) and started >= broker.next_round_id:
        broker.next_round_id = started + 1  # that round was under way when the broker stopped: burnt
    privacy = broker.privacy
    if privacy is not None and privacy.clipper is not None and resume.get("clipper") is not None:
        privacy.clipper = AdaptiveClipper.from_dict(resume["clipper"])
    broker.server_optimizer.load_state_dict({k[len(OPTIMIZER_PREFIX):]: v for k, v in arrays.items()
                                             if k.startswith(OPTIMIZER_PREFIX)})
    check_compatible(broker.weights, weights)
    broker.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    broker.done = broker.completed >= broker.config.num_rounds
    if broker.done:
        broker.exit_reason = "training finished"
