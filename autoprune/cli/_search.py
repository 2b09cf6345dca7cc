"""``autoprune search``, ``trials``, ``export`` and ``dashboard``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import optuna

from autoprune.cli._common import (
    add_device_option,
    fraction,
    grid,
    image_size,
    int_in,
    multiples,
    non_negative_float,
    output_path,
    port,
    study_name,
    table,
    timed_busy,
)
from autoprune.cli._compress import deployed_text
from autoprune.errors import AutoPruneError
from autoprune.workflow import (
    BUSY,
    DEFAULT_SPEC,
    DEFAULT_STORAGE,
    MAX_EPOCHS,
    MAX_TRIALS,
    NOTHING_WITHIN,
    OBJECTIVES,
    PRUNERS,
    dashboard_sources,
    default_export_path,
    derived_study_name,
    evaluate_file,
    export_trial,
    finalize,
    find_trial,
    list_datasets,
    list_samplers,
    open_stored,
    parse_storage,
    search,
    search_spec,
    serve_dashboard,
    stop_on_signals,
    study_metric,
    trial_row,
    trials_summary,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "search",
        help="run (or resume) a compression search: an Optuna study",
        description="Every trial compresses a copy of the base model with the trial's settings and "
        "records accuracy, size, MACs and latency in the study. Runs until the study holds --trials "
        "finished trials: the same command resumes an interrupted search.",
    )
    _spec_options(p, DEFAULT_SPEC)
    p.add_argument(
        "--trials",
        type=int_in(1, MAX_TRIALS),
        metavar="N",
        help="run until the study holds N finished trials",
    )
    p.add_argument(
        "--jobs",
        type=int_in(1, 1024),
        default=1,
        metavar="N",
        help="worker processes, the cores split between them (PostgreSQL or journal storage)",
    )
    p.add_argument(
        "--threads",
        type=int_in(1, 1024),
        metavar="N",
        help="torch threads per worker (default: all cores, split between --jobs workers)",
    )
    p.add_argument(
        "--devices",
        type=gpu_list,
        metavar="0,1,...",
        help="GPUs for the --jobs workers, one each in turn (default: the spec's study.devices, "
        "else every GPU when the search runs on CUDA)",
    )
    p.add_argument(
        "--setup-only",
        action="store_true",
        help="create the study, train (or load) the base model, queue the baselines, and exit: "
        "run once before starting workers on several machines or containers",
    )
    p.add_argument("--sampler", choices=list_samplers(), help="override the spec's sampler")
    p.add_argument(
        "--pruner", choices=PRUNERS.names(), help="override the spec's pruner (single objective only)"
    )
    p.add_argument(
        "--objectives", metavar="A,B", help=f"override the spec's objectives ({', '.join(OBJECTIVES)})"
    )
    p.add_argument(
        "--max-acc-drop",
        type=non_negative_float,
        metavar="D",
        help="accuracy budget in points (single objective)",
    )
    p.add_argument(
        "--min-speedup",
        type=non_negative_float,
        metavar="X",
        help="and the measured batch-1 speed-up a trial must reach to count as within (the spec's "
        "study.min_speedup; 0: none)",
    )
    p.add_argument("--seed", type=int, help="sampler seed")
    p.add_argument(
        "--warm-start",
        type=multiples,
        metavar="S,S,...",
        help="first run the sensitivity allocator's proposals at these multiples of the accuracy budget "
        "(the spec's study.warm_start; once per study)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_search, format=format_search)

    f = sub.add_parser(
        "finalize",
        help="re-run the best trials and the baselines at the full fine-tuning budget",
        description="The step after a search: the K best trials within the budget, the Pareto front's knee "
        "and every baseline recipe run again with the spec's [final] budget (no batch cap), recorded in the "
        "same study (source=final, parent=N), each shown beside the trial it refines. Run "
        "it again to resume.",
    )
    _spec_options(f, DEFAULT_SPEC)
    f.add_argument(
        "-k", type=int_in(1, 100), metavar="K", help="best trials to finalize (default: the spec's final.k)"
    )
    f.add_argument(
        "--max-acc-drop",
        type=non_negative_float,
        metavar="D",
        help="the budget they are chosen within (default: the spec's)",
    )
    f.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=run_finalize, format=format_finalize)

    t = sub.add_parser(
        "trials", help="list a study's trials", description="List every trial of a study with its metrics."
    )
    _storage_options(t)
    t.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    t.set_defaults(run=run_trials, format=format_trials)

    e = sub.add_parser(
        "export",
        help="write a trial's packed file",
        description="Write the packed model of one trial (or the best within the accuracy budget).",
    )
    _storage_options(e)
    e.add_argument(
        "--trial", required=True, type=trial_choice, metavar="N|best", help="trial number, or 'best'"
    )
    e.add_argument(
        "--max-acc-drop",
        type=non_negative_float,
        metavar="D",
        help="accuracy budget for 'best' (default: the study spec's)",
    )
    e.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write it (default: STUDY-trial-N.apk in the current folder)",
    )
    e.add_argument(
        "--artifacts",
        type=Path,
        metavar="DIR",
        help="the search's artifact folder (default: beside the database; a study never chooses it)",
    )
    g = e.add_argument_group("the file to deploy (ONNX)")
    g.add_argument(
        "--onnx",
        type=Path,
        metavar="PATH",
        help="also write the trial's network as ONNX to deploy (raw [0, 1] images in, the "
        "normalisation, class names and metrics inside), measured back in ONNX Runtime",
    )
    g.add_argument(
        "--int8", action="store_true", help="make it a static int8 (QDQ) model, calibrated on training images"
    )
    g.add_argument(
        "--model", metavar="M", help="your own network's factory (file.py:factory), as the search had it"
    )
    g.add_argument("--data-dir", type=Path, metavar="DIR", help="the dataset's folder, as the search had it")
    e.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    e.set_defaults(run=run_export, format=format_export)

    d = sub.add_parser(
        "dashboard",
        help="serve optuna-dashboard on the study storage",
        description="Serve optuna-dashboard over the storage and the artifact store, bound to loopback "
        "by default.",
    )
    d.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="(default: %(default)s)")
    d.add_argument(
        "--artifacts", type=Path, metavar="DIR", help="artifact folder (default: beside the database)"
    )
    d.add_argument(
        "--host",
        default="127.0.0.1",
        help="(default: %(default)s; optuna-dashboard has no login and can delete studies: "
        "reach it from another machine through an SSH tunnel rather than 0.0.0.0)",
    )
    d.add_argument("--port", type=port, default=8080, help="(default: %(default)s)")
    d.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    d.set_defaults(run=run_dashboard, format=str)


def _spec_options(p: argparse.ArgumentParser, default_spec: Path) -> None:
    """A spec and the study and storage it names, as search and finalize take them, and the
    spec values a user most often changes without copying the spec."""
    p.add_argument(
        "spec",
        nargs="?",
        type=Path,
        metavar="SPEC.toml",
        help=f"study spec (default: {default_spec}, the embedded digits default)",
    )
    p.add_argument(
        "--study",
        type=study_name,
        metavar="NAME",
        help="study name (default: the spec's, else its file name)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="sqlite:///PATH.db, postgresql://USER@HOST/DB or journal:PATH "
        f"(default: the spec's, {DEFAULT_STORAGE})",
    )
    g = p.add_argument_group("spec values (each overrides the spec's)")
    g.add_argument(
        "--model",
        metavar="M",
        help="the network to compress: a built-in name or your own as path/to/file.py:factory "
        "(the study is then named DATASET-FACTORY unless --study says otherwise)",
    )
    g.add_argument(
        "--checkpoint", metavar="PATH", help="its trained state_dict (loaded with weights_only=True)"
    )
    g.add_argument("--dataset", metavar="D", help=f"one of {', '.join(list_datasets())}")
    g.add_argument(
        "--image-size",
        type=image_size,
        metavar="HxW",
        help="an image folder's input size (short side, centre crop)",
    )
    g.add_argument("--augment", choices=("none", "crop-flip"), help="training-time augmentation")
    g.add_argument(
        "--data-dir",
        metavar="PATH",
        help="where the dataset's files are "
        "(fashion-mnist: /usr/share/datasets/fashion-mnist when not given)",
    )
    g.add_argument(
        "--val-fraction",
        type=fraction,
        metavar="F",
        help="share of the training data held out for validation",
    )
    g.add_argument(
        "--train-epochs", type=int_in(1, MAX_EPOCHS), metavar="N", help="epochs of base-model training"
    )
    add_device_option(g, default=None)
    g.add_argument(
        "--task",
        metavar="FILE.py:FACTORY",
        help="your own training loop and metric in place of the spec's data (see autoprune.data._task; "
        "examples/own_loop.py)",
    )


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="(default: %(default)s)")
    p.add_argument(
        "--study", type=study_name, metavar="NAME", help="study name (default: the only study in the storage)"
    )


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        gpus = []
    if not gpus or any(not 0 <= g < 1024 for g in gpus):
        raise argparse.ArgumentTypeError(f"expected GPU indices such as 0,1, got {text!r}")
    return gpus


def trial_choice(text: str) -> str | int:
    if text == "best":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a trial number (0, 1, ...) or 'best', got {text!r}")
    return int(text)


def run_search(args: argparse.Namespace) -> dict[str, Any]:

    objectives = [o.strip() for o in args.objectives.split(",")] if args.objectives else None
    spec, spec_dir = search_spec(
        args.spec,
        name=args.study,
        storage=args.storage,
        trials=args.trials,
        sampler=args.sampler,
        pruner=args.pruner,
        objectives=objectives,
        max_acc_drop=args.max_acc_drop,
        min_speedup=args.min_speedup,
        seed=args.seed,
        warm_start=args.warm_start,
    )
    spec = _spec_values(spec, args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop_on_signals()
    result = search(
        spec,
        parse_storage(spec.study.storage),
        spec_dir=spec_dir,
        jobs=args.jobs,
        threads=args.threads,
        progress=not args.quiet,
        setup_only=args.setup_only,
        task=args.task,
    )
    return {**result, "spec_arg": shlex.quote(str(args.spec)) if args.spec else ""}


def _spec_values(spec: Any, args: argparse.Namespace) -> Any:
    """The spec with the data and training values given as flags."""

    flags = {
        "name": args.dataset,
        "data_dir": args.data_dir,
        "val_fraction": args.val_fraction,
        "image_size": list(args.image_size) if args.image_size else None,
        "augment": args.augment,
    }
    if data := {k: v for k, v in flags.items() if v is not None}:
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, **data))
    if model := {k: v for k, v in (("name", args.model), ("checkpoint", args.checkpoint)) if v is not None}:
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, **model))
    if args.study is None and (args.model or args.dataset):  # not the spec's study: a name of its own
        spec = spec.with_study(name=derived_study_name(spec.data.name, spec.model.name))
    if args.train_epochs is not None:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=args.train_epochs))
    return spec.with_study(device=args.device, devices=getattr(args, "devices", None))


def _drops(r: dict[str, Any]) -> list[str]:
    """Validation drop (with its standard error) and test drop, side by side."""
    se = f" +- {r['acc_drop_se']:.2f}" if r.get("acc_drop_se") is not None else ""
    val = "" if r.get("acc_drop") is None else f"{r['acc_drop']:+.2f}{se}"
    return [val, "" if r.get("test_acc_drop") is None else f"{r['test_acc_drop']:+.2f}"]


def run_finalize(args: argparse.Namespace) -> dict[str, Any]:

    spec, _ = search_spec(args.spec, name=args.study, storage=args.storage, max_acc_drop=args.max_acc_drop)
    spec = _spec_values(spec, args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop_on_signals()
    return finalize(
        spec, parse_storage(spec.study.storage), k=args.k, progress=not args.quiet, task=args.task
    )


def format_finalize(r: dict[str, Any]) -> str:
    def cells(t: dict[str, Any]) -> list[str]:
        return [*_drops(t), f"{t['compression_ratio']:.1f}x"]

    rows = [
        [
            x["parent"]["trial"],
            x["kind"],
            *cells(x["parent"]),
            x["final"]["trial"],
            *cells(x["final"]),
            "yes" if x["within"] else "NO",
        ]
        for x in r["rows"]
    ]
    header = [
        "trial",
        "what",
        "val drop",
        "test drop",
        "ratio",
        "final",
        "val drop",
        "test drop",
        "ratio",
        "within",
    ]
    return (
        f"final stage of {r['study']}: each trial (searched under the capped budget) beside "
        "its re-run at the "
        f"full budget; within {r['max_acc_drop']} points of {r.get('metric', 'accuracy')} as the study "
        "judges\n\n" + grid(header, rows)
    )


def _pareto_table(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    return grid(
        ["trial", metric, "val drop", "test drop", "packed KB", "ratio", "latency ms", "source"],
        [
            [
                r["trial"],
                f"{r['accuracy']:.2f}",
                *_drops(r),
                f"{r['packed_bytes'] / 1024:.1f}",
                f"{r['compression_ratio']:.1f}x",
                f"{r['latency_ms']:.3f}",
                r["recipe"] or r["source"],
            ]
            for r in rows
        ],
    )


def _rule(r: dict[str, Any]) -> str:
    """The budget's rule in words."""
    if r.get("selection") != "upper":
        return "judged on the validation drop itself"
    return f"judged on the {r['confidence']:.0%} upper bound: the drop + {r.get('z', 0):.2f} standard errors"


