"""Least-squares reconstruction of the layers that lost input channels to filter pruning.

Removing a layer's filters takes channels away from the layers it feeds; each such layer then
sums fewer inputs and its outputs drift from what the rest of the network was trained on. As in
Channel Pruning (He et al., 2017) and ThiNet (Luo et al., 2017), each one is refitted, in the
order the network runs them, to give the original network's outputs from the pruned network's
inputs on a few training images: a ridge regression over its kernel's receptive fields, pulled
towards the weights it kept. Its batch norm then sees the statistics it was trained on, and
fine-tuning starts from a network that already works.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.compress._layers import WeightLayer, weight_layers
from autoprune.data import DataSplits

ROWS_PER_WEIGHT = 16  # sampled positions per input weight of a layer's filter: a well-posed fit
MAX_ROWS = 16_384  # per layer, however wide: the fit's cost grows with rows times width squared
DAMPING = 1e-3  # ridge weight, a share of the mean diagonal of the inputs' Gram matrix
CHUNK = 64  # images per forward pass
CACHE_BYTES = 1 << 30  # the original's inputs to every refitted layer, kept from one pass when they fit


@dataclass(frozen=True)
class Kept:
    """The channels of one layer that pruning kept, as indices into the original layer's."""

    outputs: tuple[int, ...]
    inputs: tuple[int, ...]


def step_noting_kept(pruner: tp.pruner.MetaPruner, model: nn.Module) -> dict[str, Kept]:
    """Prune group by group, noting which of its original channels every conv and linear layer
    keeps (a group's indices count the channels left by the groups pruned before it)."""
    names: dict[nn.Module, str] = {m: n for n, m in weight_layers(model).items()}
    kept: dict[tuple[nn.Module, bool], list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            layer = dep.target.module
            if layer not in names:
                continue
            out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
            now = kept.setdefault((layer, out), list(range(_width(layer, out))))
            drop = set(idxs)
            kept[(layer, out)] = [c for i, c in enumerate(now) if i not in drop]
        group.prune()
    return {
        names[m]: Kept(
            tuple(kept.get((m, True), range(_width(m, True)))),
            tuple(kept.get((m, False), range(_width(m, False)))),
        )
        for m in {layer for layer, _ in kept}
    }


def _width(layer: nn.Module, out: bool) -> int:
    if isinstance(layer, nn.Conv2d):
        return int(layer.out_channels if out else layer.in_channels)
    assert isinstance(layer, nn.Linear)
    return int(layer.out_features if out else layer.in_features)


def ridge_fit(gram: torch.Tensor, cross: torch.Tensor, prior: torch.Tensor, damping: float) -> torch.Tensor:
    """argmin_W |A W - Y|^2 + lam |W - prior|^2 from ``gram`` = A^T A (d, d) and ``cross`` =
    A^T Y (d, o), with lam = ``damping`` times the mean of gram's diagonal; returns W (d, o)."""
    lam = damping * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, cross + lam * prior)


class _Reached(Exception):
    """Raised by a hook once the layer's input is captured: the rest of the forward is not needed."""


