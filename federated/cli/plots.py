"""The picture of a run: ``fl rounds plot`` draws one PNG a person can read from a store's rounds.

Four panels, round number on every x axis:

- accuracy: the broker's held-out evaluation, the workers' weighted training accuracy, and failed rounds
  marked on the axis (a failed round leaves the model unchanged);
- loss: the same two sources;
- privacy: epsilon spent up to each round (only when the run had differential privacy);
- traffic: bytes to and from the broker per round (MiB), with the workers that dropped out on a second
  axis.

matplotlib is imported here only, with its non-interactive Agg backend, so nothing needs a screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from federated.broker.store import RoundRecord

__all__ = ["plot_rounds"]

MIB = 1024.0 * 1024.0


def plot_rounds(records: Sequence[RoundRecord], output: Path, *, title: str = "") -> Path:
    """Draw ``records`` to ``output`` (PNG, 150 dpi) and return the path. Raises ``ValueError`` if there
    is no round to draw."""
    if not records:
        raise ValueError("no rounds to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r.round for r in records]
    complete = [r for r in records if r.status == "complete"]
    failed = [r.round for r in records if r.status != "complete"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    (acc_ax, loss_ax), (eps_ax, bytes_ax) = axes

    def series(values: Sequence[tuple[int, float | None]]) -> tuple[list[int], list[float]]:
        kept = [(n, v) for n, v in values if v is not None]
        return [n for n, _ in kept], [v for _, v in kept]

    for ax, name, held_out, federated, training in (
            (acc_ax, "accuracy", [(r.round, r.accuracy) for r in complete], [(r.round, r.fed_accuracy) for r in complete],
             [(r.round, r.train_accuracy) for r in complete]),
            (loss_ax, "loss", [(r.round, r.loss) for r in complete], [(r.round, r.fed_loss) for r in complete],
             [(r.round, r.train_loss) for r in complete])):
        x, y = series(held_out)
        if x:
            ax.plot(x, y, "o-", color="tab:blue", markersize=3, label="broker's held-out data (central)")
        x, y = series(federated)
        if x:
            ax.plot(x, y, "^-", color="tab:green", markersize=3, label="workers' held-out data (federated)")
        x, y = series(training)
        if x:
            ax.plot(x, y, "s--", color="tab:orange", markersize=3, label="workers' training (weighted mean)")
        if failed:
            ax.plot(failed, [0.0] * len(failed), "x", color="tab:red", markersize=8, clip_on=False,
                    label="failed round (model unchanged)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    acc_ax.set_ylim(0.0, 1.0)
    acc_ax.set_title("accuracy")
    loss_ax.set_title("loss")

    x, y = series([(r.round, r.epsilon) for r in records])
    if x:
        eps_ax.plot(x, y, "o-", color="tab:purple", markersize=3)
        eps_ax.set_ylabel("epsilon spent")
        eps_ax.set_title("privacy spent (charged when a round starts)")
    else:
        eps_ax.text(0.5, 0.5, "no differential privacy in this run", ha="center", va="center",
                    transform=eps_ax.transAxes, color="gray")
        eps_ax.set_title("privacy")
    eps_ax.grid(alpha=0.3)
    eps_ax.set_xlabel("round")

    up = [r.bytes_up / MIB for r in records]
    down = [r.bytes_down / MIB for r in records]
    width = 0.4
    bytes_ax.bar([n - width / 2 for n in rounds], up, width, color="tab:green", label="to the broker")
    bytes_ax.bar([n + width / 2 for n in rounds], down, width, color="tab:gray", label="to workers")
    bytes_ax.set_ylabel("MiB per round")
    bytes_ax.set_xlabel("round")
    bytes_ax.set_title("traffic and dropouts")
    bytes_ax.grid(alpha=0.3, axis="y")
    dropped_ax = bytes_ax.twinx()
    dropped_ax.plot(rounds, [len(r.dropped) for r in records], "v-", color="tab:red", markersize=4,
                    label="workers dropped")
    dropped_ax.set_ylabel("workers dropped")
    dropped_ax.set_ylim(0, max(1, max(len(r.dropped) for r in records)) * 1.25)
    dropped_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (acc_ax, loss_ax, eps_ax, bytes_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = bytes_ax.get_legend_handles_labels()[0] + dropped_ax.get_legend_handles_labels()[0]
    labels = bytes_ax.get_legend_handles_labels()[1] + dropped_ax.get_legend_handles_labels()[1]
    bytes_ax.set_ylim(0, max(max(up), max(down), 1e-9) * 1.35)  # headroom for the legend
    bytes_ax.legend(handles, labels, fontsize=8, loc="upper right", ncol=3)

    fig.suptitle(title or f"{len(complete)} complete rounds of {len(records)}")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    plt.close(fig)
    return output
