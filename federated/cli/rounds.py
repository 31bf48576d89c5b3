"""`fl rounds`: inspect the rounds a broker has recorded, from its store, read-only.

    fl rounds list [--store PATH] [--json]
    fl rounds show N [--store PATH] [--json]
    fl rounds plot [--store PATH] [--output FILE.png]
    fl rounds export [--store PATH] [--format csv|jsonl] [--output FILE]

The store is opened read-only, so both commands are safe while a broker is writing to it. With ``--json``
the last (only) line of stdout is one JSON object. A missing store or round is a usage error: a message
on stderr and exit status 2.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from federated.broker.errors import RoundNotFoundError, StoreError, StoreNotFoundError
from federated.broker.store import RoundRecord, RoundStore

__all__ = ["DEFAULT_STORE", "print_rounds_table", "rounds"]

DEFAULT_STORE = Path("runs/latest/store.db")
_MISSING = "-"

_store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STORE,
    show_default=True,
    help="The broker's store database.",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout."
)


def human_bytes(n: int) -> str:
    """n bytes in binary units: '512 B', '1.5 KiB', '12.0 MiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _fmt(value: float | None, spec: str = ".4f", scale: float = 1.0) -> str:
    return _MISSING if value is None else format(value * scale, spec)


def _json_safe(value: Any) -> Any:
    # NaN and infinities are not JSON; a strict parser (jq, JavaScript) would reject the whole line.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _echo_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(_json_safe(obj), allow_nan=False))


def _open(store_path: Path) -> RoundStore:
    """Open the store read-only, turning every store failure into a usage error (exit status 2)."""
    try:
        return RoundStore(store_path, readonly=True)
    except StoreNotFoundError:
        raise click.BadParameter(
            f"no round store at {store_path} (run a broker or `fl simulate` first, or pass --store)",
            param_hint="'--store'",
        ) from None
    except StoreError as exc:
        raise click.BadParameter(str(exc), param_hint="'--store'") from None


def _status_text(status: str) -> Text:
    return Text(status, style="green" if status == "complete" else "bold red")


@click.group("rounds")
def rounds() -> None:
    """Inspect the rounds recorded in a broker's store."""


@rounds.command("list")
@_store_option
@_json_option
def list_command(store_path: Path, as_json: bool) -> None:
    """One line per round: status, accuracy, loss, cohort, traffic and timings."""
    with _open(store_path) as store:
        records = store.list_rounds()
    if as_json:
        _echo_json({"store": str(store_path), "rounds": [r.to_dict() for r in records]})
        return
    print_rounds_table(records, str(store_path))


def print_rounds_table(records: list[RoundRecord], title: str) -> None:
    """The ``fl rounds list`` table (also printed at the end of ``fl simulate``)."""
    console = Console()
    if not records:
        console.print(f"No rounds recorded yet in {title}.", markup=False, highlight=False)
        return
    # Compact enough for an 80-column terminal: rich would otherwise squeeze whole columns away.
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        padding=0,
        caption="acc: on the broker's held-out data; fed: on the workers' (federated evaluation)\n"
                "sel/drop: workers selected/dropped; up: to the broker, down: to workers",
        caption_justify="left",
    )
    table.add_column("round", justify="right", no_wrap=True, min_width=5)
    table.add_column("status", no_wrap=True, min_width=8)
    for header in ("acc", "fed", "loss", "sel", "drop", "up", "down", "time s", "ovh ms", "ε"):
        table.add_column(header, justify="right", no_wrap=True)
    for r in records:
        table.add_row(
            str(r.round),
            _status_text(r.status),
            _fmt(r.accuracy),
            _fmt(r.fed_accuracy),
            _fmt(r.loss),
            str(len(r.participants)),
            str(len(r.dropped)),
            human_bytes(r.bytes_up),
            human_bytes(r.bytes_down),
            _fmt(r.duration_s, ".2f"),
            _fmt(r.overhead_s, ".1f", 1e3),
            _fmt(r.epsilon, ".3g"),
        )
    console.print(table)


def _ids(ids: tuple[str, ...]) -> Text:
    return Text(f"({len(ids)}) " + (", ".join(ids) if ids else _MISSING))


