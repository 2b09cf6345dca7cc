"""bench/real_nets.py's code path on a tiny network and tiny data: every method, one seed, so
the benchmark cannot rot between its (hours-long) runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest

from autoprune.search import Budget
from autoprune.search.record import Source
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
real_nets = pytest.importorskip("real_nets")

TINY = [
    "--network", "resnet20", "--data", "digits", "--base-epochs", "4", "--max-ratio", "0.2",
    "--finetune-epochs", "1", "--trial-epochs", "1", "--trial-batches", "2", "--trials", "3", "-k", "1",
    "--ratios", "0.3", "--targets", "1.5", "--latency-repeats", "3", "--threads", "1", "-q", "--slack", "100",
]  # fmt: skip


@pytest.mark.slow  # a search and a finalize, in process: 20 s
def test_every_stage_runs_resumes_and_writes_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = ["--db", str(tmp_path / "s.db"), "--results", str(tmp_path / "rows.jsonl")]
    for stage in ("base", "uniform", "tp", "search", "pipeline", "report"):
        real_nets.main([stage, *TINY, *paths])
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    methods = [r["method"] for r in rows]
    assert methods[0] == "base" and {"uniform", "torch-pruning", "search (macs)"} <= set(methods)
    for r in rows[1:]:
        if r["method"].startswith("pipeline") and r.get("pick") is None:
            continue  # nothing within the budget on a one-epoch base: said so, in the row
        assert r["macs_ratio"] >= 1.0 and r["speedup_b1"] > 0 and r["speedup_b32"] > 0, r
        assert r["packed_ratio"] > (1.0 if r["macs_ratio"] > 1.1 else 0.0), r  # the pruned network's file
        assert {
            "val_drop",
            "test_drop",
            "wall_s",
            "other_load",
            "speedup_ort_b1",
            "speedup_torch_b32",
        } <= set(r)
    tp_row = next(r for r in rows if r["method"] == "torch-pruning")
    assert abs(tp_row["macs_ratio"] - 1.5) < 0.25, tp_row  # the bisection reached its target
    summary = json.loads((tmp_path / "rows.summary.json").read_text())
    assert {s["method"] for s in summary} >= {"uniform", "torch-pruning", "search (macs)"}
    assert (tmp_path / "rows.png").read_bytes()[:4] == b"\x89PNG"
    # every stage again: nothing is run twice, no row is added
    for stage in ("base", "uniform", "tp", "search", "pipeline"):
        real_nets.main([stage, *TINY, *paths])
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == len(rows)
    # rows measured against another base (one retrained on another kind of host) get no more
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**rows[0], "accuracy": rows[0]["accuracy"] - 0.5}) + "\n")
    with pytest.raises(SystemExit, match="another --results"):
        real_nets.main(["uniform", *TINY, *paths[:2], "--results", str(other)])
    assert len(other.read_text().splitlines()) == 1
    # the search of one share ranked across the network by Torch-Pruning's group L1, refitted after
    # pruning: its own study and rows
    ranked_args = ["--structured", "ranked", "--criterion", "group", "--reconstruct", "16"]
    real_nets.main(["search", *TINY, *paths, *ranked_args])
    # the pipeline's candidates on every pick a budget this tiny base can meet: the smallest file
    # among those within it is the pipeline's row
    monkeypatch.setattr(real_nets, "pick_budget", lambda spec, args: Budget(max_drop=90.0))
    pipeline_args = [*TINY, *paths, *ranked_args, "--conv-bits", "4", "--qualities", "0", "1"]
    real_nets.main(["pipeline", *pipeline_args])
    ranked = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()[len(rows) :]]
    label = "macs, ranked, criterion group, reconstruct 16"
    assert {r["method"] for r in ranked} == {
        f"{m} ({label})" for m in ("search", "pipeline candidate", "pipeline")
    }
    assert all(r["macs_ratio"] >= 1.0 for r in ranked), ranked
    candidates = [r for r in ranked if r["method"].startswith("pipeline candidate")]
    assert [(r["quality"], r["conv_bits"]) for r in candidates] == [(0.0, 4), (1.0, 4)]
    within = [r for r in candidates if r["acc_drop"] <= 90.0]
    assert (
        ranked[-1]["packed_bytes"] == min(r["packed_bytes"] for r in within) and ranked[-1]["candidates"] == 2
    )
    assert ranked[-1]["packed_ratio"] > 8  # 4-bit shares and Huffman on float32 weights
    # the other rule is a row of its own, from the same candidates (none computed again)
    real_nets.main(["pipeline", *pipeline_args, "--pick", "point"])
    again = [
        json.loads(line)
        for line in (tmp_path / "rows.jsonl").read_text().splitlines()[len(rows) + len(ranked) :]
    ]
    assert [(r["method"], r["pick_rule"], r["packed_bytes"]) for r in again] == [
        (f"pipeline ({label})", "point", ranked[-1]["packed_bytes"])
    ]
    # another grid is another choice: a row of its own, its candidates reused where computed
    real_nets.main(["pipeline", *pipeline_args[:-1]])  # quality 0 alone
    last = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[-1])
    assert (last["candidates"], last["quality"], last["qualities"], last["pick_rule"]) == (
        1,
        0.0,
        [0.0],
        "judged",
    )
    assert last["packed_bytes"] == candidates[0]["packed_bytes"]
    # batch norm as scale and shift, or folded (files for inference): candidates and a choice
    # of their own, each smaller than the file with batch norm as trained
    for norms in ("affine", "fold"):
        real_nets.main(["pipeline", *pipeline_args, "--norms", norms])
        lines = (tmp_path / "rows.jsonl").read_text().splitlines()
        inference = [json.loads(line) for line in lines[-3:]]
        assert [(r["quality"], r["conv_bits"], r["norms"]) for r in inference[:2]] == [
            (0.0, 4, norms),
            (1.0, 4, norms),
        ]
        assert all(f["packed_bytes"] < c["packed_bytes"] for f, c in zip(inference, candidates))
        assert inference[-1]["method"] == f"pipeline ({label})" and inference[-1]["norms"] == norms
    # longer trained quantization: candidates of their own, with files of their own
    real_nets.main(["pipeline", *pipeline_args[:-1], "--quant-epochs", "2"])
    tuned = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()[-2:]]
    assert [(r["quality"], r["quant_epochs"]) for r in tuned] == [(0.0, 2), (0.0, 2)]
    assert len(list(tmp_path.glob("*-q0-b4-tq2.apk"))) == 1
    # every network timed again beside the base, in one sitting
    real_nets.main(["speed", *TINY, *paths, *ranked_args, "--rounds", "2"])
    timed = json.loads((tmp_path / "rows.speed.json").read_text())[f"resnet20 {label} seed 0"]["rows"]
    assert timed[0]["what"] == "base" and timed[0]["speedup_b1"] == 1.0
    assert {r["method"] for r in timed} >= {
        "uniform",
        "torch-pruning",
        f"search ({label})",
        f"pipeline ({label})",
    }
    assert all(r["speedup_b1"] > 0 and r["speedup_b32"] > 0 for r in timed)
    # a comparison method fine-tuned with distillation: a row of its own beside the plain one
    before = len((tmp_path / "rows.jsonl").read_text().splitlines())
    real_nets.main(["tp", *TINY, *paths, "--distill", "0.5"])
    added = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()[before:]]
    assert [r["method"] for r in added] == ["torch-pruning + distill 0.5"] and added[0]["macs_ratio"] > 1.0
    # the comparison methods refitted after pruning (the ablation of autoprune's refit)
    for stage in ("uniform", "tp"):
        real_nets.main([stage, *TINY, *paths, "--reconstruct", "16"])
    added = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()[before + 1 :]]
    assert [r["method"] for r in added] == ["uniform + reconstruct 16", "torch-pruning + reconstruct 16"]
    assert all(r["macs_ratio"] > 1.0 and r["val_drop"] < 50 for r in added), added
    # another validation share is another split and another base: rows of its own
    before = len((tmp_path / "rows.jsonl").read_text().splitlines())
    real_nets.main(["base", *TINY, *paths, "--val-fraction", "0.3"])
    added = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()[before:]]
    assert [(r["method"], r["val_fraction"]) for r in added] == [("base", 0.3)]

    # a wider ladder on the same study finalizes the trials it adds, and only those
    def finals() -> list[int]:
        lines = (tmp_path / "rows.jsonl").read_text().splitlines()
        return [r["trial"] for r in map(json.loads, lines) if r["method"] == "search (macs)"]

    before = finals()
    real_nets.main(["search", *TINY, *paths, "-k", "3"])
    assert len(finals()) > len(before) and len(set(finals())) == len(finals()), (before, finals())


def test_a_row_written_before_the_split_was_keyed_reads_as_the_default_split() -> None:
    old = {"network": "resnet20", "method": "base", "data": "digits", "train_limit": 0}
    assert real_nets.matches(old, {"network": "resnet20", "val_fraction": 0.1})
    assert not real_nets.matches(old, {"network": "resnet20", "val_fraction": 0.4})


@pytest.mark.slow  # a search and a finalize, in process
def test_a_trial_at_the_final_budget_is_its_own_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncapped trials of the final's epochs are promoted by no batches: the finalized network
    is the trial's own, not a second fine-tuning of it on the same seeds."""
    monkeypatch.chdir(tmp_path)
    paths = ["--db", str(tmp_path / "s.db"), "--results", str(tmp_path / "rows.jsonl")]
    uncapped = [*TINY, *paths, "--trial-batches", "0"]
    args = real_nets.main_parser().parse_args(["search", *uncapped])
    assert real_nets.at_final_budget(args)
    assert not real_nets.at_final_budget(real_nets.main_parser().parse_args(["search", *TINY]))
    for stage in ("base", "search"):
        real_nets.main([stage, *uncapped])
    spec = real_nets.study_spec(args)
    trials = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage).get_trials()
    finals = [t for t in trials if t.user_attrs.get("source") == Source.FINAL]
    assert finals
    for final in finals:
        parent = trials[final.user_attrs["parent"]]
        budget = final.user_attrs["budget"]
        assert budget["promoted"] and budget["batches_continued"] == 0 and budget["batches_before"] > 0
        assert final.user_attrs["accuracy"] == parent.user_attrs["accuracy"]
        assert final.user_attrs["macs"] == parent.user_attrs["macs"]
