"""Near-dedup throughput and quality: tunesmith's bulk MinHash LSH vs a datasketch loop.

    .venv/bin/python bench/dedup.py [--docs 100000] [--seed 0]

Generates documents of 40-80 random words from a 20k-word vocabulary, and plants near-duplicate
pairs by editing copies until their word-5-gram Jaccard is known: 5% of documents get a copy
with Jaccard in [0.85, 1.0] (should be found) and 5% a copy with Jaccard in [0.3, 0.6] (should
not). Ground truth is the exact Jaccard of every planted pair, and any other pair found is
checked exactly as well. Both methods use the same parameters (word 5-grams, 128 permutations,
16 bands x 8 rows, threshold 0.8); the baseline is the straightforward datasketch loop
(`MinHash.update_batch`, then `MinHashLSH.query` and `insert` per document). Prints docs/s,
the ratio, recall, precision and peak memory (peak RSS of a forked child per method).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import resource
import time

from tunesmith.data.dedup import NearDupParams, similar_pairs

PARAMS = NearDupParams(shingle_size=5, num_perm=128, bands=16, rows=8, threshold=0.8)
_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = 5) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def exact_jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def edit_to_jaccard(words: list[str], low: float, high: float, rng: random.Random,
                    vocab: list[str]) -> tuple[list[str], float]:
    """Replace random words one at a time until the copy's Jaccard falls into [low, high]."""
    copy = list(words)
    original = " ".join(words)
    similarity = 1.0
    while similarity > high or similarity < low:
        if similarity < low:  # overshot: start again
            copy = list(words)
        copy[rng.randrange(len(copy))] = rng.choice(vocab)
        similarity = exact_jaccard(original, " ".join(copy))
    return copy, similarity


def make_corpus(n: int, seed: int) -> tuple[list[str], set[tuple[int, int]]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    planted_close: set[tuple[int, int]] = set()
    docs: list[str] = []
    while len(docs) < n:
        words = [rng.choice(vocab) for _ in range(rng.randint(40, 80))]
        docs.append(" ".join(words))
        roll = rng.random()
        if roll < 0.05 and len(docs) < n:
            copy, _ = edit_to_jaccard(words, 0.85, 1.0, rng, vocab)
            planted_close.add((len(docs) - 1, len(docs)))
            docs.append(" ".join(copy))
        elif roll < 0.10 and len(docs) < n:
            copy, _ = edit_to_jaccard(words, 0.3, 0.6, rng, vocab)
            docs.append(" ".join(copy))
    order = list(range(n))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    shuffled = [docs[old] for old in order]
    truth = {tuple(sorted((position[i], position[j]))) for i, j in planted_close}
    return shuffled, truth


def datasketch_loop(docs: list[str]) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=PARAMS.num_perm, params=(PARAMS.bands, PARAMS.rows))
    found = set()
    for index, doc in enumerate(docs):
        m = MinHash(num_perm=PARAMS.num_perm)
        m.update_batch([s.encode() for s in shingles(doc)])
        for other in lsh.query(m):
            found.add((other, index))
        lsh.insert(index, m)
    return found


def ours(docs: list[str]) -> set[tuple[int, int]]:
    return {(i, j) for i, j, _ in similar_pairs(docs, PARAMS)}


def _child(method, docs, queue) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    found = method(docs)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((found, seconds, peak * 1024, before * 1024))


def measure(name: str, method, docs: list[str]) -> tuple[set, float, float]:
    """Run `method` in a forked child, so each method's peak RSS is its own."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(method, docs, queue))
    child.start()
    found, seconds, peak, before = queue.get()
    child.join()
    print(f"{name}: {len(docs) / seconds:,.0f} docs/s ({seconds:.1f} s), peak RSS "
          f"{peak / 2**20:.0f} MiB (corpus and interpreter {before / 2**20:.0f} MiB of it)")
    return found, len(docs) / seconds, peak


def quality(found: set, truth: set, docs: list[str]) -> tuple[float, float]:
    """Recall over planted close pairs; precision over everything found, checked exactly."""
    recall = len(found & truth) / len(truth)
    correct = sum(1 for i, j in found
                  if (i, j) in truth or exact_jaccard(docs[i], docs[j]) >= PARAMS.threshold)
    precision = correct / len(found) if found else 1.0
    return recall, precision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    docs, truth = make_corpus(args.docs, args.seed)
    print(f"{len(docs):,} documents, {len(truth):,} planted pairs with Jaccard >= 0.85")
    base_found, base_speed, base_peak = measure("datasketch loop", datasketch_loop, docs)
    our_found, our_speed, our_peak = measure("tunesmith      ", ours, docs)
    for name, found in (("datasketch loop", base_found), ("tunesmith      ", our_found)):
        recall, precision = quality(found, truth, docs)
        print(f"{name}: recall {recall:.3f}  precision {precision:.3f}  ({len(found):,} pairs)")
    print(f"speed ratio tunesmith / datasketch: {our_speed / base_speed:.2f}x; "
          f"peak memory ratio: {our_peak / base_peak:.2f}x")


if __name__ == "__main__":
    main()
