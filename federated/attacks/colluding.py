"""A colluding set of Byzantine clients hosted in one process, behind the ordinary ``FitFunction``.

``fl simulate`` runs the attackers as one extra worker process whose :class:`~federated.worker.loop.WorkerLoop`
is given :meth:`ColludingAttackers.fit` instead of the honest ``ModelRunner.fit``: the loop, the protocol
and the honest workers' code know nothing of attacks. The loop calls ``fit`` once per selected client per
round, one call at a time on its training thread, passing that client's own ``ClientData.x`` array
object; that identity is how ``fit`` knows which attacker is asking.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from federated.aggregation.vectors import flatten
from federated.attacks.strategies import (
    ATTACKS,
    POOLED_ATTACKS,
    alie,
    alie_z,
    flip_labels,
    gaussian,
    ipm,
    minmax,
    sign_flip,
)

if TYPE_CHECKING:
    from federated.worker.loop import ClientData, FitFunction

__all__ = ["ColludingAttackers"]

log = logging.getLogger("federated.attacks")

_Layout = tuple[tuple[str, tuple[int, ...]], ...]
_Metrics = dict[str, float]


@dataclass
class _Round:
    """What the colluders decided for one round (only the current one is kept)."""

    key: bytes
    layout: _Layout
    crafted: list[np.ndarray]  # flat float32, one per attacker client
    metrics: list[_Metrics]


def _flatten(update: Mapping[str, np.ndarray]) -> tuple[_Layout, np.ndarray]:
    """(layout, float64 vector) of an update, tensors concatenated in sorted-name order."""
    names = sorted(update)
    layout = tuple((name, tuple(np.shape(update[name]))) for name in names)
    if not names:
        return layout, np.zeros(0, dtype=np.float64)
    return layout, flatten(update)


def _unflatten(vector: np.ndarray, layout: _Layout) -> dict[str, np.ndarray]:
    """Split a flat vector back into float32 tensors of ``layout``'s names and shapes (fresh arrays)."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = vector[offset:offset + size].astype(np.float32).reshape(shape)
        offset += size
    return out


