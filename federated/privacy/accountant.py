"""Privacy accounting of Poisson-subsampled Gaussian mechanisms, over Google's ``dp-accounting``.

What is accounted: a sequence of releases, each one step of a Gaussian mechanism of noise multiplier
``sigma`` (noise std = ``sigma`` times the L2 sensitivity) applied to a Poisson sample in which every unit
(a record for DP-SGD, a user for DP-FedAvg) takes part independently with probability ``q``. The
neighbouring relation is add-or-remove one unit. Epsilon is in nats (``e^epsilon`` bounds the likelihood
ratio), delta is a probability.

Two accountants of the library are offered: ``"rdp"`` (Renyi DP over the library's default orders, with
the Balle et al. 2020 conversion; fast, slightly loose) and ``"pld"`` (privacy loss distributions at the
library's default discretisation 1e-4; tighter, 10-100x slower). No formula here is hand-written: the
library composes and converts.

``sigma = 0`` is accepted and means *no privacy*: the release is the exact sum, and the epsilon of any
composition containing it is ``inf``.

A :class:`PrivacyAccountant` keeps its events as a canonical list (identical ``(q, sigma)`` merged, steps
added) and always computes from that list, so an accountant rebuilt with :meth:`PrivacyAccountant.from_dict`
reports exactly the same epsilon as the one that was saved (a resumed broker does not drift).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from federated.config.sections import ACCOUNTANTS

if TYPE_CHECKING:
    import dp_accounting

# dp_accounting is imported where it is used: it pulls in SciPy (~1-2 s), and processes that only import
# this package (a worker, the CLI's help) should not pay for that.

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_CALIBRATION_RTOL",
    "Event",
    "PrivacyAccountant",
    "calibrate_sigma",
    "compute_epsilon",
    "sampled_gaussian_event",
]

# The accepted accountant kinds (ACCOUNTANTS: "rdp", "pld") are named once, by the config that accepts them.
#: Relative precision of :func:`calibrate_sigma` on sigma.
DEFAULT_CALIBRATION_RTOL = 1e-3
#: Calibration gives up above this noise multiplier (an epsilon that needs more is not reachable in
#: practice; the library's RDP epsilon is already ~0 far below it).
_MAX_SIGMA = 1e6
_STATE_VERSION = 1

#: One recorded release: (sampling rate q, noise multiplier sigma, number of steps).
Event = tuple[float, float, int]


# ----------------------------------------------------------------------------------------- validation


def _check_q(q: float, name: str = "q") -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not (math.isfinite(q) and 0.0 < q <= 1.0):
        raise ValueError(f"{name} (sampling rate) must be a number in (0, 1], got {q!r}")
    return float(q)


def _check_sigma(sigma: float, name: str = "sigma") -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (
        math.isfinite(sigma) and sigma >= 0.0
    ):
        raise ValueError(
            f"{name} (noise multiplier) must be a finite number >= 0 (0 = no privacy), got {sigma!r}"
        )
    return float(sigma)


def _check_steps(steps: int, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {steps!r}")
    return steps


def _check_delta(delta: float, name: str = "delta") -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < delta < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _check_epsilon(epsilon: float, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
        math.isfinite(epsilon) and epsilon > 0.0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {epsilon!r}")
    return float(epsilon)


def _check_kind(kind: str, name: str = "accountant") -> str:
    if kind not in ACCOUNTANTS:
        raise ValueError(f"{name} must be one of {', '.join(ACCOUNTANTS)}, got {kind!r}")
    return kind


# -------------------------------------------------------------------------------------------- events


def sampled_gaussian_event(q: float, sigma: float, steps: int = 1) -> dp_accounting.DpEvent:
    """The library event for ``steps`` compositions of a Poisson(``q``)-sampled Gaussian(``sigma``).

    Raises ValueError for q outside (0, 1], sigma < 0 or steps < 1.
    """
    import dp_accounting

    event = dp_accounting.PoissonSampledDpEvent(
        _check_q(q), dp_accounting.GaussianDpEvent(_check_sigma(sigma))
    )
    return dp_accounting.SelfComposedDpEvent(event, _check_steps(steps))


def _new_library_accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    from dp_accounting import pld, rdp

    return rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()


def _epsilon_of(kind: str, events: list[Event], delta: float) -> float:
    if any(sigma == 0.0 for _, sigma, _ in events):
        return math.inf  # no noise: the library agrees (inf), and this skips a pointless computation
    accountant = _new_library_accountant(kind)
    for q, sigma, steps in events:
        accountant.compose(sampled_gaussian_event(q, sigma, steps))
    return float(accountant.get_epsilon(delta))


def _merged(events: list[Event], q: float, sigma: float, steps: int) -> list[Event]:
    out = list(events)
    for i, (eq, es, esteps) in enumerate(out):
        if (eq, es) == (q, sigma):
            out[i] = (eq, es, esteps + steps)
            return out
    out.append((q, sigma, steps))
    return out


# ---------------------------------------------------------------------------------------- accountant


class PrivacyAccountant:
    """Composes Poisson-subsampled Gaussian releases and reports their (epsilon, delta) guarantee.

    ``kind`` is ``"rdp"`` or ``"pld"`` (see the module docstring). Not thread-safe.
    """

    def __init__(self, kind: str = "rdp") -> None:
        self._kind = _check_kind(kind, "kind")
        self._events: list[Event] = []
        # (delta -> epsilon) for the current events; cleared by record(). A PLD evaluation costs ~1 s.
        self._cache: dict[float, float] = {}

    @property
    def kind(self) -> str:
        """``"rdp"`` or ``"pld"``."""
        return self._kind

    @property
    def events(self) -> list[Event]:
        """The recorded ``(q, sigma, steps)`` events, identical ``(q, sigma)`` merged, in first-seen order."""
        return list(self._events)

    @property
    def total_steps(self) -> int:
        """Number of mechanism steps recorded (all events)."""
        return sum(steps for _, _, steps in self._events)

    def record(self, q: float, sigma: float, steps: int = 1) -> None:
        """Account for ``steps`` releases of a Poisson(``q``)-sampled Gaussian of noise multiplier ``sigma``.

        Raises ValueError for q outside (0, 1], sigma < 0 (0 = no privacy, epsilon becomes inf) or
        steps < 1.
        """
        q, sigma, steps = _check_q(q), _check_sigma(sigma), _check_steps(steps)
        self._events = _merged(self._events, q, sigma, steps)
        self._cache.clear()

    def epsilon(self, delta: float) -> float:
        """Epsilon (nats) of everything recorded so far at ``delta``; 0.0 if nothing is recorded, inf if
        a release had no noise. Raises ValueError for delta outside (0, 1)."""
        delta = _check_delta(delta)
        if not self._events:
            return 0.0
        if delta not in self._cache:
            self._cache[delta] = _epsilon_of(self._kind, self._events, delta)
        return self._cache[delta]

    def would_spend(self, q: float, sigma: float, steps: int, delta: float) -> float:
        """Epsilon (nats) at ``delta`` if ``steps`` more releases of (``q``, ``sigma``) were recorded.

        Nothing is recorded: this is the check before a round. Raises ValueError like :meth:`record`
        and :meth:`epsilon`.
        """
        q, sigma, steps = _check_q(q), _check_sigma(sigma), _check_steps(steps)
        delta = _check_delta(delta)
        return _epsilon_of(self._kind, _merged(self._events, q, sigma, steps), delta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: ``{"version", "kind", "events": [{"q", "sigma", "steps"}, ...]}``."""
        return {
            "version": _STATE_VERSION,
            "kind": self._kind,
            "events": [{"q": q, "sigma": sigma, "steps": steps} for q, sigma, steps in self._events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant saved with :meth:`to_dict` (same events, same order, same epsilon).

        Raises ValueError for anything that :meth:`to_dict` would not have produced.
        """
        if not isinstance(data, Mapping):
            # ValueError, not TypeError, for every defect of decoded state: callers catch one type.
            kind = type(data).__name__
            raise ValueError(f"accountant state must be a JSON object, got {kind}")  # noqa: TRY004
        if data.get("version") != _STATE_VERSION:
            version = data.get("version")
            raise ValueError(f"accountant state version must be {_STATE_VERSION}, got {version!r}")
        accountant = cls(data.get("kind", ""))
        events = data.get("events")
        if not isinstance(events, list):
            raise ValueError("accountant state 'events' must be a list")  # noqa: TRY004 (see above)
        for i, event in enumerate(events):
            if not isinstance(event, Mapping) or set(event) != {"q", "sigma", "steps"}:
                raise ValueError(f"accountant state event {i} must be an object with keys q, sigma, steps")
            q = _check_q(event["q"], f"events[{i}].q")
            sigma = _check_sigma(event["sigma"], f"events[{i}].sigma")
            steps = _check_steps(event["steps"], f"events[{i}].steps")
            if any((eq, es) == (q, sigma) for eq, es, _ in accountant._events):
                raise ValueError(
                    f"accountant state event {i} repeats (q={q}, sigma={sigma}); saved events are merged"
                )
            accountant._events.append((q, sigma, steps))
        return accountant

    def __repr__(self) -> str:
        return f"PrivacyAccountant(kind={self._kind!r}, events={self._events!r})"


# --------------------------------------------------------------------------------- module functions


def compute_epsilon(q: float, sigma: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon (nats) of ``steps`` Poisson(``q``)-sampled Gaussian releases of noise multiplier ``sigma``
    at ``delta`` (add-or-remove-one neighbours); inf when ``sigma == 0`` (no privacy).

    Raises ValueError naming the argument: q in (0, 1], sigma >= 0, steps an int >= 1, delta in (0, 1),
    accountant "rdp" or "pld".
    """
    kind = _check_kind(accountant)
    q, sigma, steps = _check_q(q), _check_sigma(sigma), _check_steps(steps)
    return _epsilon_of(kind, [(q, sigma, steps)], _check_delta(delta))


def calibrate_sigma(
    epsilon: float,
    q: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    *,
    rtol: float = DEFAULT_CALIBRATION_RTOL,
) -> float:
    """The smallest noise multiplier whose ``steps`` Poisson(``q``)-sampled releases cost at most
    ``epsilon`` (nats) at ``delta``, to a relative precision ``rtol``.

    Bisection on sigma keeps ``lo`` (epsilon > target) and ``hi`` (epsilon <= target) and stops when
    ``hi - lo <= rtol * hi``; ``hi`` is returned, so ``compute_epsilon(q, sigma, steps, delta) <= epsilon``
    always holds for the returned sigma and, epsilon being decreasing in sigma, sigma exceeds the exact
    optimum by at most ``rtol * sigma``.

    Raises ValueError naming the argument for epsilon <= 0 or not finite, q outside (0, 1], steps < 1,
    delta outside (0, 1), an unknown accountant or rtol outside (0, 0.5); and if even sigma = 1e6 does
    not reach ``epsilon``.
    """
    target = _check_epsilon(epsilon)
    kind = _check_kind(accountant)
    q, steps, delta = _check_q(q), _check_steps(steps), _check_delta(delta)
    if not (isinstance(rtol, (int, float)) and 0.0 < rtol < 0.5):
        raise ValueError(f"rtol must be a number in (0, 0.5), got {rtol!r}")

    def eps(sigma: float) -> float:
        return _epsilon_of(kind, [(q, sigma, steps)], delta)

    # Bracket: grow (or shrink) by 2 from a cheap starting guess. For PLD the RDP answer is a good
    # upper start (PLD is the tighter accountant), which saves most of the slow PLD evaluations.
    start = 1.0
    if kind == "pld":
        start = calibrate_sigma(target, q, steps, delta, "rdp", rtol=min(0.01, rtol * 10))
    lo, hi = start, start
    if eps(hi) <= target:
        lo = hi / 2
        while eps(lo) <= target:
            hi, lo = lo, lo / 2
            if lo < 1e-6:
                return hi  # epsilon reachable with (practically) no noise: nothing finer to find
    else:
        while True:
            lo, hi = hi, hi * 2
            if hi > _MAX_SIGMA:
                raise ValueError(
                    f"epsilon={target} is not reachable with sigma <= {_MAX_SIGMA:g} "
                    f"(q={q}, steps={steps}, delta={delta}, accountant={kind})"
                )
            if eps(hi) <= target:
                break
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
