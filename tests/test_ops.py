"""The pure math: exhaustive and property-based checks."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from autoprune.ops import (
    HuffmanCode,
    decode_relative,
    encode_relative,
    init_centroids,
    kmeans_1d,
    pack_fixed,
    unpack_fixed,
)
from autoprune.ops.huffman import _huffman_lengths


@pytest.mark.parametrize("init", ["linear", "density", "forgy"])
def test_kmeans_matches_or_beats_sklearn_from_the_same_init(init: str) -> None:
    rng = np.random.default_rng(1)
    w = np.concatenate([rng.normal(-0.05, 0.02, 3000), rng.normal(0.05, 0.02, 3000)])
    start = init_centroids(w, 16, init, seed=3)
    ours = kmeans_1d(w, 16, init=start)
    theirs = KMeans(len(start), init=start.reshape(-1, 1), n_init=1, tol=0, max_iter=100_000).fit(
        w.reshape(-1, 1)
    )
    assert ours.inertia <= theirs.inertia_ * (1 + 1e-9)


def test_kmeans_labels_are_the_nearest_centroid_and_inertia_is_exact() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal(5000)
    r = kmeans_1d(w, 8, init="density")
    nearest = np.abs(w[:, None] - r.centroids[None]).argmin(1)
    assert np.array_equal(r.labels, nearest)
    assert r.inertia == pytest.approx(((w - r.centroids[r.labels]) ** 2).sum(), rel=1e-9)
    for c in range(len(r.centroids)):  # each centroid is its cluster's mean: a Lloyd fixed point
        assert r.centroids[c] == pytest.approx(w[r.labels == c].mean(), abs=1e-12)


def test_kmeans_with_more_clusters_than_values_is_exact() -> None:
    w = np.array([0.5, -0.25, 0.5, 1.0])
    r = kmeans_1d(w, 16, init="linear")
    assert r.inertia == pytest.approx(0.0, abs=1e-15)
    assert np.array_equal(r.centroids[r.labels], w)


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        kmeans_1d(np.array([]), 4)
    with pytest.raises(ValueError, match="init='kmeans\\+\\+'"):
        init_centroids(np.ones(3), 4, "kmeans++")


def test_inits_follow_the_paper() -> None:
    w = np.linspace(-1, 1, 1001) ** 3  # dense near zero
    lin = init_centroids(w, 5, "linear")
    assert np.allclose(lin, [-1, -0.5, 0, 0.5, 1])
    dens = init_centroids(w, 5, "density")
    assert np.all(np.abs(dens) <= np.abs(lin) + 1e-12)  # denser where the weights are
    forgy = init_centroids(w, 5, "forgy", seed=0)
    assert np.all(np.isin(forgy, w))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=400), st.integers(41, 300))
def test_huffman_round_trip(symbols: list[int], alphabet: int) -> None:
    x = np.asarray(symbols, dtype=np.int64)
    code = HuffmanCode.fit(x, alphabet)
    data = code.encode(x)
    assert np.array_equal(code.decode(data, x.size), x)
    assert len(data) == (code.encoded_bits(x) + 7) // 8


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=300))
def test_huffman_lengths_are_a_complete_optimal_code(counts: list[int]) -> None:
    c = np.asarray(counts, dtype=np.int64)
    if not c.any():
        c[0] = 1
    lengths = _huffman_lengths(c)
    used = c > 0
    assert np.all((lengths > 0) == used)
    if used.sum() > 1:
        assert np.sum(2.0 ** -lengths[used]) == 1.0  # complete: Kraft's equality
        # optimal: a Huffman code costs the sum of the weights of its merges
        heap = [int(x) for x in c[used]]
        heapq.heapify(heap)
        optimum = 0
        while len(heap) > 1:
            merged = heapq.heappop(heap) + heapq.heappop(heap)
            optimum += merged
            heapq.heappush(heap, merged)
        assert int((c * lengths).sum()) == optimum


def test_huffman_is_shorter_than_fixed_width_on_skewed_data() -> None:
    rng = np.random.default_rng(0)
    x = np.minimum(rng.geometric(0.4, 20000) - 1, 31)
    code = HuffmanCode.fit(x, 32)
    counts = np.bincount(x, minlength=32) / x.size
    entropy = -(counts[counts > 0] * np.log2(counts[counts > 0])).sum()
    bits = code.encoded_bits(x) / x.size
    assert entropy <= bits < entropy + 1 < 5
    assert np.array_equal(code.decode(code.encode(x), x.size), x)


def test_huffman_length_limit_holds_on_extreme_counts() -> None:
    fibonacci = [1, 1]
    while len(fibonacci) < 22:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    x = np.repeat(np.arange(22), fibonacci)  # the counts that make the deepest Huffman tree
    assert HuffmanCode.fit(x, 22, limit=30).lengths.max() == 21
    code = HuffmanCode.fit(x, 22, limit=8)
    assert code.lengths.max() <= 8
    assert np.array_equal(code.decode(code.encode(x), x.size), x)


def test_huffman_corrupt_stream_raises() -> None:
    x = np.array([0, 1, 2, 3] * 10)
    code = HuffmanCode.fit(x, 4)
    with pytest.raises(ValueError):
        code.decode(code.encode(x)[:3], x.size)


@settings(max_examples=80, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=300), st.integers(1, 10))
def test_relative_indices_round_trip(positions: set[int], bits: int) -> None:
    p = np.array(sorted(positions), dtype=np.int64)
    symbols = encode_relative(p, bits)
    assert symbols.max(initial=0) < 1 << bits
    assert np.array_equal(decode_relative(symbols, bits), p)
    filler = (1 << bits) - 1
    gaps = np.diff(p, prepend=-1) - 1
    assert int((symbols == filler).sum()) == int((gaps // filler).sum())  # fillers only where needed


def test_relative_indices_example_from_the_paper_shape() -> None:
    # 3-bit indices: gaps up to 6 fit; a gap of 36 takes five fillers (5 * 7 = 35) and a 1
    assert encode_relative(np.array([0, 3, 40]), 3).tolist() == [0, 2, 7, 7, 7, 7, 7, 1]


def test_relative_indices_reject_unsorted() -> None:
    with pytest.raises(ValueError):
        encode_relative(np.array([3, 1]), 4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=200), st.integers(8, 12))
def test_fixed_width_round_trip(values: list[int], width: int) -> None:
    x = np.asarray(values, dtype=np.int64)
    assert np.array_equal(unpack_fixed(pack_fixed(x, width), width, x.size), x)
