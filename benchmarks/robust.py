"""Byzantine robustness on digits: accuracy for each attack x rule, and detection rates.

20 workers, Dirichlet(0.5) partition, 20% attackers (4 of 20, in their own colluding process), real
``fl simulate`` runs. One JSON line per case:
``{"case": "accuracy", "attack", "rule", "secure", "final_accuracy", "detected", "false_positive"}``;
``detected`` is the share of attackers among the suspects summed over rounds (attackers suspected /
attackers selected), ``false_positive`` the same for honest workers. Aggregation speed per rule is
``benchmarks/aggregation_speed.py``. Usage:

    uv run python benchmarks/robust.py [--rounds 20] [--attacks sign_flip,gaussian] [--rules mean,median]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from flcli import last_json, simulate_command

ATTACKS = ("none", "sign_flip", "gaussian", "label_flip", "alie", "ipm", "minmax")
RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
         "centered_clipping", "norm_bounding")


def run(tmp: Path, attack: str, rule: str, rounds: int, secure_buckets: int | None = None,
        secure_clip: float | None = None) -> dict[str, Any]:
    name = f"{attack}-{rule}-{secure_buckets}"
    args = simulate_command(tmp / name / "store.db", "--num-clients", "20", "--num-rounds", str(rounds),
                            "--partition", "dirichlet:0.5", "--seed", "0", "--aggregation", rule)
    if attack != "none":
        args += ["--byzantine-fraction", "0.2", "--attack", attack]
    if secure_buckets:
        args += ["--secure", "--buckets", str(secure_buckets)]
        if secure_clip is not None:
            args += ["--secure-clip", str(secure_clip)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=1200, check=False,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        return {"case": "accuracy", "attack": attack, "rule": rule, "secure": bool(secure_buckets),
                "error": out.stderr.strip().splitlines()[-1:] }
    result = last_json(out.stdout)
    attackers = set(result.get("attackers", []))
    tp = fp = selected_bad = selected_good = 0
    for r in result["rounds"]:
        suspects = set(r.get("suspects", []))
        tp += len(suspects & attackers)
        fp += len(suspects - attackers)
        selected_bad += len(attackers)
        selected_good += r["participants"] - len(attackers)
    return {"case": "accuracy", "attack": attack, "rule": rule, "secure": bool(secure_buckets),
            "bucket_size": secure_buckets, "secure_clip": secure_clip if secure_buckets else None,
            "final_accuracy": result["final_accuracy"],
            "failed_rounds": result["failed_rounds"],
            "detected": round(tp / selected_bad, 3) if attackers and not secure_buckets else None,
            "false_positive": round(fp / selected_good, 3) if selected_good and not secure_buckets else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--secure-rules", default="median,centered_clipping",
                        help="rules to run in the bucketed secure mode")
    parser.add_argument("--bucket-size", type=int, default=3)
    parser.add_argument("--secure-clip", type=float, default=3.0,
                        help="L2 clip of each update in the bucketed secure mode (bounds an attacker's weight)")
    parser.add_argument("--skip-speed", action="store_true", help="skip the aggregation-speed run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for attack in args.attacks.split(","):
            for rule in filter(None, args.rules.split(",")):
                print(json.dumps(run(tmp, attack, rule, args.rounds)), flush=True)
            for rule in filter(None, args.secure_rules.split(",")):
                print(json.dumps(run(tmp, attack, rule, args.rounds, args.bucket_size, args.secure_clip)), flush=True)
    if args.skip_speed:
        return
    speed = subprocess.run([sys.executable, str(Path(__file__).with_name("aggregation_speed.py"))],
                           capture_output=True, text=True, check=True, timeout=1200)
    print(speed.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
