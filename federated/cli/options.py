"""Flags shared by ``fl simulate``, ``fl baseline`` and ``fl broker``, and how they become a config.

Settings come from the defaults, then ``--config FILE``, then flags (DESIGN §8). A flag left unset does
not override the file. Any invalid value ends the command with exit status 2 and a message that names
the setting and its allowed values.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from federated.config import ConfigError, FederatedConfig, load_config

__all__ = ["FLAG_TO_KEY", "build_config", "emit_json", "run_options", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])

#: click parameter name -> dotted config key.
FLAG_TO_KEY = {
    "num_clients": "num_clients",
    "clients_per_round": "clients_per_round",
    "num_rounds": "num_rounds",
    "min_clients": "min_clients",
    "seed": "seed",
    "dataset": "dataset",
    "partition": "partition",
    "model": "model",
    "selection": "selection",
    "client_sampling_rate": "client_sampling_rate",
    "privacy_budget": "privacy_budget",
    "compression": "compression",
    "local_epochs": "training.local_epochs",
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "optimizer": "training.optimizer",
    "momentum": "training.momentum",
    "proximal_mu": "training.proximal_mu",
    "round_timeout": "broker.round_timeout_s",
    "secure": "secure.enabled",
    "secure_threshold": "secure.threshold",
    "secure_neighbors": "secure.neighbors",
    "secure_clip": "secure.clip",
    "aggregation": "aggregation.rule",
    "server_optimizer": "broker.server_optimizer",
    "server_learning_rate": "broker.server_learning_rate",
    "buckets": "aggregation.bucket_size",
    "store": "broker.store",
    "dp": "privacy.mode",
    "dp_clip": "privacy.clip",
    "noise_multiplier": "privacy.noise_multiplier",
    "delta": "privacy.delta",
    "accountant": "privacy.accountant",
    "dp_sampling_rate": "privacy.sampling_rate",
    "adaptive_clip": "privacy.adaptive_clip",
    "input_shape": "input_shape",
    "num_classes": "num_classes",
    "fed_eval_every": "evaluation.every",
    "fed_eval_fraction": "evaluation.fraction",
}

#: Flags that only mean something with differential privacy on.
_DP_FLAGS = ("dp_clip", "noise_multiplier", "delta", "accountant", "dp_sampling_rate", "adaptive_clip")

_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML settings file."),
    click.option("--num-clients", type=int, help="Number of workers in the federation."),
    click.option("--clients-per-round", type=int, help="Workers selected for each round."),
    click.option("--num-rounds", type=int, help="Complete rounds to run."),
    click.option("--min-clients", type=int, help="Fewest updates a round may aggregate."),
    click.option("--seed", type=int, help="Seed for data partitioning, model init and selection."),
    click.option("--dataset", help="digits | synthetic | mnist1d[:N] | leaf-synthetic:ALPHA,BETA[,DEVICES] | "
                                   "npz:DIR"),
    click.option("--partition", help="iid | dirichlet:ALPHA | natural (one client per device: leaf-synthetic)"),
    click.option("--model", help="mlp | cnn | cnn1d | logistic | MODULE:FACTORY"),
    click.option("--input-shape", callback=lambda ctx, param, value: _shape(value),
                 help="The model's per-example input shape, e.g. 24 or 8,8,1 (with --num-classes: the "
                      "broker needs no data set to build the model)."),
    click.option("--num-classes", type=int, help="The model's number of classes (with --input-shape)."),
    click.option("--fed-eval-every", type=int, help="Workers score every k-th round's model on their held-out "
                                                     "data, and the final one (0: no federated evaluation)."),
    click.option("--fed-eval-fraction", type=float, help="Share of each round's cohort asked to score the model."),
    click.option("--selection", help="Client selection: random | performance | adaptive | poisson (each client "
                                     "joins a round with probability --client-sampling-rate)"),
    click.option("--client-sampling-rate", type=float, help="Selection poisson: the rate q at which each client "
                                                            "joins a round (expected cohort q x num-clients)."),
    click.option("--local-epochs", type=int, help="Local epochs per round."),
    click.option("--batch-size", type=int, help="Local mini-batch size."),
    click.option("--learning-rate", type=float, help="Local learning rate."),
    click.option("--optimizer", help="sgd | adam"),
    click.option("--momentum", type=float, help="SGD momentum."),
    click.option("--proximal-mu", type=float, help="FedProx proximal term mu (0: plain FedAvg)."),
    click.option("--compression", help="Update codec: none | q8 | q4 | q2 | topk:F | randk:F | randk:F+ef | "
                                       "topk:F+q8 | randk:F+q8 | randk:F+ef+q8 (F: fraction of coordinates "
                                       "kept; +ef: error feedback). Under --secure: none, randk:F[+ef][+q8], q8."),
    click.option("--privacy-budget", type=float, help="Total epsilon allowed at --delta; no round starts that "
                                                       "would exceed it (default DP mode: central)."),
    click.option("--dp", help="Differential privacy: none | record (DP-SGD in workers) | central (the broker "
                              "noises the clipped sum) | distributed (workers add Skellam noise under --secure)."),
    click.option("--dp-clip", type=float, help="DP clip C: per example (record) or per update (central)."),
    click.option("--noise-multiplier", type=float, help="DP noise std / C (default: calibrated to the budget)."),
    click.option("--delta", type=float, help="Delta of every reported (epsilon, delta)."),
    click.option("--accountant", help="Privacy accountant: rdp | pld."),
    click.option("--dp-sampling-rate", type=float, help="Record-level DP-SGD Poisson sampling rate q."),
    click.option("--adaptive-clip/--fixed-clip", default=None,
                 help="Central DP: the clip follows the median update norm (Andrew et al. 2021)."),
    click.option("--round-timeout", type=float, help="Seconds the broker waits for a round's updates."),
    click.option("--secure/--no-secure", default=None, help="Secure aggregation: the broker learns only sums."),
    click.option("--secure-threshold", type=int, help="Shares needed to rebuild a secret (default: majority)."),
    click.option("--secure-neighbors", type=int, help="Neighbours per worker in the SecAgg+ graph."),
    click.option("--secure-clip", type=float, help="L2 bound on each update under secure aggregation."),
    click.option("--aggregation", help="mean | median | trimmed_mean | krum | multi_krum | bulyan | "
                                       "geometric_median | centered_clipping | norm_bounding"),
    click.option("--server-optimizer", help="fedavg | fedavgm | fedadagrad | fedadam | fedyogi"),
    click.option("--server-learning-rate", type=float, help="Server step size (default: per optimizer)."),
    click.option("--buckets", type=int, help="Average random buckets of this many workers before the rule "
                                             "(needed for robust rules under --secure)."),
    click.option("--store", help="Round store (SQLite file; checkpoints go beside it)."),
    click.option("--json", "as_json", is_flag=True, help="Last line of stdout: one JSON object of results."),
    click.option("-v", "--verbose", count=True, help="More log output (repeat for debug)."),
]


def _shape(value: str | None) -> list[int] | None:
    """``--input-shape 8,8,1`` as ``[8, 8, 1]`` (validated with the rest of the config)."""
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 24 or 8,8,1",
                                 param_hint="--input-shape") from None


def run_options(func: F) -> F:
    """Decorate a click command with the shared run flags."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def build_config(params: dict[str, Any], extra: dict[str, Any] | None = None) -> FederatedConfig:
    """Config from defaults, ``--config`` and the flags in ``params``; ``click.UsageError`` (exit 2) if bad."""
    overrides = {key: params.get(flag) for flag, key in FLAG_TO_KEY.items()}
    overrides.update(extra or {})
    try:
        config = load_config(params.get("config_file"), overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    given = [f"--{flag.replace('_', '-')}" for flag in _DP_FLAGS if params.get(flag) is not None]
    if given and config.privacy.mode == "none":
        # A DP setting without a DP mode would train without privacy while the user believes otherwise.
        raise click.UsageError(f"{', '.join(given)} given, but differential privacy is off; "
                               "choose --dp record|central|distributed (or set --privacy-budget)")
    return config


def setup_logging(verbose: int, *, quiet: bool = False) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    if quiet and verbose == 0:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # dp-accounting logs, through absl, each RDP order it skips as it searches; that is not news to a user.
    logging.getLogger("absl").setLevel(max(level, logging.ERROR))


def emit_json(obj: dict[str, Any]) -> None:
    """Print ``obj`` as the last line of stdout (the ``--json`` contract)."""
    click.echo(json.dumps(obj, separators=(",", ":"), default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


