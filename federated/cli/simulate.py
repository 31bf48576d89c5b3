"""``fl simulate``: the real broker and real worker processes, over TCP on 127.0.0.1, in one command.

The broker runs as ``fl broker --events`` in its own process and reports each round as a JSON line; the
clients are spread over a few worker processes (``--processes``), each client with its own identity,
session and data shard. Nothing here takes a shortcut that a LAN deployment would not, with one choice
made for memory: a process's clients share its TCP connection to the broker, each under a tag of its own
(:mod:`federated.protocol.multiplex`), so the broker still sees one peer per client and treats each as
it treats a device, while a client that is never selected costs almost nothing. With
``--connection-per-client`` each client has a socket and a TCP connection of its own instead, as separate
devices would (about 50 KB each in the broker and in the worker process, selected or not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import selectors
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import yaml

from federated.cli.exit_codes import CONFIG_ERROR, OK, TRAINING_FAILED
from federated.cli.options import build_config, emit_json, run_options, setup_logging
from federated.config import BrokerConfig, FederatedConfig
from federated.worker.simulation import DROPOUT_STAGES

__all__ = ["simulate_command"]


#: Application heartbeats a simulated federation exchanges per second, each way, at most. Every virtual
#: client is a real connection that hears from the broker and answers every heartbeat interval, so with
#: the default 1 s interval 10,000 clients cost 20,000 Python-level messages a second on two cores, and
#: the broker and the workers' I/O threads fell behind and declared each other gone. Above 1,000 clients
#: ``fl simulate`` stretches the interval (and the timeout, five intervals) in proportion, unless the
#: configuration sets them.
HEARTBEATS_PER_S = 1000.0


def liveness_for(num_clients: int, interval_s: float, timeout_s: float) -> tuple[float, float]:
    """The heartbeat interval and timeout (seconds) for a simulation of ``num_clients`` clients: the
    given ones, stretched so the federation sends at most :data:`HEARTBEATS_PER_S` heartbeats a second."""
    stretch = max(1.0, num_clients / (HEARTBEATS_PER_S * interval_s))
    return interval_s * stretch, timeout_s * stretch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_store() -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return str(Path("runs") / f"sim-{stamp}" / "store.db")


def _point_latest(store: Path) -> None:
    """Make ``runs/latest`` point at this run's directory, so ``fl rounds list`` finds it by default."""
    latest = Path("runs") / "latest"
    try:
        if latest.is_symlink() or not latest.exists():
            tmp = latest.with_name(f".latest-{os.getpid()}")
            tmp.symlink_to(store.parent.resolve(), target_is_directory=True)
            os.replace(tmp, latest)
    except OSError:
        pass  # a convenience only; the store path is printed anyway


def _spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", *args], env=env, **kwargs)


def _round_summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {"round": rec["round"], "status": rec["status"], "accuracy": rec["accuracy"], "loss": rec["loss"],
            "participants": len(rec["participants"]), "dropped": len(rec["dropped"]),
            "bytes_up": rec["bytes_up"], "bytes_down": rec["bytes_down"], "duration_s": rec["duration_s"],
            "overhead_s": rec["overhead_s"], "epsilon": rec["epsilon"], "suspects": rec.get("suspects", []),
            "fed_accuracy": rec.get("fed_accuracy"), "fed_loss": rec.get("fed_loss")}


