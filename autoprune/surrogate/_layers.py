"""What the surrogate sees of a trial: one row of numbers per weight layer, the same kind of row
for every network, so that one model serves every layer and every study.

A row joins three things:

- the layer itself (from the base model and its sensitivity analysis): its size, depth and
  kind, the statistics of its filters' L1 norms, and points of its sensitivity curves;
- what the trial does to it (replayed exactly by :class:`SizeModel`): the share of its
  filters and of its inputs removed, the share of its weights zeroed, its bits, and the
  accuracy the sensitivity analysis saw lost at those very settings;
- the trial's fine-tuning: batches, learning rate, trained quantization, centroid init.

The size of a candidate is not learnt: :class:`SizeModel` computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from autoprune.compress import CompressConfig, weight_layers
from autoprune.compress.size import LayerSize, SizeModel
from autoprune.models import ModelSpec
from autoprune.ops.kmeans import INITS
from autoprune.sensitivity import Sensitivity

LAYER_FEATURES = (
    "log10_params",
    "depth",
    "is_conv",
    "filters_removable",
    "norm_mean",
    "norm_std",
    "norm_low_share",
    "drop_f30",
    "drop_f50",
    "drop_f70",
    "drop_q1",
    "drop_q15",
    "drop_q2",
)
PRIOR_FEATURES = ("damage_at_ratio", "damage_at_magnitude", "damage_at_bits")  # the additive prior's terms
SETTING_FEATURES = (
    "filters_removed",
    "inputs_removed",
    "sparsity",
    "magnitude_share",
    "bits",
    *PRIOR_FEATURES,
)
GLOBAL_FEATURES = ("log10_batches", "log10_lr", "log10_quant_batches", *(f"init_{i}" for i in INITS))
FEATURES = LAYER_FEATURES + SETTING_FEATURES + GLOBAL_FEATURES
DROP_SCALE = 10.0  # sensitivity drops enter in tens of points
PRIOR_COLUMNS = [FEATURES.index(f) for f in PRIOR_FEATURES]


def prior_drop(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The additive sensitivity prior of encoded trials (n, layers, features): the summed
    damage of every layer's settings, in points, as the allocator predicts it
    (:mod:`autoprune.search.propose`)."""
    return (x[..., PRIOR_COLUMNS].sum(-1) * mask).sum(-1) * DROP_SCALE


@dataclass
class Encoded:
    """Trials (or candidates) as the network reads them."""

    x: np.ndarray  # (n, layers, features) float32
    mask: np.ndarray  # (n, layers) bool: which rows are real layers (networks differ in depth)
    ratio: np.ndarray  # (n,) compression ratio, computed: base dense bytes / estimated packed bytes

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def join(parts: list[Encoded]) -> Encoded:
        """Rows of several networks in one batch, padded to the deepest."""
        depth = max(p.x.shape[1] for p in parts)
        xs, masks = [], []
        for p in parts:
            pad = depth - p.x.shape[1]
            xs.append(np.pad(p.x, ((0, 0), (0, pad), (0, 0))))
            masks.append(np.pad(p.mask, ((0, 0), (0, pad))))
        return Encoded(np.concatenate(xs), np.concatenate(masks), np.concatenate([p.ratio for p in parts]))

    def take(self, rows: np.ndarray) -> Encoded:
        return Encoded(self.x[rows], self.mask[rows], self.ratio[rows])


