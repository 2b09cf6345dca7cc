"""The file a user deploys: ONNX with the normalisation folded in and what running it needs in
its metadata, ONNX Runtime's static int8 model, and such files measured back by ``eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from autoprune.compress import read_header
from autoprune.data import DATASETS
from autoprune.runtime import ort_session, run_session
from tests.workspace import call, copy_study


def test_the_onnx_file_takes_raw_images_and_carries_what_running_it_needs(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = copy_study(workspace, tmp_path)
    apk, graph = tmp_path / "t.apk", tmp_path / "t.onnx"
    code, out, err = call(
        ["export", "--storage", url, "--trial", "0", "--out", str(apk), "--onnx", str(graph), "--json"],
        capsys,
    )
    assert code == 0, err
    written = json.loads(out)
    code, out, err = call(["eval", str(apk), "--no-latency", "--json"], capsys)
    assert code == 0, err
    evaluated = json.loads(out)
    # the packed header records the normalisation and the class names too
    dataset = read_header(apk)[0]["meta"]["dataset"]
    assert (
        dataset["classes"] == [str(i) for i in range(10)] and len(dataset["mean"]) == len(dataset["std"]) == 1
    )
    proto = onnx.load(str(graph))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["mean"] == dataset["mean"] and props["std"] == dataset["std"]
    assert props["class_names"] == dataset["classes"] and props["input_shape"] == [1, 8, 8]
    assert props["dataset"] == "digits" and props["autoprune"]["study"] == "tiny"
    assert props["test_accuracy"] == pytest.approx(evaluated["test_accuracy"])
    # ONNX Runtime on the raw test images, read here from scikit-learn's digits in [0, 1] and
    # not through autoprune's normalised tensors, gives eval's accuracy
    raw = DATASETS.get("digits")(None)
    logits = run_session(ort_session(graph), raw.x_test.astype(np.float32))
    assert 100.0 * float((logits.argmax(1) == raw.y_test).mean()) == pytest.approx(evaluated["test_accuracy"])
    assert written["onnx_test_accuracy"] == pytest.approx(evaluated["test_accuracy"])
    assert written["onnx_accuracy"] == pytest.approx(evaluated["accuracy"])
    # and eval measures the ONNX file itself, with ONNX Runtime
    code, out, err = call(["eval", str(graph), "--json"], capsys)
    assert code == 0, err
    measured = json.loads(out)
    assert measured["format"] == "onnx" and not measured["int8"]
    assert measured["test_accuracy"] == pytest.approx(evaluated["test_accuracy"])
    assert measured["onnx_bytes"] == graph.stat().st_size and measured["latency_ms"] > 0


def test_the_int8_model_is_within_a_point_of_the_float_one(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    float_graph, int8_graph = tmp_path / "f.onnx", tmp_path / "q.onnx"
    apk = workspace / "m.apk"
    code, out, err = call(["eval", str(apk), "--no-latency", "--onnx", str(float_graph), "--json"], capsys)
    assert code == 0, err
    dense = json.loads(out)
    code, out, err = call(
        ["eval", str(apk), "--no-latency", "--onnx", str(int8_graph), "--int8", "--json"], capsys
    )
    assert code == 0, err
    quantized = json.loads(out)
    assert (
        quantized["onnx_int8"] and abs(quantized["onnx_test_accuracy"] - dense["onnx_test_accuracy"]) <= 1.0
    )
    assert quantized["onnx_bytes"] < dense["onnx_bytes"] / 2.5  # int8 weights, not float32
    ops = {n.op_type for n in onnx.load(str(int8_graph)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    code, out, err = call(["eval", str(int8_graph), "--no-latency", "--json"], capsys)
    assert code == 0, err
    again = json.loads(out)
    assert again["int8"] and again["test_accuracy"] == pytest.approx(quantized["onnx_test_accuracy"])


def test_an_onnx_file_that_arrives_as_data_is_checked(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "g.onnx"
    code, _, err = call(["eval", str(workspace / "m.apk"), "--no-latency", "--onnx", str(graph)], capsys)
    assert code == 0, err
    proto = onnx.load(str(graph))

    def refused(proto: onnx.ModelProto, *needles: str) -> None:
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(proto.SerializeToString())
        code, out, err = call(["eval", str(bad), "--no-latency"], capsys)
        assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, err
        for needle in needles:
            assert needle in err

    external = onnx.load(str(graph))  # a weight kept "in another file": it would read a path
    tensor = external.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    refused(external, "external data", "refused")
    garbled = onnx.load(str(graph))
    next(p for p in garbled.metadata_props if p.key == "autoprune").value = "{not json"
    refused(garbled, "metadata is not JSON")
    wrong = onnx.load(str(graph))
    next(p for p in wrong.metadata_props if p.key == "autoprune").value = json.dumps(
        {"dataset": "digits", "mean": ["x"]}
    )
    refused(wrong, "should be a list of finite numbers")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph at all")
    code, _, err = call(["eval", str(tmp_path / "bad.onnx")], capsys)
    assert code != 0 and "is not an ONNX file" in err and len(err.strip().splitlines()) == 1
    assert proto.graph.input[0].name == "input"  # the good file was left as written
    code, _, err = call(["eval", str(graph), "--int8"], capsys)
    assert code != 0 and "already ONNX" in err
    code, _, err = call(["eval", str(workspace / "m.apk"), "--int8"], capsys)
    assert code != 0 and "pass --onnx PATH with it" in err
