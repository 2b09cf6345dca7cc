"""``autoprune init``: a commented study spec for a given model and dataset, listing the layers
a search prunes (their position, filters, weights and share of the MACs) and the groups of
convs that lose their filters together, so a user starts from their own network's spec
instead of guessing one from LeNet's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autoprune.compress import conv_layers, layer_positions, output_layer, weight_layers
from autoprune.errors import AutoPruneError
from autoprune.limits import RECONSTRUCT_IMAGES
from autoprune.measure import layer_macs
from autoprune.models import create_model
from autoprune.names import derived_study_name
from autoprune.search.spec import SpaceSection, StudySection, load_spec
from autoprune.workflow._models import BaseRequest, load_data
from autoprune.workflow._search import DEFAULT_SPEC

RECIPES = DEFAULT_SPEC.parent / "recipes"  # the shipped baselines, in a checkout
BASELINES = ("deep-compression.toml", "uniform-l1.toml")  # by layer position: they fit any network
# more convs than this: the space ranks one share of all filters instead of a ratio per conv (on
# ResNet-20's 19, 20-30 trials of per-layer ratios reached less than one ranked share: issue 27)
RANKED_FROM = 8
# a ranked space's first trials on a ladder of MAC reductions (on full Fashion-MNIST, seed 0 of
# 12 trials went from 1.63x to 2.37x within 1 test point: BENCHMARKS.md, issue 27)
RANKED_START = 6


def init_spec(request: BaseRequest, out: Path, *, storage: str, trials: int = 30) -> dict[str, Any]:
    """Write a study spec for ``request``'s model and data to ``out`` (which must not exist)
    and return what it lists. The dataset is read once, for its image size and classes."""
    if out.exists():
        raise AutoPruneError(f"{out} exists; init never overwrites a spec (pick another path)")
    splits, spec = load_data(request)
    model = create_model(spec)
    layers = layer_rows(model, splits.input_shape)
    name = derived_study_name(splits.name, spec.name)
    recipes = [RECIPES / b for b in BASELINES if (RECIPES / b).is_file()]
    # relative to the spec, as a spec's baselines are read, when the spec lies beside them
    near = out.resolve().is_relative_to(Path.cwd())
    baselines = [
        os.path.relpath(r.resolve(), out.resolve().parent) if near else str(r.resolve()) for r in recipes
    ]
    text = spec_text(request, name, storage, trials, baselines, layers, splits.input_shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    load_spec(out)  # what it wrote, a search reads
    return {"out": str(out), "study": name, "model": spec.name, "dataset": splits.name, "layers": layers}


def layer_rows(model: Any, input_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Every weight layer: its position, outputs (filters), weights and share of the MACs."""
    macs = layer_macs(model, input_shape)
    total = max(sum(macs.values()), 1)
    positions, convs, out = layer_positions(model), conv_layers(model), output_layer(model)
    return [
        {
            "layer": name,
            "position": positions[name],
            "outputs": layer.out_channels if name in convs else layer.out_features,
            "weights": layer.weight.numel(),
            "macs_share": macs.get(name, 0) / total,
            "filters_pruned": name in convs and name != out,
            "grouped": name in convs and convs[name].groups > 1,  # depthwise or grouped
        }
        for name, layer in weight_layers(model).items()
    ]


def structured_lines(layers: list[dict[str, Any]]) -> list[str]:
    """The space's filter pruning: a ratio per conv for a few convs, one ranked share for many;
    kept filters in multiples of 8 for a network with depthwise or grouped convs."""
    convs = sum(r["filters_pruned"] for r in layers)
    if convs <= RANKED_FROM:
        mode = [
            'structured = "per_layer"  # one filter ratio per conv below ("ranked": one share of all '
            'filters, ranked across the network; "global": one ratio for all; "off")'
        ]
    else:
        mode = [
            f'structured = "ranked"  # one share of all {convs} convs\' filters, ranked across the network',
            '#   (lowest norm over its layer\'s mean first); "per_layer" searches a ratio per conv, which',
            "#   a short search spreads thin over this many; docs/search.md",
            f"ranked_start = {RANKED_START}  # the first trials at shares evenly spaced in MAC reduction: "
            "MACs do not",
            "#   follow the share evenly, and random first trials can miss the range that matters",
        ]
    mode.append(
        f"reconstruct = {RECONSTRUCT_IMAGES}  # training images the layers after removed filters are "
        "refitted on (0: off)"
    )
    if any(r["grouped"] for r in layers):
        return [
            *mode,
            "round_to = 8  # kept filters in multiples of 8: MobileNetV2 pruned to any width ran at 0.6x",
            "#   the base's speed at batch 1 (ONNX Runtime), aligned at 1.1x (BENCHMARKS.md, issue 27)",
        ]
    return [
        *mode,
        "round_to = 1  # kept filters rounded to a multiple of this (8 aligns them for vector units)",
    ]


