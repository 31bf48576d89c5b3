"""The registry of aggregation rules: :data:`RULES` and :func:`make_rule`.

Every rule except ``"mean"`` is Byzantine-robust: it tolerates ``f`` arbitrary rows as long as the cohort
is large enough (``Rule.min_clients``), and refuses smaller cohorts with ``ValueError`` rather than
silently averaging. The rules live one concept a module: ``fedavg`` (the mean), ``coordinate`` (median,
trimmed mean), ``distance`` (Krum, Multi-Krum, Bulyan), ``geomed`` (geometric median) and ``clipping``
(centered clipping, norm bounding); the interface and checks they share are in ``rule``, the column
blocking and BLAS control in ``blocks``. This module only names and builds them.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

from federated.aggregation.clipping import CenteredClipping, NormBounding
from federated.aggregation.coordinate import CoordinateMedian, TrimmedMean
from federated.aggregation.distance import Bulyan, Krum, MultiKrum
from federated.aggregation.fedavg import Mean
from federated.aggregation.geomed import GeometricMedian
from federated.aggregation.rule import Rule, check_count, check_positive

__all__ = ["RULES", "make_rule"]

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
         "centered_clipping", "norm_bounding")


def make_rule(name: str, *, f: int = 0, trim_ratio: float = 0.1, multi_krum_m: int | None = None,
              clip_tau: float = 1.0, norm_bound: float = 1.0, geomed_iters: int = 100,
              geomed_eps: float = 1e-6) -> Rule:
    """The rule called ``name`` (one of :data:`RULES`), tolerating ``f`` Byzantine workers.

    ``trim_ratio`` is the fraction trimmed at each end by ``trimmed_mean`` (in [0, 0.5));
    ``multi_krum_m`` the number of updates Multi-Krum averages (default ``n - f``); ``clip_tau`` the
    clipping radius of centered clipping and ``norm_bound`` that of norm bounding (L2, in update units);
    ``geomed_iters``/``geomed_eps`` the Weiszfeld iteration cap and relative tolerance. Every parameter
    is validated whichever rule is chosen, so a bad configuration fails early. Raises ``ValueError`` for
    an unknown name (listing :data:`RULES`) or a bad parameter (naming it and its allowed values).
    """
    if name not in RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; choose one of {', '.join(RULES)}")
    f = check_count("f", f, 0)
    if isinstance(trim_ratio, bool) or not (isinstance(trim_ratio, numbers.Real) and 0 <= float(trim_ratio) < 0.5):
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio!r}")
    m = None if multi_krum_m is None else check_count("multi_krum_m", multi_krum_m, 1)
    tau = check_positive("clip_tau", clip_tau)
    bound = check_positive("norm_bound", norm_bound)
    iters = check_count("geomed_iters", geomed_iters, 1)
    eps = check_positive("geomed_eps", geomed_eps)
    factories: dict[str, Callable[[], Rule]] = {
        "mean": lambda: Mean(f=f),
        "median": lambda: CoordinateMedian(f=f),
        "trimmed_mean": lambda: TrimmedMean(f=f, trim_ratio=float(trim_ratio)),
        "krum": lambda: Krum(f=f),
        "multi_krum": lambda: MultiKrum(f=f, m=m),
        "bulyan": lambda: Bulyan(f=f),
        "geometric_median": lambda: GeometricMedian(f=f, max_iterations=iters, tolerance=eps),
        "centered_clipping": lambda: CenteredClipping(f=f, tau=tau),
        "norm_bounding": lambda: NormBounding(f=f, bound=bound),
    }
    return factories[name]()