def _drop_words(row: dict[str, Any], judged: float | None, z: float) -> str:
    """A trial's drops as the budget sees them: validation, its judged bound, and test."""
    bound = f" (bound {judged:.2f})" if z and judged is not None else ""
    test = f", {row['test_acc_drop']:.2f} test" if row.get("test_acc_drop") is not None else ""
    return f"drop {row['acc_drop']:.2f} val{bound}{test}"


def best_line(r: dict[str, Any]) -> str:
    """The search's answer: the best trial within the budget, judged as the study judges, with
    both drops, so a lucky validation estimate shows beside the test split's."""
    b = r["best"]
    gain = f"{b['compression_ratio']:.1f}x"
    if r.get("best_field") == "speedup" and b.get("speedup") is not None:  # best is the fastest
        gain = f"{b['speedup']:.2f}x faster ({gain} smaller)"
    points = "points" if r.get("metric", "accuracy") == "accuracy" else f"points of {r['metric']}"
    fast = f" and at least {r['min_speedup']:g}x faster" if r.get("min_speedup") else ""
    return (
        f"best within {r['max_acc_drop']} {points}{fast} ({_rule(r)}): trial {b['trial']}, {gain}, "
        f"{_drop_words(b, r.get('best_judged_drop'), r.get('z', 0))}{slower(b)}"
    )


