"""Tests of the broker's worker registry (liveness with expiry, id <-> connection binding)."""

from __future__ import annotations

import math

import pytest

from federated.broker.registry import WorkerRegistry


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        WorkerRegistry(timeout)


def test_register_and_look_up() -> None:
    reg = WorkerRegistry(5.0)
    assert reg.register("a", b"r1", 10, now=100.0) is None
    assert len(reg) == 1 and "a" in reg and "b" not in reg
    assert reg.id_of(b"r1") == "a"
    assert reg.id_of(b"unknown") is None
    rec = reg.get("a")
    assert rec is not None
    assert (rec.worker_id, rec.route, rec.num_samples, rec.expires_at, rec.connected_at) == \
        ("a", b"r1", 10, 105.0, 100.0)
    assert reg.get("b") is None


def test_reannouncement_on_a_new_connection_replaces_the_old_binding() -> None:
    reg = WorkerRegistry(5.0)
    reg.register("a", b"r1", 10, now=0.0)
    previous = reg.register("a", b"r2", 12, now=1.0)
    assert previous is not None and previous.route == b"r1" and previous.num_samples == 10
    assert reg.id_of(b"r1") is None
    assert reg.id_of(b"r2") == "a"
    rec = reg.get("a")
    assert rec is not None and rec.num_samples == 12 and rec.expires_at == 6.0
    assert len(reg) == 1


def test_reannouncement_on_the_same_connection_is_still_reported() -> None:
    reg = WorkerRegistry(5.0)
    reg.register("a", b"r1", 10, now=0.0)
    assert reg.register("a", b"r1", 10, now=1.0) is not None
    assert reg.id_of(b"r1") == "a" and len(reg) == 1


def test_one_connection_cannot_speak_for_two_ids() -> None:
    reg = WorkerRegistry(5.0)
    reg.register("a", b"r1", 10, now=0.0)
    reg.register("b", b"r1", 20, now=1.0)
    assert reg.id_of(b"r1") == "b"
    assert "a" not in reg
    assert reg.live_ids() == ["b"]


def test_touch_pushes_expiry_forward() -> None:
    reg = WorkerRegistry(5.0)
    reg.register("a", b"r1", 1, now=0.0)
    reg.touch("a", now=3.0)
    rec = reg.get("a")
    assert rec is not None and rec.expires_at == 8.0
    reg.touch("nobody", now=3.0)  # no error, no record
    assert "nobody" not in reg


def test_expire_removes_exactly_the_workers_past_their_expiry() -> None:
    reg = WorkerRegistry(5.0)
    reg.register("a", b"ra", 1, now=0.0)   # expires at 5
    reg.register("b", b"rb", 1, now=2.0)   # expires at 7
    reg.register("c", b"rc", 1, now=0.0)
    reg.touch("c", now=4.0)                # expires at 9
    assert reg.expire(4.999) == []
    assert reg.expire(5.0) == ["a"]        # expiry is inclusive
    assert reg.id_of(b"ra") is None
    assert reg.expire(5.0) == []
    assert sorted(reg.expire(100.0)) == ["b", "c"]
    assert len(reg) == 0 and reg.next_expiry() is None


def test_remove() -> None:
    reg = WorkerRegistry(5.0)
    reg.register("a", b"ra", 1, now=0.0)
    rec = reg.remove("a")
    assert rec is not None and rec.worker_id == "a"
    assert reg.id_of(b"ra") is None and "a" not in reg
    assert reg.remove("a") is None


def test_live_ids_and_records_are_sorted() -> None:
    reg = WorkerRegistry(5.0)
    for wid in ["w3", "w1", "w2"]:
        reg.register(wid, wid.encode(), 1, now=0.0)
    assert reg.live_ids() == ["w1", "w2", "w3"]
    assert [r.worker_id for r in reg.records()] == ["w1", "w2", "w3"]


def test_next_expiry_is_the_earliest() -> None:
    reg = WorkerRegistry(5.0)
    assert reg.next_expiry() is None
    reg.register("a", b"ra", 1, now=3.0)
    reg.register("b", b"rb", 1, now=1.0)
    assert reg.next_expiry() == 6.0
    reg.touch("b", now=10.0)
    assert reg.next_expiry() == 8.0


def test_route_and_id_maps_stay_consistent_under_churn() -> None:
    reg = WorkerRegistry(5.0)
    ops = [("a", b"1"), ("b", b"2"), ("a", b"2"), ("c", b"1"), ("b", b"3"), ("c", b"3"), ("a", b"1")]
    for i, (wid, route) in enumerate(ops):
        reg.register(wid, route, 1, now=float(i))
        for rec in reg.records():
            assert reg.id_of(rec.route) == rec.worker_id
        # every bound route points at a live id, and vice versa
        assert len({r.route for r in reg.records()}) == len(reg)
    assert reg.live_ids() == ["a", "c"]
    assert reg.id_of(b"2") is None


def test_expiries_match_a_scan_of_every_record() -> None:
    """The heap gives what a pass over all records gave (the registry's old implementation), through
    registrations, touches (time also going backwards), removals and re-registrations."""
    import random

    rng = random.Random(15)
    reg = WorkerRegistry(5.0)
    now = 0.0
    for _ in range(5000):
        now += rng.uniform(-0.05, 0.3)
        wid = f"w{rng.randrange(40)}"
        action = rng.random()
        if action < 0.3:
            reg.register(wid, f"r{rng.randrange(60)}".encode(), 1, now)
        elif action < 0.8:
            reg.touch(wid, now)
        elif action < 0.85:
            reg.remove(wid)
        else:
            expected = sorted(r.worker_id for r in reg.records() if r.expires_at <= now)
            assert sorted(reg.expire(now)) == expected
        assert reg.next_expiry() == min((r.expires_at for r in reg.records()), default=None)
