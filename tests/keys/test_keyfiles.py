"""Key files: round trips, 0600 secrets, refusal of unsafe or damaged files, enrolment, and real CURVE."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth.thread
from zmq.utils import z85

from federated.crypto.errors import CryptoError
from federated.crypto.primitives import sign, verify
from federated.keys import (
    FORMAT,
    Enrolment,
    KeyFileError,
    check_secret_mode,
    create_broker_keys,
    create_worker_keys,
    enrol_worker,
    list_enrolled,
    load_broker_keys,
    load_broker_public,
    load_worker_keys,
    revoke_worker,
)
from federated.keys.format import write_key_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rewrite(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Apply ``edit`` to a key file's JSON in place, keeping its mode."""
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture
def broker_dir(tmp_path: Path) -> Path:
    create_broker_keys(tmp_path / "broker")
    return tmp_path / "broker"


def make_worker(tmp_path: Path, worker_id: str) -> tuple[Path, Path]:
    return create_worker_keys(tmp_path / "workers" / worker_id, worker_id)


# --- creating and loading -----------------------------------------------------------------------------

def test_broker_keys_round_trip(broker_dir: Path) -> None:
    keys = load_broker_keys(broker_dir)
    assert len(keys.public) == len(keys.secret) == 40
    assert zmq.curve_public(keys.secret) == keys.public  # libzmq agrees these are one CURVE key pair
    assert load_broker_public(broker_dir) == keys.public
    assert load_broker_public(broker_dir / "broker.key") == keys.public
    assert load_broker_keys(broker_dir / "broker.key_secret") == keys
    assert keys.secret.decode() not in repr(keys)


def test_worker_keys_round_trip(tmp_path: Path) -> None:
    public_path, secret_path = make_worker(tmp_path, "alice")
    assert (public_path.name, secret_path.name) == ("alice.pub", "alice.secret")
    keys = load_worker_keys(secret_path)
    assert load_worker_keys(secret_path.parent) == keys
    assert keys.worker_id == "alice"
    assert zmq.curve_public(keys.curve_secret) == keys.curve_public
    assert len(keys.identity_public) == 32
    verify(keys.identity_public, sign(keys.identity, b"advertisement"), b"advertisement")
    public = json.loads(public_path.read_text())
    assert public["kind"] == "worker-public" and public["format"] == FORMAT
    assert "curve_secret" not in public and "identity_secret" not in public
    assert public["identity_public"] == keys.identity_public.hex()
    assert keys.curve_secret.decode() not in repr(keys)


def test_fresh_keys_differ(tmp_path: Path) -> None:
    a, b = (load_worker_keys(make_worker(tmp_path, w)[1]) for w in ("a", "b"))
    assert a.curve_secret != b.curve_secret and a.identity_public != b.identity_public


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_secret_files_are_0600_even_under_umask_0(tmp_path: Path) -> None:
    public, secret = create_broker_keys(tmp_path / "b")
    assert (mode(secret), mode(public), mode(tmp_path / "b")) == (0o600, 0o644, 0o700)
    public, secret = create_worker_keys(tmp_path / "w", "alice")
    assert (mode(secret), mode(public), mode(tmp_path / "w")) == (0o600, 0o644, 0o700)
    public, secret = create_worker_keys(tmp_path / "w", "alice", force=True)
    assert mode(secret) == 0o600
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["alice.pub", "alice.secret"]  # no temp left


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o620], ids=lambda m: f"{m:04o}")
def test_secret_accessible_to_others_is_refused(tmp_path: Path, broker_dir: Path, bad_mode: int) -> None:
    _, worker_secret = make_worker(tmp_path, "alice")
    for secret, load in ((worker_secret, load_worker_keys),
                         (broker_dir / "broker.key_secret", load_broker_keys)):
        secret.chmod(bad_mode)
        with pytest.raises(KeyFileError, match="chmod 600") as info:
            load(secret)
        assert str(secret) in str(info.value) and f"{bad_mode:04o}" in str(info.value)
        with pytest.raises(KeyFileError, match="chmod 600"):
            check_secret_mode(secret)
        secret.chmod(0o600)
        check_secret_mode(secret)
        load(secret)
    secret.chmod(0o400)  # stricter than 0600 is fine
    load_broker_keys(broker_dir)


