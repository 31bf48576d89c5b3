"""`fl privacy`: privacy accounting from the command line.

    fl privacy epsilon --sampling-rate Q --noise-multiplier S --steps T --delta D [--accountant A] [--json]
    fl privacy sigma --epsilon E --sampling-rate Q --steps T --delta D [--accountant A] [--json]

``epsilon`` reports the (epsilon, delta) guarantee of T Poisson(Q)-sampled Gaussian steps of noise
multiplier S; ``sigma`` finds the smallest S whose T steps stay within epsilon E (to 0.1%). Both use
``dp-accounting`` (RDP by default; PLD is tighter and slower, seconds). With ``--json`` the last line of
stdout is one JSON object (an infinite epsilon, from S = 0, is ``null``). A bad value is a usage error:
a message naming the flag on stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import click

__all__ = ["privacy"]

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout."
)
_accountant_option = click.option(
    "--accountant",
    type=click.Choice(["rdp", "pld"]),
    default="rdp",
    show_default=True,
    help="RDP (fast) or privacy loss distributions (tighter, slower).",
)


def _number(low: float, high: float | None, *, low_open: bool, high_open: bool = False) -> Any:
    """A click callback accepting finite floats in the given interval; the message names the flag."""
    upper = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
    interval = f"{'(' if low_open else '['}{low:g}, {upper}"

    def check(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return None
        too_low = value < low or (low_open and value == low)
        too_high = high is not None and (value > high or (high_open and value == high))
        if not math.isfinite(value) or too_low or too_high:
            raise click.BadParameter(f"must be a finite number in {interval}, got {value}")
        return value

    return check


def _sampling_rate_option(func: Any) -> Any:
    return click.option(
        "--sampling-rate", "-q", type=float, required=True, callback=_number(0.0, 1.0, low_open=True),
        help="Poisson sampling rate q in (0, 1]: the chance that a record (or user) is in a step.",
    )(func)


def _steps_option(func: Any) -> Any:
    return click.option(
        "--steps", "-T", type=click.IntRange(min=1), required=True,
        help="Number of noised steps (or rounds).",
    )(func)


def _delta_option(func: Any) -> Any:
    return click.option(
        "--delta", type=float, required=True, callback=_number(0.0, 1.0, low_open=True, high_open=True),
        help="Target delta in (0, 1), e.g. 1e-5 (well below 1 / number of records).",
    )(func)


def _quiet_library() -> None:
    # dp_accounting logs a warning for every fractional RDP order it has to skip at high sampling rates;
    # it excludes them correctly, and the user cannot act on the warning.
    logging.getLogger("absl").setLevel(logging.ERROR)


def _echo_json(obj: dict[str, Any]) -> None:
    safe = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()}
    click.echo(json.dumps(safe, allow_nan=False))


@click.group("privacy")
def privacy() -> None:
    """Privacy accounting: epsilon of a DP-SGD / DP-FedAvg run, or the noise for a target epsilon."""


@privacy.command("epsilon")
@_sampling_rate_option
@click.option(
    "--noise-multiplier", "-s", type=float, required=True, callback=_number(0.0, None, low_open=False),
    help="Noise std divided by the clip norm (sigma >= 0; 0 means no privacy, epsilon = inf).",
)
@_steps_option
@_delta_option
@_accountant_option
@_json_option
def epsilon_command(
    sampling_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: str, as_json: bool
) -> None:
    """The epsilon spent by STEPS Poisson-sampled Gaussian steps."""
    from federated.privacy.accountant import compute_epsilon

    _quiet_library()
    epsilon = compute_epsilon(sampling_rate, noise_multiplier, steps, delta, accountant)
    if as_json:
        _echo_json({"epsilon": epsilon, "delta": delta, "accountant": accountant,
                    "sampling_rate": sampling_rate, "noise_multiplier": noise_multiplier, "steps": steps})
        return
    click.echo(f"epsilon = {epsilon:.6g} at delta = {delta:g}  ({accountant}: q = {sampling_rate:g}, "
               f"sigma = {noise_multiplier:g}, {steps} steps)")


@privacy.command("sigma")
@click.option(
    "--epsilon", "-e", "target", type=float, required=True, callback=_number(0.0, None, low_open=True),
    help="Target epsilon (> 0, nats).",
)
@_sampling_rate_option
@_steps_option
@_delta_option
@_accountant_option
@_json_option
def sigma_command(
    target: float, sampling_rate: float, steps: int, delta: float, accountant: str, as_json: bool
) -> None:
    """The smallest noise multiplier whose STEPS steps stay within EPSILON."""
    from federated.privacy.accountant import calibrate_sigma, compute_epsilon

    _quiet_library()
    try:
        sigma = calibrate_sigma(target, sampling_rate, steps, delta, accountant)
    except ValueError as exc:  # the target is out of reach: the user's --epsilon
        raise click.BadParameter(str(exc), param_hint="'--epsilon'") from None
    if as_json:
        _echo_json({"noise_multiplier": sigma, "epsilon": target, "delta": delta, "accountant": accountant,
                    "sampling_rate": sampling_rate, "steps": steps})
        return
    reached = compute_epsilon(sampling_rate, sigma, steps, delta, accountant)
    click.echo(f"noise multiplier = {sigma:.6g}  (epsilon = {reached:.6g} <= {target:g} at "
               f"delta = {delta:g}; {accountant}: q = {sampling_rate:g}, {steps} steps)")
