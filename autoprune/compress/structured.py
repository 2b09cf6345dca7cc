"""Filter pruning by L1 (or L2) norm with the filters physically removed (Li et al., 2017).

The ranking is Li et al.'s: a filter's importance is the norm of its own kernel weights. The
surgery is torch-pruning's dependency graph, which removes every coupled channel with the
filter: batch norm, the next layer's inputs, residual additions, depthwise groups, concats.
When filters of several convs are coupled (a residual sum), their norms are added. The
``group`` criterion is Torch-Pruning's own: the L1 norm of every weight the channel's removal
takes (its filters, batch norm and the next layers' input slices), over its group's mean.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.compress._layers import (
    RecipeError,
    by_position,
    check_layer_names,
    check_positions,
    conv_layers,
    output_layer,
)
from autoprune.compress.reconstruct import reconstruct_, step_noting_kept, training_images
from autoprune.compress.stage import (
    Param,
    Run,
    SpaceLayers,
    Stage,
    per_layer_params,
    per_layer_values,
    ranged,
    register,
    value,
)
from autoprune.limits import MAX_RECONSTRUCT_IMAGES

log = logging.getLogger(__name__)


CRITERIA = ("l1", "l2", "group")


@dataclass(frozen=True)
class FilterPruneConfig:
    """How many filters each conv layer loses."""

    mode: str = "ratio"  # "ratio": share of filters removed; "threshold": remove filters whose
    #                      norm / the layer's largest norm is below the value (the seed's way)
    default: float = 0.0  # applied to every conv layer not named in ``layers`` or ``positions``
    layers: dict[str, float] = field(default_factory=dict)  # per-layer value by module name
    positions: dict[str, float] = field(default_factory=dict)  # by layer position (first_conv, conv)
    criterion: str = "l1"  # "l1" or "l2" norm of each filter's weights; "group": L1 of every
    #   weight its removal takes (filters, batch norm, the next layers' inputs: Torch-Pruning's)
    round_to: int = 1  # kept channels rounded to a multiple of this (hardware alignment)
    ranking: str = "layer"  # "layer": each conv loses its own share (Li et al.); "global":
    #   ``default`` is the share of all filters removed, ranked across the network (RankedImportance)
    reconstruct: int = 0  # training images on which the layers that lost inputs are refitted by
    #   least squares to the unpruned network's outputs (He et al., 2017); 0: not refitted

    def __post_init__(self) -> None:
        if self.mode not in ("ratio", "threshold"):
            raise RecipeError(f"structured mode={self.mode!r} should be 'ratio' or 'threshold'")
        if self.criterion not in CRITERIA:
            raise RecipeError(f"structured criterion={self.criterion!r} should be 'l1', 'l2' or 'group'")
        if self.criterion == "group" and self.mode != "ratio":
            raise RecipeError(
                "structured criterion='group' ranks channels across coupled layers: it takes "
                "mode='ratio' (a threshold is on each conv's own filter norms)"
            )
        if self.round_to < 1:
            raise RecipeError(f"structured round_to={self.round_to} should be >= 1")
        if not 0 <= self.reconstruct <= MAX_RECONSTRUCT_IMAGES:
            raise RecipeError(
                f"structured reconstruct={self.reconstruct} should be in "
                f"0..{MAX_RECONSTRUCT_IMAGES} (training images)"
            )
        if self.ranking not in ("layer", "global"):
            raise RecipeError(f"structured ranking={self.ranking!r} should be 'layer' or 'global'")
        if self.ranking == "global" and (self.mode != "ratio" or self.layers or self.positions):
            raise RecipeError(
                "structured ranking='global' takes one ratio (default) for the whole network: "
                "no mode, layers or positions"
            )
        check_positions(self.positions, "structured.positions")
        for name, share in [("default", self.default), *self.layers.items(), *self.positions.items()]:
            if not 0.0 <= share < 1.0:
                raise RecipeError(f"structured {self.mode} for {name}={share} should be in [0, 1)")

    def value_for(self, name: str) -> float:
        return self.layers.get(name, self.default)


@dataclass(frozen=True)
class LayerNorms:
    """Plot-ready record of one conv layer's filter norms (the seed's Figure 1)."""

    layer: str
    norms: list[float]  # sorted descending
    normalised: list[float]  # norms / max norm
    kept: int
    removed: int
    asked: float = 0.0  # share of filters the recipe asked to remove
    why: str = ""  # why the share removed differs from the share asked (empty: it does not)

    @property
    def removed_share(self) -> float:
        return self.removed / max(1, self.kept + self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "removed_share": self.removed_share}


def filter_norms(weight: torch.Tensor, criterion: str = "l1") -> torch.Tensor:
    """Norm of each output filter of a conv weight (O, I, kh, kw); L2 for "l2", else L1 (the
    "group" criterion's records show each conv's own filters)."""
    flat = weight.detach().flatten(1)
    return flat.pow(2).sum(1).sqrt() if criterion == "l2" else flat.abs().sum(1)


class FilterNormImportance(tp.importance.Importance):
    """Li et al.'s importance: the norm of the filters themselves, summed over coupled convs."""

    def __init__(self, criterion: str = "l1"):
        self.criterion = criterion

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        for item in group:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            if dep.pruning_fn not in (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels):
                continue
            if any(r is None for r in root_idxs):
                continue
            norms = filter_norms(dep.layer.weight[idxs], self.criterion)
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            total.scatter_add_(0, torch.tensor(root_idxs), norms)
        return total


