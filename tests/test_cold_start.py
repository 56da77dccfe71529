"""numba's disk cache when numbanorm is installed where it cannot write (a
read-only site-packages): the compiled kernels go to the per-user cache
and a second process loads them instead of compiling."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh interpreter. The in-tree locator is disabled because the
# suite may run as root, for whom a read-only folder is still writable.
SCRIPT = r"""
import json, sys
import numba.core.caching as caching
caching.InTreeCacheLocator.from_function = classmethod(lambda cls, f, p: None)
import numpy as np
import numbanorm
from numbanorm import _warmup
x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
y = numbanorm.layer_norm(x, 64, np.ones(64, np.float32), np.zeros(64, np.float32))
print(json.dumps({"file": numbanorm.__file__, "stats": _warmup.cache_stats(),
                  "finite": bool(np.isfinite(y).all())}))
"""


def _read_only_copy(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "numbanorm"), site / "numbanorm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    for dirpath, dirnames, filenames in os.walk(site):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
                 | stat.S_IROTH | stat.S_IXOTH)
    return site


def _run(site, cache_home):
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    env["XDG_CACHE_HOME"] = str(cache_home)
    env["PYTHONPATH"] = str(site)
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=str(cache_home),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_read_only_install_uses_the_user_cache(tmp_path):
    site = _read_only_copy(tmp_path)
    cache_home = tmp_path / "cache"
    cache_home.mkdir()
    try:
        first = _run(site, cache_home)
        assert first["file"].startswith(str(site))
        assert first["finite"]
        kernels, hits, misses = first["stats"]
        assert misses >= 1  # compiled here, nothing cached before
        cached = [f for _, _, fs in os.walk(cache_home / "numba") for f in fs
                  if f.endswith(".nbi")]
        assert cached, "nothing written to the per-user cache"
        in_tree = [f for _, _, fs in os.walk(site) for f in fs
                   if f.endswith((".nbi", ".nbc"))]
        assert not in_tree
        second = _run(site, cache_home)
        kernels, hits, misses = second["stats"]
        assert misses == 0 and hits >= 1  # loaded, not compiled
    finally:
        for dirpath, _, _ in os.walk(site):
            os.chmod(dirpath, stat.S_IRWXU)


def test_import_and_float32_calls_leave_ml_dtypes_unimported():
    """ml_dtypes (1.3 s to import in its 0.7.0 release) is needed only for
    bfloat16, and no bfloat16 array exists before the user imports it:
    numbanorm leaves it alone until then, and takes bfloat16 after."""
    script = r"""
import sys
import numpy as np
import numbanorm as nn
x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
w = np.ones(4)
nn.layer_norm(x, (3, 3)); nn.rms_norm(x, 3); nn.group_norm(x, 2, w, w)
nn.instance_norm(x); nn.batch_norm(x, w, w)
for dt in (np.float64, np.float16):  # rms_norm's default eps per dtype
    y = nn.rms_norm(x.astype(dt), 3)
    assert y.dtype == dt and np.isfinite(y).all()
for bad in (np.int32, np.complex64, np.bool_):
    try:
        nn.layer_norm(x.astype(bad), 3)
    except TypeError as e:
        assert "bfloat16" in str(e), e
    else:
        raise AssertionError(f"{bad} accepted")
    try:
        nn.layer_norm(x, 3, weight=np.ones(3, bad) if bad is not np.int32
                      else np.ones(3, np.complex64))
    except TypeError as e:
        assert "weight" in str(e), e
    else:
        raise AssertionError(f"weight of {bad} accepted")
assert "ml_dtypes" not in sys.modules, "numbanorm imported ml_dtypes"
import ml_dtypes
xb = x.astype(ml_dtypes.bfloat16)
y = nn.layer_norm(xb, 3, weight=np.ones(3, ml_dtypes.bfloat16))
assert y.dtype == xb.dtype and np.isfinite(y.astype(np.float32)).all()
assert nn.rms_norm(xb, 3).dtype == xb.dtype
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
