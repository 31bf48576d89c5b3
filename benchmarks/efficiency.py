"""Communication and round efficiency on digits, one JSON line per case (real ``fl simulate`` runs):

- ``codec``: final accuracy and uplink bytes (counted at the socket) for each compression spec, 10
  clients, 20 rounds, against the uncompressed run;
- ``secure_codec``: the same under ``--secure --secure-clip 10`` for the secure-compatible specs, with
  the reduction against both uncompressed runs and the masked input's own size (its coordinates times
  its word size, against the float32 update); ``secure_codec_wide``: the total-uplink reduction of the
  last secure spec on a 1.06M-parameter model (2 rounds, bytes only), where key exchange is negligible;
- ``selection``: mean round time and final accuracy per selection strategy with ``--heterogeneity``
  (20 clients, 10 per round, 50 rounds), and the fewest times any worker was selected;
- ``server_optimizer``: the first round reaching 95% with Dirichlet(0.3) for each server optimizer.

    uv run python benchmarks/efficiency.py [--parts codec,selection,server_optimizer]
"""

from __future__ import annotations

import argparse
import collections
import json
import sqlite3
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from flcli import last_json, simulate_command

CODECS = ("none", "q8", "q4", "q2", "topk:0.0625", "randk:0.125", "randk:0.25+ef", "topk:0.025+q8",
          "topk:0.007+q8")
SECURE_CODECS = ("none", "q8", "randk:0.25+ef", "randk:0.25+ef+q8")
#: Parameters of the digits MLP (64 -> 64 -> 10) and the coordinates a secure input adds (loss, accuracy,
#: weight), to size the masked input.
DIGITS_PARAMS = 4810
EXTRA = 3


def simulate(tmp: Path, name: str, *flags: str) -> dict[str, Any]:
    store = tmp / name / "store.db"
    out = subprocess.run(simulate_command(store, *flags), capture_output=True, text=True, check=True, timeout=1800,
                         cwd=Path(__file__).resolve().parents[1])
    result = last_json(out.stdout)
    result["store_path"] = store
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="codec,secure_codec,selection,server_optimizer")
    parts = parser.parse_args().parts.split(",")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        plain_base = None
        if "codec" in parts or "secure_codec" in parts:
            for spec in CODECS if "codec" in parts else ("none",):
                r = simulate(tmp, f"c-{spec}", "--compression", spec)
                up = sum(x["bytes_up"] for x in r["rounds"])
                plain_base = plain_base or up
                print(json.dumps({"case": "codec", "compression": spec, "final_accuracy": r["final_accuracy"],
                                  "bytes_up": up, "uplink_reduction": round(plain_base / up, 2)}), flush=True)
        if "secure_codec" in parts:
            from federated.compression import kept_count, secure_plan

            secure_base = None
            for spec in SECURE_CODECS:
                r = simulate(tmp, f"sc-{spec}", "--secure", "--secure-clip", "10", "--compression", spec)
                up = sum(x["bytes_up"] for x in r["rounds"])
                secure_base = secure_base or up
                plan = secure_plan(spec)
                kept = DIGITS_PARAMS if plan.fraction is None else kept_count(DIGITS_PARAMS, plan.fraction)
                masked_bytes = (kept + EXTRA) * plan.ring_bits // 8
                print(json.dumps({"case": "secure_codec", "compression": spec,
                                  "final_accuracy": r["final_accuracy"], "bytes_up": up,
                                  "uplink_reduction_vs_plain": round(plain_base / up, 2),
                                  "uplink_reduction_vs_secure": round(secure_base / up, 2),
                                  "masked_input_bytes": masked_bytes,
                                  "masked_input_reduction": round(4 * DIGITS_PARAMS / masked_bytes, 2)}), flush=True)
            wide = ("--model", "benchmarks.models:wide_mlp", "--num-rounds", "2", "--local-epochs", "1")
            plain = simulate(tmp, "w-plain", *wide)
            small = simulate(tmp, "w-secure", *wide, "--secure", "--secure-clip", "10", "--compression",
                             SECURE_CODECS[-1])
            print(json.dumps({"case": "secure_codec_wide", "compression": SECURE_CODECS[-1], "params": 1_060_106,
                              "uplink_reduction_vs_plain": round(
                                  sum(x["bytes_up"] for x in plain["rounds"])
                                  / sum(x["bytes_up"] for x in small["rounds"]), 2)}), flush=True)
        if "selection" in parts:
            for strategy in ("random", "performance", "adaptive"):
                r = simulate(tmp, f"s-{strategy}", "--num-clients", "20", "--clients-per-round", "10",
                             "--num-rounds", "50", "--heterogeneity", "--selection", strategy)
                counts: collections.Counter[str] = collections.Counter()
                with sqlite3.connect(r["store_path"]) as db:
                    for (participants,) in db.execute("SELECT participants FROM rounds"):
                        counts.update(json.loads(participants))
                print(json.dumps({"case": "selection", "selection": strategy,
                                  "mean_round_s": round(statistics.mean(x["duration_s"] for x in r["rounds"]), 3),
                                  "final_accuracy": r["final_accuracy"], "workers_selected": len(counts),
                                  "min_selections": min(counts.values())}), flush=True)
        if "server_optimizer" in parts:
            for name in ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"):
                r = simulate(tmp, f"o-{name}", "--partition", "dirichlet:0.3", "--num-rounds", "30",
                             "--server-optimizer", name)
                acc = [x["accuracy"] for x in r["rounds"]]
                first = next((i + 1 for i, a in enumerate(acc) if a >= 0.95), None)
                print(json.dumps({"case": "server_optimizer", "server_optimizer": name, "rounds_to_95": first,
                                  "final_accuracy": acc[-1]}), flush=True)


if __name__ == "__main__":
    main()