class LayerView:
    """One base network as the surrogate sees it: its layers' fixed rows, and the exact effect
    of any config on them."""

    def __init__(
        self,
        base: nn.Module,
        spec: ModelSpec,
        sensitivity: Sensitivity,
        *,
        train_batches: int,
        dense_bytes: int,
        sizes: SizeModel | None = None,
    ):
        self.sensitivity = sensitivity
        self.sizes = sizes or SizeModel(base, spec)
        self.train_batches = train_batches  # batches in one epoch of the training split
        self.dense_bytes = dense_bytes  # the base's fp32 size: the numerator of the ratio
        layers = weight_layers(base)
        self.layers = list(layers)
        self._out = {n: m.weight.shape[0] for n, m in layers.items()}
        self._in = {n: m.weight.shape[1] for n, m in layers.items()}
        self._fixed = np.array([self._layer_row(n) for n in self.layers], dtype=np.float32)
        # a coupled part's convs are pruned together: its damage is counted once, on its first
        self._followers = {n for part in self.sizes.coupled(self.layers) for n in part[1:]}

    def _layer_row(self, name: str) -> list[float]:
        s = self.sensitivity
        layer = s.layer(name)
        norms = np.asarray(layer.norms)
        return [
            math.log10(max(layer.params, 1)) / 6,
            layer.depth,
            float(layer.kind == "conv"),
            float(layer.filters),
            float(norms.mean()),
            float(norms.std()),
            float((norms < 0.5).mean()),
            *(s.drop_at_ratio(name, r) / DROP_SCALE for r in (0.3, 0.5, 0.7)),
            *(s.drop_at_quality(name, q) / DROP_SCALE for q in (1.0, 1.5, 2.0)),
        ]

    def encode(self, configs: list[CompressConfig]) -> Encoded:
        x = np.zeros((len(configs), len(self.layers), len(FEATURES)), dtype=np.float32)
        ratio = np.zeros(len(configs))
        for i, config in enumerate(configs):
            removed = self.sizes.removed(config)
            layers = self.sizes.layers(config, removed=removed)
            x[i, :, : len(LAYER_FEATURES)] = self._fixed
            x[i, :, len(LAYER_FEATURES) :] = self._trial_rows(config, removed, {s.layer: s for s in layers})
            ratio[i] = self.dense_bytes / max(self.sizes.estimate(config, removed=removed, layers=layers), 1)
        return Encoded(x, np.ones(x.shape[:2], dtype=bool), ratio)

    def _trial_rows(self, config: CompressConfig, removed: dict, sizes: dict[str, LayerSize]) -> np.ndarray:
        f, q = config.finetune, config.quantize
        per_epoch = min(f.max_batches or self.train_batches, self.train_batches)
        batches = f.epochs * per_epoch
        quant = (q.epochs if q.enabled else 0) * per_epoch
        globals_ = [
            math.log10(batches + 1) / 4,
            math.log10(f.lr) + 3,
            math.log10(quant + 1) / 4,
            *(float(q.init == i) for i in INITS),
        ]
        rows = []
        for name in self.layers:
            size = sizes[name]
            out_kept = self.sizes.kept_channels(name, "out", removed)
            in_kept = self.sizes.kept_channels(name, "in", removed)
            filters_removed = 1.0 - out_kept / self._out[name]
            inputs_removed = 1.0 - in_kept / self._in[name]
            magnitude = 1.0 - size.nonzero / max(size.weights, 1)  # of the weights structured pruning kept
            bits = min(q.bits_for(name, self.sizes.module(name)), 16) if q.enabled else 16
            s = self.sensitivity
            # the ratio asked (the share removed for a norm threshold or a global ranking, whose
            # asks are the shares removed): as the allocator counts it
            per_layer = config.structured.mode == "ratio" and config.structured.ranking == "layer"
            asked = config.structured.value_for(name) if per_layer else filters_removed
            ratio = 0.0 if name in self._followers else asked
            rows.append(
                [
                    filters_removed,
                    inputs_removed,
                    size.sparsity,
                    magnitude,
                    bits / 8,
                    s.damage_at_ratio(name, ratio) / DROP_SCALE,
                    s.damage_at_quality(name, self._quality(config, name, magnitude)) / DROP_SCALE,
                    s.damage_at_bits(name, bits) / DROP_SCALE,
                    *globals_,
                ]
            )
        return np.asarray(rows, dtype=np.float32)

    def _quality(self, config: CompressConfig, name: str, share: float) -> float:
        """The magnitude quality (threshold / std) of the layer: the config's own, or for a
        sparsity target the quality that zeroes ``share`` on the layer's sparsity curve."""
        u = config.unstructured
        if u.mode == "quality":
            return u.value_for(name)
        layer = self.sensitivity.layer(name)
        sparsity = np.maximum.accumulate(np.asarray((0.0, *layer.quality_sparsity)))
        return float(np.interp(share, sparsity, (0.0, *self.sensitivity.qualities)))