def slower(row: dict[str, Any]) -> str:
    """A flag for a trial measured slower than the base at batch 1 (fewer MACs do not always
    mean less time: a small network's per-operator cost stays)."""
    speedup = row.get("speedup")
    if not isinstance(speedup, (int, float)) or not speedup < 1:
        return ""
    return f"; slower than the base at batch 1 ({speedup:.2f}x: --min-speedup 1 asks for faster)"


def baseline_lines(r: dict[str, Any]) -> list[str]:
    """Each baseline recipe judged by the rule that chose the best, beside it."""
    lines = []
    for b in r.get("baselines", []):
        verdict = "within" if b["within"] else "not within"
        lines.append(
            f"  {b['recipe'] or 'baseline'}: trial {b['trial']}, {b['compression_ratio']:.1f}x, "
            f"{_drop_words(b, b['judged_drop'], r.get('z', 0))}: {verdict}"
        )
    return ["baselines, judged the same way:", *lines] if lines else []


def next_lines(r: dict[str, Any]) -> list[str]:
    """What to run next, as the user can run it from here."""
    run, spec = r.get("run", "autoprune"), f" {r['spec_arg']}" if r.get("spec_arg") else ""
    lines = [f"re-run the best at the full fine-tuning budget: {run} finalize{spec}"]
    if r["best"]:
        lines.append(f"export the best: {run} export --study {r['study']} --trial {r['best']['trial']}")
    return [*lines, f"watch it: {r['dashboard']}"]


