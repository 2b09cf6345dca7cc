"""The packed size of a compression config, without compressing: what a candidate's file will
weigh, in about a millisecond, so that nothing has to learn it.

Structured pruning is replayed exactly on the channel map of the base network (torch-pruning's
dependency groups, found once): which filters each group loses, lowest L1 norm first, and
which inputs of the next layers go with them. Magnitude pruning is replayed exactly on the
kept weights (their threshold, their count). What the real file then spends is estimated: the
position stream from the density (gaps of weights kept independently at random), the value
stream from k-means on a sample of the layer's surviving base weights, the header from the
base's own. Fine-tuning moves the weights but not which are kept, so the estimate holds for a
trial as for the untrained pipeline; tests/test_size.py measures the error against real files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.compress._layers import layer_kind, output_layer, weight_layers
from autoprune.compress.packing import MAGIC, NORM_STATS, is_affine_norm, save_packed
from autoprune.compress.quantize import ShareConfig, share_weights_
from autoprune.compress.recipe import CompressConfig
from autoprune.compress.stage import Run
from autoprune.compress.structured import (
    Cuts,
    FilterNormImportance,
    FilterPruneConfig,
    _removed_count,
    channel_cuts,
    prune_filters_,
    ranked_layer_ratios,
    tp_share,
)
from autoprune.compress.unstructured import MagnitudeConfig, prune_magnitude_
from autoprune.models import ModelSpec
from autoprune.ops.huffman import stream_bits
from autoprune.ops.kmeans import kmeans_1d
from autoprune.ops.sparse import expected_gap_counts

SAMPLE = 20_000  # surviving base weights k-means is run on, per layer, for the value stream's cost
EXACT = 200  # up to this many surviving weights, k-means runs on the candidate's own
KEPT_CACHE_BYTES = 256 << 20  # layers' kept weights, gathered once per shape, kept for the next candidate
_FILE_OVERHEAD = len(MAGIC) + 5 + 4  # magic, version and header length, crc32


@dataclass(frozen=True)
class _Dim:
    """One dimension of a module that a dependency group shrinks: removing root channel c
    removes this dimension's indices ``idxs[root == c]``."""

    group: int
    idxs: np.ndarray
    root: np.ndarray


@dataclass(frozen=True)
class LayerSize:
    """A weight layer after structured and magnitude pruning, and what it costs in the file."""

    layer: str
    weights: int  # kept by structured pruning
    nonzero: int  # kept by magnitude pruning too
    base_weights: int  # in the base network
    bytes: float  # positions, values and codebook (its share of the header and raw tensors excluded)

    @property
    def sparsity(self) -> float:
        """Share of the base layer's weights gone, by either kind of pruning."""
        return 1.0 - self.nonzero / max(self.base_weights, 1)


