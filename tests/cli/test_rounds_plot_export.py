"""``fl rounds plot`` writes a PNG a person would read, and ``fl rounds export`` writes every round as CSV
or JSON lines (issue 16, "Plots and export")."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from federated.broker.store import RoundRecord, RoundStore
from federated.cli.rounds import rounds


def record(n: int, status: str = "complete", **kw: object) -> RoundRecord:
    base: dict[str, object] = {"round": n, "status": status, "started_at": 1_700_000_000.0 + n, "duration_s": 1.0 + n / 10,
                                   "participants": ("a", "b", "c"), "survivors": ("a", "b"), "dropped": ("c",) if n % 2 else (),
                                   "num_samples": 300, "bytes_up": 100_000 * n, "bytes_down": 200_000, "epsilon": 0.5 * n}
    if status == "complete":
        base.update(accuracy=0.5 + n / 40, loss=1.0 / n, train_loss=0.9 / n, train_accuracy=0.6 + n / 50)
    base.update(kw)
    return RoundRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    with RoundStore(path) as store:
        for n in range(1, 11):
            status = "failed" if n == 4 else "complete"
            store.record_round(record(n, status, metrics={"max_local_s": 0.1 * n}),
                               {"w": np.zeros(3, np.float32)} if status == "complete" else None)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(rounds, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_plot_writes_a_non_trivial_png(store_path: Path, tmp_path: Path) -> None:
    import matplotlib.image

    out = tmp_path / "plot.png"
    code, stdout, _ = run("plot", "--store", str(store_path), "--output", str(out))
    assert code == 0 and str(out) in stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert width >= 1000 and height >= 700
    # Not a blank canvas: many distinct colours, and a good share of the pixels not white.
    pixels = image[..., :3].reshape(-1, 3)
    assert len(np.unique((pixels * 255).astype(np.uint8), axis=0)) > 50
    assert (pixels.min(axis=1) < 0.9).mean() > 0.05


def test_plot_defaults_beside_the_store_and_refuses_an_empty_one(store_path: Path, tmp_path: Path) -> None:
    code, _, _ = run("plot", "--store", str(store_path))
    assert code == 0 and (store_path.parent / "rounds.png").is_file()
    empty = tmp_path / "empty" / "store.db"
    with RoundStore(empty):
        pass
    code, _, stderr = run("plot", "--store", str(empty))
    assert code == 2 and "no rounds" in stderr


def test_export_csv_has_a_row_per_round_and_every_field(store_path: Path) -> None:
    code, stdout, _ = run("export", "--store", str(store_path))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [int(r["round"]) for r in rows] == list(range(1, 11))
    assert rows[3]["status"] == "failed" and rows[3]["accuracy"] == ""
    assert rows[0]["participants"] == "a;b;c" and rows[0]["dropped"] == "c"
    assert float(rows[9]["epsilon"]) == 5.0 and float(rows[9]["metrics.max_local_s"]) == pytest.approx(1.0)


def test_export_jsonl_round_trips_the_records(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "rounds.jsonl"
    code, _, stderr = run("export", "--store", str(store_path), "--format", "jsonl", "--output", str(out))
    assert code == 0 and "Wrote 10 rounds" in stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 10
    with RoundStore(store_path, readonly=True) as store:
        assert [RoundRecord(**json.loads(line)) for line in lines] == store.list_rounds()