MAX_GROUP_SHARE = 0.9  # global ranking: no dependency group loses more of its channels
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)


class RankedImportance(FilterNormImportance):
    """Global ranking across layers: each filter's norm over the mean norm of its group, so
    that layers of different widths and fan-ins compare (as Torch-Pruning's global pruning
    normalises its group magnitude)."""

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        norms = super().__call__(group)
        return None if norms is None else norms / norms.mean().clamp_min(1e-12)


def importance(criterion: str, *, ranked: bool = False) -> tp.importance.Importance:
    """The channel importance ``criterion`` names; ``ranked``: comparable across groups (the
    group criterion is already over its group's mean)."""
    if criterion == "group":
        return tp.importance.GroupMagnitudeImportance(p=1)
    return RankedImportance(criterion) if ranked else FilterNormImportance(criterion)


def prune_filters_(
    model: nn.Module,
    config: FilterPruneConfig,
    example_input: torch.Tensor,
    *,
    calibration: torch.Tensor | None = None,
) -> list[LayerNorms]:
    """Remove low-norm filters from ``model`` in place; returns each conv layer's norm record.
    With ``calibration`` images (normalised, (N, C, H, W)), the layers that lost input channels
    are then refitted by least squares to give the unpruned network's outputs on them."""
    if config.ranking == "global":  # the ranking decides each conv's share; pruned as asked so
        layers = ranked_layer_ratios(model, config, example_input)
        config = dataclasses.replace(config, ranking="layer", default=0.0, layers=layers)
    convs = conv_layers(model)
    check_layer_names(config.layers, convs, "structured.layers")
    keep_whole = output_layer(model)
    records, ratios, asked, why = [], {}, {}, {}
    for name, conv in convs.items():
        norms = filter_norms(conv.weight, config.criterion)
        ordered = torch.sort(norms, descending=True).values
        normalised = ordered / ordered[0].clamp_min(1e-12)
        value = config.value_for(name)
        asked[name] = value if config.mode == "ratio" else float((normalised < value).float().mean())
        ratio = asked[name]
        if name == keep_whole:
            ratio, why[name] = 0.0, "the output layer: its outputs are the classes"
        elif conv.groups > 1:
            # depthwise (groups = inputs = outputs) or grouped (each group's outputs tied to its
            # inputs, a channel multiplier included): the layer that feeds it decides
            kind = (
                "depthwise"
                if conv.groups == conv.in_channels == conv.out_channels
                else f"grouped (groups={conv.groups})"
            )
            ratio, why[name] = 0.0, f"{kind} conv: it follows the layer that feeds it"
        removed = _removed_count(conv.out_channels, ratio, config.round_to)
        if removed:
            ratios[conv] = tp_share(removed, conv.out_channels)
        records.append(
            LayerNorms(name, ordered.tolist(), normalised.tolist(), conv.out_channels - removed, removed)
        )
    cuts = channel_cuts(model, example_input) if ratios else Cuts(None, frozenset())
    for name in cuts.whole:
        ratios.pop(convs[name], None)
        why[name] = (
            "its channels pass through a reshape or transpose over the channel axis (a channel "
            "shuffle, say) that the dependency graph cannot follow: left whole"
        )
    if ratios and not _prune_verified(
        model,
        example_input,
        ratios,
        config,
        cuts.forward,
        ignored=[m for n, m in model.named_modules() if n == keep_whole or n in cuts.whole],
        calibration=calibration,
    ):
        names = {m: n for n, m in convs.items()}
        why.update({names[m]: "torch-pruning's surgery failed on this network: left whole" for m in ratios})
    return _as_removed(records, conv_layers(model), asked, why, config.round_to)


