"""Hostile model files and malformed models: onnx_ops.load_model, save_model
and convert refuse them with a ValueError that names the file (or the node,
the input and the shapes), leave no partial output file and never touch the
input."""

import io
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_ops

F = TensorProto.FLOAT


def _ln_model(opset=17, n=64):
    rng = np.random.default_rng(0)
    return onnx_ops.to_onnx("layer_norm", input_shape=("N", n), normalized_shape=n, opset=opset,
                            weight=1 + rng.standard_normal(n), bias=rng.standard_normal(n))


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _snapshot(*paths):
    """Bytes and mtime of each file, to show it was not touched."""
    return {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in paths}


def _leftovers(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))


def _node_model(op_type, inputs, inits, shape, opset, graph_inputs=(), **attrs):
    """One normalization node "norm1" reading x (and initializers / extra graph inputs)."""
    graph = helper.make_graph(
        [helper.make_node(op_type, inputs, ["y"], name="norm1", **attrs)], "g",
        [helper.make_tensor_value_info("x", F, shape)]
        + [helper.make_tensor_value_info(name, F, s) for name, s in graph_inputs],
        [helper.make_tensor_value_info("y", F, shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return model


# ------------------------------------------------------------ load_model


def test_load_model_round_trip(tmp_path):
    model = _ln_model()
    path = str(tmp_path / "m.onnx")
    onnx_ops.save_model(model, path)
    assert onnx_ops.load_model(path).SerializeToString() == model.SerializeToString()


def _not_onnx_files(model_bytes):
    npz = io.BytesIO()
    np.savez(npz, a=np.arange(10.0))
    half = len(model_bytes) // 2
    return {
        "empty": (b"", "empty"),
        "truncated-half": (model_bytes[:half], "truncated"),
        "truncated-last-byte": (model_bytes[:-1], "truncated"),
        "truncated-first-bytes": (model_bytes[:3], "truncated"),
        "text": (b"this is a text file, not a model\n" * 10, "not an ONNX model"),
        "npz": (npz.getvalue(), "not an ONNX model"),
        "json": (b'{"ir_version": 8, "graph": {}}', "not an ONNX model"),
        "zeros": (bytes(4096), "not an ONNX model"),
    }


@pytest.mark.parametrize("case", list(_not_onnx_files(b"0123")))
def test_load_model_refuses_files_that_are_not_models(tmp_path, case):
    data, words = _not_onnx_files(_ln_model().SerializeToString())[case]
    # The extension must not change how the file is read (onnx.load would
    # take ".json" or ".txt" for a text format).
    for name in ("m.onnx", "m.npz", "m.json", "m.txt"):
        path = _write(str(tmp_path / name), data)
        before = _snapshot(path)
        with pytest.raises(ValueError, match=words) as info:
            onnx_ops.load_model(path)
        assert repr(path) in str(info.value)
        assert _snapshot(path) == before


def test_load_model_refuses_missing_paths_and_directories(tmp_path):
    with pytest.raises(ValueError, match="no such file") as info:
        onnx_ops.load_model(tmp_path / "absent.onnx")
    assert "absent.onnx" in str(info.value)
    with pytest.raises(ValueError, match="is a directory"):
        onnx_ops.load_model(tmp_path)
    os.symlink(tmp_path / "absent.onnx", tmp_path / "dangling.onnx")
    with pytest.raises(ValueError, match="not a regular file"):
        onnx_ops.load_model(tmp_path / "dangling.onnx")
    os.mkfifo(tmp_path / "pipe.onnx")  # opening it for reading would block forever
    with pytest.raises(ValueError, match="not a regular file"):
        onnx_ops.load_model(tmp_path / "pipe.onnx")


def test_load_model_names_the_checker(tmp_path):
    model = _ln_model()
    model.graph.node[0].input[0] = "undefined_tensor"
    path = _write(str(tmp_path / "bad.onnx"), model.SerializeToString())
    with pytest.raises(ValueError, match="check_model rejects it") as info:
        onnx_ops.load_model(path)
    assert "undefined_tensor" in str(info.value)


@pytest.mark.parametrize("opset", [1, 12, 24, 30, 10**6])
def test_load_model_refuses_unsupported_opsets(tmp_path, opset):
    model = _ln_model()
    model.opset_import[0].version = opset
    path = _write(str(tmp_path / "m.onnx"), model.SerializeToString())
    with pytest.raises(ValueError, match=f"opset is {opset}, outside the supported range "
                                         f"{onnx_ops.MIN_OPSET}..{onnx_ops.MAX_OPSET}"):
        onnx_ops.load_model(path)


def test_load_model_refuses_a_model_without_default_opset(tmp_path):
    model = _ln_model()
    model.opset_import[0].domain = "com.example"
    path = _write(str(tmp_path / "m.onnx"), model.SerializeToString())
    with pytest.raises(ValueError, match="no default-domain"):
        onnx_ops.load_model(path)


# ----------------------------------------------------------- external data


@pytest.fixture
def external(tmp_path):
    """A model in tmp/model/ whose weights live in tmp/model/w.data; tmp/outside/ next to it."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside").mkdir()
    model = _ln_model()
    stored = onnx.ModelProto()
    stored.CopyFrom(model)  # onnx.save_model moves the data of the model it saves out to the file
    onnx.save_model(stored, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.data", size_threshold=0)
    return model, folder, tmp_path / "outside"


def _set_location(path, location, key="location"):
    """Rewrite the external data `key` of every initializer of the model at path."""
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == key:
                entry.value = location
    onnx.save_model(model, str(path))


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_external_data_is_loaded(external):
    model, folder, _ = external
    loaded = onnx_ops.load_model(folder / "m.onnx")
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    want = _weights(model)
    got = _weights(loaded)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_external_data_through_a_symlink_inside_the_folder(external):
    model, folder, _ = external
    os.rename(folder / "w.data", folder / "real.data")
    os.symlink("real.data", folder / "w.data")
    loaded = onnx_ops.load_model(folder / "m.onnx")
    for name, value in _weights(model).items():
        np.testing.assert_array_equal(_weights(loaded)[name], value)


def _assert_refused(path, tensor_words, words):
    files = [os.path.join(os.path.dirname(path), f) for f in os.listdir(os.path.dirname(path))]
    before = _snapshot(*[f for f in files if os.path.isfile(f)])
    with pytest.raises(ValueError) as info:
        onnx_ops.load_model(path)
    msg = str(info.value)
    for w in [repr(str(path))] + tensor_words + words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert _snapshot(*before) == before


@pytest.mark.parametrize("location", ["../outside/w.data", "sub/../../outside/w.data", "./../outside/w.data"])
def test_external_data_path_traversal_is_refused(external, location):
    _, folder, outside = external
    os.rename(folder / "w.data", outside / "w.data")
    (folder / "sub").mkdir()
    _set_location(folder / "m.onnx", location)
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/weight", repr(location)], ["outside the model's folder"])


def test_external_data_absolute_path_is_refused(external):
    _, folder, outside = external
    os.rename(folder / "w.data", outside / "w.data")
    location = str(outside / "w.data")
    _set_location(folder / "m.onnx", location)
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/weight", repr(location)], ["absolute path"])
    # Also an absolute path that does point into the model's own folder.
    os.rename(outside / "w.data", folder / "w.data")
    _set_location(folder / "m.onnx", str(folder / "w.data"))
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/weight"], ["absolute path"])


@pytest.mark.parametrize("how", ["file", "folder"])
def test_external_data_symlink_out_of_the_folder_is_refused(external, how):
    _, folder, outside = external
    os.rename(folder / "w.data", outside / "w.data")
    if how == "file":
        os.symlink(outside / "w.data", folder / "w.data")
        location = "w.data"
    else:
        os.symlink(outside, folder / "link")
        location = "link/w.data"
        _set_location(folder / "m.onnx", location)
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/weight", repr(location)],
                    ["outside the model's folder", str(outside)])


def test_external_data_missing_or_short_file(external):
    _, folder, _ = external
    data = (folder / "w.data").read_bytes()
    (folder / "w.data").unlink()
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/weight", "'w.data'"], ["no such file"])
    _write(folder / "w.data", data[: len(data) // 2])
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/bias"], ["past the end of the file"])
    _write(folder / "w.data", data)
    _set_location(folder / "m.onnx", "-5", key="offset")
    _assert_refused(str(folder / "m.onnx"), ["layer_norm/weight"], ["negative offset"])


def test_external_data_locations_are_all_checked_before_any_is_read(external, monkeypatch):
    # One bad location among good ones: nothing may be opened at all.
    _, folder, _ = external
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    entry = [e for e in model.graph.initializer[-1].external_data if e.key == "location"][0]
    entry.value = "../w.data"
    onnx.save_model(model, str(folder / "m.onnx"))
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file) if not isinstance(file, int) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(ValueError, match="outside the model's folder"):
        onnx_ops.load_model(folder / "m.onnx")
    assert not any(str(f).endswith("w.data") for f in opened)


# ------------------------------------------------------------ save_model


def test_save_model_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    model = _ln_model()
    existing = tmp_path / "old.onnx"
    onnx_ops.save_model(_ln_model(n=8), existing)
    before = _snapshot(existing)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    for target in (existing, tmp_path / "new.onnx"):
        with pytest.raises(ValueError, match="No space left on device"):
            onnx_ops.save_model(model, target)
    assert _snapshot(existing) == before
    assert not (tmp_path / "new.onnx").exists()
    assert _leftovers(tmp_path) == []


def test_save_model_interrupted_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_ops.save_model(_ln_model(), tmp_path / "new.onnx")
    assert os.listdir(tmp_path) == []


def test_save_model_protect(tmp_path):
    src = tmp_path / "in.onnx"
    onnx_ops.save_model(_ln_model(), src)
    os.symlink(src, tmp_path / "alias.onnx")
    before = _snapshot(src)
    for target in (src, str(src), tmp_path / "." / "in.onnx", tmp_path / "alias.onnx"):
        with pytest.raises(ValueError, match="must not be overwritten"):
            onnx_ops.save_model(_ln_model(n=8), target, protect=src)
    with pytest.raises(ValueError, match="must not be overwritten"):
        onnx_ops.save_model(_ln_model(n=8), src, protect=[tmp_path / "other.onnx", tmp_path / "alias.onnx"])
    assert _snapshot(src) == before
    onnx_ops.save_model(_ln_model(n=8), tmp_path / "out.onnx", protect=src)
    assert onnx_ops.load_model(tmp_path / "out.onnx").graph.input[0].type.tensor_type.shape.dim[1].dim_value == 8


def test_save_model_bad_destinations(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        onnx_ops.save_model(_ln_model(), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        onnx_ops.save_model(_ln_model(), tmp_path / "no" / "m.onnx")
    with pytest.raises(TypeError, match="ModelProto"):
        onnx_ops.save_model(_ln_model().graph, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_save_model_keeps_the_mode_of_an_existing_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_ops.save_model(_ln_model(), path)
    os.chmod(path, 0o640)
    onnx_ops.save_model(_ln_model(n=8), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


# ------------------------------------------------- malformed normalization nodes

# name -> (op_type, inputs, initializers, x shape, opset, attributes, graph inputs,
#          words the message must contain)
MALFORMED = {
    "ln-scale-length": ("LayerNormalization", ["x", "s", "b"], {"s": np.ones(7), "b": np.zeros(8)}, [2, 8], 17,
                        {}, [], ["input 1 (Scale", "'s'", "(7,)", "(8,)", "(2, 8)"]),
    "ln-bias-length": ("LayerNormalization", ["x", "s", "b"], {"s": np.ones(8), "b": np.zeros(5)}, [2, 8], 17,
                       {}, [], ["input 2 (B", "'b'", "(5,)", "(8,)"]),
    "ln-scale-over-batch": ("LayerNormalization", ["x", "s"], {"s": np.ones((2, 8))}, [2, 8], 17,
                            {}, [], ["input 1 (Scale", "(2, 8)"]),
    "ln-scale-2d-normalized": ("LayerNormalization", ["x", "s"], {"s": np.ones((4, 3))}, [2, 3, 4], 17,
                               {"axis": 1}, [], ["(4, 3)", "(3, 4)", "axis=1"]),
    "ln-scale-graph-input": ("LayerNormalization", ["x", "s"], {}, [2, 8], 17,
                             {}, [("s", [9])], ["input 1 (Scale", "'s'", "(9,)", "(8,)"]),
    "ln-missing-scale": ("LayerNormalization", ["x"], {}, [2, 8], 17,
                         {}, [], ["required input 1 (Scale) is missing"]),
    "ln-empty-scale-name": ("LayerNormalization", ["x", ""], {}, [2, 8], 17,
                            {}, [], ["required input 1 (Scale) is missing"]),
    "ln-axis-out-of-range": ("LayerNormalization", ["x", "s"], {"s": np.ones(8)}, [2, 8], 17,
                             {"axis": 2}, [], ["axis=2", "(2, 8)"]),
    "rms-scale-length": ("RMSNormalization", ["x", "s"], {"s": np.ones(7)}, [2, 8], 23,
                         {}, [], ["input 1 (scale", "(7,)", "(8,)"]),
    "gn-scale-length": ("GroupNormalization", ["x", "s", "b"], {"s": np.ones(4), "b": np.zeros(6)}, [2, 6, 3], 21,
                        {"num_groups": 3}, [], ["input 1 (scale", "'s'", "(4,)", "(6,)", "(2, 6, 3)"]),
    "gn-bias-length": ("GroupNormalization", ["x", "s", "b"], {"s": np.ones(6), "b": np.zeros(3)}, [2, 6, 3], 21,
                       {"num_groups": 3}, [], ["input 2 (bias", "(3,)", "(6,)"]),
    "gn18-per-group-length": ("GroupNormalization", ["x", "s", "b"], {"s": np.ones(6), "b": np.zeros(3)},
                              [2, 6, 3], 18, {"num_groups": 3}, [], ["input 1 (scale", "(6,)", "(3,)", "per group"]),
    "gn-groups-do-not-divide": ("GroupNormalization", ["x", "s", "b"], {"s": np.ones(6), "b": np.zeros(6)},
                                [2, 6, 3], 21, {"num_groups": 4}, [], ["num_groups=4", "6 channels"]),
    "gn-groups-zero": ("GroupNormalization", ["x", "s", "b"], {"s": np.ones(6), "b": np.zeros(6)},
                       [2, 6, 3], 21, {"num_groups": 0}, [], ["num_groups", "0"]),
    "gn-unknown-channels": ("GroupNormalization", ["x", "s", "b"], {"s": np.ones(6), "b": np.zeros(4)},
                            [2, "C", 3], 21, {"num_groups": 2}, [], ["input 2 (bias", "(4,)", "(6,)"]),
    "in-scale-length": ("InstanceNormalization", ["x", "s", "b"], {"s": np.ones(4), "b": np.zeros(6)},
                        [2, 6, 3], 17, {}, [], ["input 1 (scale", "(4,)", "(6,)"]),
    "in-scale-2d": ("InstanceNormalization", ["x", "s", "b"], {"s": np.ones((6, 1)), "b": np.zeros(6)},
                    [2, 6, 3], 17, {}, [], ["input 1 (scale", "(6, 1)"]),
    "bn-missing-var": ("BatchNormalization", ["x", "s", "b", "m"], {"s": np.ones(6), "b": np.zeros(6),
                                                                    "m": np.zeros(6)}, [2, 6, 3], 17,
                       {}, [], ["required input 4 (input_var) is missing", "['x', 's', 'b', 'm']"]),
    "bn-mean-length": ("BatchNormalization", ["x", "s", "b", "m", "v"],
                       {"s": np.ones(6), "b": np.zeros(6), "m": np.zeros(5), "v": np.ones(6)}, [2, 6, 3], 15,
                       {}, [], ["input 3 (input_mean", "'m'", "(5,)", "(6,)"]),
}


@pytest.mark.parametrize("decompose", [None, True, False])
@pytest.mark.parametrize("target", [13, 17, 23])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_convert_names_the_malformed_node(case, target, decompose):
    op_type, inputs, inits, shape, opset, attrs, graph_inputs, words = MALFORMED[case]
    model = _node_model(op_type, inputs, inits, shape, opset, graph_inputs, **attrs)
    before = model.SerializeToString()
    with pytest.raises(ValueError) as info:
        onnx_ops.convert(model, target, decompose=decompose)
    msg = str(info.value)
    for w in [f"{op_type} node 'norm1'"] + words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert model.SerializeToString() == before


@pytest.mark.parametrize("target", [13, 17, 23])
@pytest.mark.parametrize("scale_shape", [(1,), (8,), (1, 8), (1, 1, 8)])
def test_convert_accepts_scales_that_broadcast_to_the_normalized_shape(scale_shape, target):
    # The shape checks must not refuse what LayerNormalization's function
    # body (a broadcasting Mul) accepts.
    rng = np.random.default_rng(1)
    scale = 1 + rng.standard_normal(scale_shape)
    model = _node_model("LayerNormalization", ["x", "s", "b"], {"s": scale, "b": np.zeros(8)}, [2, 3, 8], 17)
    converted = onnx_ops.convert(model, target, decompose=True)
    onnx.checker.check_model(converted, full_check=True)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    xd = x.astype(np.float64)
    mean = xd.mean(-1, keepdims=True)
    want = (xd - mean) / np.sqrt(((xd - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * scale.astype(np.float32)
    np.testing.assert_allclose(y, want.reshape(y.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [0, 29, 1000])
def test_convert_refuses_an_opset_onnx_does_not_know(opset):
    model = _ln_model()
    model.opset_import[0].version = opset
    with pytest.raises(ValueError, match=f"opset {opset} is unknown to onnx"):
        onnx_ops.convert(model, 17)


def test_convert_node_absent_from_its_opset():
    model = _node_model("LayerNormalization", ["x", "s"], {"s": np.ones(8)}, [2, 8], 17)
    model.opset_import[0].version = 15  # LayerNormalization exists from 17
    with pytest.raises(ValueError, match="opset 15 has no LayerNormalization"):
        onnx_ops.convert(model, 13)


# ------------------------------------------------- load -> convert -> save


def _pipeline(src, dst, target):
    """What a command-line converter does."""
    model = onnx_ops.load_model(src)
    onnx_ops.save_model(onnx_ops.convert(model, target), dst, protect=src)


@pytest.mark.parametrize("existing_output", [False, True])
@pytest.mark.parametrize("hazard", ["truncated", "unknown-opset", "bad-scale", "traversal", "same-file"])
def test_pipeline_failures_leave_input_and_output_alone(tmp_path, hazard, existing_output):
    work = tmp_path / "work"
    work.mkdir()
    src = str(work / "in.onnx")
    dst = str(work / "out.onnx")
    if hazard == "truncated":
        _write(src, _ln_model().SerializeToString()[:-7])
    elif hazard == "unknown-opset":
        model = _ln_model()
        model.opset_import[0].version = 99
        _write(src, model.SerializeToString())
    elif hazard == "bad-scale":
        op_type, inputs, inits, shape, opset, attrs, graph_inputs, _ = MALFORMED["ln-scale-length"]
        _write(src, _node_model(op_type, inputs, inits, shape, opset, graph_inputs, **attrs).SerializeToString())
    elif hazard == "traversal":
        onnx.save_model(_ln_model(), src, save_as_external_data=True, location="w.data", size_threshold=0)
        os.rename(work / "w.data", tmp_path / "w.data")
        _set_location(src, "../w.data")
    elif hazard == "same-file":
        onnx_ops.save_model(_ln_model(), src)
        dst = src
    if existing_output and hazard != "same-file":
        onnx_ops.save_model(_ln_model(n=8), dst)

    def files():
        return {str(p) for p in tmp_path.rglob("*") if p.is_file()}

    before = _snapshot(*files())
    with pytest.raises(ValueError):
        _pipeline(src, dst, 13)
    assert files() == set(before), "a file was created or removed"
    assert _snapshot(*before) == before


def test_pipeline_success_writes_a_valid_model(tmp_path):
    src = str(tmp_path / "in.onnx")
    onnx_ops.save_model(_ln_model(), src)
    before = _snapshot(src)
    _pipeline(src, str(tmp_path / "out.onnx"), 13)
    out = onnx_ops.load_model(tmp_path / "out.onnx")
    assert out.opset_import[0].version == 13
    assert "LayerNormalization" not in {n.op_type for n in out.graph.node}
    assert _snapshot(src) == before


def _group_norm_18(path):
    from onnx import helper
    n = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)
    g = helper.make_graph(
        [n], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3]),
                   helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [2]),
                   helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 3, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_deprecated_operator_loads(tmp_path):
    # onnx's checker rejects GroupNormalization-18 as deprecated; runtimes
    # run it and convert rewrites it, so loading must not refuse it
    path = tmp_path / "gn18.onnx"
    _group_norm_18(path)
    with pytest.raises(Exception, match="deprecated"):
        onnx.checker.check_model(onnx.load(str(path)))
    model = onnx_ops.load_model(path)
    assert model.graph.node[0].op_type == "GroupNormalization"


def test_any_opset_reads_an_old_model(tmp_path):
    from onnx import helper
    n = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    with pytest.raises(ValueError, match="outside the supported range"):
        onnx_ops.load_model(path)
    assert onnx_ops.load_model(path, any_opset=True).opset_import[0].version == 11