class SizeModel:
    """The packed bytes of any config applied to ``base``; built once per base network."""

    def __init__(self, base: nn.Module, spec: ModelSpec):
        input_shape = (spec.in_channels, *spec.image_size)
        self._base, self._spec, self._input_shape = base, spec, input_shape
        model = copy.deepcopy(base).eval()
        self._eval_copy = model  # read, never changed: what a global ranking reads
        example = torch.zeros(1, *input_shape)
        self._layers = weight_layers(model)
        out = output_layer(model)
        cuts = channel_cuts(model, example)
        # the convs whose ratio structured pruning passes on: as prune_filters_ decides
        self._prunable = {
            n
            for n, m in self._layers.items()
            if isinstance(m, nn.Conv2d) and n != out and m.groups == 1 and n not in cuts.whole
        }
        self._groups: list[
            tuple[list[str], int, np.ndarray]
        ] = []  # (modules it prunes the outputs of, channels,
        #                                                              channels least important first)
        self._dims: dict[tuple[str, str], _Dim] = {}  # (module, "out" | "in") -> how a group shrinks it
        self._read_groups(
            model, example, cuts, ignored=[self._layers[out], *(self._layers[n] for n in cuts.whole)]
        )
        self._weights = {n: m.weight.detach().float().numpy() for n, m in self._layers.items()}
        state = model.state_dict()
        weight_keys = {f"{n}.weight" for n in self._layers}
        statistics = {f"{n}.{s}" for n, m in model.named_modules() if is_affine_norm(m) for s in NORM_STATS}
        self._raw = [  # every tensor stored raw: (module, 1-D along its out channels, bytes, float32,
            #           a batch norm's running statistic, which affine_norms leaves out)
            (
                key.rsplit(".", 1)[0],
                t.dim() == 1,
                t.numel() * t.element_size(),
                t.dtype == torch.float32,
                key in statistics,
            )
            for key, t in state.items()
            if key not in weight_keys or t.dtype != torch.float32
        ]
        self._header = self._header_bytes(base, spec, input_shape)
        self._clusters: dict[tuple, tuple[float, int]] = {}  # (layer, bits, init, mode, level) -> value cost
        self._kept_cache: dict[
            tuple[str, str, int], np.ndarray
        ] = {}  # (module, dim, removed) -> kept indices
        self._kept_weights_cache: OrderedDict[tuple[str, int, int], _KeptWeights] = OrderedDict()  # LRU order
        self._kept_bytes = 0
        self._exact: dict[tuple, tuple[float, int]] = {}  # (layer, kept, nonzero, bits, init) -> value cost
        self._shuffled: dict[str, np.ndarray] = {}  # layer -> its base weights in one fixed random order
        self._samples: dict[
            tuple[str, str, float], np.ndarray
        ] = {}  # (layer, mode, level) -> survivors sampled
        self._shares: dict[tuple[str, int], float] = {}  # (module, removed from its group) -> outputs kept
        self._ranked: dict[tuple, dict[str, float]] = {}  # (share, criterion) -> per-conv shares

    def _read_groups(
        self, model: nn.Module, example: torch.Tensor, cuts: Cuts, *, ignored: list[nn.Module]
    ) -> None:
        """torch-pruning's dependency groups of the network, once: which modules' outputs and
        inputs each group shrinks, and its channels in the order they would be removed."""
        names = {m: n for n, m in model.named_modules()}
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=cuts.forward)
        importance = FilterNormImportance("l1")
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
            imp = importance(group)
            if imp is None:
                continue
            # torch-pruning takes a group's ratio from the first module in it, in dependency
            # order, that was handed one and whose outputs the group prunes
            outs = [
                names[module]
                for item in group
                for module, fn in (
                    (item.dep.source.module, item.dep.trigger),
                    (item.dep.target.module, item.dep.handler),
                )
                if module in names and graph.is_out_channel_pruning_fn(fn)
            ]
            g = len(self._groups)
            self._groups.append((outs, len(imp), np.argsort(imp.numpy(), kind="stable")))
            for item in group:
                module = names.get(item.dep.target.module)
                if module is None or item.root_idxs is None or any(r is None for r in item.root_idxs):
                    continue
                dim = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                self._dims.setdefault(
                    (module, dim), _Dim(g, np.asarray(item.idxs), np.asarray(item.root_idxs))
                )

    # ------------------------------------------------------------------ structure

    def removed(self, config: CompressConfig) -> dict[int, int]:
        """Per dependency group, how many of its channels structured pruning removes (those of
        lowest importance): as prune_filters_ hands ratios to torch-pruning (its prunable
        convs, the share rounded as it rounds) and as torch-pruning applies them (a group takes
        the ratio of its first module that has one)."""
        s = self._as_layer_ratios(config.structured)
        ratios = {}
        for name in self._prunable:
            channels = self._weights[name].shape[0]
            value = s.value_for(name)
            if s.mode != "ratio":  # a threshold on the norm / the layer's largest norm
                norms = np.abs(self._weights[name]).reshape(channels, -1).sum(1)
                value = float((norms / max(norms.max(), 1e-12) < value).mean())
            removed = _removed_count(channels, value, s.round_to)
            if removed:
                ratios[name] = tp_share(removed, channels)
        out = {}
        for g, (outs, channels, _) in enumerate(self._groups):
            ratio = next((ratios[m] for m in outs if m in ratios), 0.0)
            n = channels - int(channels * (1 - ratio))
            if n > 0:
                out[g] = n
        return out

    def _as_layer_ratios(self, config: FilterPruneConfig) -> FilterPruneConfig:
        """A globally ranked config as the per-conv shares its ranking gives on the base (the
        ranking reads only the base's weights and the graph: a config, a fixed answer)."""
        if config.ranking == "layer":
            return config
        key = (config.default, config.criterion)
        if key not in self._ranked:
            example = torch.zeros(1, *self._input_shape)
            self._ranked[key] = ranked_layer_ratios(self._eval_copy, config, example)
        layers = self._ranked[key]
        return dataclasses.replace(config, ranking="layer", default=0.0, layers=layers)

    def _kept(self, module: str, dim: str, size: int, removed: dict[int, int]) -> np.ndarray:
        """Indices of a dimension that survive."""
        d = self._dims.get((module, dim))
        if d is None or (n := removed.get(d.group, 0)) == 0:
            return np.arange(size)
        key = (module, dim, n)
        if key not in self._kept_cache:
            gone = d.idxs[np.isin(d.root, self._groups[d.group][2][:n])]
            self._kept_cache[key] = np.setdiff1d(np.arange(size), gone, assume_unique=True)
        return self._kept_cache[key]

    def kept_channels(self, module: str, dim: str, removed: dict[int, int]) -> int:
        """How many output ("out") or input ("in") channels of a weight layer survive."""
        size = self._weights[module].shape[0 if dim == "out" else 1]
        return len(self._kept(module, dim, size, removed))

    def module(self, name: str) -> nn.Module:
        return self._layers[name]

    def coupled(self, names: Sequence[str]) -> list[list[str]]:
        """``names`` (convs a space sets filter ratios for) in parts that move together: the
        convs whose outputs one dependency group prunes (a residual stage's convs, say), in
        dependency order; torch-pruning takes a group's ratio from its first module that has
        one. A name no group prunes (the output layer, a conv left whole) is in no part."""
        wanted, seen, parts = set(names), set(), []
        for outs, _, _ in self._groups:
            part = [n for n in dict.fromkeys(outs) if n in wanted and n in self._prunable and n not in seen]
            seen.update(part)
            if part:
                parts.append(part)
        return parts

    # ------------------------------------------------------------------ size

    def layers(self, config: CompressConfig, *, removed: dict[int, int] | None = None) -> list[LayerSize]:
        """Every weight layer after ``config``'s pruning (``removed``: :meth:`removed`'s answer,
        when the caller has it already)."""
        removed = self.removed(config) if removed is None else removed
        u, q = config.unstructured, config.quantize
        out = []
        for name, w in self._weights.items():
            kept = self._kept_weights(name, removed)
            value = u.value_for(name)
            nonzero = kept.survivors(u.mode, value)
            pack = config.pack
            index_bits = (
                pack.conv_index_bits if layer_kind(self._layers[name]) == "conv" else pack.fc_index_bits
            )
            bits = 0.0
            if 0 < nonzero < kept.numel:  # a layer with nothing pruned has no position stream
                bits += _position_bits(_round3(kept.numel), _round3(nonzero), index_bits, pack.huffman)
            if q.enabled and nonzero:
                b = q.bits_for(name, self._layers[name])
                if nonzero <= EXACT:  # few values: cluster them as the pipeline will
                    key = (name, kept.key, nonzero, b, q.init)
                    if key not in self._exact:
                        self._exact[key] = _clustered(kept.largest(nonzero), b, q.init)
                    per_value, shared = self._exact[key]
                else:
                    per_value, shared = self._value_cost(name, b, q.init, u.mode, value)
                value_bits = (per_value if pack.huffman else b) * nonzero
                shared = min(shared, nonzero)
                bits += value_bits + 32 * shared
            else:
                bits += 32 * nonzero
            out.append(LayerSize(name, kept.numel, nonzero, w.size, bits / 8))
        return out

    def _kept_weights(self, name: str, removed: dict[int, int]) -> _KeptWeights:
        """The weights of a layer that structured pruning keeps, gathered once per shape (the
        cache holds at most :data:`KEPT_CACHE_BYTES`)."""
        w = self._weights[name]
        out_idx = self._kept(name, "out", w.shape[0], removed)
        in_idx = self._kept(name, "in", w.shape[1], removed)
        key = (name, len(out_idx), len(in_idx))
        cache = self._kept_weights_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        kept = _KeptWeights.of(w[out_idx][:, in_idx].ravel(), key[1:])
        cache[key] = kept
        self._kept_bytes += kept.nbytes
        while self._kept_bytes > KEPT_CACHE_BYTES and len(cache) > 1:
            self._kept_bytes -= cache.popitem(last=False)[1].nbytes
        return kept

    def _value_cost(self, name: str, bits: int, init: str, mode: str, value: float) -> tuple[float, int]:
        """Bits per value of the value stream (cluster indices, Huffman-coded when that is
        smaller) and codebook entries: k-means on a fixed sample of the layer's base
        weights that the same threshold keeps (the threshold rounded, so that the cost of one
        layer is computed once per level)."""
        level = round(value, 1) if mode == "quality" else round(value, 2)
        key = (name, bits, init, mode, level)
        if key not in self._clusters:
            kept = self._level_sample(name, mode, level)
            self._clusters[key] = _clustered(kept, bits, init) if kept.size else (float(bits), 1 << bits)
        return self._clusters[key]

    def _level_sample(self, name: str, mode: str, level: float) -> np.ndarray:
        """Up to :data:`SAMPLE` of the base weights a magnitude threshold keeps, drawn at random
        without replacement (the first survivors of one fixed shuffle of the layer)."""
        key = (name, mode, level)
        if key in self._samples:
            return self._samples[key]
        if name not in self._shuffled:
            w = self._weights[name].ravel()
            self._shuffled[name] = w[np.random.default_rng(0).permutation(w.size)]
        w = self._shuffled[name]
        if level <= 0:
            kept = w != 0
        elif mode == "quality":
            kept = (np.abs(w) >= level * w.std(ddof=1)) & (w != 0)
        else:
            kept = np.abs(w) >= np.quantile(np.abs(w), min(level, 0.999))
        self._samples[key] = w[np.flatnonzero(kept)[:SAMPLE]]
        return self._samples[key]

    def estimate(
        self,
        config: CompressConfig,
        *,
        removed: dict[int, int] | None = None,
        layers: list[LayerSize] | None = None,
    ) -> int:
        """Bytes of the packed file ``config`` would make of the base network (``removed`` and
        ``layers``: :meth:`removed`'s and :meth:`layers`' answers, when the caller has them).

        This model replays the built-in stages; a config with an optional stage is measured by
        :meth:`replayed` instead (:meth:`layers` does not see what such a stage does)."""
        if any(stage.optional for stage, _ in config.items()):
            return self.replayed(config)
        removed = self.removed(config) if removed is None else removed
        layers = self.layers(config, removed=removed) if layers is None else layers
        body = sum(layer.bytes for layer in layers)
        raw = 0
        pack = config.pack
        for module, along_out, size, single, statistic in self._raw:
            if statistic and pack.affine_norms:
                continue
            size = size // 2 if single and pack.float16 else size
            d = self._dims.get((module, "out")) if along_out else None
            if d is not None and d.group in removed:
                size = int(round(size * self._kept_share(module, removed[d.group])))
            raw += size
        return int(round(_FILE_OVERHEAD + self._header + body + raw))

    def replayed(self, config: CompressConfig) -> int:
        """Bytes of the real file ``config`` makes of the base network without training: every
        stage's own in-place function replayed in order (the training ones skipped), packed
        into a temporary file. Exact but for what training moves; a pipeline's cost, not a
        millisecond."""
        model = copy.deepcopy(self._base).eval()
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            out = Path(tmp) / "replay.apk"
            run = Run(
                config, torch.zeros(1, *self._input_shape), out=out, spec=self._spec, meta=_probe_meta(model)
            )
            for stage, stage_config in config.items():
                if not stage.trains:
                    stage.apply_(model, stage_config, run)
            return out.stat().st_size

    def _kept_share(self, module: str, n: int) -> float:
        """The share of a module's outputs left when their group loses its ``n`` least
        important channels."""
        key = (module, n)
        if key not in self._shares:
            d = self._dims[(module, "out")]
            gone = np.isin(d.root, self._groups[d.group][2][:n]).sum()
            self._shares[key] = 1.0 - gone / max(len(d.root), 1)
        return self._shares[key]

    def _header_bytes(self, base: nn.Module, spec: ModelSpec, input_shape: tuple[int, ...]) -> int:
        """The compressed JSON header of a real packed file of this network (a third of its
        filters and half its weights pruned, 6/4 bits): its size varies by a few percent with
        the settings and the numbers it holds."""

        model = copy.deepcopy(base).eval()
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            prune_filters_(model, FilterPruneConfig(default=0.3), torch.zeros(1, *input_shape))
            prune_magnitude_(model, MagnitudeConfig(default=0.7))
            share = ShareConfig(conv_bits=6, fc_bits=4)
            share_weights_(model, share)
            bits = {n: share.bits_for(n, m) for n, m in weight_layers(model).items()}
            path = Path(tmp) / "probe.apk"
            save_packed(model, spec, path, bits=bits, meta=_probe_meta(model))
            data = path.read_bytes()
        return struct.unpack_from("<I", data, len(MAGIC) + 1)[0]