def test_existing_keys_are_not_overwritten_without_force(tmp_path: Path, broker_dir: Path) -> None:
    before = load_broker_keys(broker_dir)
    with pytest.raises(KeyFileError, match=r"already exists.*--force"):
        create_broker_keys(broker_dir)
    assert load_broker_keys(broker_dir) == before
    create_broker_keys(broker_dir, force=True)
    assert load_broker_keys(broker_dir) != before
    _, secret = make_worker(tmp_path, "alice")
    with pytest.raises(KeyFileError, match=r"alice\.pub already exists"):
        make_worker(tmp_path, "alice")
    (secret.parent / "alice.pub").unlink()  # half a pair left over is not overwritten either
    with pytest.raises(KeyFileError, match=r"alice\.secret already exists"):
        make_worker(tmp_path, "alice")


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    public, secret = create_broker_keys(tmp_path)
    assert mode(secret) == 0o600
    assert load_broker_keys(tmp_path).public == load_broker_public(public)
    before = secret.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):  # the fallback's own check, past the pre-check
        write_key_file(secret, b"other", secret=True, force=False)
    assert secret.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.key", "broker.key_secret"]


def test_invalid_worker_id_is_refused(tmp_path: Path) -> None:
    for bad in ("", "a/b", "../x", "a b", "x" * 129):
        with pytest.raises(ValueError, match="worker_id"):
            create_worker_keys(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


OTHER_Z85 = z85.encode(bytes(range(32))).decode()

WORKER_SECRET_DAMAGE: dict[str, Callable[[dict[str, Any]], object]] = {
    "wrong format": lambda d: d.update(format="federated-keys/99"),
    "wrong kind": lambda d: d.update(kind="worker-public"),
    "missing curve_secret": lambda d: d.pop("curve_secret"),
    "missing worker_id": lambda d: d.pop("worker_id"),
    "short z85": lambda d: d.update(curve_secret=d["curve_secret"][:39]),
    "z85 not a string": lambda d: d.update(curve_public=12),
    "z85 bad character": lambda d: d.update(curve_public='"' + d["curve_public"][1:]),
    "z85 overflow": lambda d: d.update(curve_public="#" * 40),
    "bad hex": lambda d: d.update(identity_secret="zz" * 32),
    "short hex": lambda d: d.update(identity_public=d["identity_public"][:-2]),
    "bad worker_id": lambda d: d.update(worker_id="a/b"),
    "curve keys do not match": lambda d: d.update(curve_public=OTHER_Z85),
    "identity keys do not match": lambda d: d.update(identity_public="00" * 31 + "01"),
}


@pytest.mark.parametrize("damage", sorted(WORKER_SECRET_DAMAGE))
def test_damaged_worker_secret_is_refused(tmp_path: Path, damage: str) -> None:
    _, secret = make_worker(tmp_path, "alice")
    rewrite(secret, WORKER_SECRET_DAMAGE[damage])
    with pytest.raises(KeyFileError) as info:
        load_worker_keys(secret)
    assert str(secret) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x80\x81 garbage", b"not json", b"[1, 2]", b"null",
                                     b'{"format": "federated-keys/1", "kind": "worker-secret", "x": NaN}',
                                     b" " * (70 * 1024)])
def test_garbage_files_are_refused(tmp_path: Path, broker_dir: Path, content: bytes) -> None:
    _, secret = make_worker(tmp_path, "alice")
    public = broker_dir / "broker.key"
    for path, load in ((secret, load_worker_keys), (public, load_broker_public),
                       (broker_dir / "broker.key_secret", load_broker_keys)):
        path.write_bytes(content)
        with pytest.raises(KeyFileError) as info:
            load(path)
        assert str(path) in str(info.value)


def test_missing_files_say_how_to_create_them(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="fl keys broker"):
        load_broker_keys(tmp_path)
    with pytest.raises(KeyFileError, match="fl keys worker"):
        load_worker_keys(tmp_path)
    with pytest.raises(KeyFileError, match=r"broker\.key"):
        load_broker_public(tmp_path)


def test_key_file_error_is_a_crypto_error() -> None:
    assert issubclass(KeyFileError, CryptoError) and KeyFileError.code == "key_file"


def test_secret_files_are_not_taken_for_public_ones(tmp_path: Path, broker_dir: Path) -> None:
    with pytest.raises(KeyFileError, match="must stay on the broker"):
        load_broker_public(broker_dir / "broker.key_secret")
    _, secret = make_worker(tmp_path, "alice")
    with pytest.raises(KeyFileError, match="must stay on the worker"):
        enrol_worker(broker_dir, secret)
    assert list_enrolled(broker_dir) == []