def ranked_layer_ratios(
    model: nn.Module, config: FilterPruneConfig, example_input: torch.Tensor
) -> dict[str, float]:
    """Each conv's share of filters removed when ``config.default`` of all channels go, lowest
    :class:`RankedImportance` first, no dependency group losing more than ``MAX_GROUP_SHARE``
    of its channels (a threshold alone would empty the costliest group, which torch-pruning
    then skips whole). Every conv whose filters a group holds gets the group's share."""
    if not config.default:
        return {}
    keep_whole = output_layer(model)
    cuts = channel_cuts(model, example_input)
    ignored = [m for n, m in model.named_modules() if n == keep_whole or n in cuts.whole]
    graph = tp.DependencyGraph().build_dependency(model, example_input, forward_fn=cuts.forward)
    ranking = importance(config.criterion, ranked=True)
    groups, scores = [], []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        score = ranking(group) if group[0].dep.handler in _OUT_FNS else None
        if score is not None and len(score) > 1:
            groups.append(group)
            scores.append(score.cpu())
    if not groups:
        return {}
    channels = [len(s) for s in scores]
    caps = [min(n - 1, int(n * MAX_GROUP_SHARE)) for n in channels]
    owners = torch.cat([torch.full((n,), g) for g, n in enumerate(channels)])
    removed = [0] * len(groups)
    left = int(sum(channels) * config.default)
    for g in owners[torch.argsort(torch.cat(scores))].tolist():  # least important channel first
        if left == 0:
            break
        if removed[g] < caps[g]:
            removed[g] += 1
            left -= 1
    names = {m: n for n, m in conv_layers(model).items()}
    return {
        names[item.dep.target.module]: removed[g] / channels[g]
        for g, group in enumerate(groups)
        if removed[g]
        for item in group
        if item.dep.handler in _OUT_FNS and item.dep.target.module in names
    }


def _as_removed(
    records: list[LayerNorms],
    after: dict[str, nn.Conv2d],
    asked: dict[str, float],
    why: dict[str, str],
    round_to: int,
) -> list[LayerNorms]:
    """The records with what the graph really removed (coupled layers lose filters through their
    partners, or keep them); a layer off its ask by more than the rounding is said, with why."""
    out = []
    for r in records:
        total = len(r.norms)
        removed = total - after[r.layer].out_channels
        reason = ""
        if abs(removed - _removed_count(total, asked[r.layer], round_to)) > max(1, round_to):
            reason = why.get(
                r.layer,
                "coupled through the graph (a residual addition, a concatenation or a "
                "grouped conv it feeds) with layers asked for another share",
            )
            log.warning(
                "structured pruning of %s removed %.0f%% of its filters, %.0f%% asked: %s",
                r.layer,
                100 * removed / total,
                100 * asked[r.layer],
                reason,
            )
        out.append(
            LayerNorms(r.layer, r.norms, r.normalised, total - removed, removed, asked[r.layer], reason)
        )
    return out