def _input_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``x`` (the forward stops there)."""
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0])
        raise _Reached

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the layer was not reached by the forward pass")
    return seen[0]


def _rows(
    layer: WeightLayer, x: torch.Tensor, x0: torch.Tensor, per_image: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of a layer (``x``) and of its original (``x0``) as rows of a linear map, at
    the same places: ``per_image`` receptive fields of each image for a conv ((rows, C*kh*kw),
    ordered as ``F.unfold`` orders them), an image's inputs for a linear layer."""
    if not isinstance(layer, nn.Conv2d):
        return x.flatten(1), x0.flatten(1)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ph, pw = layer.padding if isinstance(layer.padding, tuple) else _same(layer)
    n, _, height, width = x.shape
    out_h, out_w = (
        (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
        (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
    )
    places = torch.rand(n, out_h * out_w, generator=generator).argsort(1)[:, :per_image]  # (N, k)
    image = torch.arange(n)[:, None].expand_as(places).reshape(-1).to(x.device)
    top = (places // out_w * sh).reshape(-1).to(x.device)
    left = (places % out_w * sw).reshape(-1).to(x.device)

    def fields(t: torch.Tensor) -> torch.Tensor:  # (rows, C * kh * kw): only the places drawn
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        t = F.pad(t, (pw, pw, ph, ph), mode=mode)
        taps = [t[image, :, top + i * dh, left + j * dw] for i in range(kh) for j in range(kw)]
        return torch.stack(taps, 2).flatten(1)

    return fields(x), fields(x0)


def _same(layer: nn.Conv2d) -> tuple[int, int]:
    """The padding of ``padding="same"`` (stride 1): half the dilated kernel, as torch pads it
    when even (the extra row and column at the end are left out: a rare case, off by a pixel)."""
    if layer.padding == "valid":
        return 0, 0
    return tuple(d * (k - 1) // 2 for k, d in zip(layer.kernel_size, layer.dilation))  # type: ignore[return-value]


def _flat(layer: WeightLayer) -> torch.Tensor:
    return layer.weight.detach().flatten(1)  # (out, in * kh * kw)


def training_images(splits: DataSplits, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` training images drawn at random (normalised, not augmented): what a refit sees;
    fewer when ``n`` of them would take more than ``CACHE_BYTES`` (large images)."""
    n = min(n, max(1, CACHE_BYTES // (4 * math.prod(splits.input_shape))))
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.cat([x for x, _ in splits.train.batches(256, order)])


@torch.no_grad()
def reconstruct_(
    pruned: nn.Module,
    original: nn.Module,
    kept: Mapping[str, Kept],
    images: torch.Tensor,
    *,
    seed: int = 0,
) -> list[str]:
    """Refit, in place, every conv (ungrouped) and linear layer of ``pruned`` that lost input
    channels, to give ``original``'s outputs (its kept ones) on ``images``; returns the names of
    the layers refitted. ``kept`` maps layer names to what pruning kept of them."""
    layers, before = weight_layers(pruned), weight_layers(original)
    targets = [
        name
        for name, k in kept.items()
        if name in layers
        and getattr(layers[name], "groups", 1) == 1
        and len(k.inputs) < _width(before[name], out=False)
    ]
    order = [n for n, _ in pruned.named_modules() if n in targets]  # definition order ~ run order
    modes = (pruned.training, original.training)
    pruned.eval()
    original.eval()
    generator = torch.Generator().manual_seed(seed)
    try:
        cache = _original_inputs(original, [before[n] for n in order], images) if order else {}
        for name in order:
            source = before[name]
            originals = cache.get(source)
            _refit(pruned, original, layers[name], source, kept[name], images, generator, originals)
    finally:
        pruned.train(modes[0])
        original.train(modes[1])
    return order


def _refit(
    pruned: nn.Module,
    original: nn.Module,
    layer: WeightLayer,
    source: WeightLayer,
    kept: Kept,
    images: torch.Tensor,
    generator: torch.Generator,
    originals: torch.Tensor | None,
) -> None:
    """Refit ``layer`` of ``pruned`` to give what ``source`` gives in ``original`` (whose inputs
    on ``images`` are ``originals`` when kept, else computed again)."""
    device = layer.weight.device
    outputs = torch.tensor(kept.outputs, device=device)
    target_w = _flat(source)[outputs].T.float()  # (d_orig, o)
    target_b = None if source.bias is None else source.bias.detach()[outputs].float()
    bias = layer.bias
    gram = cross = None
    width = _flat(source).shape[1]
    per_image = max(1, -(-min(MAX_ROWS, ROWS_PER_WEIGHT * width) // len(images)))
    for x, x0 in _inputs_in_chunks(pruned, original, layer, source, images, originals):
        a, a0 = (t.float() for t in _rows(layer, x, x0, per_image, generator))  # half: sums overflow
        y = a0 @ target_w  # (rows, o): the original layer's outputs
        if target_b is not None:
            y = y + target_b
        if bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=device)], 1)
        gram = a.T @ a if gram is None else gram + a.T @ a
        cross = a.T @ y if cross is None else cross + a.T @ y
    assert gram is not None and cross is not None
    gram, cross = gram.double(), cross.double()
    prior = _flat(layer).T.to(torch.float64)
    if bias is not None:
        prior = torch.cat([prior, bias.detach().to(torch.float64)[None]], 0)
    solved = ridge_fit(gram, cross, prior, DAMPING)
    if not torch.isfinite(solved).all():
        return  # a singular fit: keep the weights pruning left
    if bias is not None:
        bias.copy_(solved[-1].to(bias.dtype))
        solved = solved[:-1]
    layer.weight.copy_(solved.T.reshape(layer.weight.shape).to(layer.weight.dtype))


def _inputs_in_chunks(
    pruned: nn.Module,
    original: nn.Module,
    layer: WeightLayer,
    source: WeightLayer,
    images: torch.Tensor,
    originals: torch.Tensor | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The layer's input in ``pruned`` and its original's in ``original``, chunk by chunk."""
    device = layer.weight.device
    for start in range(0, len(images), CHUNK):
        x = images[start : start + CHUNK].to(device)
        if originals is not None:
            x0 = originals[start : start + CHUNK].to(device)
        else:
            x0 = _input_of(original, source, x.to(source.weight.device))
        yield _input_of(pruned, layer, x), x0


def _original_inputs(
    original: nn.Module, sources: list[WeightLayer], images: torch.Tensor
) -> dict[WeightLayer, torch.Tensor]:
    """Every layer of ``sources``' input in ``original`` on ``images``, from one pass, when
    they all fit in ``CACHE_BYTES``; else none (each is computed again, up to its layer: the
    original then runs once per refitted layer, most of a refit's time)."""
    seen: dict[nn.Module, list[torch.Tensor]] = {s: [] for s in sources}
    chunk = [0]

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if len(seen[module]) == chunk[0]:  # a layer run twice in a pass: its first input
            seen[module].append(args[0])

    device = sources[0].weight.device
    handles = [s.register_forward_pre_hook(hook) for s in sources]
    try:
        original(images[:1].to(device))
        size = sum(v[0].numel() * v[0].element_size() for v in seen.values() if v) * len(images)
        if size > CACHE_BYTES:
            return {}
        for v in seen.values():
            v.clear()
        for chunk[0], start in enumerate(range(0, len(images), CHUNK)):
            original(images[start : start + CHUNK].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {s: torch.cat(seen[s]) for s in sources if len(seen[s]) == chunk[0] + 1}
