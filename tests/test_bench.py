"""The benchmark tool runs end to end (--quick). Nothing about speed is
asserted: benchmarks are not timed tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ["layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_quick(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + "\n" + proc.stderr

    out = proc.stdout
    for word in ("threading layer", "implementation", "median ms", "GB/s",
                 "vs limit", "vs peer", "numbanorm", "limit"):
        assert word in out, f"{word!r} missing from the output:\n{out}"
    for op in OPS:
        assert op in out, f"{op} missing from the table:\n{out}"

    data = json.loads((tmp_path / "bench.json").read_text())
    from benchmarks import bench
    cases = data["cases"]
    assert len(cases) == len(bench.FULL_CASES)
    assert len({c["label"] for c in cases}) == len(cases)
    assert {c["op"] for c in cases} == set(OPS)
    for c in cases:
        for name in ("numbanorm", "numbanorm out=", "limit"):
            e = c["impls"][name]
            assert "error" not in e, (c["label"], name, e)
            assert e["median_ms"] > 0, (c["label"], name)
            assert len(e["times_ns"]) == e["repeat"] >= 1
            assert all(t > 0 for t in e["times_ns"])
    env_ = data["environment"]
    for key in ("threading_layer", "threads", "cpu", "numbanorm", "numba", "onnxruntime"):
        assert key in env_

    png = tmp_path / "bench.png"
    assert png.is_file()
    with open(png, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert png.stat().st_size > 1000
