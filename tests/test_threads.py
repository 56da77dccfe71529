"""Threads, fork and the threading layers (see numbanorm/_threading.py).

Each case runs tests/threads_worker.py in a fresh interpreter, since numba
starts one threading layer per process and a layer that aborts would take
the test runner with it."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import numbanorm
from numbanorm import _threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tbb is a dependency where its wheels exist; there it must load
TBB_EXPECTED = sys.platform in ("linux", "win32") and \
    platform.machine().lower() in ("x86_64", "amd64")


def _layers():
    return ["tbb", "omp", "workqueue"]


def _env(**extra):
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    env.pop("NUMBANORM_THREADING", None)
    env["NUMBA_NUM_THREADS"] = "2"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _run(job, **env):
    p = subprocess.run([sys.executable, "-m", "tests.threads_worker", job],
                       cwd=ROOT, env=_env(**env), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _layer_available(layer):
    if layer == "tbb":
        return TBB_EXPECTED or _threading._load_tbb() is not None
    return True


@pytest.mark.parametrize("how", ["NUMBA_THREADING_LAYER", "NUMBANORM_THREADING"])
@pytest.mark.parametrize("layer", _layers())
def test_concurrent_threads_bit_identical(layer, how):
    if not _layer_available(layer):
        pytest.skip(f"the {layer} layer cannot load on this platform")
    r = _run("concurrent", **{how: layer})
    assert r["info"]["threading_layer"] == layer
    assert r["calls"] == 1600
    assert r["mismatches"] == 0


@pytest.mark.parametrize("layer", _layers())
def test_fork_after_parallel_calls(layer):
    if not _layer_available(layer):
        pytest.skip(f"the {layer} layer cannot load on this platform")
    r = _run("fork", NUMBANORM_THREADING=layer)
    assert r["info"]["threading_layer"] == layer
    assert r["child_exit"] == 0
    assert r["child_ok"] and r["parent_ok"]


def test_auto_prefers_a_fork_and_thread_safe_layer():
    r = _run("fork")
    if TBB_EXPECTED:
        assert r["info"]["threading_layer"] == "tbb"
        assert "fork-safe and thread-safe" in r["info"]["threading_policy"]
    assert r["child_exit"] == 0 and r["child_ok"]


def test_serial_mode_runs_no_parallel_kernel():
    r = _run("concurrent", NUMBANORM_THREADING="serial")
    assert r["mismatches"] == 0
    assert r["info"]["threading_mode"] == "serial"
    assert r["info"]["threading_layer"] == "(not started)"


def test_bad_environment_value_is_a_clear_error():
    p = subprocess.run([sys.executable, "-c", "import numbanorm"], cwd=ROOT,
                       env=_env(NUMBANORM_THREADING="fast"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "NUMBANORM_THREADING='fast'" in p.stderr


def test_set_threading_validates_and_switches_serial():
    with pytest.raises(ValueError, match="mode must be one of"):
        numbanorm.set_threading("fast")
    x = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    y_par = numbanorm.layer_norm(x, 1024)
    layer = numbanorm.info()["threading_layer"]
    other = next(l for l in _layers() if l != layer)
    with pytest.raises(ValueError, match="already started"):
        numbanorm.set_threading(other)
    try:
        numbanorm.set_threading("serial")
        assert numbanorm.info()["threading_mode"] == "serial"
        assert np.array_equal(numbanorm.layer_norm(x, 1024), y_par)
    finally:
        numbanorm.set_threading("auto")
    assert numbanorm.info()["threading_mode"] == "auto"