def _round_key(weights: Mapping[str, np.ndarray], task_config: Mapping[str, Any]) -> bytes:
    """A digest of the global weights and task config: identical for every client of one round.

    Hashes every byte rather than a prefix, because two rounds' weights can share a long prefix (a layer
    that barely moves). A failed round leaves the weights unchanged, so its retry has the same key and
    gets the same crafted updates: as valid an attack on that model as the first time.
    """
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        arr = np.asarray(weights[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        if arr.size:  # (a zero-size buffer cannot be cast to bytes, and has none to hash)
            h.update(np.ascontiguousarray(arr).data.cast("B"))
    h.update(json.dumps(task_config, sort_keys=True, default=repr).encode())
    return h.digest()


def _derived_seed(seed: int, key: bytes, worker_id: str) -> int:
    """A 32-bit training seed per (run, round, attacker), whichever attacker happens to ask first."""
    digest = hashlib.blake2b(f"{seed}/{worker_id}/".encode() + key, digest_size=4).digest()
    return int.from_bytes(digest, "little")


class ColludingAttackers:
    """Byzantine clients that train honestly, then send crafted updates (see :mod:`.strategies`).

    ``attack`` is one of :data:`~federated.attacks.strategies.ATTACKS`; ``clients`` are the attacker
    clients this process hosts (the same objects given to the ``WorkerLoop``); ``honest_fit`` is the
    honest ``FitFunction`` (``ModelRunner().fit``); ``num_workers`` is n, the number of workers whose
    updates are aggregated together (ALIE's z depends on it; f is ``len(clients)``); ``num_classes`` is
    used by label flipping; ``seed`` makes noise and pooled training reproducible.

    Threat model:

    - ``label_flip``: each attacker trains on its own data with flipped labels, with the seed the loop
      gives it, and sends that honest-looking but poisoned update.
    - ``sign_flip`` and ``gaussian``: each attacker trains honestly and transforms only its own update.
    - ``alie``, ``ipm`` and ``minmax``: the attackers collude and are *omniscient within the colluding
      set*: on the first request of a round they train every attacker client (selected this round or
      not) and pool those benign updates as their estimate of the honest distribution. They never see
      honest workers' updates. Each benign fit uses a seed derived from ``seed``, the round and the
      client, so the result does not depend on which attacker the broker asks first. These strategies
      give one vector, which every attacker sends, as in the papers.

    Metrics are those of each client's own benign training, so they look plausible. Raises ValueError
    for an unknown attack, no clients, clients sharing one ``x`` array, or a configuration the attack
    cannot use (ALIE with attackers in the majority).
    """

    def __init__(self, attack: str, clients: Sequence[ClientData], honest_fit: FitFunction, *,
                 num_workers: int, num_classes: int, seed: int) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        if not clients:
            raise ValueError("ColludingAttackers needs at least one client")
        if num_workers < len(clients):
            raise ValueError(f"num_workers ({num_workers}) is smaller than the number of attackers "
                             f"({len(clients)})")
        if attack == "alie":
            alie_z(num_workers, len(clients))  # refuse an attacker majority now, not in round one
        self.attack = attack
        self.clients = tuple(clients)
        self.honest_fit = honest_fit
        self.num_workers = num_workers
        self.num_classes = num_classes
        self.seed = seed
        self._index_by_x: dict[int, int] = {}
        for i, c in enumerate(self.clients):
            if id(c.x) in self._index_by_x:
                raise ValueError(f"clients {self.clients[self._index_by_x[id(c.x)]].worker_id!r} and "
                                 f"{c.worker_id!r} share one x array, so a request cannot name its client")
            self._index_by_x[id(c.x)] = i
        # Flipped once: the labels never change, and flipping per round would copy them every time.
        self._flipped = ([flip_labels(c.y, num_classes) for c in self.clients]
                         if attack == "label_flip" else [])
        self._round: _Round | None = None

    def fit(self, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, task_config: dict[str, Any],
            seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The malicious ``(update, metrics)`` for the attacker client whose data is ``x``.

        Same signature and contract as the honest ``FitFunction``; raises ValueError if ``x`` is not one
        of this set's client arrays, and whatever ``honest_fit`` raises for a bad task.
        """
        index = self._client_index(x)
        if self.attack == "label_flip":
            return self.honest_fit(weights, x, self._flipped[index], task_config, seed)
        if self.attack in POOLED_ATTACKS:
            return self._pooled(weights, task_config, index)
        update, metrics = self.honest_fit(weights, x, y, task_config, seed)
        layout, own = _flatten(update)
        if self.attack == "sign_flip":
            crafted = sign_flip(own)
        else:
            # The loop's seed differs per client and round; mixing in ours separates runs that share it.
            rng = np.random.default_rng([self.seed % 2**64, seed % 2**64])
            crafted = gaussian(own, rng)
        return _unflatten(crafted, layout), dict(metrics)

    def _client_index(self, x: np.ndarray) -> int:
        index = self._index_by_x.get(id(x))
        # The identity check guards against a foreign array that happens to reuse a freed id (ours are
        # alive, since self.clients holds them, but a caller's copy is a different object).
        if index is None or self.clients[index].x is not x:
            raise ValueError("fit was called with an x array that belongs to none of the attacker clients")
        return index

    def _pooled(self, weights: dict[str, np.ndarray], task_config: dict[str, Any],
                index: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        key = _round_key(weights, task_config)
        if self._round is None or self._round.key != key:
            self._round = None  # drop the last round's vectors before training this one's
            self._round = self._collude(weights, task_config, key)
        r = self._round
        return _unflatten(r.crafted[index], r.layout), dict(r.metrics[index])

    def _collude(self, weights: dict[str, np.ndarray], task_config: dict[str, Any], key: bytes) -> _Round:
        """Train every attacker client honestly, pool the updates, and craft this round's vectors."""
        layout: _Layout | None = None
        rows: list[np.ndarray] = []
        metrics: list[_Metrics] = []
        for c in self.clients:
            update, m = self.honest_fit(weights, c.x, c.y, task_config, _derived_seed(self.seed, key, c.worker_id))
            this_layout, vector = _flatten(update)
            if layout is None:
                layout = this_layout
            elif this_layout != layout:
                raise ValueError(f"honest_fit gave client {c.worker_id!r} an update with different tensors "
                                 "from the other attackers'")
            rows.append(vector)
            metrics.append(dict(m))
        assert layout is not None  # clients is non-empty (checked in __init__)
        benign = np.stack(rows)
        f = len(self.clients)
        if self.attack == "alie":
            vector = alie(benign, self.num_workers, f)
        elif self.attack == "ipm":
            vector = ipm(benign)
        else:
            vector = minmax(benign)
        log.debug("%s: crafted a vector of norm %.4g from %d benign updates of mean norm %.4g", self.attack,
                  float(np.linalg.norm(vector)), f, float(np.linalg.norm(benign, axis=1).mean()))
        crafted = vector.astype(np.float32)
        # One vector for all, as in the papers; each client still gets its own copy from _unflatten.
        return _Round(key, layout, [crafted] * f, metrics)
