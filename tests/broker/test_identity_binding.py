"""Every message is bound to the CURVE key enrolled for the worker it speaks for (issue 13, item 11).

The broker knows who sent a message from two things: the connection's routing id (which worker said HELLO
on it) and the CURVE key the connection authenticated with. The routing id is the peer's to choose
(``ZMQ_ROUTING_ID``), or libzmq's counter when the peer sets none, so it identifies nobody. The old
coordinator checked the key only for "some enrolled key" after HELLO: a connection authenticated as alice
that came in on bob's routing id (set explicitly, once bob's connection was gone but before his record
expired) was taken for bob. It could refresh bob's liveness, hand in bob's update, replay bob's
secure-aggregation messages, or drop bob from the round with a BYE or an ERROR.

Socket-free, as the other coordinator tests: ``peer`` is what the loop reads from the frames' ``User-Id``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import enrolled_workers

from federated.broker.coordinator import STAGE_TRAIN, Coordinator, Outbound
from federated.config import BrokerConfig, FederatedConfig, SecureConfig
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_worker import SecAggWorker
from federated.keys import (
    Enrolment,
    WorkerKeys,
)
from federated.protocol import Bye, Error, Heartbeat, Hello, Task, Update, Welcome, decode_message

T0 = 1000.0
WEIGHTS = {"w": np.zeros(4, np.float32)}
ALICE, BOB = b"route-alice", b"route-bob"
ROUTES = {"alice": ALICE, "bob": BOB, "carol": b"route-carol"}


@pytest.fixture
def enrolled(tmp_path: Path) -> tuple[Enrolment, dict[str, WorkerKeys]]:
    keys_dir, keys = enrolled_workers(tmp_path, ROUTES, keys_dir="broker")
    return Enrolment(keys_dir), keys


def _config(secure: bool) -> FederatedConfig:
    return FederatedConfig(num_clients=3, clients_per_round=3, min_clients=2, num_rounds=2,
                           secure=SecureConfig(enabled=secure),
                           broker=BrokerConfig(round_timeout_s=100.0, start_timeout_s=100.0,
                                               heartbeat_interval_s=10.0, heartbeat_timeout_s=30.0))


def _decoded(out: list[Outbound]) -> list[tuple[bytes, Any]]:
    return [(o.route, decode_message([bytes(f) for f in o.frames])) for o in out]


def _start(enrolment: Enrolment, keys: dict[str, WorkerKeys], secure: bool) -> tuple[Coordinator, dict[str, Task]]:
    """Each worker says HELLO on its own connection with its own key; the first round starts."""
    coord = Coordinator(_config(secure), WEIGHTS, enrolment=enrolment)
    for wid, route in ROUTES.items():
        hello = Hello(wid, 10, ("train",), keys[wid].identity_public.hex())
        replies = _decoded(coord.handle(route, hello.to_frames(), T0, peer=keys[wid].curve_public.decode()))
        assert isinstance(replies[0][1], Welcome)
    by_route = {route: wid for wid, route in ROUTES.items()}
    tasks = {by_route[r]: m for r, m in _decoded(coord.tick(T0)) if isinstance(m, Task)}
    assert set(tasks) == set(ROUTES) and coord.round is not None
    return coord, tasks


def _state(coord: Coordinator) -> Any:
    """What a message could change: who is registered (route, expiry), and the round's progress."""
    rnd = coord.round
    assert rnd is not None
    workers = {w: dataclasses.asdict(coord.registry.get(w)) for w in coord.registry.live_ids()}  # type: ignore[arg-type]
    secure = None
    if rnd.secure is not None:
        secure = [(m.stage, sorted(m.pending), dict(m.dropped)) for m in rnd.secure.machines]
    return (workers, sorted(rnd.pending), sorted(rnd.updates), dict(rnd.dropped), rnd.bytes_up, secure,
            dict(coord.identities))