def _round3(n: int) -> int:
    """``n`` to three significant digits: positions cost the same within that, and a cache hits."""
    return int(float(f"{n:.3g}"))


@functools.lru_cache(maxsize=65536)
def _position_bits(numel: int, nonzero: int, index_bits: int, huffman: bool) -> float:
    gaps = expected_gap_counts(numel, min(nonzero, numel), index_bits)
    gaps[gaps < 0.5] = 0.0  # gaps that long are unlikely to occur at all: not in the code table
    return float(stream_bits(gaps, index_bits, huffman))


@dataclass(frozen=True)
class _KeptWeights:
    """A layer's weights after structured pruning, and what magnitude pruning needs of them."""

    key: tuple[int, int]  # kept output and input channels: the same counts keep the same weights
    values: np.ndarray  # (n,) the kept weights, flattened
    magnitudes: np.ndarray  # (n,) their absolute values
    std: np.float32  # of the kept weights (ddof 1), for quality thresholds
    zeros: int

    @classmethod
    def of(cls, flat: np.ndarray, key: tuple[int, int]) -> _KeptWeights:
        std = np.float32(flat.std(ddof=1)) if flat.size > 1 else np.float32(0)
        return cls(key, flat, np.abs(flat), std, int(flat.size - np.count_nonzero(flat)))

    @property
    def numel(self) -> int:
        return self.values.size

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.magnitudes.nbytes

    def survivors(self, mode: str, value: float) -> int:
        """How many nonzero weights magnitude pruning keeps, as
        :func:`~autoprune.compress.unstructured.magnitude_mask` decides on the weights before
        fine-tuning (zeros stay pruned; by ratio, the smallest go first, zeros among them)."""
        n = self.numel
        if value <= 0:
            return n - self.zeros
        if mode == "quality":
            threshold = np.float32(value) * self.std
            return int(np.count_nonzero(self.magnitudes >= threshold)) if threshold > 0 else n - self.zeros
        return n - max(int(round(value * n)), self.zeros)

    def largest(self, count: int) -> np.ndarray:
        """The ``count`` weights of largest magnitude (ties by position, as magnitude pruning
        breaks them): those that survive."""
        order = np.argsort(self.magnitudes, kind="stable")
        return self.values[order[self.numel - count :]]


