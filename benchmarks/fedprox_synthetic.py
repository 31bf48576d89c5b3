"""FedAvg against FedProx on the LEAF/FedProx benchmark Synthetic(1, 1), 30 devices, with stragglers.

The setting of Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), section 5 and
their code (``flearn/trainers/fedavg.py``, ``fedprox.py``): ``--dataset leaf-synthetic:1,1`` (30 devices,
power-law sizes), each device one worker (``--partition natural``), 10 devices a round chosen uniformly,
the multinomial logistic model, 20 local epochs of plain SGD (batch 10, learning rate 0.01), weighted
averaging, 200 rounds. Systems heterogeneity: ``--rate`` (0.9 by default, their hardest case) of each
round's cohort are stragglers. Three cases, real ``fl simulate`` runs (broker and worker processes):

- ``fedavg``: their FedAvg, which drops the stragglers: ``--dropout RATE`` (``--min-clients 1``);
- ``fedprox_mu0``: the stragglers do 1..19 epochs and are aggregated (``--stragglers RATE``), no
  proximal term: partial work alone;
- ``fedprox``: the same with the proximal term ``--proximal-mu 1`` (their mu for Synthetic(1, 1)).

For every round, from the round's checkpoint (round 0 is the initial model): the test accuracy on all
devices' held-out 10% (what the broker evaluates) and the training loss, the mean cross-entropy of the
global model over all devices' training samples (their ``train_error_and_loss``: f(w), the objective).
One JSON line per case ``{"benchmark": "fedprox_synthetic", "case", "final_accuracy", "final_train_loss",
"accuracy", "train_loss", "participants", "wall_s", "flags"}`` (lists per round), then with ``--plot PNG``
both curves of every case on one figure, and with ``--table`` a Markdown table (every ``--every`` rounds)
on stderr; ``--results JSONL`` draws them from an earlier run's lines instead of running. Usage:

    uv run python benchmarks/fedprox_synthetic.py [--rounds 200] [--rate 0.9] [--plot PNG] [--table]

About 20 minutes on 2 cores with seed 0 (whose largest device holds 18,168 of the 36,822 samples).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flcli import flag_list, last_json, simulate_command

ROOT = Path(__file__).resolve().parents[1]
DATASET = "leaf-synthetic:1,1"
COMMON = {"--dataset": DATASET, "--partition": "natural", "--num-clients": "30", "--clients-per-round": "10",
          "--min-clients": "1", "--model": "logistic", "--local-epochs": "20", "--batch-size": "10",
          "--learning-rate": "0.01", "--optimizer": "sgd", "--momentum": "0", "--seed": "0"}


def cases(rate: float) -> dict[str, dict[str, str]]:
    """The three runs' own flags."""
    return {"fedavg": {"--dropout": str(rate), "--proximal-mu": "0"},
            "fedprox_mu0": {"--stragglers": str(rate), "--proximal-mu": "0"},
            "fedprox": {"--stragglers": str(rate), "--proximal-mu": "1"}}


def simulate(store: Path, flags: dict[str, str]) -> dict[str, Any]:
    """One ``fl simulate --json`` run; exits with its stderr if it fails."""
    args = simulate_command(store, *flag_list(flags))
    out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=7200, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"fl simulate failed ({out.returncode}): {' '.join(args)}\n{out.stderr[-3000:]}")
    return last_json(out.stdout)


def curves(store: Path, seed: int) -> tuple[list[float], list[float]]:
    """Test accuracy and training loss of every checkpoint of ``store`` (round 0 = the initial model)."""
    from federated.broker.store import RoundStore
    from federated.data import load_dataset
    from federated.models import build_model
    from federated.worker.trainer import LocalTrainer

    train, test = load_dataset(DATASET, seed=seed)
    trainer = LocalTrainer(build_model("logistic", input_shape=train.input_shape, num_classes=train.num_classes))
    accuracy, train_loss = [], []
    with RoundStore(store, readonly=True) as rounds:
        last = rounds.last_complete_round() or 0
        for n in range(last + 1):
            weights = rounds.load_checkpoint(n)
            accuracy.append(trainer.evaluate(weights, test.x, test.y)[1])
            train_loss.append(trainer.evaluate(weights, train.x, train.y)[0])
    return accuracy, train_loss


def plot(results: dict[str, dict[str, Any]], output: Path, rate: float) -> None:
    """Test accuracy and training loss of every case against the round, on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"fedavg": "FedAvg (drops stragglers)", "fedprox_mu0": "FedProx, mu = 0 (partial work)",
              "fedprox": "FedProx, mu = 1"}
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for case, result in results.items():
        rounds = range(len(result["accuracy"]))
        acc_ax.plot(rounds, result["accuracy"], label=labels[case], linewidth=1.4)
        loss_ax.plot(rounds, result["train_loss"], label=labels[case], linewidth=1.4)
    acc_ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
    loss_ax.set(xlabel="round", ylabel="training loss (all devices)", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right")
    fig.suptitle(f"Synthetic(1, 1), 30 devices, 10 a round, E = 20, {rate:.0%} stragglers")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def table(results: dict[str, dict[str, Any]], every: int) -> str:
    """Markdown: test accuracy / training loss of each case every ``every`` rounds (and the last)."""
    names = list(results)
    last = len(next(iter(results.values()))["accuracy"]) - 1
    rows = sorted({*range(0, last + 1, every), last})
    lines = ["| round | " + " | ".join(f"{n} acc / loss" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{results[n]['accuracy'][r]:.3f} / {results[n]['train_loss'][r]:.3f}" for n in names]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.9, help="Fraction of each cohort that straggles.")
    parser.add_argument("--plot", type=Path, help="Write both curves of every case to this PNG.")
    parser.add_argument("--table", action="store_true", help="A Markdown table on stderr.")
    parser.add_argument("--every", type=int, default=20, help="Table rows every this many rounds.")
    parser.add_argument("--results", type=Path, help="JSON lines of an earlier run: plot and tabulate them.")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    if args.results:
        for text in args.results.read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            results[line["case"]] = line
    with tempfile.TemporaryDirectory(prefix="fedprox-") as tmp:
        for case, own in cases(args.rate).items() if not args.results else ():
            flags = {**COMMON, "--num-rounds": str(args.rounds), **own}
            store = Path(tmp) / case / "store.db"
            started = time.perf_counter()
            result = simulate(store, flags)
            accuracy, train_loss = curves(store, int(COMMON["--seed"]))
            line = {"benchmark": "fedprox_synthetic", "case": case, "final_accuracy": accuracy[-1],
                    "final_train_loss": train_loss[-1], "rounds_completed": result["num_rounds"],
                    "failed_rounds": result["failed_rounds"], "accuracy": accuracy, "train_loss": train_loss,
                    "participants": [r["participants"] - r["dropped"] for r in result["rounds"]],
                    "wall_s": round(time.perf_counter() - started, 1), "flags": flags}
            results[case] = line
            print(json.dumps(line), flush=True)
    if args.plot:
        plot(results, args.plot, args.rate)
    if args.table:
        print(table(results, args.every), file=sys.stderr)


if __name__ == "__main__":
    main()