def _as_bob_from_alices_key(coord: Coordinator, keys: dict[str, WorkerKeys], msg: Any, route: bytes) -> list[Any]:
    """Deliver ``msg`` on ``route`` from a connection that authenticated with alice's CURVE key."""
    return [m for _, m in _decoded(coord.handle(route, msg.to_frames(), T0 + 1.0,
                                                peer=keys["alice"].curve_public.decode()))]


def _bob_update(round_id: int) -> Update:
    return Update("bob", round_id, STAGE_TRAIN, 10, {"loss": 0.5}, {"w": np.ones(4, np.float32)})


PLAIN_ATTACKS = {
    "heartbeat": lambda rid: Heartbeat("bob"),
    "update": _bob_update,
    "bye": lambda rid: Bye("bob", "forged"),
    "bye without an id": lambda rid: Bye("", "forged"),
    "error for the round": lambda rid: Error("forged", "forged", rid),
}


# On alice's own connection a message without a worker id speaks for alice, so only those naming bob.
CASES = [(a, BOB) for a in PLAIN_ATTACKS] + [(a, ALICE) for a in ("heartbeat", "update", "bye")]


@pytest.mark.parametrize(("attack", "route"), CASES,
                         ids=[f"{a}-{'on bob routing id' if r == BOB else 'on alice connection'}" for a, r in CASES])
def test_alices_key_cannot_speak_for_bob_after_hello(enrolled: tuple[Enrolment, dict[str, WorkerKeys]],
                                                     attack: str, route: bytes) -> None:
    enrolment, keys = enrolled
    coord, tasks = _start(enrolment, keys, secure=False)
    msg = PLAIN_ATTACKS[attack](tasks["bob"].round_id)
    before = _state(coord)
    replies = _as_bob_from_alices_key(coord, keys, msg, route)
    assert [type(m) for m in replies] == [Error] and replies[0].code == "wrong_worker"
    assert _state(coord) == before
    # Bob himself is still heard: his real update completes his part of the round.
    coord.handle(BOB, _bob_update(tasks["bob"].round_id).to_frames(), T0 + 2.0,
                 peer=keys["bob"].curve_public.decode())
    assert coord.round is not None and "bob" in coord.round.updates


def test_alices_key_cannot_replay_bobs_secure_aggregation_message(
        enrolled: tuple[Enrolment, dict[str, WorkerKeys]]) -> None:
    """Even bob's own, validly signed ADVERTISE_KEYS is refused when it comes over alice's connection."""
    enrolment, keys = enrolled
    coord, tasks = _start(enrolment, keys, secure=True)
    task = tasks["bob"]
    bob = SecAggWorker("bob", keys["bob"].identity, task.round_id, SecAggParams.from_dict(task.config["secagg"]))
    advert = bob.advertise()
    for route in (BOB, ALICE):
        before = _state(coord)
        replies = _as_bob_from_alices_key(coord, keys, advert, route)
        assert [type(m) for m in replies] == [Error] and replies[0].code == "wrong_worker"
        assert _state(coord) == before
    # From bob's own key the same message is accepted: the refusal was about who sent it.
    coord.handle(BOB, advert.to_frames(), T0 + 2.0, peer=keys["bob"].curve_public.decode())
    assert coord.round is not None and coord.round.secure is not None
    assert "bob" not in coord.round.secure.machines[0].pending


def test_hello_still_binds_the_key_to_its_own_worker_id(enrolled: tuple[Enrolment, dict[str, WorkerKeys]]) -> None:
    """The HELLO half of the binding, which already held: alice's key cannot say HELLO as bob."""
    enrolment, keys = enrolled
    coord = Coordinator(_config(False), WEIGHTS, enrolment=enrolment)
    hello = Hello("bob", 10, ("train",), keys["bob"].identity_public.hex())
    replies = _decoded(coord.handle(ALICE, hello.to_frames(), T0, peer=keys["alice"].curve_public.decode()))
    assert [type(m) for _, m in replies] == [Error] and replies[0][1].code == "wrong_worker"
    assert len(coord.registry) == 0