def test_mismatched_broker_public_file_is_refused(tmp_path: Path, broker_dir: Path) -> None:
    create_broker_keys(tmp_path / "other")
    (broker_dir / "broker.key").write_bytes((tmp_path / "other" / "broker.key").read_bytes())
    with pytest.raises(KeyFileError, match="does not match"):
        load_broker_keys(broker_dir)


def test_several_secrets_in_a_directory_are_ambiguous(tmp_path: Path) -> None:
    create_worker_keys(tmp_path, "a")
    create_worker_keys(tmp_path, "b")
    with pytest.raises(KeyFileError, match=r"several .*a\.secret, b\.secret"):
        load_worker_keys(tmp_path)
    assert load_worker_keys(tmp_path / "b.secret").worker_id == "b"


# --- enrolment ----------------------------------------------------------------------------------------

def test_enrol_list_revoke(tmp_path: Path, broker_dir: Path) -> None:
    bob_pub, _ = make_worker(tmp_path, "bob")
    alice_pub, alice_secret = make_worker(tmp_path, "alice")
    bob = enrol_worker(broker_dir, bob_pub)
    alice = enrol_worker(broker_dir, alice_pub)
    alice_keys = load_worker_keys(alice_secret)
    assert alice.curve_public == alice_keys.curve_public
    assert alice.identity_public == alice_keys.identity_public
    assert alice.fingerprint == alice_keys.fingerprint
    assert alice.enrolled_at > 0
    assert list_enrolled(broker_dir) == [alice, bob]
    assert enrol_worker(broker_dir, alice_pub) == alice  # enrolling the same keys again is a no-op
    assert revoke_worker(broker_dir, "alice") == alice
    assert list_enrolled(broker_dir) == [bob]
    assert [p.name.split(".")[0] for p in (broker_dir / "revoked").iterdir()] == ["alice"]
    with pytest.raises(KeyFileError, match="not enrolled"):
        revoke_worker(broker_dir, "alice")


def test_enrolment_refuses_a_second_key_for_one_id_until_revoked(tmp_path: Path, broker_dir: Path) -> None:
    first, _ = make_worker(tmp_path, "alice")
    second, _ = create_worker_keys(tmp_path / "elsewhere", "alice")
    enrol_worker(broker_dir, first)
    with pytest.raises(KeyFileError, match=r"already enrolled .* different keys.*fl keys revoke alice"):
        enrol_worker(broker_dir, second)
    revoke_worker(broker_dir, "alice")
    replaced = enrol_worker(broker_dir, second)
    assert list_enrolled(broker_dir) == [replaced]


def test_enrolment_refuses_one_key_under_two_ids(tmp_path: Path, broker_dir: Path) -> None:
    alice_pub, _ = make_worker(tmp_path, "alice")
    enrol_worker(broker_dir, alice_pub)
    copy = tmp_path / "mallory.pub"
    rewrite_to = json.loads(alice_pub.read_text()) | {"worker_id": "mallory"}
    copy.write_text(json.dumps(rewrite_to))
    with pytest.raises(KeyFileError, match="already enrolled as worker 'alice'"):
        enrol_worker(broker_dir, copy)


def test_enrol_needs_an_existing_keys_dir(tmp_path: Path) -> None:
    alice_pub, _ = make_worker(tmp_path, "alice")
    with pytest.raises(KeyFileError, match="fl keys broker"):
        enrol_worker(tmp_path / "typo", alice_pub)
    assert not (tmp_path / "typo").exists()


def test_enrolment_notices_enrol_and_revoke_at_once(tmp_path: Path, broker_dir: Path) -> None:
    enrolment = Enrolment(broker_dir)
    assert enrolment.workers() == [] and not enrolment.reload_if_changed()
    alice_pub, _ = make_worker(tmp_path, "alice")
    alice = enrol_worker(broker_dir, alice_pub)
    assert enrolment.reload_if_changed()
    assert "alice" in enrolment and enrolment.by_curve_key(alice.curve_public) == alice
    assert enrolment.by_curve_key(alice.curve_public.decode()) == alice  # as a frame's User-Id gives it
    assert not enrolment.reload_if_changed()
    revoke_worker(broker_dir, "alice")
    assert enrolment.reload_if_changed()
    assert "alice" not in enrolment and enrolment.by_curve_key(alice.curve_public) is None
    # Revoke and re-enrol with new keys between two reloads, within one tick of a coarse clock.
    enrol_worker(broker_dir, alice_pub)
    enrolment.reload_if_changed()
    new_pub, _ = create_worker_keys(tmp_path / "new", "alice")
    revoke_worker(broker_dir, "alice")
    new = enrol_worker(broker_dir, new_pub)
    assert enrolment.reload_if_changed()
    assert enrolment.workers() == [new] and enrolment.by_curve_key(alice.curve_public) is None


