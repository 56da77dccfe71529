"""Run in a subprocess by test_threads.py, under the threading layer named
in the environment: many Python threads calling every op at once, or a
fork after every op has run in parallel. Prints one JSON line."""

import json
import multiprocessing
import sys
import threading

import numpy as np

import numbanorm

# each problem is large enough for the parallel builds (see _dispatch)
SHAPES = {
    "layer_norm": (64, 768),
    "rms_norm": (64, 768),
    "group_norm": (4, 32, 24, 24),
    "instance_norm": (4, 16, 32, 32),
    "batch_norm": (8, 16, 24, 24),
}


def problems():
    rng = np.random.default_rng(7)
    out = {}
    for op, shape in SHAPES.items():
        x = rng.standard_normal(shape).astype(np.float32) * 3 + 100
        C = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]
        kw = {"weight": rng.standard_normal(C).astype(np.float32)}
        if op != "rms_norm":
            kw["bias"] = rng.standard_normal(C).astype(np.float32)
        if op in ("layer_norm", "rms_norm"):
            kw["normalized_shape"] = C
        if op == "group_norm":
            kw["num_groups"] = 8
        if op == "batch_norm":
            kw["running_mean"] = np.full(C, 100.0, np.float32)
            kw["running_var"] = np.full(C, 9.0, np.float32)
        out[op] = (x, kw)
    return out


def run_all(probs):
    return {op: getattr(numbanorm, op)(x, **kw) for op, (x, kw) in probs.items()}


def same(a, b):
    return all(np.array_equal(a[op], b[op]) for op in a)


def concurrent(n_threads=8, calls=200):
    probs = problems()
    expected = run_all(probs)
    bad = []

    def work(i):
        ops = list(probs)
        for k in range(calls):
            op = ops[(i + k) % len(ops)]
            x, kw = probs[op]
            y = getattr(numbanorm, op)(x, **kw)
            if not np.array_equal(y, expected[op]):
                bad.append((i, k, op))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"mismatches": len(bad), "calls": n_threads * calls}


def _child(queue):
    probs = problems()
    got = run_all(probs)
    queue.put({op: y.tobytes() for op, y in got.items()})


def fork():
    probs = problems()
    expected = run_all(probs)  # the parent has launched parallel kernels
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(queue,))
    p.start()
    try:
        got = queue.get(timeout=120)
    except Exception:
        got = None
    p.join(60)
    ok = got is not None and all(
        got[op] == expected[op].tobytes() for op in expected)
    # the parent still works after the fork
    ok_parent = same(run_all(probs), expected)
    return {"child_exit": p.exitcode, "child_ok": ok, "parent_ok": ok_parent}


if __name__ == "__main__":
    result = {"concurrent": concurrent, "fork": fork}[sys.argv[1]]()
    result["info"] = {k: str(v) for k, v in numbanorm.info().items()}
    print(json.dumps(result))
