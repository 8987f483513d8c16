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
    chunk_docs: int = 1024


def normalise_for_match(text: str) -> str:
    """Case-, accent-width- and whitespace-insensitive form used for exact matching."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_duplicate_groups(texts: list[str]) -> list[list[int]]:
    """Groups (size >= 2) of indices whose normalised texts are identical, first index first."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for index, text in enumerate(texts):
        groups[hashlib.blake2b(normalise_for_match(text).encode(), digest_size=16).digest()].append(index)
    return [members for members in groups.values() if len(members) > 1]


@dataclass
class Shingles:
    """Every document's sorted, unique 64-bit word n-gram hashes, stored flat with offsets."""

    hashes: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.hashes[self.offsets[index]:self.offsets[index + 1]]


def shingle(texts: list[str], size: int) -> Shingles:
    """Word n-gram hashes of all texts at once: words become integer ids (one dict pass), and
    n-gram hashes are computed for every position of the concatenated id array in `size`
    vectorised multiply-adds. A text shorter than `size` words is one (zero-padded) shingle."""
    vocab: dict[str, int] = {}
    add = vocab.setdefault
    ids: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for index, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        if not words:
            continue
        ids.extend([add(w, len(vocab) + 1) for w in words])
        if len(words) < size:
            ids.extend([0] * (size - len(words)))
        lengths[index] = max(len(words), size)
    flat = np.array(ids, dtype=np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)))
    counts = np.where(lengths > 0, lengths - size + 1, 0)
    if counts.sum() == 0:
        return Shingles(np.zeros(0, dtype=np.uint64), np.zeros(len(texts) + 1, dtype=np.int64))
    mix = np.random.default_rng(12345).integers(1, 1 << 62, size=size, dtype=np.uint64) | np.uint64(1)
    windows = len(flat) - size + 1
    with np.errstate(over="ignore"):
        hashes = flat[:windows] * mix[0]
        for k in range(1, size):
            hashes += flat[k:k + windows] * mix[k]
        hashes ^= hashes >> np.uint64(29)
    doc = np.repeat(np.arange(len(texts)), counts)
    position = starts[doc] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    hashes = hashes[position]
    order = np.lexsort((hashes, doc))
    doc, hashes = doc[order], hashes[order]
    keep = np.ones(len(hashes), dtype=bool)
    keep[1:] = (doc[1:] != doc[:-1]) | (hashes[1:] != hashes[:-1])
    doc, hashes = doc[keep], hashes[keep]
    offsets = np.searchsorted(doc, np.arange(len(texts) + 1))
    return Shingles(hashes, offsets)


def minhash_signatures(shingles: Shingles, params: NearDupParams) -> np.ndarray:
    """(documents x num_perm) uint32 MinHash signatures; empty documents get all-max rows."""
    rng = np.random.default_rng(params.seed)
    a = rng.integers(1, 1 << 61, size=params.num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 61, size=params.num_perm, dtype=np.uint64)
    n = len(shingles)
    signatures = np.full((n, params.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    lengths = np.diff(shingles.offsets)
    for start in range(0, n, params.chunk_docs):
        stop = min(start + params.chunk_docs, n)
        nonempty = start + np.flatnonzero(lengths[start:stop])
        if len(nonempty) == 0:
            continue
        flat = shingles.hashes[shingles.offsets[start]:shingles.offsets[stop]]
        local = shingles.offsets[nonempty] - shingles.offsets[start]
        with np.errstate(over="ignore"):  # permutations x shingles: rows are contiguous
            permuted = np.multiply.outer(a, flat)
            permuted += b[:, None]
            permuted >>= np.uint64(32)
        signatures[nonempty] = np.minimum.reduceat(permuted.astype(np.uint32), local, axis=1).T
    return signatures


def _candidate_pairs(signatures: np.ndarray, params: NearDupParams) -> np.ndarray:
    """Unique (i, j) pairs, i < j, that share at least one LSH band bucket."""
    n = len(signatures)
    pairs: list[np.ndarray] = []
    weights = np.random.default_rng(7).integers(1, 1 << 62, size=params.rows, dtype=np.uint64)
    valid = np.flatnonzero(signatures[:, 0] != np.iinfo(np.uint32).max)  # empty docs match nothing
    for band in range(params.bands):
        block = signatures[valid, band * params.rows:(band + 1) * params.rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            keys = (block * weights).sum(axis=1, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        members, sorted_keys = valid[order], keys[order]
        boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
        starts = np.concatenate(([0], boundaries))
        sizes = np.diff(np.concatenate((starts, [len(members)])))
        two = starts[sizes == 2]  # the common case, done in bulk
        pairs.append(np.stack([members[two], members[two + 1]], axis=1))
        for s, size in zip(starts[sizes > 2], sizes[sizes > 2], strict=True):
            bucket = members[s:s + size]
            if size <= ALL_PAIRS_BUCKET_LIMIT:
                i, j = np.triu_indices(size, k=1)
                pairs.append(np.stack([bucket[i], bucket[j]], axis=1))
            else:
                pairs.append(np.stack([np.full(size - 1, bucket[0]), bucket[1:]], axis=1))
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
    shingle_sets = shingle(texts, params.shingle_size)
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