def format_search(r: dict[str, Any]) -> str:
    metric = r.get("metric", "accuracy")
    unit = "%" if metric == "accuracy" else ""
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(r["states"].items()))
    lines = [
        table(
            [
                ("study", f"{r['study']} in {r['storage']}"),
                ("trials", states),
                ("objectives", ", ".join(metric if o == "accuracy" else o for o in r["objectives"])),
                (
                    "base",
                    f"{r['base']['accuracy']:.2f}{unit} val {metric}, "
                    f"{r['base']['dense_bytes'] / 1024:.1f} KB, "
                    f"{r['base']['latency_ms']:.3f} ms",
                ),
            ]
        ),
        "",
        "Pareto front:" if len(r["objectives"]) > 1 else f"Feasible front ({metric}, size):",
        _pareto_table(r["pareto"], metric),
    ]
    if baselines := baseline_lines(r):
        lines += ["", *baselines]
    if r["best"]:
        lines += ["", best_line(r)]
    else:
        fast = f" and at least {r['min_speedup']:g}x faster" if r.get("min_speedup") else ""
        lines += [
            "",
            f"no trial is within {r['max_acc_drop']} points{fast} yet ({_rule(r)}): {NOTHING_WITHIN}",
        ]
    lines += ["", *next_lines(r)]
    return "\n".join(lines)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """The study a read command names, from a storage it never creates."""
    return open_stored(args.storage, args.study)


