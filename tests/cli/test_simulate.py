"""``fl simulate`` and ``fl baseline`` end to end: real processes, JSON contract, clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support import last_json, run_fl, simulate_json

from federated.broker.store import RoundStore
from federated.cli.main import fl

ROUND_KEYS = {"round", "accuracy", "loss", "participants", "dropped", "bytes_up", "bytes_down", "duration_s",
              "overhead_s", "epsilon"}


@pytest.mark.network
def test_simulate_json_contract_and_store(tmp_path: Path) -> None:
    store = tmp_path / "run" / "store.db"
    result = simulate_json("--num-clients", "4", "--num-rounds", "3", "--store", str(store))
    assert {"num_rounds", "final_accuracy", "final_loss", "wall_s", "rounds", "store"} <= result.keys()
    assert result["num_rounds"] == 3 and len(result["rounds"]) == 3
    assert all(ROUND_KEYS <= r.keys() for r in result["rounds"])
    assert all(r["participants"] == 4 and r["dropped"] == 0 and r["bytes_up"] > 0 for r in result["rounds"])
    assert result["final_accuracy"] > 0.5
    with RoundStore(store, readonly=True) as s:
        assert [r.accuracy for r in s.list_rounds()] == [r["accuracy"] for r in result["rounds"]]
    listed = CliRunner().invoke(fl, ["rounds", "list", "--store", str(store), "--json"])
    assert listed.exit_code == 0 and len(last_json(listed.output)["rounds"]) == 3


@pytest.mark.network
def test_simulate_dropout_drops_that_fraction_and_still_learns(tmp_path: Path) -> None:
    rounds = simulate_json("--num-clients", "10", "--num-rounds", "3", "--dropout", "0.3",
                           "--store", str(tmp_path / "s.db"))["rounds"]
    assert [r["dropped"] for r in rounds] == [3, 3, 3]
    assert all(r["status"] == "complete" for r in rounds)


@pytest.mark.parametrize(("flags", "field"), [
    (["--partition", "zipf"], "partition"),
    (["--clients-per-round", "50"], "clients_per_round"),
    (["--optimizer", "rmsprop"], "training.optimizer"),
    (["--dataset", "imagenet"], "dataset"),
    (["--model", "resnet"], "model"),
])
def test_bad_settings_exit_2_naming_the_field(flags: list[str], field: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(fl, ["simulate", "--store", str(tmp_path / "s.db"), *flags])
    assert result.exit_code == 2
    assert field in result.output


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  learning_rte: 0.1\n")
    result = CliRunner().invoke(fl, ["baseline", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "training.learning_rte" in result.output and "learning_rate" in result.output


def test_simulate_refuses_an_existing_store(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    store.write_bytes(b"")
    result = CliRunner().invoke(fl, ["simulate", "--store", str(store)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_baseline_json() -> None:
    result = CliRunner().invoke(fl, ["baseline", "--num-rounds", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert {"final_accuracy", "final_loss", "wall_s"} <= out.keys()
    # 2 rounds x 2 local epochs x 10/10 clients -> at least 4 passes over the union.
    assert out["epochs"] >= 4 and out["final_accuracy"] > 0.8


@pytest.mark.parametrize(("flags", "named"), [
    (["--noise-multiplier", "2"], "--noise-multiplier given, but differential privacy is off"),
    (["--dp", "none", "--dp-clip", "0.5"], "--dp-clip given, but differential privacy is off"),
    (["--adaptive-clip"], "privacy.adaptive_clip"),
])
def test_dp_settings_without_a_dp_mode_are_refused_not_ignored(tmp_path: Path, flags: list[str], named: str) -> None:
    result = CliRunner().invoke(fl, ["simulate", "--store", str(tmp_path / "s.db"), *flags])
    assert result.exit_code == 2 and named in result.output
    assert not (tmp_path / "s.db").exists()


def test_federated_evaluation_over_a_partition_of_the_test_split_equals_the_central_one(tmp_path: Path) -> None:
    # Each simulated worker scores on its share of the data set's test split, and the broker weighs the
    # scores by examples: together they are the whole split, so every round's federated accuracy is the
    # broker's own (a check of the whole path: TASK, worker, UPDATE, record, event).
    result = simulate_json("--num-rounds", "3", "--local-epochs", "2", "--store", str(tmp_path / "s.db"))
    assert [r["status"] for r in result["rounds"]] == ["complete"] * 3
    for r in result["rounds"]:
        assert r["fed_accuracy"] == pytest.approx(r["accuracy"], abs=1e-9)
        assert r["fed_loss"] == pytest.approx(r["loss"], rel=1e-5)
    assert result["final_fed_accuracy"] == pytest.approx(result["final_accuracy"], abs=1e-9)


def test_the_default_run_prints_no_warnings(tmp_path: Path) -> None:
    # The README's first command, as a newcomer runs it (only the store moved out of ./runs): a clean run
    # says nothing alarming (issue 16: no false Byzantine alarms, no unreachable-worker noise at the end).
    proc = run_fl("simulate", "--store", str(tmp_path / "s.db"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    alarming = [line for line in proc.stderr.splitlines() if " WARNING " in line or " ERROR " in line]
    assert alarming == [], alarming
    assert "final accuracy" in proc.stdout and "(federated): accuracy" in proc.stdout


def test_a_port_taken_before_the_broker_binds_it_is_replaced_by_another(tmp_path: Path) -> None:
    # fl simulate picks a free port, but it is not reserved: another program may bind it first (a busy CI
    # machine did). The broker says so in an event and fl simulate starts it again on another port.
    import socket

    from federated.cli.simulate import _start_broker
    from federated.config import load_config

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        config = load_config(None, {"broker.bind": f"tcp://127.0.0.1:{taken}", "broker.store": str(tmp_path / "s.db"),
                                    "num_rounds": 1})
        chosen, broker, _ = _start_broker(config, [])
        try:
            assert broker.poll() is None  # listening, on another port
            assert chosen.broker.bind != config.broker.bind and chosen.broker.bind.startswith("tcp://127.0.0.1:")
        finally:
            broker.terminate()
            broker.wait(timeout=30)


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--dropout", "0.3"], ["--secure", "--dropout", "0.2"]])
def test_sharing_a_connection_changes_nothing_the_broker_decides(tmp_path: Path, flags: list[str]) -> None:
    """The same seeded run with the clients of a worker process on one shared connection (the default)
    and with a connection each: the same rounds, cohorts, dropouts and models."""
    runs = [simulate_json("--num-clients", "10", "--num-rounds", "3", *flags, *extra,
                          "--store", str(tmp_path / f"s{i}.db"))["rounds"]
            for i, extra in enumerate([[], ["--connection-per-client"]])]
    keys = ("round", "status", "participants", "dropped", "accuracy", "loss")
    assert [[r[k] for k in keys] for r in runs[0]] == [[r[k] for k in keys] for r in runs[1]]
