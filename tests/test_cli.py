"""The ``numbanorm`` command through its real entry point, ``python -m
numbanorm``, in a subprocess with PYTHONPATH set to the repository root (so
it runs the same from a checkout and installed).

Numbers the command prints are checked against what these tests compute on
their own: written models are run in onnxruntime here and compared with
``tests/reference.py``; what ``check`` flags is confirmed by running the
model here.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_ops
from tests import reference
from tests.conftest import compile_run

ROOT = Path(__file__).resolve().parent.parent
OP_LABELS = {"LayerNorm", "RMSNorm", "GroupNorm G=32", "InstanceNorm", "BatchNorm"}


def numbanorm(*args, cwd=None, pythonpath=ROOT, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("NUMBANORM_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "numbanorm", *map(str, args)],
                          cwd=cwd or ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def explain(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def run_ort(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def assert_matches_reference(y, y_ref, dtype):
    y_ref = np.asarray(y_ref, dtype=np.float64)
    scale = np.maximum(1.0, np.abs(y_ref))
    rel = {"float32": 1e-5, "float16": 2e-3}[dtype]
    err = np.abs(y.astype(np.float64) - y_ref) / scale
    assert np.all(err <= rel), f"max relative error {err.max():.3g} > {rel}"


# ----------------------------------------------------------------- selfcheck


def parse_selfcheck_table(stdout):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("op ") and "runtime" in line)
    head = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            continue
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(head):
            break
        rows.append(dict(zip(head, cells)))
    return rows, "\n".join(lines[start + 2 + len(rows):])


def test_selfcheck_passes():
    proc = numbanorm()  # no arguments: the self-check
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stderr
    rows, notes = parse_selfcheck_table(proc.stdout)
    assert {r["op"] for r in rows} == OP_LABELS

    ours = [r for r in rows if r["runtime"] == "numbanorm"]
    # every op in float32 and float16, on N(0,1) and large-offset data
    assert len(ours) == len(OP_LABELS) * 4
    for r in ours:
        assert r["result"] == "pass", r
        assert float(r["ulps"]) <= (4.0 if r["dtype"] == "float32" else 1.0), r
        assert float(r["ms"]) > 0 and float(r["GB/s"]) > 0, r
    assert {r["data"].split(", std")[0] for r in ours} == {"N(0,1)", "offset 1e4", "offset 300"}

    peers = [r for r in rows if r["runtime"] != "numbanorm"]
    for r in ours:
        mine = [p for p in peers if (p["op"], p["dtype"], p["data"]) == (r["op"], r["dtype"], r["data"])]
        assert {(p["form"], p["runtime"]) for p in mine} >= {
            (form, runtime) for form in ("native", "decomposed")
            for runtime in ("onnxruntime", "onnx.reference")}, r
    for p in peers:
        assert p["result"] in ("ok", "off", "not supported"), p
        if p["result"] == "off":
            opset = p["opset"]
            assert re.search(rf"- {re.escape(p['runtime'])} \S*-{opset}\b|"
                             rf"- {re.escape(p['runtime'])} .*\(opset {opset}\)", notes), p
    # onnx_ops's decompositions are accurate also on the offset data
    for p in peers:
        if p["form"] == "decomposed" and p["runtime"] == "onnxruntime":
            assert p["result"] == "ok", p
    # the case onnxruntime gets wrong is in the table, with its cause below
    gn = [p for p in peers if p["op"].startswith("GroupNorm") and p["form"] == "native"
          and p["runtime"] == "onnxruntime" and p["data"].startswith("offset")]
    assert len(gn) == 2
    if any(p["result"] == "off" for p in gn):
        assert "onnxruntime GroupNormalization-21" in notes and "one-pass" in notes


def test_selfcheck_reports_a_form_it_cannot_build(monkeypatch):
    from numbanorm import _selfcheck

    monkeypatch.setattr(_selfcheck, "PROBLEMS", [
        _selfcheck.Problem("LayerNorm", "tiny", "layer_norm", (2, 3, 16), {})])
    # LayerNormalization does not exist at opset 13
    monkeypatch.setattr(_selfcheck, "FORMS", {
        "layer_norm": [("native", 13, False), ("decomposed", 13, True)]})
    rows = _selfcheck.run(progress=False)
    assert len(rows) == 4 * 5
    native = [r for r in rows if r.form == "native"]
    assert len(native) == 8
    for r in native:
        assert r.status == "not supported" and "opset 13" in r.reason, r
    assert all(r.status == "ok" for r in rows if r.form == "decomposed")
    assert _selfcheck.passed(rows)
    (note,) = _selfcheck.unsupported_notes(rows)
    assert note.startswith("layer_norm native opset 13 float32, layer_norm native opset 13 "
                           "float16 (onnxruntime, onnx.reference): onnx_ops: ")


# ------------------------------------------------------ export, convert, check

ROUND_TRIPS = {
    # id: (op, shape, export options, dtype, target opset, convert options, op in check)
    "layer_norm-17-to-23": ("layer_norm", "N,8,32", ["--opset", "17"], "float32", 23, ["--fuse"],
                            "LayerNormalization"),
    "rms_norm-f16-23-to-13": ("rms_norm", "N,8,64", ["--opset", "23", "--native"], "float16", 13,
                              [], "rms_norm pattern"),
    "group_norm-21-to-18": ("group_norm", "N,8,4,4", ["--opset", "21", "--native", "--num-groups", "4"],
                            "float32", 18, [], "InstanceNormalization"),
    "batch_norm-f16-params-15-to-13": ("batch_norm", "N,16,5,5", ["--opset", "15"], "float16", 13, [],
                                       "BatchNormalization"),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_export_convert_check_round_trip(case, tmp_path):
    op, shape, export_opts, dtype, target, convert_opts, check_op = ROUND_TRIPS[case]
    rng = np.random.default_rng(7)
    dims = [int(d) if d.isdigit() else d for d in shape.split(",")]
    C = dims[1]
    ns = dims[-1]
    args = {"layer_norm": dict(normalized_shape=(ns,), weight=np.ones(ns), bias=np.zeros(ns)),
            "rms_norm": dict(normalized_shape=(ns,), weight=np.ones(ns)),
            "group_norm": dict(num_groups=4, weight=np.ones(C), bias=np.zeros(C))}.get(op)
    opts = list(export_opts)
    if op == "batch_norm":
        # parameters from --params: the written model must hold them
        params = {"weight": rng.standard_normal(C), "bias": rng.standard_normal(C),
                  "running_mean": rng.standard_normal(C), "running_var": rng.random(C) + 0.5}
        np.savez(tmp_path / "params.npz", **params)
        opts += ["--params", tmp_path / "params.npz"]
        rounded = {k: v.astype(dtype).astype(np.float64) for k, v in params.items()}
        args = dict(running_mean=rounded["running_mean"], running_var=rounded["running_var"],
                    weight=rounded["weight"], bias=rounded["bias"])

    exported, converted = tmp_path / "model.onnx", tmp_path / "converted.onnx"
    proc = numbanorm("export", op, "--shape", shape, "--dtype", dtype, *opts, "-o", exported)
    assert proc.returncode == 0, explain(proc)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == ["model.onnx"]
    model = onnx.load(exported)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"

    proc = numbanorm("convert", exported, converted, "--target-opset", target, *convert_opts,
                     "--dim", "N=3")
    assert proc.returncode == 0, explain(proc)
    assert "ok" in proc.stdout
    out = onnx.load(converted)
    assert [i.version for i in out.opset_import if i.domain in ("", "ai.onnx")] == [target]
    # no temporary files left next to the result
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".npz") == [
        "converted.onnx", "model.onnx"]

    # the written models compute the norm, by this test's own reference
    x = rng.standard_normal((3,) + tuple(dims[1:])).astype(dtype)
    y_ref = reference.REFERENCES[op](x, **args)
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    for path in (exported, converted):
        assert_matches_reference(run_ort(path, {"x": x}), y_ref, dtype)

    proc = numbanorm("check", converted, "--json", "--dim", "N=3")
    assert proc.returncode == 0, explain(proc)
    report = json.loads(proc.stdout)
    assert report["flagged"] == 0
    assert [n["op"].split(" (")[0] for n in report["nodes"]] == [check_op]
    node = report["nodes"][0]
    assert node["verdict"] == "ok" and node["runtime_ok"] and node["numbanorm_ok"]
    assert node["shape"][0] == 3
    assert report["inputs"]["dims"] == {"N": 3}


def groupnorm21(path, C=8, G=4, offset=None, seed=3):
    """x -> [Add(offset)] -> GroupNormalization-21 -> y, built by hand."""
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w, "scale"), numpy_helper.from_array(b, "bias")]
    x = "x"
    if offset is not None:
        nodes.append(helper.make_node("Add", ["x", "offset"], ["shifted"]))
        inits.append(numpy_helper.from_array(np.array(offset, np.float32), "offset"))
        x = "shifted"
    nodes.append(helper.make_node("GroupNormalization", [x, "scale", "bias"], ["y"], num_groups=G,
                                  name="gn"))
    graph = helper.make_graph(
        nodes, "gn21", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return w, b


def test_check_flags_groupnorm_on_large_offset_inputs(tmp_path):
    C, G = 8, 4
    w, b = groupnorm21(tmp_path / "gn.onnx", C, G)
    x = (np.random.default_rng(0).standard_normal((2, C, 4, 4)) + 1e4).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x)

    # onnxruntime is indeed wrong on these inputs (it runs the operator's
    # one-pass function body): the premise of the check below
    y = run_ort(tmp_path / "gn.onnx", {"x": x})
    y_ref = reference.group_norm(x, G, w, b)[0]
    assert not np.allclose(y, y_ref, atol=1e-3, equal_nan=False)

    proc = numbanorm("check", tmp_path / "gn.onnx", "--inputs", tmp_path / "inputs.npz", "--json")
    assert proc.returncode == 1, explain(proc)
    (node,) = json.loads(proc.stdout)["nodes"]
    assert node["op"] == "GroupNormalization" and node["name"] == "gn"
    assert node["flagged"] and not node["runtime_ok"] and node["numbanorm_ok"]
    assert node["verdict"].startswith("runtime off")
    assert node["mean_over_std"] > 1e3

    # the same model on N(0,1) inputs passes, in the table form
    proc = numbanorm("check", tmp_path / "gn.onnx")
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^gn\s+GroupNormalization\s+\(2, 8, 4, 4\)\s+float32\s.*\bok$", proc.stdout,
                     re.MULTILINE), proc.stdout


def test_check_passes_a_pytorch_export(tmp_path):
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.gn = torch.nn.GroupNorm(4, 8)
            self.ln = torch.nn.LayerNorm(16)

        def forward(self, x):
            return self.ln(self.gn(self.conv(x)))

    torch.manual_seed(0)
    path = tmp_path / "block.onnx"
    # the TorchScript exporter (the dynamo one needs onnxscript) warns that it
    # is deprecated and that tracing turns sizes into constants
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(2, 3, 16, 16),), str(path), opset_version=17,
                          dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proc = numbanorm("check", path, "--json")
    assert proc.returncode == 0, explain(proc)
    nodes = json.loads(proc.stdout)["nodes"]
    assert sorted(n["norm"] for n in nodes) == ["group_norm", "layer_norm"]
    assert {n["kind"] for n in nodes if n["norm"] == "group_norm"} == {"pattern"}
    for n in nodes:
        assert n["verdict"] == "ok" and not n["flagged"], n
        assert n["runtime_max_abs_err"] < 1e-4 and n["numbanorm_max_abs_err"] < 1e-5, n


# ------------------------------------------------------------------- convert


def test_convert_refuses_a_result_that_differs(tmp_path):
    # Native GroupNormalization on data offset by 1e4 (inside the model): the
    # default rewrite (shifted InstanceNormalization) is right where
    # onnxruntime's GroupNormalization is not, so the outputs differ.
    groupnorm21(tmp_path / "gn.onnx", offset=1e4)
    proc = numbanorm("convert", tmp_path / "gn.onnx", tmp_path / "out.onnx", "--target-opset", 21)
    assert proc.returncode == 1, explain(proc)
    assert "refusing to write" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gn.onnx"]


def test_compare_models_rejects_a_wrong_candidate():
    from numbanorm._modelcheck import compare_models, random_inputs

    good = onnx_ops.to_onnx("layer_norm", input_shape=("N", 16), normalized_shape=16, opset=17)
    wrong = onnx_ops.to_onnx("layer_norm", input_shape=("N", 16), normalized_shape=16, opset=17,
                             eps=0.5)
    feeds, dims = random_inputs(good, {"N": 5})
    assert dims == {"N": 5} and feeds["x"].shape == (5, 16)
    (result,) = compare_models(good, wrong, feeds)
    assert not result["ok"] and result["relative"] > result["tolerance"]
    (result,) = compare_models(good, onnx_ops.convert(good, 13), feeds)
    assert result["ok"] and result["max_abs_diff"] < 1e-5


# ---------------------------------------------------------------- bench, info


def test_bench_passes_arguments_through_from_a_checkout():
    proc = numbanorm("bench", "--help")
    assert proc.returncode == 0, explain(proc)
    assert "benchmarks.bench" in proc.stdout and "--scaling" in proc.stdout


def test_bench_outside_a_checkout_says_so(tmp_path):
    for package in ("numbanorm", "onnx_ops"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    proc = numbanorm("bench", "--quick", cwd=tmp_path, pythonpath=tmp_path)
    assert proc.returncode == 2, explain(proc)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("numbanorm: error:") and "source checkout" in line


def test_info():
    import numba

    proc = numbanorm("info")
    assert proc.returncode == 0, explain(proc)
    info = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert info["numba"] == numba.__version__
    assert info["onnxruntime"] == ort.__version__
    assert int(info["threads"]) >= 1
    for key in ("numbanorm", "threading_layer", "cpu", "cache_dir"):
        assert info[key]


def test_compile_fills_the_cache(request):
    # On an empty cache, conftest ran numbanorm compile before the tests
    # (~150 s on a 2-core Zen 1 with its two processes, ~320 s in one).
    proc = compile_run(request.config) or numbanorm("compile", timeout=1500)
    assert proc.returncode == 0, explain(proc)
    last = proc.stdout.strip().splitlines()[-1]
    m = re.match(r"(\d+) kernels, (\d+) signatures compiled, (\d+) loaded", last)
    assert m, last
    kernels, compiled, loaded = map(int, m.groups())
    assert kernels >= 15 and compiled + loaded >= 60
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        assert dtype in proc.stdout
    # everything is in the cache now: a second run compiles nothing, in one
    # process or in several
    for jobs in (1, 2):
        again = numbanorm("compile", "--jobs", jobs)
        assert again.returncode == 0, explain(again)
        assert " 0 signatures compiled" in again.stdout, again.stdout
        m = re.search(r"(\d+) kernels, 0 signatures compiled, (\d+) loaded", again.stdout)
        assert m and int(m.group(2)) == compiled + loaded, again.stdout


@pytest.mark.parametrize("jobs", [1, 2, 3, 4, 8])
def test_compile_shares_every_dtype_out_once(jobs):
    from numbanorm import _warmup

    names = [np.dtype(dt).name for dt in _warmup.DTYPES]
    groups = _warmup._split(names, jobs)
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert 1 <= len(groups) <= min(jobs, len(names)) and all(groups)
    if jobs == 2:  # the heaviest two apart
        cost = [sum(_warmup._COST[n] for n in g) for g in groups]
        assert max(cost) - min(cost) <= min(_warmup._COST.values())


# --------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_errors")
    model = onnx_ops.to_onnx("layer_norm", input_shape=("N", 8), normalized_shape=8, opset=17)
    onnx.save(model, d / "ln.onnx")
    (d / "text.onnx").write_text("this is not a model\n")
    data = model.SerializeToString()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "text.npz").write_text("not an npz\n")
    np.savez(d / "wrong_shape.npz", x=np.zeros((2, 5), np.float32))
    np.savez(d / "wrong_key.npz", y=np.zeros((2, 8), np.float32))
    np.savez(d / "bn_params.npz", weight=np.ones(3))
    return d


ERRORS = {
    "missing model": ["check", "{d}/missing.onnx"],
    "not an onnx file": ["check", "{d}/text.onnx"],
    "truncated model": ["check", "{d}/truncated.onnx"],
    "convert non-onnx": ["convert", "{d}/text.onnx", "{d}/out.onnx", "--target-opset", "13"],
    "convert bad opset": ["convert", "{d}/ln.onnx", "{d}/out.onnx", "--target-opset", "99"],
    "convert no opset": ["convert", "{d}/ln.onnx", "{d}/out.onnx"],
    "empty dim": ["export", "layer_norm", "--shape", "2,,8", "-o", "{d}/out.onnx"],
    "bad dim name": ["export", "layer_norm", "--shape", "2,x y,8", "-o", "{d}/out.onnx"],
    "negative dim": ["export", "layer_norm", "--shape", "2,-8", "-o", "{d}/out.onnx"],
    "unknown op": ["export", "softmax_norm", "--shape", "2,8", "-o", "{d}/out.onnx"],
    "no groups": ["export", "group_norm", "--shape", "2,8,4", "-o", "{d}/out.onnx"],
    "params shape": ["export", "batch_norm", "--shape", "2,4,3", "--params", "{d}/bn_params.npz",
                     "-o", "{d}/out.onnx"],
    "params not npz": ["export", "layer_norm", "--shape", "2,8", "--params", "{d}/text.npz",
                       "-o", "{d}/out.onnx"],
    "dim without value": ["check", "{d}/ln.onnx", "--dim", "N"],
    "dim not an int": ["check", "{d}/ln.onnx", "--dim", "N=two"],
    "unknown dim": ["check", "{d}/ln.onnx", "--dim", "M=3"],
    "inputs not npz": ["check", "{d}/ln.onnx", "--inputs", "{d}/text.npz"],
    "inputs wrong shape": ["check", "{d}/ln.onnx", "--inputs", "{d}/wrong_shape.npz"],
    "inputs wrong key": ["check", "{d}/ln.onnx", "--inputs", "{d}/wrong_key.npz"],
    "unknown command": ["frobnicate"],
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_exit_2(case, files):
    proc = numbanorm(*[a.format(d=files) for a in ERRORS[case]])
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numbanorm: error: "), explain(proc)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (files / "out.onnx").exists()