def run_trials(args: argparse.Namespace) -> dict[str, Any]:
    return trials_summary(*_open(args))


def _on(t: dict[str, Any]) -> str:
    """Where a latency was timed, when not on the CPU: ' (cuda:0)'."""
    device = t.get("device") or "cpu"
    return "" if device == "cpu" else f" ({device.split()[0]})"


def format_trials(r: dict[str, Any]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    rows = [
        [
            t["trial"],
            t["state"].lower(),
            f(t["accuracy"], ".2f"),
            *_drops(t),
            f(t["packed_bytes"] and t["packed_bytes"] / 1024, ".1f"),
            f(t["compression_ratio"], ".1f"),
            f(t["latency_ms"], ".3f") + ("*" if timed_busy(t) else "") + _on(t),
            t["recipe"] or t["source"] or "",
        ]
        for t in r["trials"]
    ]
    header = [
        "trial",
        "state",
        r.get("metric", "accuracy"),
        "val drop",
        "test drop",
        "packed KB",
        "ratio",
        "latency ms",
        "source",
    ]
    text = f"study {r['study']} in {r['storage']}\n\n" + grid(header, rows)
    if any(timed_busy(t) for t in r["trials"]):
        text += f"\n\n* timed while other processes kept {BUSY}+ cores busy: the latency may read high"
    return text


def run_export(args: argparse.Namespace) -> dict[str, Any]:

    output_path(args.out, "--out")
    output_path(args.onnx, "--onnx")
    if args.int8 and not args.onnx:
        raise AutoPruneError("--int8 quantizes the ONNX file: pass --onnx PATH with it")
    study, info = _open(args)
    trial = find_trial(study, args.trial, max_acc_drop=args.max_acc_drop)
    out = args.out or output_path(default_export_path(study, trial), "--out")
    export_trial(study, trial, out, info, artifacts=args.artifacts)
    row = trial_row(trial)
    result = {
        "study": study.study_name,
        "trial": trial.number,
        "out": str(out),
        "packed_bytes": out.stat().st_size,
        "metric": study_metric(study),
        **{k: row[k] for k in ("acc_drop", "acc_drop_se", "test_acc_drop", "compression_ratio")},
    }
    if args.onnx:
        deployed = evaluate_file(
            out, model=args.model, data_dir=args.data_dir, latency=False, onnx=args.onnx, int8=args.int8
        )
        result |= {k: v for k, v in deployed.items() if k.startswith("onnx")}
    return result


def format_export(r: dict[str, Any]) -> str:
    val, test = _drops(r)
    drops = f", {r.get('metric', 'accuracy')} drop {val} val / {test or '?'} test" if val else ""
    line = f"wrote {r['out']} (trial {r['trial']}, {r['packed_bytes']:,} bytes{drops})"
    if r.get("onnx"):
        line += f"\nwrote {r['onnx']}{' (int8)' if r['onnx_int8'] else ''}: {deployed_text(r)}"
    return line


def run_dashboard(args: argparse.Namespace) -> dict[str, Any]:
    storage, info, store = dashboard_sources(args.storage, args.artifacts)
    if args.host not in LOOPBACK:
        print(
            f"autoprune dashboard: warning: --host {args.host} lets anyone who reaches "
            "this machine read, change "
            "and delete studies (optuna-dashboard has no login); prefer an SSH tunnel to 127.0.0.1",
            file=sys.stderr,
        )
    print(
        f"optuna-dashboard on http://{args.host}:{args.port} for {info.safe_url} (Ctrl-C stops it)",
        flush=True,
    )
    serve_dashboard(storage, host=args.host, port=args.port, artifact_store=store)
    return "stopped"  # type: ignore[return-value]