def _detail_rows(store: RoundStore, r: RoundRecord) -> list[tuple[str, str | Text]]:
    rows: list[tuple[str, str | Text]] = [
        ("status", _status_text(r.status)),
        ("started_at", f"{r.started_at:.3f}"),
        ("duration_s", f"{r.duration_s:.3f}"),
        ("overhead_s", _fmt(r.overhead_s)),
        ("participants", _ids(r.participants)),
        ("survivors", _ids(r.survivors)),
        ("dropped", _ids(r.dropped)),
        ("suspects", _ids(r.suspects)),
        ("num_samples", str(r.num_samples)),
        ("bytes_up", f"{r.bytes_up} ({human_bytes(r.bytes_up)})"),
        ("bytes_down", f"{r.bytes_down} ({human_bytes(r.bytes_down)})"),
        ("accuracy", _fmt(r.accuracy)),
        ("loss", _fmt(r.loss)),
        ("fed_accuracy", _fmt(r.fed_accuracy)),
        ("fed_loss", _fmt(r.fed_loss)),
        ("train_accuracy", _fmt(r.train_accuracy)),
        ("train_loss", _fmt(r.train_loss)),
        ("epsilon", _fmt(r.epsilon, ".6g")),
        ("error", Text(r.error, style="red") if r.error else _MISSING),
    ]
    rows += [(f"metrics.{k}", format(v, ".6g")) for k, v in sorted(r.metrics.items())]
    if r.status == "complete":
        path = store.checkpoint_path(r.round)
        rows.append(("checkpoint", Text(str(path) + ("" if path.is_file() else "  (missing)"))))
    return rows


@rounds.command("show")
@click.argument("n", metavar="N", type=click.IntRange(min=1))
@_store_option
@_json_option
def show_command(n: int, store_path: Path, as_json: bool) -> None:
    """Everything recorded about round N, including who took part and who dropped."""
    with _open(store_path) as store:
        try:
            record = store.get_round(n)
        except RoundNotFoundError:
            last = store.list_rounds()
            known = f"rounds {last[0].round}..{last[-1].round}" if last else "no rounds"
            raise click.BadParameter(
                f"round {n} is not in {store_path} (it holds {known})", param_hint="'N'"
            ) from None
        if as_json:
            _echo_json(record.to_dict())
            return
        table = Table(
            title=f"round {record.round}  ({store_path})",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            show_header=False,
        )
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for name, value in _detail_rows(store, record):
            table.add_row(name, value)
    Console().print(table)


@rounds.command("plot")
@_store_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write (default: rounds.png beside the store).")
def plot_command(store_path: Path, output: Path | None) -> None:
    """Draw accuracy, loss, privacy spent, traffic and dropouts per round as one PNG."""
    from federated.cli.plots import plot_rounds

    with _open(store_path) as store:
        records = store.list_rounds()
    if not records:
        raise click.UsageError(f"no rounds recorded yet in {store_path}")
    path = plot_rounds(records, output or store_path.parent / "rounds.png", title=str(store_path))
    click.echo(f"Wrote {path}")


#: Columns of ``fl rounds export --format csv``: the record's fields (lists joined with ';'), then one
#: ``metrics.NAME`` column per metric any round recorded.
def _csv_rows(records: list[RoundRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    metric_names = sorted({k for r in records for k in r.metrics})
    rows = []
    for r in records:
        row = r.to_dict()
        metrics = row.pop("metrics")
        for key, value in row.items():
            if isinstance(value, list):
                row[key] = ";".join(map(str, value))
            elif value is None:
                row[key] = ""
        row.update({f"metrics.{k}": metrics.get(k, "") for k in metric_names})
        rows.append(row)
    columns = [c for c in records[0].to_dict() if c != "metrics"] + [f"metrics.{k}" for k in metric_names]
    return columns, rows


@rounds.command("export")
@_store_option
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True,
              help="csv: one row per round (lists joined with ';'); jsonl: one JSON object per round.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: stdout).")
def export_command(store_path: Path, fmt: str, output: Path | None) -> None:
    """Every recorded round as CSV or JSON lines, for a spreadsheet or a notebook."""
    with _open(store_path) as store:
        records = store.list_rounds()
    buffer = io.StringIO()
    if fmt == "jsonl":
        for r in records:
            buffer.write(json.dumps(_json_safe(r.to_dict()), allow_nan=False) + "\n")
    elif records:
        columns, rows = _csv_rows(records)
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if output is None:
        click.echo(buffer.getvalue(), nl=False)
    else:
        output.write_text(buffer.getvalue(), encoding="utf-8")
        click.echo(f"Wrote {len(records)} rounds to {output}", err=True)
