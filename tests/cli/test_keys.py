"""Tests of `fl keys broker|worker|enrol|list|revoke` with click's CliRunner."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner
from support import last_json

from federated.cli.keys import keys
from federated.keys import load_broker_public, load_worker_keys


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(keys, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_full_cycle(tmp_path: Path) -> None:
    broker, worker = tmp_path / "broker", tmp_path / "alice"
    code, out, _ = run("broker", "--keys-dir", broker)
    assert code == 0
    assert str(broker / "broker.key") in out and "copy this file to every worker" in out
    assert str(broker / "broker.key_secret") in out and "0600" in out
    assert load_broker_public(broker).decode() in out
    assert stat.S_IMODE((broker / "broker.key_secret").stat().st_mode) == 0o600

    code, out, _ = run("worker", "--client-id", "alice", "--out", worker)
    assert code == 0
    assert str(worker / "alice.pub") in out and "copy this file to the broker" in out
    assert str(worker / "alice.secret") in out and "stays on this worker" in out
    fingerprint = load_worker_keys(worker).fingerprint
    assert fingerprint in out

    code, out, _ = run("enrol", worker / "alice.pub", "--keys-dir", broker)
    assert code == 0 and "Enrolled worker 'alice'" in out and fingerprint in out

    code, out, _ = run("list", "--keys-dir", broker)
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip().startswith("alice"))
    assert fingerprint in row

    code, out, _ = run("list", "--keys-dir", broker, "--json")
    assert code == 0
    payload = last_json(out)
    assert payload["keys_dir"] == str(broker)
    [entry] = payload["workers"]
    assert entry["worker_id"] == "alice" and entry["fingerprint"] == fingerprint
    assert entry["curve_public"] == load_worker_keys(worker).curve_public.decode()

    code, out, _ = run("revoke", "alice", "--keys-dir", broker)
    assert code == 0 and "Revoked worker 'alice'" in out
    code, out, _ = run("list", "--keys-dir", broker)
    assert code == 0 and "No workers enrolled" in out
    code, out, _ = run("list", "--keys-dir", broker, "--json")
    assert last_json(out)["workers"] == []


def test_existing_keys_need_force(tmp_path: Path) -> None:
    assert run("broker", "--keys-dir", tmp_path)[0] == 0
    before = load_broker_public(tmp_path)
    code, out, err = run("broker", "--keys-dir", tmp_path)
    assert code == 2 and out == ""
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert load_broker_public(tmp_path) == before
    assert run("broker", "--keys-dir", tmp_path, "--force")[0] == 0
    assert load_broker_public(tmp_path) != before

    assert run("worker", "--client-id", "w1", "--out", tmp_path / "w")[0] == 0
    code, _, err = run("worker", "--client-id", "w1", "--out", tmp_path / "w")
    assert code == 2 and "w1.pub already exists" in err


def test_key_file_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    assert run("broker", "--keys-dir", tmp_path / "broker")[0] == 0
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    code, _, err = run("enrol", garbage, "--keys-dir", tmp_path / "broker")
    assert code == 2 and str(garbage) in err and "Traceback" not in err

    run("worker", "--client-id", "alice", "--out", tmp_path / "alice")
    code, _, err = run("enrol", tmp_path / "alice" / "alice.secret", "--keys-dir", tmp_path / "broker")
    assert code == 2 and "must stay on the worker" in err

    code, _, err = run("enrol", tmp_path / "alice" / "alice.pub", "--keys-dir", tmp_path / "typo")
    assert code == 2 and "fl keys broker" in err

    code, _, err = run("revoke", "bob", "--keys-dir", tmp_path / "broker")
    assert code == 2 and "'bob' is not enrolled" in err and "Traceback" not in err

    code, _, err = run("list", "--keys-dir", tmp_path / "nowhere")
    assert code == 2 and "not a directory" in err


def test_duplicate_enrolment_is_refused(tmp_path: Path) -> None:
    run("broker", "--keys-dir", tmp_path / "broker")
    run("worker", "--client-id", "alice", "--out", tmp_path / "a1")
    run("worker", "--client-id", "alice", "--out", tmp_path / "a2")
    assert run("enrol", tmp_path / "a1" / "alice.pub", "--keys-dir", tmp_path / "broker")[0] == 0
    code, _, err = run("enrol", tmp_path / "a2" / "alice.pub", "--keys-dir", tmp_path / "broker")
    assert code == 2 and "already enrolled" in err and "fl keys revoke alice" in err


def test_bad_client_id_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("worker", "--client-id", "a/b", "--out", tmp_path)
    assert code == 2 and "worker_id must be" in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = run("revoke", "../etc", "--keys-dir", tmp_path)
    assert code == 2 and "worker_id must be" in err


def test_required_options(tmp_path: Path) -> None:
    code, _, err = run("broker")
    assert code == 2 and "--keys-dir" in err
    code, _, err = run("worker", "--out", tmp_path)
    assert code == 2 and "--client-id" in err


def test_list_fits_an_80_column_terminal(tmp_path: Path) -> None:
    run("broker", "--keys-dir", tmp_path / "broker")
    fingerprints = {}
    for worker_id in ("alice", "worker-with-a-long-name.example.org"):
        run("worker", "--client-id", worker_id, "--out", tmp_path / worker_id)
        run("enrol", tmp_path / worker_id / f"{worker_id}.pub", "--keys-dir", tmp_path / "broker")
        fingerprints[worker_id] = load_worker_keys(tmp_path / worker_id).fingerprint
    result = CliRunner().invoke(keys, ["list", "--keys-dir", str(tmp_path / "broker")], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert all(fp in result.stdout for fp in fingerprints.values())
    assert "alice" in result.stdout and "2 enrolled" in result.stdout