class _Progress:
    """A rich progress bar on stderr with the latest round accuracy (silent if stderr is not a tty)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]rounds"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("rounds", total=total, status="waiting for workers")
            self.bar.start()

    def round(self, rec: dict[str, Any]) -> None:
        if self.bar is None:
            return
        if rec["status"] == "complete":
            acc = rec["accuracy"]
            status = f"round {rec['round']}: accuracy {acc:.3f}" if acc is not None else f"round {rec['round']}"
            self.bar.update(self.task, advance=1, status=status)
        else:
            self.bar.update(self.task, status=f"round {rec['round']} FAILED: {rec['error']}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_summary(result: dict[str, Any]) -> None:
    """The ``fl rounds list`` table of this run's store, then one line of totals."""
    from federated.broker.store import RoundStore
    from federated.cli.rounds import print_rounds_table

    with RoundStore(result["store"], readonly=True) as store:
        print_rounds_table(store.list_rounds(), f"fl simulate: {result['store']}")
    acc, loss = result["final_accuracy"], result["final_loss"]
    fed = result.get("final_fed_accuracy")
    scored = "" if fed is None else f"; on the workers' held-out data (federated): accuracy {fed:.4f}"
    click.echo(f"final accuracy {'-' if acc is None else f'{acc:.4f}'}, loss {'-' if loss is None else f'{loss:.4f}'}"
               f"{scored}, {result['num_rounds']} rounds in {result['wall_s']:.2f} s ({result['reason']})")
    privacy = result.get("privacy")
    if privacy:
        how = "calibrated to the budget" if privacy["calibrated"] else "as set"
        click.echo(f"differential privacy ({privacy['mode']}): epsilon {privacy['epsilon']:.4g} at delta "
                   f"{privacy['delta']:g} ({privacy['accountant']} accountant); noise multiplier "
                   f"{privacy['noise_multiplier']:.4g} ({how})")
        if privacy.get("guarantee"):
            click.echo(f"  what it protects: {privacy['guarantee']}")


