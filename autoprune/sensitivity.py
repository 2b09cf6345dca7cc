"""Layer sensitivity (Li et al., 2017, section 4.1): how much validation accuracy a trained
network loses when one layer alone is pruned, with no fine-tuning.

For every conv layer whose filters can be removed, the network is pruned at ratios 0.1 .. 0.9
of that layer's filters (lowest L1 norm first, physically removed); for every weight layer, its
single weights are pruned at magnitude qualities 0.25 .. 3 (threshold = quality x std). Each
point is one evaluation of the validation split: cheap next to a search trial. For every weight
layer too, its weights shared by k-means at 2 .. 8 bits (no trained quantization). Alongside,
each layer's sorted filter (or neuron) L1 norms, the seed paper's Figure 1.

These probes are the additive prior of :mod:`autoprune.search.propose` (the proposals made
before any trial) and of the surrogate, which learns only what they miss.

The result is cached per base model and data (like the base itself), stored in the study, and
read by the surrogate as its view of each layer.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from autoprune.cache import cache_folder, read_bytes, write_atomic
from autoprune.compress import FilterPruneConfig, output_layer, prune_filters_, weight_layers
from autoprune.compress._layers import layer_kind
from autoprune.compress.unstructured import magnitude_mask
from autoprune.data import DataSplits
from autoprune.errors import AutoPruneError
from autoprune.measure import accuracy
from autoprune.ops.kmeans import kmeans_1d

log = logging.getLogger(__name__)

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # shares of a layer's filters removed
QUALITIES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)  # magnitude thresholds, in the layer's stds
BITS = (2, 3, 4, 5, 6, 8)  # weight sharing: 2**bits k-means centroids per layer
VERSION = 2  # of the analysis and its record: a new one invalidates the cache (2: bits probes)
READS = (1, 2)  # versions from_dict reads (a version-1 record has no bits probes: they count as no damage)


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    kind: str  # "conv" or "fc"
    params: int  # weights of the layer
    depth: float  # position among the weight layers: 0 first, 1 last
    norms: tuple[float, ...]  # L1 norm of each filter (fc: each neuron), sorted descending, / the largest
    filters: bool  # whether its filters can be removed (not the output layer, not a grouped conv)
    ratio_acc: tuple[float, ...]  # validation accuracy with only this layer's filters pruned at RATIOS
    quality_acc: tuple[float, ...]  # ... with only its single weights pruned at QUALITIES
    quality_sparsity: tuple[float, ...]  # share of its weights each quality zeroes
    bits_acc: tuple[float, ...] = ()  # ... with only its weights shared at BITS (k-means, linear init)


@dataclass(frozen=True)
class Sensitivity:
    base_accuracy: float  # validation accuracy of the untouched network
    layers: tuple[LayerSensitivity, ...]
    ratios: tuple[float, ...] = RATIOS
    qualities: tuple[float, ...] = QUALITIES
    bits: tuple[float, ...] = BITS
    seconds: float = 0.0  # what the analysis cost when it was computed
    key: str = ""  # the cache key: base weights, data and version

    def layer(self, name: str) -> LayerSensitivity:
        for s in self.layers:
            if s.layer == name:
                return s
        raise KeyError(name)

    def drop_at_ratio(self, name: str, ratio: float) -> float:
        """Points of validation accuracy lost with ``ratio`` of the layer's filters removed
        (interpolated; 0 for a layer whose filters stay)."""
        s = self.layer(name)
        if not s.filters or ratio <= 0:
            return 0.0
        acc = np.interp(ratio, (0.0, *self.ratios), (self.base_accuracy, *s.ratio_acc))
        return float(self.base_accuracy - acc)

    def drop_at_quality(self, name: str, quality: float) -> float:
        """Points lost with the layer's weights below ``quality`` x std zeroed (interpolated)."""
        if quality <= 0:
            return 0.0
        s = self.layer(name)
        acc = np.interp(quality, (0.0, *self.qualities), (self.base_accuracy, *s.quality_acc))
        return float(self.base_accuracy - acc)

    # The additive prior's damage (autoprune.search.propose, the surrogate's prior): the probed
    # drops clipped at zero and made non-decreasing along growing pruning (a probe's noise is
    # not a gain to spend elsewhere), interpolated between the probes.

    def damage_at_ratio(self, name: str, ratio: float) -> float:
        s = self.layer(name)
        if not s.filters or ratio <= 0:
            return 0.0
        return float(
            np.interp(
                ratio, (0.0, *self.ratios), _envelope((0.0, *(self.base_accuracy - a for a in s.ratio_acc)))
            )
        )

    def damage_at_quality(self, name: str, quality: float) -> float:
        if quality <= 0:
            return 0.0
        s = self.layer(name)
        return float(
            np.interp(
                quality,
                (0.0, *self.qualities),
                _envelope((0.0, *(self.base_accuracy - a for a in s.quality_acc))),
            )
        )

    def damage_at_bits(self, name: str, bits: float) -> float:
        s = self.layer(name)
        if not s.bits_acc or bits >= self.bits[-1]:
            return 0.0
        fewer = _envelope([self.base_accuracy - a for a in reversed(s.bits_acc)])[::-1]  # grows as bits fall
        return float(np.interp(bits, self.bits, fewer))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "key": self.key,
            "base_accuracy": self.base_accuracy,
            "seconds": round(self.seconds, 2),
            "ratios": list(self.ratios),
            "qualities": list(self.qualities),
            "bits": list(self.bits),
            "layers": [
                {
                    **s.__dict__,
                    "norms": [round(v, 4) for v in s.norms],
                    "ratio_acc": list(s.ratio_acc),
                    "quality_acc": list(s.quality_acc),
                    "quality_sparsity": [round(v, 4) for v in s.quality_sparsity],
                    "bits_acc": list(s.bits_acc),
                }
                for s in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Sensitivity:
        """A stored analysis (a study's or the cache's: data, checked field by field)."""
        try:
            if d["version"] not in READS:
                raise ValueError(f"version {d['version']}, this autoprune reads {', '.join(map(str, READS))}")
            layers = tuple(
                LayerSensitivity(
                    layer=str(s["layer"]),
                    kind=str(s["kind"]),
                    params=int(s["params"]),
                    depth=float(s["depth"]),
                    norms=_floats(s["norms"]),
                    filters=bool(s["filters"]),
                    ratio_acc=_floats(s["ratio_acc"]),
                    quality_acc=_floats(s["quality_acc"]),
                    quality_sparsity=_floats(s["quality_sparsity"]),
                    bits_acc=_floats(s.get("bits_acc", ())),
                )
                for s in d["layers"]
            )
            out = cls(
                _floats([d["base_accuracy"]])[0],
                layers,
                _floats(d["ratios"]),
                _floats(d["qualities"]),
                _floats(d.get("bits", BITS)),
                float(d.get("seconds", 0.0)),
                str(d.get("key", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise AutoPruneError(
                f"a stored sensitivity analysis is unreadable ({e}); run autoprune sensitivity again"
            ) from None
        for s in out.layers:
            if (
                len(s.quality_acc) != len(out.qualities)
                or (s.filters and len(s.ratio_acc) != len(out.ratios))
                or len(s.bits_acc) not in (0, len(out.bits))
            ):
                raise AutoPruneError(
                    f"a stored sensitivity analysis has curves of the wrong length ({s.layer})"
                )
        return out


def _envelope(drops: Any) -> np.ndarray:
    return np.maximum.accumulate(np.maximum(np.asarray(drops, dtype=float), 0.0))


def _floats(values: Any) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError("a value is not finite")
    return out


def filters_removable(model: nn.Module) -> set[str]:
    """Conv layers whose filters structured pruning may remove: not the output layer and not a
    grouped (depthwise) conv, which follows the layer that feeds it."""
    out = output_layer(model)
    return {
        n for n, m in weight_layers(model).items() if isinstance(m, nn.Conv2d) and n != out and m.groups == 1
    }


def row_norms(weight: torch.Tensor) -> np.ndarray:
    """L1 norm of each output filter (conv) or neuron (fc), sorted descending, / the largest."""
    norms = weight.detach().abs().flatten(1).sum(1)
    norms = torch.sort(norms, descending=True).values
    return (norms / norms[0].clamp_min(1e-12)).numpy()


def analyse(base: nn.Module, splits: DataSplits, *, progress: bool = True) -> Sensitivity:
    """The sensitivity of every weight layer of ``base`` (eval mode), on the validation split."""
    started = time.perf_counter()
    base = base.eval()
    layers = weight_layers(base)
    removable = filters_removable(base)
    example = torch.zeros(1, *splits.input_shape)
    base_acc = accuracy(base, splits.val)
    total = len(removable) * len(RATIOS) + len(layers) * (len(QUALITIES) + len(BITS))
    bar = tqdm(total=total, desc="sensitivity", unit="eval", disable=not progress, leave=False)
    out = []
    for i, (name, module) in enumerate(layers.items()):
        ratio_acc = []
        if name in removable:
            for ratio in RATIOS:
                pruned = copy.deepcopy(base)
                prune_filters_(pruned, FilterPruneConfig(mode="ratio", layers={name: ratio}), example)
                ratio_acc.append(accuracy(pruned, splits.val))
                bar.update()
        quality_acc, sparsity = [], []
        weight = module.weight
        kept = weight.detach().clone()
        for quality in QUALITIES:
            mask = magnitude_mask(kept, "quality", quality)
            with torch.no_grad():
                weight.copy_(kept * mask)
            quality_acc.append(accuracy(base, splits.val))
            sparsity.append(1.0 - float(mask.float().mean()))
            bar.update()
        bits_acc = []
        for bits in BITS:
            with torch.no_grad():
                weight.copy_(shared(kept, bits))
            bits_acc.append(accuracy(base, splits.val))
            bar.update()
        with torch.no_grad():
            weight.copy_(kept)
        out.append(
            LayerSensitivity(
                layer=name,
                kind=layer_kind(module),
                params=weight.numel(),
                depth=i / max(len(layers) - 1, 1),
                norms=tuple(float(v) for v in row_norms(weight)),
                filters=name in removable,
                ratio_acc=tuple(ratio_acc),
                quality_acc=tuple(quality_acc),
                quality_sparsity=tuple(sparsity),
                bits_acc=tuple(bits_acc),
            )
        )
    bar.close()
    return Sensitivity(base_acc, tuple(out), seconds=time.perf_counter() - started)


def shared(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` with its non-zero values replaced by their k-means centroid (2**bits of them,
    linear init: the pipeline's weight sharing before trained quantization)."""
    out = weight.clone()
    nonzero = weight != 0
    values = weight[nonzero].double().numpy()
    if values.size:
        result = kmeans_1d(values, 1 << bits, init="linear")
        out[nonzero] = torch.from_numpy(result.centroids[result.labels]).to(weight.dtype)
    return out


def cache_key(base: nn.Module, splits: DataSplits) -> str:
    """What the analysis depends on: the base's weights, the data and this code's version."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(
        json.dumps(
            {
                "version": VERSION,
                "ratios": RATIOS,
                "qualities": QUALITIES,
                "bits": BITS,
                "data": splits.fingerprint,
            }
        ).encode()
    )
    for name, tensor in base.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_path(key: str) -> Path:
    return cache_folder("sensitivity") / f"{key}.json"


def sensitivity_for(
    base: nn.Module, splits: DataSplits, *, progress: bool = True, use_cache: bool = True
) -> tuple[Sensitivity, bool]:
    """The analysis of ``base``, computed at most once per base model and data (cached beside
    the base models); returns it and whether it came from the cache."""
    key = cache_key(base, splits)
    path = cache_path(key)
    if use_cache and (data := read_bytes(path)) is not None:
        try:
            return Sensitivity.from_dict(json.loads(data)), True
        except (AutoPruneError, json.JSONDecodeError):
            log.warning("the cached sensitivity analysis %s is unreadable: computing it again", path)
    result = analyse(base, splits, progress=progress)
    result = dataclasses.replace(result, key=key)
    write_atomic(path, json.dumps(result.to_dict()).encode())
    return result, False