def _clustered(values: np.ndarray, bits: int, init: str) -> tuple[float, int]:
    """Bits per value of the cluster-index stream of ``values`` shared into ``2**bits``
    clusters, and how many clusters (codebook entries) that leaves."""
    if values.size == 0:
        return 0.0, 0
    result = kmeans_1d(values.astype(np.float64), 1 << bits, init=init, seed=0)
    counts = np.bincount(result.labels, minlength=len(result.centroids)).astype(np.float64)
    return stream_bits(counts, bits) / values.size, len(result.centroids)


def _probe_meta(model: nn.Module) -> dict:
    """Meta like a search trial's (its study, dataset, base and settings: a float per layer
    and stage), so that the probe's header weighs what a trial's does."""
    settings: dict[str, object] = {f"quality_{n}": 1.2345678901234567 for n in weight_layers(model)}
    settings |= {
        f"ratio_{n}": 0.12345678901234567 for n, m in weight_layers(model).items() if isinstance(m, nn.Conv2d)
    }
    settings |= {
        "conv_bits": 6,
        "fc_bits": 4,
        "init": "density",
        "finetune_epochs": 2,
        "lr": 0.0012345678901234567,
    }
    return {
        "study": "x" * 16,
        "trial": 12,
        "recipe": "TPESampler trial 12",
        "settings": settings,
        "dataset": {"name": "fashion-mnist", "data_dir": None, "val_fraction": 0.1, "seed": 0},
        "base": {
            "accuracy": 91.23456789012345,
            "dense_bytes": 123456,
            "macs": 1234567,
            "latency_ms": 0.0123456789,
        },
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The probe's pruning says nothing: its warnings are about a config nobody asked for."""
    logger = logging.getLogger("autoprune.compress.structured")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
