"""The ``numbanorm`` command."""

import argparse
import os
import platform
import sys
import time

import numpy as np

import numbanorm
from numbanorm import _reference as ref

# realistic default problems for the self-check: (label, op, shape, extra)
PROBLEMS = [
    ("transformer LayerNorm", "layer_norm", (8, 512, 768), {}),
    ("LLM RMSNorm", "rms_norm", (4, 512, 4096), {}),
    ("UNet GroupNorm (G=32)", "group_norm", (4, 256, 32, 32), {"num_groups": 32}),
    ("style-transfer InstanceNorm", "instance_norm", (1, 64, 256, 256), {}),
    ("ResNet BatchNorm", "batch_norm", (16, 64, 56, 56), {}),
]
# offset and std of the data: the second row per op is the large-offset
# case on which one-pass variance formulas fail
DATA = [("N(0,1)", 0.0, 1.0), ("offset 1e3, std 1e-2", 1e3, 1e-2)]


def _args(op, shape, extra, rng):
    C = shape[1] if op not in ("layer_norm", "rms_norm") else shape[-1]
    kw = dict(extra)
    if op in ("layer_norm", "rms_norm"):
        kw["normalized_shape"] = shape[-1]
    kw["weight"] = rng.standard_normal(C)
    if op != "rms_norm":
        kw["bias"] = rng.standard_normal(C)
    if op == "rms_norm":
        kw["eps"] = 1e-6
    if op == "batch_norm":
        kw["running_mean"] = rng.standard_normal(C)
        kw["running_var"] = rng.random(C) + 0.5
    return kw


def _ulps(y, y_ref, dtype):
    spacing = np.spacing(np.abs(y_ref).astype(dtype)).astype(np.float64)
    spacing = np.maximum(spacing, np.finfo(dtype).smallest_subnormal)
    return float(np.max(np.abs(y.astype(np.float64) - y_ref) / spacing))


def selfcheck(out=sys.stdout):
    rng = np.random.default_rng(0)
    rows = []
    ok = True
    for label, op, shape, extra in PROBLEMS:
        fn = getattr(numbanorm, op)
        for dname, offset, std in DATA:
            for dtype in (np.float32, np.float16):
                x = (rng.standard_normal(shape, dtype=np.float32) * std + offset).astype(dtype)
                kw = _args(op, shape, extra, rng)
                if op == "batch_norm":
                    kw["running_mean"] = kw["running_mean"] * std + offset
                    kw["running_var"] = kw["running_var"] * std * std
                fn(x, **kw)  # warm-up (and compile on a cold cache)
                y = np.empty_like(x)
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    fn(x, **kw, out=y)
                    times.append(time.perf_counter() - t)
                t = sorted(times)[2]
                y_ref = getattr(ref, op)(x, **{k: v for k, v in kw.items()})
                err = float(np.max(np.abs(y.astype(np.float64) - y_ref)))
                ulps = _ulps(y, y_ref, dtype)
                # the accuracy contract: float32 within 4 units of 2**-23
                # relative to max(1, |y|); float16 within 1 ulp
                passed = ulps <= (4.0 if dtype == np.float32 else 1.0) or (
                    dtype == np.float32 and err <= 4 * 2.0**-23 * max(1.0, float(np.abs(y_ref).max())))
                ok &= passed
                gbs = 2 * x.nbytes / t / 1e9
                rows.append((label, str(shape), np.dtype(dtype).name, dname,
                             f"{err:.2e}", f"{ulps:.2f}", f"{t * 1e3:.2f}",
                             f"{gbs:.1f}", "pass" if passed else "FAIL"))
    head = ("problem", "shape", "dtype", "data", "max abs err", "ulps",
            "ms", "GB/s", "result")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line, file=out)
    print("-" * len(line), file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)
    print(f"\n{'all passed' if ok else 'FAILURES'}: numbanorm vs a float64 "
          f"reference, {numbanorm.info()['threads']} threads", file=out)
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="numbanorm",
        description="Normalization layers as parallel Numba kernels.")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("selfcheck", help="check every norm against a float64 "
                   "reference on realistic shapes (the default)")
    sub.add_parser("info", help="versions, threading layer, threads, CPU")
    a = p.parse_args(argv)
    if a.cmd in (None, "selfcheck"):
        return selfcheck()
    if a.cmd == "info":
        for k, v in numbanorm.info().items():
            print(f"{k}: {v}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