def test_enrolment_start_is_strict_and_reload_is_lenient(tmp_path: Path, broker_dir: Path) -> None:
    for worker_id in ("alice", "bob"):
        enrol_worker(broker_dir, make_worker(tmp_path, worker_id)[0])
    enrolment = Enrolment(broker_dir)
    bob_file = broker_dir / "enrolled" / "bob.pub"
    bob_file.write_text("{ broken")
    assert enrolment.reload_if_changed()
    assert [w.worker_id for w in enrolment.workers()] == ["alice"]  # the broken file admits nobody
    with pytest.raises(KeyFileError, match=r"bob\.pub"):
        Enrolment(broker_dir)
    with pytest.raises(KeyFileError, match=r"bob\.pub"):
        list_enrolled(broker_dir)
    # A file copied by hand under another name with the same key: neither is trusted.
    bob_file.unlink()
    alice_doc = json.loads((broker_dir / "enrolled" / "alice.pub").read_text())
    (broker_dir / "enrolled" / "carol.pub").write_text(json.dumps(alice_doc | {"worker_id": "carol"}))
    assert enrolment.reload_if_changed()
    assert len(enrolment) == 0
    with pytest.raises(KeyFileError, match="same CURVE key"):
        Enrolment(broker_dir)


def test_enrolled_file_must_be_named_after_its_worker(tmp_path: Path, broker_dir: Path) -> None:
    enrol_worker(broker_dir, make_worker(tmp_path, "alice")[0])
    (broker_dir / "enrolled" / "alice.pub").rename(broker_dir / "enrolled" / "root.pub")
    with pytest.raises(KeyFileError, match=r"must be named alice\.pub"):
        list_enrolled(broker_dir)


# --- with real ZeroMQ ---------------------------------------------------------------------------------

def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, server_key: bytes,
            public: bytes, secret: bytes) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, public, secret
    sock.connect(endpoint)
    return sock


@pytest.mark.network  # a ROUTER and DEALERs over TCP on 127.0.0.1
@pytest.mark.timeout(20)
def test_curve_admits_only_enrolled_workers(tmp_path: Path, broker_dir: Path) -> None:
    alice_pub, alice_secret = make_worker(tmp_path, "alice")
    enrol_worker(broker_dir, alice_pub)
    _, eve_secret = make_worker(tmp_path, "eve")  # has keys, never enrolled
    alice, eve = load_worker_keys(alice_secret), load_worker_keys(eve_secret)
    broker = load_broker_keys(broker_dir)
    server_key = load_broker_public(broker_dir / "broker.key")
    enrolment = Enrolment(broker_dir)

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = zmq.auth.thread.ThreadAuthenticator(ctx)
    auth.start()
    sockets: list[zmq.Socket[bytes]] = []
    try:
        auth.configure_curve_callback("*", credentials_provider=enrolment)
        router = ctx.socket(zmq.ROUTER)
        sockets.append(router)
        router.linger = 0
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = broker.public, broker.secret
        endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"

        def received(timeout_ms: int) -> list[zmq.Frame] | None:
            if not router.poll(timeout_ms):
                return None
            return router.recv_multipart(copy=False)

        good = _dealer(ctx, endpoint, server_key, alice.curve_public, alice.curve_secret)
        sockets.append(good)
        good.send(b"hello from alice")
        frames = received(5000)
        assert frames is not None and frames[-1].bytes == b"hello from alice"
        user_id = frames[-1].get("User-Id")  # the ZAP handler's User-Id: the peer's Z85 CURVE key
        assert isinstance(user_id, str)
        admitted = enrolment.by_curve_key(user_id)
        assert admitted is not None and admitted.worker_id == "alice"

        bad = _dealer(ctx, endpoint, server_key, eve.curve_public, eve.curve_secret)
        sockets.append(bad)
        bad.send(b"hello from eve")
        assert received(500) is None

        revoke_worker(broker_dir, "alice")  # the next handshake re-reads the enrolment
        again = _dealer(ctx, endpoint, server_key, alice.curve_public, alice.curve_secret)
        sockets.append(again)
        again.send(b"alice after revocation")
        assert received(500) is None
    finally:
        for sock in sockets:
            sock.close(linger=0)
        auth.stop()
        ctx.term()
