"""Exact and near-duplicate detection: normalised hashing, and MinHash LSH with verification.

    clusters = near_duplicate_clusters(texts, NearDupParams(shingle_size=5, bands=16, rows=8))

Near duplicates follow the classic recipe (MinHash signatures over word n-gram shingles,
banded LSH to find candidates; what datasketch does), computed in bulk with numpy instead of
document by document: shingles are hashed from integer word ids with vectorised arithmetic,
signatures come from one matrix operation per chunk of documents, and LSH buckets are found by
sorting band keys rather than by per-document dictionary inserts. Every candidate pair is then
verified by the exact Jaccard similarity of its shingle sets, so a cluster never joins texts
below the threshold (precision), while the bands (b=16, r=8 by default: P(candidate) = 0.95 at
Jaccard 0.8) keep recall high. `bench/dedup.py` measures both against a datasketch loop.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_MASK61 = np.uint64((1 << 61) - 1)
ALL_PAIRS_BUCKET_LIMIT = 64
"""Buckets up to this size are verified pair by pair; larger ones (templated answers repeated
hundreds of times) are verified as a star around their first member, which keeps the work
linear while still joining every member that is truly close to it."""


@dataclass(frozen=True)
class NearDupParams:
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    threshold: float = 0.8
    seed: int = 1
    chunk_docs: int = 2048


def normalise_for_match(text: str) -> str:
    """Case-, accent-width- and whitespace-insensitive form used for exact matching."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_duplicate_groups(texts: list[str]) -> list[list[int]]:
    """Groups (size >= 2) of indices whose normalised texts are identical, first index first."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for index, text in enumerate(texts):
        groups[hashlib.blake2b(normalise_for_match(text).encode(), digest_size=16).digest()].append(index)
    return [members for members in groups.values() if len(members) > 1]


class _Shingler:
    """Word ids from a growing vocabulary, and 64-bit hashes of word n-grams."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.vocab: dict[str, int] = {}
        rng = np.random.default_rng(12345)
        self.mix = rng.integers(1, 1 << 62, size=size, dtype=np.uint64) | np.uint64(1)

    def __call__(self, text: str) -> np.ndarray:
        vocab = self.vocab
        ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in _WORD.findall(text.lower())),
                          dtype=np.uint64)
        if len(ids) == 0:
            return np.zeros(0, dtype=np.uint64)
        if len(ids) < self.size:  # shorter than one shingle: the whole text is the shingle
            ids = np.pad(ids, (0, self.size - len(ids)))
        windows = np.lib.stride_tricks.sliding_window_view(ids, self.size)
        with np.errstate(over="ignore"):
            hashes = (windows * self.mix).sum(axis=1, dtype=np.uint64)
            hashes ^= hashes >> np.uint64(29)
        return np.unique(hashes)


def minhash_signatures(shingle_sets: list[np.ndarray], params: NearDupParams) -> np.ndarray:
    """(documents x num_perm) uint32 MinHash signatures; empty documents get all-max rows."""
    rng = np.random.default_rng(params.seed)
    a = rng.integers(1, 1 << 61, size=params.num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 61, size=params.num_perm, dtype=np.uint64)
    signatures = np.full((len(shingle_sets), params.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    for start in range(0, len(shingle_sets), params.chunk_docs):
        chunk = shingle_sets[start:start + params.chunk_docs]
        lengths = np.array([len(s) for s in chunk])
        nonempty = np.flatnonzero(lengths)
        if len(nonempty) == 0:
            continue
        flat = np.concatenate([chunk[i] for i in nonempty])
        offsets = np.concatenate(([0], np.cumsum(lengths[nonempty])[:-1]))
        with np.errstate(over="ignore"):
            permuted = (flat[:, None] * a + b) >> np.uint64(32)  # multiply-shift universal hash
        signatures[start + nonempty] = np.minimum.reduceat(permuted.astype(np.uint32), offsets, axis=0)
    return signatures


def _candidate_pairs(signatures: np.ndarray, params: NearDupParams) -> np.ndarray:
    """Unique (i, j) pairs, i < j, that share at least one LSH band bucket."""
    n = len(signatures)
    pairs: list[np.ndarray] = []
    weights = np.random.default_rng(7).integers(1, 1 << 62, size=params.rows, dtype=np.uint64)
    valid = signatures[:, 0] != np.iinfo(np.uint32).max  # empty documents match nothing
    for band in range(params.bands):
        block = signatures[:, band * params.rows:(band + 1) * params.rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            keys = (block * weights).sum(axis=1, dtype=np.uint64) ^ np.uint64(band)
        order = np.argsort(keys[valid], kind="stable")
        members = np.flatnonzero(valid)[order]
        sorted_keys = keys[members]
        boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
        starts = np.concatenate(([0], boundaries))
        ends = np.concatenate((boundaries, [len(members)]))
        multi = np.flatnonzero(ends - starts > 1)
        for s, e in zip(starts[multi], ends[multi], strict=True):
            bucket = members[s:e]
            if len(bucket) <= ALL_PAIRS_BUCKET_LIMIT:
                i, j = np.triu_indices(len(bucket), k=1)
                pairs.append(np.stack([bucket[i], bucket[j]], axis=1))
            else:
                pairs.append(np.stack([np.full(len(bucket) - 1, bucket[0]), bucket[1:]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allpairs = np.sort(np.concatenate(pairs), axis=1).astype(np.int64)
    codes = np.unique(allpairs[:, 0] * n + allpairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _union_find_clusters(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    clusters: dict[int, list[int]] = defaultdict(list)
    for index in range(n):
        clusters[find(index)].append(index)
    return [members for members in clusters.values() if len(members) > 1]


def similar_pairs(texts: list[str], params: NearDupParams = NearDupParams()) -> list[tuple[int, int, float]]:
    """Verified pairs (i, j, jaccard) with Jaccard >= params.threshold."""
    shingle = _Shingler(params.shingle_size)
    shingle_sets = [shingle(t) for t in texts]
    signatures = minhash_signatures(shingle_sets, params)
    verified = []
    for i, j in _candidate_pairs(signatures, params):
        similarity = jaccard(shingle_sets[i], shingle_sets[j])
        if similarity >= params.threshold:
            verified.append((int(i), int(j), similarity))
    return verified


def near_duplicate_clusters(texts: list[str], params: NearDupParams = NearDupParams()) -> list[list[int]]:
    """Clusters (size >= 2) of indices linked by verified near-duplicate pairs, sorted members."""
    pairs = [(i, j) for i, j, _ in similar_pairs(texts, params)]
    return _union_find_clusters(len(texts), pairs)
