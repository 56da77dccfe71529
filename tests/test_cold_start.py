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