def spec_text(
    request: BaseRequest,
    name: str,
    storage: str,
    trials: int,
    baselines: list[str],
    layers: list[dict[str, Any]],
    input_shape: tuple[int, int, int],
) -> str:
    def q(value: Any) -> str:  # a TOML value (JSON's strings and lists are TOML's)
        return json.dumps(value)

    options = request.options
    data = [f"name = {q(request.dataset)}"]
    if request.data_dir:
        data.append(f"data_dir = {q(str(request.data_dir))}")
    data.append(f"val_fraction = {request.val_fraction}")
    if options is not None and options.image_size:
        data.append(f"image_size = {q(list(options.image_size))}")
    if options is not None and options.augment != "none":
        data.append(f"augment = {q(options.augment)}")
    model = [f"name = {q(request.model)}"]
    model.append(
        f"checkpoint = {q(str(request.checkpoint))}"
        if request.checkpoint
        else '# checkpoint = "base.pt"  # your trained state_dict; without it [train] trains the base'
    )
    width = max(len(r["layer"]) for r in layers)
    table = [
        f"#   {r['layer']:<{width}}  {r['position']:<10}  {r['outputs']:>6} out  {r['weights']:>10,} weights"
        f"  {100 * r['macs_share']:5.1f}% of MACs" + ("  (kept whole)" if r["position"] == "output" else "")
        for r in layers
    ]
    study, space = StudySection(), SpaceSection()  # the defaults a spec without these keys gets
    return "\n".join(
        [
            f"# A study spec for {request.model} on {request.dataset} "
            f"({'x'.join(map(str, input_shape))} images),",
            "# written by `autoprune init`. Run it with `autoprune search SPEC`, then re-run the best at the",
            "# full fine-tuning budget with `autoprune finalize SPEC`. Every key is checked when read;",
            "# docs/search.md lists them all.",
            "",
            "[study]",
            f"name = {q(name)}",
            f"storage = {q(storage)}",
            f"trials = {trials}",
            f'objectives = {q(study.objectives)}  # or "macs", "latency_ms", "compression_ratio"',
            f"max_acc_drop = {study.max_acc_drop}  # the budget in validation points, judged on the drop's "
            f"{study.confidence:.0%} upper bound",
            "# the first trials: every layer's setting chosen from its sensitivity (probed alone,",
            "# without fine-tuning) for 1, 2, 4 and 8 times the budget of summed predicted drop",
            "warm_start = [1, 2, 4, 8]",
            "# hand-tuned recipes run first and judged the same way; these say their settings by layer",
            "# position (first conv, other convs, hidden linear, output), so they fit any network",
            f"baselines = {q(baselines)}"
            + ("" if baselines else "  # none here: a checkout's studies/recipes holds them"),
            "",
            "[model]",
            *model,
            "",
            "[data]",
            *data,
            "",
            "[train]  # the base, when no checkpoint is given",
            f"epochs = {request.train.epochs}",
            f"lr = {request.train.lr}",
            f'optimizer = "{request.train.optimizer}"',
            "",
            "[space]",
            *structured_lines(layers),
            f"ratio = {q(space.ratio)}",
            f"magnitude = {q(space.magnitude)}  # magnitude pruning: threshold = quality * the "
            "layer weights' std",
            f"quality = {q(space.quality)}",
            f"conv_bits = {q(space.conv_bits)}  # weight sharing: 2^bits shared values per layer",
            f"fc_bits = {q(space.fc_bits)}",
            f"finetune_epochs = {q(space.finetune_epochs)}",
            f"lr = {q(space.lr)}",
            f"max_batches = {space.max_batches}  # batches per fine-tuning epoch of a trial (0: whole); "
            "finalize lifts it",
            "",
            "# The layers of this network (position, outputs, weights, share of the MACs). Convs whose",
            "# outputs are added (a residual block) or concatenated lose the same filters together;",
            "# the output layer keeps its outputs whole.",
            *table,
            "",
        ]
    )