def _prune_verified(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: Mapping[nn.Conv2d, float],
    config: FilterPruneConfig,
    forward: Any,
    *,
    ignored: list[nn.Module],
    calibration: torch.Tensor | None = None,
) -> bool:
    """Remove the filters on a copy, check that the copy still runs and gives outputs of the
    same shape, and only then make ``model`` that copy (True); otherwise leave it whole, with a
    line (False). With ``calibration`` images, the layers that lost inputs are refitted to give
    ``model``'s outputs (:func:`reconstruct_`)."""
    with torch.no_grad():
        expected = model(example_input).shape
    trial = copy.deepcopy(model)
    by_name = {id(m): n for n, m in model.named_modules()}
    twins = dict(zip((id(m) for m in model.modules()), trial.modules()))
    try:
        pruner = tp.pruner.MetaPruner(
            trial,
            example_input,
            importance=importance(config.criterion),
            pruning_ratio=0.0,
            pruning_ratio_dict={twins[id(m)]: r for m, r in ratios.items()},
            ignored_layers=[twins[id(m)] for m in ignored],
            round_to=config.round_to if config.round_to > 1 else None,
            root_module_types=[nn.Conv2d],
            forward_fn=forward,  # the graph cut at channel shuffles (None: none to cut)
        )
        kept = step_noting_kept(pruner, trial)
        with torch.no_grad():
            got = trial(example_input).shape
        if got != expected:
            raise RuntimeError(f"the output shape became {tuple(got)}, not {tuple(expected)}")
    except Exception as e:  # torch-pruning's surgery on a graph it misread: keep the network intact
        names = ", ".join(by_name[id(m)] for m in ratios)
        log.warning(
            "structured pruning left every conv whole (%s: %s); asked for %s",
            type(e).__name__,
            str(e).splitlines()[0][:200] if str(e) else "",
            names,
        )
        return False
    if calibration is not None:
        try:
            refitted = reconstruct_(trial, model, kept, calibration)
            log.info("least-squares reconstruction refitted %s", ", ".join(refitted) or "no layer")
        except RuntimeError as e:  # a layer the forward pass never reached: pruned, not refitted
            log.warning("least-squares reconstruction stopped (%s): the rest left as pruned", e)
    model.__dict__.update(trial.__dict__)  # the pruned copy's modules, parameters and buffers
    return True


@dataclass(frozen=True)
class Cuts:
    """Where a network mixes its channels in a way torch-pruning's dependency graph cannot
    follow: a reshape, view or transpose over the channel axis (a channel shuffle, say).

    ``forward`` runs the network with its graph cut at those ops (their output detached), for
    torch-pruning to trace: the graph then ends at each shuffle, so its groups never cross one.
    Crossing them was wrong (it maps channel i to channel i through the shuffle) and, on
    ShuffleNetV2, where every unit ends with one, its search for groups ran for over ten
    minutes. ``whole`` names the convs whose outputs reach a cut: they keep every filter."""

    forward: Any
    whole: frozenset[str]


