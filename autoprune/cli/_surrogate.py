"""``autoprune surrogate fit | propose | compare``."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune.cli._common import add_device_option, grid, int_in, multiples, non_negative_float, output_path
from autoprune.cli._search import _storage_options
from autoprune.errors import AutoPruneError
from autoprune.workflow import (
    COMPARE_HEADER,
    ProposeConfig,
    Surrogate,
    compare,
    compare_png,
    compare_table,
    enqueue,
    enqueue_proposals,
    file_stem,
    fit,
    history,
    open_sources,
    open_view,
    parse_storage,
    propose_for,
    publish,
    sensitivity_png,
    sensitivity_rows,
    size_error,
    storage_errors,
    study_sensitivity,
    zero_shot,
)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sensitivity",
        help="how much accuracy each layer loses when pruned alone (no fine-tuning)",
        description="For the study's base model: each layer's sorted filter L1 norms, and the validation "
        "accuracy after pruning only that layer (filters at 10-90%%, single weights at magnitude quality "
        "0.25-3), without fine-tuning. Computed once per base model (cached), stored in the study for the "
        "surrogate, and saved as figures into the study (optuna-dashboard) and a PNG.",
    )
    _common(s, seed=False)
    s.add_argument(
        "--png", type=Path, metavar="FILE", help="where to write the figure (default: STUDY-sensitivity.png)"
    )
    s.set_defaults(run=run_sensitivity, format=format_sensitivity)

    p = sub.add_parser(
        "surrogate",
        help="learn from trials: fit, propose settings, compare with the search",
        description="One small network shared by every layer learns what pruning a layer costs in accuracy "
        "from the trials of a study (and of other studies: --from), reading each "
        "layer through its sensitivity "
        "analysis; sizes are computed, not learnt. It proposes settings promised within the budget, and is "
        "compared, run for real, with the search itself.",
    )
    commands = p.add_subparsers(dest="surrogate_command", metavar="COMMAND", parser_class=type(p))
    commands.required = True

    f = commands.add_parser(
        "fit",
        help="fit on the study and report the cross-validated error",
        description="Fit the surrogate on every usable trial of the study (and of the --from "
        "studies) and report R^2 and MAE on held-out trials (5-fold cross-validation), and "
        "how far the computed sizes are from the measured ones.",
    )
    _common(f)
    _sources(f)
    f.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="save the fitted surrogate (tensors only: read back with torch's weights_only loader)",
    )
    f.set_defaults(run=run_fit, format=format_fit)

    q = commands.add_parser(
        "propose",
        help="propose settings promised within the accuracy budget",
        description="Draw many candidate settings in the study's space, compute each one's "
        "size, predict its drop, and return the K best promised within the budget. A study "
        "with no trials yet gets proposals from other studies' trials (--from), or with "
        "--zero-shot from its layers' sensitivity alone: every layer's setting chosen by an "
        "integer program to make the network smallest with the summed probed drop within "
        "each of several budgets.",
    )
    _common(q)
    _sources(q)
    q.add_argument(
        "--max-acc-drop",
        type=non_negative_float,
        metavar="D",
        help="budget in points (default: the study spec's)",
    )
    q.add_argument(
        "--target",
        choices=("size", "latency"),
        default="size",
        help="what to minimise: the packed size, or the predicted batch-1 latency (default: size)",
    )
    q.add_argument("-k", type=int_in(1, 1000), default=5, metavar="K", help="how many proposals (default: 5)")
    q.add_argument(
        "--surrogate", type=Path, metavar="FILE", help="use a surrogate saved by 'fit --out' (not refit)"
    )
    q.add_argument(
        "--enqueue",
        action="store_true",
        help="add them to the study (source=surrogate, or sensitivity with --zero-shot); the next "
        "'autoprune search' runs them",
    )
    q.add_argument(
        "--zero-shot",
        action="store_true",
        help="no trials, no surrogate: allocate from the sensitivity probes (cached per base model)",
    )
    q.add_argument(
        "--scales",
        type=multiples,
        default=[1.0, 2.0, 4.0, 8.0, 16.0],
        metavar="S,S,...",
        help="with --zero-shot: the budgets, as multiples of the accuracy budget (default: 1,2,4,8,16)",
    )
    q.set_defaults(run=run_propose, format=format_propose)

    c = commands.add_parser(
        "compare",
        help="fit on the first n trials, run K proposals, set them beside the search",
        description="For each history size n: fit on the search's first n trials, propose "
        "K, evaluate them for real (in a side study), and compare with the search after "
        "n+K trials and at its full budget. Saves a PNG and, into the study, a figure and a "
        "note for optuna-dashboard.",
    )
    _common(c)
    c.add_argument("--at", default="10,20,30", metavar="N,N,...", help="history sizes (default: %(default)s)")
    c.add_argument("-k", type=int_in(1, 1000), default=5, metavar="K", help="proposals per size (default: 5)")
    c.add_argument(
        "--max-acc-drop",
        type=non_negative_float,
        metavar="D",
        help="budget in points (default: the study spec's)",
    )
    c.add_argument(
        "--png", type=Path, metavar="FILE", help="where to write the plot (default: STUDY-compare.png)"
    )
    c.add_argument(
        "--threads",
        type=int_in(1, 1024),
        metavar="N",
        help="torch threads for the proposals' trials (default: torch's own setting)",
    )
    c.set_defaults(run=run_compare, format=format_compare)


def _sources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="STUDY[@URL]",
        help="learn from this study's trials too (another network, data or space; in --storage "
        "unless @URL names another storage); repeat for several. Only read, never written.",
    )


def _common(p: argparse.ArgumentParser, *, seed: bool = True) -> None:
    _storage_options(p)
    g = p.add_argument_group(
        "code and files the study names",
        "a stored study is data: the model factory, checkpoint, data folder and artifact folder it "
        "recorded are used only when you name them here (built-in models and datasets need nothing)",
    )
    g.add_argument(
        "--model", metavar="M", help="the study's own model factory, as given to search (file.py:factory)"
    )
    g.add_argument(
        "--checkpoint", metavar="PATH", help="the study's base checkpoint, if it was made from one"
    )
    g.add_argument(
        "--data-dir", metavar="PATH", help="the study's data folder or file, if its dataset needs one"
    )
    g.add_argument(
        "--task",
        metavar="FILE.py:FACTORY",
        help="the study's own task (training loop and metric), as given to search",
    )
    g.add_argument(
        "--artifacts", metavar="DIR", help="where proposals' packed files go (default: beside the database)"
    )
    if seed:
        p.add_argument(
            "--seed", type=int, default=0, help="seed of the ensemble and the candidates (default: 0)"
        )
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _view(args: argparse.Namespace) -> Any:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = parse_storage(args.storage)
    with storage_errors(info):
        return open_view(
            args.study,
            info,
            progress=not args.quiet,
            model=args.model,
            checkpoint=args.checkpoint,
            data_dir=args.data_dir,
            artifacts=args.artifacts,
            task=args.task,
        )


def run_sensitivity(args: argparse.Namespace) -> dict[str, Any]:

    output_path(args.png, "--png")
    view = _view(args)
    result, cached = study_sensitivity(view, progress=not args.quiet)
    png = args.png or output_path(Path(f"{file_stem(view.study.study_name)}-sensitivity.png"), "--png")
    sensitivity_png(
        result, png, title=f"{view.study.study_name}: layer sensitivity, base {result.base_accuracy:.2f}%"
    )
    return {
        "study": view.study.study_name,
        "cached": cached,
        "seconds": round(result.seconds, 2),
        "base_accuracy": result.base_accuracy,
        "layers": sensitivity_rows(result),
        "png": str(png),
        "analysis": result.to_dict(),
    }


def format_sensitivity(r: dict[str, Any]) -> str:
    first = r["layers"][0]
    ratios = list((next((x["ratio_drop"] for x in r["layers"] if x["ratio_drop"]), None) or {}).keys())
    qualities = list(first["quality_drop"].keys())
    header = [
        "layer",
        "kind",
        "params",
        "filters",
        *(f"f{float(x):.0%}" for x in ratios),
        *(f"q{x}" for x in qualities),
    ]
    rows = [
        [
            x["layer"],
            x["kind"],
            x["params"],
            x["filters"] or "-",
            *((f"{v:.1f}" for v in x["ratio_drop"].values()) if x["ratio_drop"] else ["-"] * len(ratios)),
            *(f"{v:.1f}" for v in x["quality_drop"].values()),
        ]
        for x in r["layers"]
    ]
    how = "from the cache" if r["cached"] else f"computed in {r['seconds']} s"
    return "\n".join(
        [
            f"layer sensitivity of {r['study']}'s base model ({r['base_accuracy']:.2f}% validation; {how})",
            "",
            grid(header, rows),
            "",
            "points of validation accuracy lost with only that layer pruned, no fine-tuning: "
            "fN% = that share of its "
            "filters removed (lowest L1 norm first), qN = its weights below N x std zeroed",
            f"plot: {r['png']}; stored in the study (the surrogate reads it) "
            "with its figures (optuna-dashboard)",
        ]
    )


def _fit_report(surrogate: Any, history: Any) -> dict[str, Any]:

    return {**surrogate.report(), "left_out": history.left_out, "size_error": size_error(history)}


def _sources_of(args: argparse.Namespace) -> list[Any]:

    return open_sources(args.sources, args.storage, progress=not args.quiet)


def run_fit(args: argparse.Namespace) -> dict[str, Any]:

    output_path(args.out, "--out")
    view = _view(args)
    surrogate, history = fit(view, seed=args.seed, sources=_sources_of(args))
    if args.out:
        surrogate.save(args.out)
    return {
        "study": view.study.study_name,
        **_fit_report(surrogate, history),
        "saved": str(args.out) if args.out else None,
    }


def format_fit(r: dict[str, Any]) -> str:
    rows = [
        [t, f"{v['r2']:.3f}", f"{v['mae']:.4g}", f"{v['kendall_tau']:.3f}", f"{v['top5_hit']:.0%}"]
        for t, v in r["cv"].items()
    ]
    left = ", ".join(f"{n} {why}" for why, n in r["left_out"].items()) or "none"
    lines = [
        f"surrogate on {', '.join(r['studies'])}: {r['trials_used']} trials, "
        f"{r['members']} networks per target, "
        f"fitted in {r['fit_s']} s (left out: {left})",
        "",
        grid(["target", "CV R^2", "CV MAE", "Kendall tau", "top-5 hit"], rows),
        "",
        "held out by 5-fold cross-validation; Kendall tau: how well it ranks trials; top-5 "
        "hit: share of the 5 "
        "it predicts to lose least that truly do",
        "",
        f"sizes are computed, not learnt: median error {100 * r['size_error']:.1f}% "
        "against the trials' packed files",
    ]
    if r["saved"]:
        lines += ["", f"saved to {r['saved']}"]
    return "\n".join(lines)


def run_zero_shot(args: argparse.Namespace) -> dict[str, Any]:

    view = _view(args)
    minimise = "macs" if args.target == "latency" else "packed_bytes"
    proposals, budgets = zero_shot(
        view, args.scales, max_acc_drop=args.max_acc_drop, minimise=minimise, progress=not args.quiet
    )
    added = enqueue_proposals(view.study, proposals) if args.enqueue else 0
    return {
        "study": view.study.study_name,
        "zero_shot": True,
        "minimise": minimise,
        "budgets": budgets,
        "proposals": [p.to_dict() for p in proposals],
        "enqueued": added,
    }


def format_zero_shot(r: dict[str, Any]) -> str:
    rows = [
        [
            i,
            f"{p['budget']:g}",
            f"{p['predicted_acc_drop']:.2f}",
            f"{p['compression_ratio']:.1f}x",
            f"{p['packed_bytes']:,}",
            f"{p['macs']:,}",
        ]
        for i, p in enumerate(r["proposals"])
    ]
    lines = [
        f"{len(r['proposals'])} zero-shot proposals for {r['study']} from its layer "
        "sensitivity (no trial run), "
        f"minimising {r['minimise']}",
        "",
        grid(["#", "budget", "prior drop", "ratio", "packed bytes", "MACs"], rows),
        "",
        *textwrap.wrap(
            "budget: the summed drop each was allocated under (points); prior drop: the "
            "drop the probes add up to, "
            "each layer pruned alone and never fine-tuned, so a real trial, fine-tuned, usually loses less: "
            "run them (--enqueue, then autoprune search) and judge them on the measured "
            "drop. ratio, bytes and "
            "MACs are computed from the settings, not measured. The settings themselves: --json.",
            width=100,
        ),
    ]
    if len(r["proposals"]) < len(r["budgets"]):
        lines += [
            "",
            f"{len(r['budgets']) - len(r['proposals'])} budget(s) gave no new allocation (none fits, or "
            "the same as a smaller one)",
        ]
    if r["enqueued"]:
        lines += [
            "",
            f"enqueued {r['enqueued']} (source=sensitivity): the next 'autoprune search' "
            "on this study runs them",
        ]
    return "\n".join(lines)


def run_propose(args: argparse.Namespace) -> dict[str, Any]:

    if args.zero_shot:
        return run_zero_shot(args)
    view = _view(args)
    sources = _sources_of(args)
    budget = args.max_acc_drop if args.max_acc_drop is not None else view.budget.max_drop
    if args.surrogate:
        surrogate, joined = Surrogate.load(args.surrogate), history(view, sources=sources)
    else:
        surrogate, joined = fit(view, seed=args.seed, sources=sources)
    config = ProposeConfig(max_acc_drop=budget, target=args.target, k=args.k, seed=args.seed)
    proposals = propose_for(view, surrogate, joined, config)
    added = enqueue(view.study, proposals) if args.enqueue else 0
    return {
        "study": view.study.study_name,
        "max_acc_drop": budget,
        "target": args.target,
        "kappa": config.kappa,
        "surrogate": _fit_report(surrogate, joined),
        "proposals": [p.to_dict() for p in proposals],
        "enqueued": added,
    }


def format_propose(r: dict[str, Any]) -> str:
    if r.get("zero_shot"):
        return format_zero_shot(r)
    latency = any(p["predicted_latency_ms"] is not None for p in r["proposals"])
    header = [
        "#",
        "within",
        "drop",
        "spread",
        "margin",
        "upper",
        "ratio",
        *(["ms"] if latency else []),
        "proposer",
    ]
    rows = [
        [
            i,
            "yes" if p["feasible"] else "no",
            f"{p['predicted_acc_drop']:+.2f}",
            f"{p['spread']:.2f}",
            f"{p['cv_margin']:.2f}",
            f"{p['upper']:+.2f}",
            f"{p['compression_ratio']:.1f}x",
            *([f"{p['predicted_latency_ms']:.3f}"] if latency else []),
            p["proposer"],
        ]
        for i, p in enumerate(r["proposals"])
    ]
    cv = r["surrogate"]["cv"].get("acc_drop", {})
    lines = [
        f"{len(r['proposals'])} proposals for {r['study']}, budget {r['max_acc_drop']} points "
        f"(surrogate on {r['surrogate']['trials_used']} trials of {', '.join(r['surrogate']['studies'])}; "
        f"CV R^2 of the drop {cv.get('r2', float('nan')):.2f})",
        "",
        grid(header, rows),
        "",
        *textwrap.wrap(
            f"within: promised within the budget, when upper = drop + {r['kappa']:g} x spread + margin <= "
            f"{r['max_acc_drop']}. drop: predicted validation accuracy drop (points); spread: the ensemble's "
            "disagreement; margin: the surrogate's cross-validated error near the "
            "budget; ratio: computed from "
            "the settings (not predicted). The settings themselves: --json.",
            width=100,
        ),
    ]
    if not any(p["feasible"] for p in r["proposals"]):
        lines += [
            "",
            "none is promised within the budget: these are the safest; run more "
            "trials or raise --max-acc-drop",
        ]
    if r["enqueued"]:
        lines += [
            "",
            f"enqueued {r['enqueued']} (source=surrogate): the next 'autoprune search' on "
            "this study runs them",
        ]
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> dict[str, Any]:

    try:
        sizes = [int(s) for s in args.at.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise AutoPruneError(f"--at {args.at!r}: expected history sizes of 1 or more, such as 10,20,30")
    output_path(args.png, "--png")
    view = _view(args)
    png = args.png or output_path(Path(f"{file_stem(view.study.study_name)}-compare.png"), "--png")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = compare(view, sizes, k=args.k, seed=args.seed, max_acc_drop=args.max_acc_drop)
    result["png"] = str(compare_png(result, png))
    publish(view.study, result, view.budget)
    return result


def format_compare(r: dict[str, Any]) -> str:

    return "\n".join(
        [
            f"surrogate versus search on {r['study']} (validation drop <= {r['max_acc_drop']} points); "
            f"proposals run in {r['side_study']}",
            "",
            grid(COMPARE_HEADER, compare_table(r)),
            "",
            f"plot: {r['png']}; figure and note saved into the study (optuna-dashboard shows them)",
        ]
    )
