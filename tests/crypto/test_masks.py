"""Pairwise masks from X25519 + HKDF + the PRG cancel bit-exactly; the pieces compose into SecAgg."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from federated.crypto import fixedpoint, graph, prg, shamir
from federated.crypto.primitives import generate_x25519, hkdf, x25519_shared

Keys = dict[str, tuple[X25519PrivateKey, bytes]]


def _keys(n: int) -> Keys:
    return {f"w{i:02d}": generate_x25519() for i in range(n)}


def _pair_seed(keys: Keys, u: str, v: str, session: bytes) -> bytes:
    return hkdf(x25519_shared(keys[u][0], keys[v][1]), salt=session, info=b"mask")


def _pairwise_mask(keys: Keys, u: str, peers: tuple[str, ...], session: bytes, d: int) -> np.ndarray:
    acc = np.zeros(d, dtype=np.uint32)
    for v in peers:
        prg.add_mask(acc, _pair_seed(keys, u, v, session), 1 if u < v else -1)
    return acc


def _sum(vectors: list[np.ndarray]) -> np.ndarray:
    return np.sum(np.stack(vectors), axis=0, dtype=np.uint32)


@pytest.mark.parametrize(("n", "degree"), [(2, 1), (7, 6), (40, 4), (40, 10)])
def test_pairwise_masks_cancel(n: int, degree: int) -> None:
    keys, session, d = _keys(n), os.urandom(32), 1003
    adjacency = graph.neighbours(list(keys), degree, session)
    masks = [_pairwise_mask(keys, u, adjacency[u], session, d) for u in keys]
    assert all(m.any() for m in masks)
    assert not _sum(masks).any()


def test_masks_differ_between_sessions_and_pairs() -> None:
    keys = _keys(5)
    first, second = os.urandom(32), os.urandom(32)
    seeds = {(u, v): _pair_seed(keys, u, v, first) for u in keys for v in keys if u < v}
    assert all(_pair_seed(keys, v, u, first) == seed for (u, v), seed in seeds.items())  # both ends agree
    assert len(set(seeds.values())) == len(seeds)
    assert all(_pair_seed(keys, u, v, second) != seed for (u, v), seed in seeds.items())
    a = prg.keystream_u32(seeds[("w00", "w01")], 64)
    b = prg.keystream_u32(_pair_seed(keys, "w00", "w01", second), 64)
    assert not np.array_equal(a, b)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def test_masked_sum_with_a_dropout_recovers_the_exact_fixed_point_sum() -> None:
    # The whole of SecAgg in miniature: self masks b_u, pairwise masks on a 4-regular graph, one worker
    # drops after sharing; the broker rebuilds the survivors' b_u and the dropped worker's mask key from
    # Shamir shares held by neighbours, strips every mask, and gets exactly the sum of the encodings.
    n, degree, d, frac_bits, clip = 12, 4, 257, 16, 1.0
    keys, session = _keys(n), os.urandom(32)
    ids = sorted(keys)
    adjacency = graph.neighbours(ids, degree, session)
    threshold = graph.default_threshold(degree)
    index = {u: i + 1 for i, u in enumerate(ids)}  # Shamir x of each holder
    self_seeds = {u: os.urandom(32) for u in ids}
    shares: dict[str, dict[str, tuple[int, int]]] = {u: {} for u in ids}  # owner -> holder -> share pair
    for u in ids:
        xs = [index[v] for v in adjacency[u]]
        b_shares = shamir.split(self_seeds[u], xs, threshold)
        s_shares = shamir.split(_raw_private(keys[u][0]), xs, threshold)
        for v, b, s in zip(adjacency[u], b_shares, s_shares, strict=True):
            shares[u][v] = (b, s)
    encodings = {u: fixedpoint.encode((prg.uniform01(os.urandom(32), d) - 0.5) * 0.1, 1 + index[u],
                                      clip=clip, frac_bits=frac_bits, seed=os.urandom(32)) for u in ids}
    dropped = ids[3]
    survivors = [u for u in ids if u != dropped]
    masked = []
    for u in survivors:
        y = encodings[u] + _pairwise_mask(keys, u, adjacency[u], session, d + 1)
        prg.add_mask(y, self_seeds[u], 1)
        masked.append(y)
    total = _sum(masked)
    # Unmask: survivors reveal shares of b_u for survivors and of s_u for the dropped worker, never both.
    for u in survivors:
        points = [(index[v], shares[u][v][0]) for v in adjacency[u] if v in survivors]
        prg.add_mask(total, shamir.reconstruct(points, threshold), -1)
    points = [(index[v], shares[dropped][v][1]) for v in adjacency[dropped] if v in survivors]
    dropped_key = X25519PrivateKey.from_private_bytes(shamir.reconstruct(points, threshold))
    assert keys[dropped][1] == dropped_key.public_key().public_bytes_raw()
    for v in adjacency[dropped]:
        seed = hkdf(x25519_shared(dropped_key, keys[v][1]), salt=session, info=b"mask")
        # Survivor v added sign(v, dropped) * PRG(seed); the dropped worker's cancelling term never came.
        prg.add_mask(total, seed, -1 if v < dropped else 1)
    assert np.array_equal(total, _sum([encodings[u] for u in survivors]))
    _, weight = fixedpoint.decode_sum(total, frac_bits)
    assert weight == sum(1 + index[u] for u in survivors)


def test_add_mask_is_the_keystream_and_undoes_itself() -> None:
    seed = os.urandom(32)
    length = 2 * (1 << 18) + 5  # crosses two internal chunk boundaries
    start = (prg.uniform01(os.urandom(32), length) * 2**32).astype(np.uint32)
    acc = start.copy()
    prg.add_mask(acc, seed, 1)
    assert np.array_equal(acc, start + prg.keystream_u32(seed, length))
    prg.add_mask(acc, seed, -1)
    assert np.array_equal(acc, start)
    strided = np.zeros(20, dtype=np.uint32)
    prg.add_mask(strided[::2], seed, 1)
    assert np.array_equal(strided[::2], prg.keystream_u32(seed, 10)) and not strided[1::2].any()
    empty = np.zeros(0, dtype=np.uint32)
    prg.add_mask(empty, seed, 1)


def test_add_mask_is_thread_safe() -> None:
    seeds = [os.urandom(32) for _ in range(8)]
    accs = [np.zeros(300_000, dtype=np.uint32) for _ in seeds]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda pair: prg.add_mask(pair[0], pair[1], 1), zip(accs, seeds, strict=True)))
    for acc, seed in zip(accs, seeds, strict=True):
        assert np.array_equal(acc, prg.keystream_u32(seed, acc.shape[0]))


@pytest.mark.parametrize(("acc", "seed", "sign"), [
    (np.zeros(4, dtype=np.uint32), bytes(32), 0),
    (np.zeros(4, dtype=np.uint32), bytes(32), 2),
    (np.zeros(4, dtype=np.uint32), bytes(32), True),
    (np.zeros(4, dtype=np.int32), bytes(32), 1),
    (np.zeros((2, 2), dtype=np.uint32), bytes(32), 1),
    (np.zeros(4, dtype=np.uint32), bytes(16), 1),
])
def test_add_mask_refuses_bad_arguments(acc: np.ndarray, seed: bytes, sign: int) -> None:
    with pytest.raises(ValueError):
        prg.add_mask(acc, seed, sign)


def test_keystream_and_uniform01_arguments() -> None:
    with pytest.raises(ValueError):
        prg.keystream_u32(bytes(31), 4)
    with pytest.raises(ValueError):
        prg.keystream_u32(bytes(32), -1)
    u = prg.uniform01(os.urandom(32), 100_000)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert np.all(u * 2**32 == np.floor(u * 2**32))  # multiples of 2^-32


def test_keystream_blocks_concatenate_to_the_keystream() -> None:
    seed = os.urandom(32)
    stream = prg.Keystream(seed, 1000)
    pieces = [stream.next(k).copy() for k in (1000, 1, 0, 333, 1000)]
    assert np.array_equal(np.concatenate(pieces), prg.keystream_u32(seed, 2334))
    with pytest.raises(ValueError, match="block size"):
        stream.next(1001)
    for bad in (0, -1, (1 << 18) + 1):
        with pytest.raises(ValueError):
            prg.Keystream(seed, bad)
    with pytest.raises(ValueError):
        prg.Keystream(bytes(16), 10)