def channel_cuts(model: nn.Module, example_input: torch.Tensor) -> Cuts:
    """Trace ``model`` once and find its channel-mixing ops and the convs that feed them. A
    flatten into the classifier, or a (B, C) <-> (B, C, 1, 1) view in a squeeze-excitation
    block, keeps the channels in order and is not one of them."""

    def forward(m: nn.Module, x: torch.Tensor, seen: list[torch.Tensor] | None = None) -> Any:
        """The output, and what went into each channel-mixing op: torch-pruning traces back
        from every output, so the part before a cut stays in its graph (ending there)."""
        seen = [] if seen is None else seen

        class Cut(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                x = args[0] if args else None
                if (
                    isinstance(x, torch.Tensor)
                    and isinstance(out, torch.Tensor)
                    and _mixes_channels(func, x, out, args)
                ):
                    seen.append(x)
                    return out.detach()
                return out

        with Cut():
            return (m(x), *seen)

    inputs: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        forward(model, example_input, inputs)
    finally:
        model.train(was_training)
    owner = {
        id(p): n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        for p in m.parameters(recurse=False)
    }
    whole: set[str] = set()
    for x in inputs:  # walk back from each cut to the convs that produced its channels
        stack, seen = [x.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            convs = [
                owner[id(v)]
                for fn, _ in node.next_functions
                if fn is not None
                for v in [getattr(fn, "variable", None)]
                if v is not None and id(v) in owner
            ]
            if convs:
                whole.update(convs)  # a conv's own output: what lies before it is not coupled to the cut
                continue
            stack.extend(fn for fn, _ in node.next_functions)
    return Cuts(forward if inputs else None, frozenset(whole))


def _mixes_channels(func: Any, x: torch.Tensor, out: torch.Tensor, args: tuple) -> bool:
    name = getattr(func, "__name__", "")
    if x.dim() < 2 or out.grad_fn is None:
        return False
    if name in ("view", "reshape", "flatten", "unflatten", "_unsafe_view"):
        channels = x.shape[1]
        return out.dim() < 2 or out.shape[1] % channels != 0
    if name in ("transpose", "permute", "swapaxes", "movedim") and x.dim() >= 3:
        dims = [a for a in args[1:] if isinstance(a, int)] or list(args[1] if len(args) > 1 else [])
        if name == "permute" and dims:
            dims = [i for i, d in enumerate(dims) if i != d]
        return 1 in [d % x.dim() for d in dims]
    return False


def tp_share(removed: int, channels: int) -> float:
    """The ratio to hand torch-pruning for ``removed`` of ``channels``. It keeps
    ``int(channels * (1 - ratio))``: half a channel short of ``removed / channels`` lands on
    ``removed`` whatever the float rounding (96 * (1 - 86/96) is 9.999..., one channel too many)."""
    return (removed - 0.5) / channels


def _removed_count(channels: int, ratio: float, round_to: int) -> int:
    kept = channels - int(math.floor(channels * ratio + 1e-9))  # a share of n/channels is n
    if round_to > 1:
        kept = max(round_to, int(math.ceil(kept / round_to)) * round_to)
    return max(0, min(channels - 1, channels - kept))


@register
class FilterPruning(Stage):
    name = "structured"
    config = FilterPruneConfig
    order = 10
    label = "filter pruning (dependency graph)"
    timing = "prune_s"
    reshapes = True

    def apply_(self, model: nn.Module, config: FilterPruneConfig, run: Run) -> None:
        calibration = None
        if config.reconstruct and run.training:  # a replay rebuilds shapes: its weights come after
            if run.splits.task is None:
                calibration = training_images(run.splits, config.reconstruct, seed=run.seed)
            else:
                log.info("filter pruning: no least-squares refit, a task's images are its own")
        run.norms = prune_filters_(model, config, run.example, calibration=calibration)

    def params(self, space: Any, layers: SpaceLayers) -> list[Param]:
        if space.structured == "ranked":
            return ranged("ranked_ratio", space.ratio) if layers.conv else []
        return per_layer_params(space.structured, "ratio", space.ratio, layers.conv)

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> FilterPruneConfig:
        if space.structured == "ranked":
            share = value(params, "ranked_ratio", space.ratio)
            return FilterPruneConfig(
                ranking="global",
                default=share,
                criterion=space.criterion,
                round_to=space.round_to,
                reconstruct=space.reconstruct,
            )
        ratios = per_layer_values(params, space.structured, "ratio", space.ratio, layers.conv)
        return FilterPruneConfig(
            mode="ratio",
            layers=ratios,
            criterion=space.criterion,
            round_to=space.round_to,
            reconstruct=space.reconstruct,
        )

    def to_params(self, config: FilterPruneConfig, names: Sequence[str], base: nn.Module) -> dict[str, Any]:
        if config.ranking == "global":
            return {"ranked_ratio": config.default} if "ranked_ratio" in names else {}
        if config.mode != "ratio":
            return {}
        return {
            n: config.default if n == "ratio" else config.value_for(n.removeprefix("ratio_"))
            for n in names
            if n == "ratio" or n.startswith("ratio_")
        }

    def check(self, config: FilterPruneConfig, model: nn.Module) -> None:
        check_layer_names(config.layers, conv_layers(model), "structured.layers")

    def fit(self, config: FilterPruneConfig, model: nn.Module) -> FilterPruneConfig:
        self.check(config, model)
        convs = [n for n in conv_layers(model) if n != output_layer(model)]
        layers = by_position(config.layers, config.positions, model, convs)
        return dataclasses.replace(config, layers=layers, positions={})