def speed_factors(num_clients: int, seed: int) -> dict[str, float]:
    """Simulated device speeds for ``--heterogeneity``: a fifth of the clients (at least one) compute ten
    times slower, the others 1-2 times; drawn from the seed, so every process agrees."""
    rng = random.Random(f"speeds/{seed}")
    slow = set(rng.sample(range(num_clients), max(1, num_clients // 5)))
    return {f"client_{i}": 10.0 if i in slow else 1.0 + rng.random() for i in range(num_clients)}


def attacker_shards(num_clients: int, fraction: float, seed: int) -> list[int]:
    """Which client indices are attackers: ``round(fraction * num_clients)`` of them, drawn from the seed."""
    count = round(fraction * num_clients)
    return sorted(random.Random(f"attackers/{seed}").sample(range(num_clients), count)) if count else []


def _check_data(config: FederatedConfig) -> None:
    """Fail at once (exit 2, the reason on stderr) if the data set cannot be loaded or split among the
    clients the way every worker process will split it, instead of starting processes that cannot run."""
    from federated.data import DataError, load_dataset, partition_dataset

    try:
        train, _ = load_dataset(config.dataset, seed=config.seed)
        partition_dataset(train, config.num_clients, config.partition, seed=config.seed)
    except DataError as exc:
        click.echo(f"Error: data: {exc}", err=True)
        sys.exit(CONFIG_ERROR)


#: Ports tried before giving up: the one chosen is free when chosen, not reserved, so another program may
#: take it before the broker binds it (a busy machine makes that more likely).
BIND_ATTEMPTS = 5


def _start_broker(config: FederatedConfig, vflag: list[str]) -> tuple[FederatedConfig, subprocess.Popen[bytes], bytes]:
    """Start the broker process and wait until it listens, on another free port if someone took the one in
    ``config`` first. Returns the config it runs with, the process, and what of its stdout was read past
    the "listening" event. A broker that fails otherwise is returned as it is (exited, its error on stderr)."""
    run_dir = Path(config.broker.store).parent
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    for attempt in range(BIND_ATTEMPTS):
        if attempt:
            config = dataclasses.replace(config, broker=dataclasses.replace(
                config.broker, bind=f"tcp://127.0.0.1:{_free_port()}"))
        config_path.write_text(yaml.safe_dump(config.to_dict(resolved=True), sort_keys=False), encoding="utf-8")
        broker = _spawn(["federated.cli.main", "broker", "--config", str(config_path), "--events", *vflag],
                        stdout=subprocess.PIPE)
        assert broker.stdout is not None
        buffer = b""
        while chunk := os.read(broker.stdout.fileno(), 65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            kinds = [json.loads(line).get("event") for line in lines]
            if "listening" in kinds:
                rest = lines[kinds.index("listening") + 1:]
                return config, broker, b"".join(line + b"\n" for line in rest) + buffer
            if "bind_failed" in kinds:
                break
        else:
            return config, broker, buffer  # it exited before listening: the caller reports it
        broker.wait(timeout=30)
    return config, broker, b""


def run_simulation(config: FederatedConfig, *, processes: int, dropout: float, dropout_stage: str,
                   stragglers: float = 0.0, attack: str | None = None, attackers: list[int] | None = None, heterogeneity: bool = False,
                   connection_per_client: bool = False, verbose: int,
                   progress: bool) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Start the broker and worker processes, follow the rounds, return (exit code, result, rounds).
    A process's clients share one connection unless ``connection_per_client``."""
    started = time.perf_counter()
    vflag = ["-v"] * verbose
    config, broker, early = _start_broker(config, vflag)
    address = config.broker.bind.removeprefix("tcp://")
    bad = set(attackers or [])
    honest = [i for i in range(config.num_clients) if i not in bad]
    shards = [honest[p::processes] for p in range(processes)]
    workers = [_spawn(["federated.cli.simworker", "--server-address", address, "--dataset", config.dataset,
                       "--partition", config.partition, "--num-shards", str(config.num_clients),
                       "--shards", ",".join(map(str, s)), "--seed", str(config.seed), "--model", config.model,
                       "--dropout", str(dropout), "--dropout-stage", dropout_stage, "--stragglers", str(stragglers),
                       *(["--heterogeneity"] if heterogeneity else []),
                       *(["--connection-per-client"] if connection_per_client else []), *vflag],
                      stdout=subprocess.DEVNULL)
               for s in shards if s]
    if bad:
        workers.append(_spawn(["federated.cli.simattacker", "--server-address", address, "--dataset", config.dataset,
                               "--partition", config.partition, "--num-shards", str(config.num_clients),
                               "--shards", ",".join(map(str, sorted(bad))), "--seed", str(config.seed),
                               "--model", config.model, "--attack", str(attack), *vflag], stdout=subprocess.DEVNULL))
    bar = _Progress(config.num_rounds, progress)
    rounds: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    silence_limit = config.broker.round_timeout_s + config.broker.start_timeout_s + 30.0
    try:
        assert broker.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(broker.stdout, selectors.EVENT_READ)
        last_event = time.monotonic()
        workers_gone = 0.0
        buffer = early
        while True:
            if sel.select(timeout=0.5):
                chunk = os.read(broker.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    last_event = time.monotonic()
                    if event.get("event") == "round":
                        rounds.append(_round_summary(event))
                        bar.round(event)
                    elif event.get("event") == "evaluation":  # the workers' scores of an earlier round's model
                        for summary in rounds:
                            if summary["round"] == event["round"]:
                                summary.update(fed_accuracy=event.get("fed_accuracy"), fed_loss=event.get("fed_loss"))
                    elif event.get("event") == "done":
                        done = event
            if all(w.poll() is not None for w in workers) and not done:
                # Workers exit on the broker's BYE, which it sends before its final "done" event: give
                # the broker time to finish writing (a dead broker closes its stdout, which ends the loop).
                workers_gone = workers_gone or time.monotonic()
                if time.monotonic() - workers_gone > 30.0:
                    click.echo("Error: every worker process exited before training finished", err=True)
                    break
            if time.monotonic() - last_event > silence_limit:
                click.echo(f"Error: no progress for {silence_limit:.0f} s; stopping", err=True)
                break
    finally:
        bar.close()
        if broker.poll() is None and not done:
            broker.terminate()
        code = broker.wait(timeout=30)
        deadline = time.monotonic() + 10.0
        for w in workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    wall = time.perf_counter() - started
    complete = [r for r in rounds if r["status"] == "complete"]
    result = {
        "num_rounds": len(complete),
        "failed_rounds": len(rounds) - len(complete),
        "final_accuracy": complete[-1]["accuracy"] if complete else None,
        "final_loss": complete[-1]["loss"] if complete else None,
        "final_fed_accuracy": complete[-1]["fed_accuracy"] if complete else None,
        "final_fed_loss": complete[-1]["fed_loss"] if complete else None,
        "wall_s": wall,
        "rounds": rounds,
        "store": config.broker.store,
        "reason": done.get("reason", "broker exited without finishing"),
        "attackers": [f"client_{i}" for i in sorted(bad)],
        "privacy": done.get("privacy"),
    }
    if not done:
        code = code or TRAINING_FAILED
    return code, result, rounds


@click.command("simulate")
@click.option("--dropout", type=click.FloatRange(0.0, 0.95), default=0.0, show_default=True,
              help="Fraction of each round's cohort that vanishes mid-round.")
@click.option("--dropout-stage", type=click.Choice(list(DROPOUT_STAGES)), default="task",
              show_default=True, help="When dropouts vanish: on the TASK, or at a secure round's later stage.")
@click.option("--stragglers", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Fraction of each round's cohort that trains fewer local epochs (uniform in 1..E-1) and still "
                   "answers: FedProx's stragglers (its FedAvg drops them: --dropout of the same fraction).")
@click.option("--byzantine-fraction", type=click.FloatRange(0.0, 0.49), default=0.0, show_default=True,
              help="Fraction of the clients that are attackers (run in their own process).")
@click.option("--attack", type=click.Choice(["sign_flip", "gaussian", "label_flip", "alie", "ipm", "minmax"]),
              help="What the attackers do (needs --byzantine-fraction).")
@click.option("--heterogeneity", is_flag=True, help="Give simulated devices different speeds (a fifth ten "
              "times slower) to compare selection strategies.")
@click.option("--processes", type=click.IntRange(1, 256), help="Worker processes to pack clients into "
              "(default: one per CPU core).")
@click.option("--connection-per-client", is_flag=True, help="Give every client a TCP connection of its own, as "
              "separate devices have, instead of sharing its process's (each costs about 50 KB in the broker "
              "and in its worker process, selected or not).")
@run_options
def simulate_command(dropout: float, dropout_stage: str, stragglers: float, byzantine_fraction: float,
                     attack: str | None, heterogeneity: bool, processes: int | None, connection_per_client: bool,
                     as_json: bool, verbose: int, **params: Any) -> None:
    """Simulate a federation on this machine: real broker and worker processes over loopback TCP."""
    setup_logging(verbose)
    store = params.get("store") or _default_store()
    if (byzantine_fraction > 0) != (attack is not None):
        raise click.UsageError("--attack and --byzantine-fraction go together")
    extra: dict[str, Any] = {"broker.bind": f"tcp://127.0.0.1:{_free_port()}", "broker.store": store}
    if byzantine_fraction > 0:
        # The robust rule is told the true fraction, as in the papers' experiments.
        extra["aggregation.byzantine_fraction"] = byzantine_fraction
    config = build_config(params, extra)
    defaults = BrokerConfig()
    if (config.broker.heartbeat_interval_s, config.broker.heartbeat_timeout_s) == (
            defaults.heartbeat_interval_s, defaults.heartbeat_timeout_s):
        interval, timeout = liveness_for(config.num_clients, defaults.heartbeat_interval_s,
                                         defaults.heartbeat_timeout_s)
        config = build_config(params, {**extra, "broker.heartbeat_interval_s": interval,
                                       "broker.heartbeat_timeout_s": timeout})
    if Path(store).exists():
        raise click.UsageError(f"--store {store} already exists; give a new path (a simulation starts from scratch; flbroker --store resumes a run)")
    procs = min(config.num_clients, processes or os.cpu_count() or 1)
    if dropout > 0 and stragglers > 0:
        raise click.UsageError("--dropout and --stragglers pick the same cohort positions; give one of them")
    if dropout_stage != "task" and not config.secure.enabled:
        raise click.UsageError("--dropout-stage other than 'task' needs --secure (only secure rounds have stages)")
    _check_data(config)
    attackers = attacker_shards(config.num_clients, byzantine_fraction, config.seed)
    code, result, _rounds = run_simulation(config, processes=procs, dropout=dropout, dropout_stage=dropout_stage,
                                           stragglers=stragglers, attack=attack, attackers=attackers, heterogeneity=heterogeneity,
                                           connection_per_client=connection_per_client, verbose=verbose,
                                           progress=sys.stderr.isatty() and not as_json)
    _point_latest(Path(store))
    if code == CONFIG_ERROR:
        sys.exit(code)
    if as_json:
        emit_json(result)
    elif Path(store).exists():
        _print_summary(result)
    # Stopping at the privacy budget is the run ending as configured, not a failure.
    finished = result["num_rounds"] == config.num_rounds or str(result["reason"]).startswith("privacy budget")
    sys.exit(code if code != OK or finished else TRAINING_FAILED)
