"""Benchmark numbanorm against its peers and the memory-bandwidth limit.

    python -m benchmarks.bench [--threads N] [--quick] [--shapes SUBSTRING]
                               [--out results/] [--repeat R] [--scaling]

Everything runs in one process at one thread count (default: all cores):

* numbanorm, allocating (``numbanorm``) and into a preallocated ``out=``
  (``numbanorm out=``);
* the peers on the same inputs: a vectorized ``numpy`` implementation,
  onnxruntime one-node sessions of the native operator (``ort native``) and of
  ``onnx_ops.to_onnx(..., decompose=None)`` (``ort onnx_ops``), and
  ``torch.nn.functional`` when torch is installed (``torch``);
* the limit: ``numbanorm._dispatch.affine`` (y = a*x + b, one parallel pass)
  over the same elements into a preallocated y (``limit``).

Preallocated outputs (``out=`` and the limit's y) start 2048 bytes from x
modulo 4 KiB, as numbanorm's own results do (see ``placed_like``).

Each timing is the median of per-call ``time.perf_counter_ns`` times after a
warm-up (which also compiles). The calls of one shape are spread over 15
rounds in which the implementations take turns in a rotating order, so that
the machine's speed changing during a run (shared machines do) does not
favour whichever implementation ran at the quick moment; the ratios below
are medians over the rounds of each round's ratio. GB/s counts one read of x and one write of y
(``2 * x.nbytes``). ``vs limit`` is limit_ms / ms, ``vs peer`` (numbanorm
rows) is fastest_peer_ms / ms (per round, as said above; the fastest peer
is the one with the lowest median): above 1 means numbanorm is faster.

Results go to ``<out>/bench.json`` (raw per-call timings, medians, the
environment) and ``<out>/bench.png`` (GB/s per shape per implementation).
``--scaling`` instead times the shapes whose x and y fit in the last-level
cache at 1 thread and at N threads, the counts alternating within each
round, and prints the speedups
(``<out>/scaling.json``).
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

import numba

import numbanorm as nn
from numbanorm import _buffers, _dispatch

# ---------------------------------------------------------------------------
# shapes

# (op, shape, dtype, extra, layout). extra: num_groups for group_norm.
FULL_CASES = [
    ("layer_norm", (8, 128, 768), "float32", None, "contiguous"),
    ("layer_norm", (64, 512, 768), "float32", None, "contiguous"),
    ("layer_norm", (16, 1024, 4096), "float32", None, "contiguous"),
    ("layer_norm", (4096, 64), "float32", None, "contiguous"),
    ("layer_norm", (1, 1, 2 ** 20), "float32", None, "contiguous"),
    ("layer_norm", (8, 128, 768), "float64", None, "contiguous"),
    ("group_norm", (8, 256, 64, 64), "float32", 32, "contiguous"),
    ("group_norm", (1, 512, 32, 32), "float32", 32, "contiguous"),
    ("group_norm", (32, 64, 56, 56), "float32", 32, "contiguous"),
    ("group_norm", (8, 256, 64, 64), "float32", 32, "channels_last"),
    ("group_norm", (8, 256, 64, 64), "float64", 32, "contiguous"),
    ("instance_norm", (1, 3, 1024, 1024), "float32", None, "contiguous"),
    ("instance_norm", (8, 64, 128, 128), "float32", None, "contiguous"),
    ("batch_norm", (32, 64, 56, 56), "float32", None, "contiguous"),
    ("rms_norm", (16, 512, 4096), "float32", None, "contiguous"),
    ("layer_norm", (1, 768), "float32", None, "contiguous"),
    ("layer_norm", (8, 768), "float32", None, "contiguous"),
]

OPS = ["layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm"]
EPS = 1e-5
RMS_EPS = 1e-6
QUICK_MAX_ELEMENTS = 4096
TARGET_SECONDS = 0.75      # per measurement (all repeats of one implementation)
ROUNDS = 15                # interleaved rounds the repeats are spread over
MIN_REPEAT = 5
MAX_REPEAT = 2000

IMPLS = ["numbanorm", "numbanorm out=", "numpy", "ort native", "ort onnx_ops",
         "torch", "limit"]
PEERS = ["numpy", "ort native", "ort onnx_ops", "torch"]
NUMBANORM = ["numbanorm", "numbanorm out="]


def quick_shape(op, shape, groups):
    """Halve the largest dim until the tensor has <= QUICK_MAX_ELEMENTS
    elements; num_groups becomes gcd(num_groups, C) so it stays valid."""
    shape = list(shape)
    while math.prod(shape) > QUICK_MAX_ELEMENTS:
        i = max(range(len(shape)), key=lambda k: shape[k])
        shape[i] = max(1, shape[i] // 2)
    if groups is not None:
        groups = math.gcd(groups, shape[1])
    return tuple(shape), groups


def shape_str(shape):
    return "(" + ",".join(str(d) for d in shape) + ")"


def make_cases(quick, substring):
    cases, seen = [], set()
    for op, shape, dtype, groups, layout in FULL_CASES:
        if quick:
            shape, groups = quick_shape(op, shape, groups)
        label = f"{op} {shape_str(shape)} {'f32' if dtype == 'float32' else 'f64'}"
        if groups is not None:
            label += f" G={groups}"
        if layout == "channels_last":
            label += " NHWC"
        base, k = label, 2
        while label in seen:  # quick shapes can coincide
            label = f"{base} #{k}"
            k += 1
        seen.add(label)
        if substring and substring not in label:
            continue
        cases.append(dict(label=label, op=op, shape=tuple(shape), dtype=dtype,
                          num_groups=groups, layout=layout))
    return cases


# ---------------------------------------------------------------------------
# inputs


def make_inputs(case, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(case["dtype"])
    shape = case["shape"]
    op = case["op"]
    if case["layout"] == "channels_last":
        n, c, h, w = shape
        buf = rng.standard_normal((n, h, w, c)).astype(dt) * 2 + 0.5
        x = buf.transpose(0, 3, 1, 2)          # NCHW view of an NHWC buffer
        flat = buf.reshape(-1)
    else:
        x = rng.standard_normal(shape).astype(dt) * 2 + 0.5
        flat = x.reshape(-1)
    inp = dict(x=x, flat=flat)
    if op in ("layer_norm", "rms_norm"):
        pshape = (shape[-1],)
        inp["normalized_shape"] = pshape
    else:
        pshape = (shape[1],)
    inp["weight"] = (1 + 0.1 * rng.standard_normal(pshape)).astype(dt)
    if op != "rms_norm":
        inp["bias"] = (0.1 * rng.standard_normal(pshape)).astype(dt)
    if op == "batch_norm":
        inp["running_mean"] = (0.5 + 0.1 * rng.standard_normal(pshape)).astype(dt)
        inp["running_var"] = (4 + rng.random(pshape)).astype(dt)
    if op == "group_norm":
        inp["num_groups"] = case["num_groups"]
    inp["eps"] = RMS_EPS if op == "rms_norm" else EPS
    return inp


def op_kwargs(op, inp):
    """numbanorm keyword arguments (without x), also onnx_ops's op_args."""
    keys = {
        "layer_norm": ["normalized_shape", "weight", "bias", "eps"],
        "group_norm": ["num_groups", "weight", "bias", "eps"],
        "instance_norm": ["weight", "bias", "eps"],
        "batch_norm": ["running_mean", "running_var", "weight", "bias", "eps"],
        "rms_norm": ["normalized_shape", "weight", "eps"],
    }[op]
    return {k: inp[k] for k in keys}


# ---------------------------------------------------------------------------
# implementations: each factory returns a zero-argument callable


def placed_like(flat):
    """An empty array like the flat buffer ``flat``, starting 2048 bytes
    from it modulo 4 KiB: where numbanorm's allocating calls put their
    results. Where a preallocated output starts relative to its input
    changes the speed of a pass over both (4K aliasing: up to 1.5x for a
    GroupNorm with y 32 bytes past x); np.empty_like leaves that to the
    allocator, this fixes it for every preallocated output here."""
    buf = np.empty(flat.nbytes + _buffers._PAGE, np.uint8)
    return _buffers._placed(buf, flat.nbytes, flat.dtype, flat.shape, flat)


def numbanorm_impl(op, inp, out=False):
    fn = getattr(nn, op)
    x = inp["x"]
    kw = op_kwargs(op, inp)
    if out:
        # in x's layout: a channels-last x gets a channels-last out
        yflat = placed_like(inp["flat"])
        if x.flags.c_contiguous:
            y = yflat.reshape(x.shape)
        else:  # the NCHW view of an NHWC buffer
            n, c, h, w = x.shape
            y = yflat.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return lambda: fn(x, out=y, **kw)
    return lambda: fn(x, **kw)


def _bcast_channel(p, ndim):
    return p.reshape((1, -1) + (1,) * (ndim - 2))


def numpy_impl(op, inp):
    """Straightforward vectorized numpy: mean, var,
    (x - mean) / sqrt(var + eps) * w + b."""
    x, w, eps = inp["x"], inp["weight"], inp["eps"]
    b = inp.get("bias")
    nd = x.ndim
    if op == "layer_norm":
        axes = tuple(range(nd - len(inp["normalized_shape"]), nd))

        def f():
            mean = x.mean(axis=axes, keepdims=True)
            var = x.var(axis=axes, keepdims=True)
            return (x - mean) / np.sqrt(var + eps) * w + b
    elif op == "rms_norm":
        axes = tuple(range(nd - len(inp["normalized_shape"]), nd))

        def f():
            ms = np.mean(x * x, axis=axes, keepdims=True)
            return x / np.sqrt(ms + eps) * w
    elif op == "group_norm":
        G = inp["num_groups"]
        wc, bc = _bcast_channel(w, nd), _bcast_channel(b, nd)

        def f():
            xr = x.reshape(x.shape[0], G, -1)
            mean = xr.mean(axis=-1, keepdims=True)
            var = xr.var(axis=-1, keepdims=True)
            return ((xr - mean) / np.sqrt(var + eps)).reshape(x.shape) * wc + bc
    elif op == "instance_norm":
        axes = tuple(range(2, nd))
        wc, bc = _bcast_channel(w, nd), _bcast_channel(b, nd)

        def f():
            mean = x.mean(axis=axes, keepdims=True)
            var = x.var(axis=axes, keepdims=True)
            return (x - mean) / np.sqrt(var + eps) * wc + bc
    elif op == "batch_norm":
        wc, bc = _bcast_channel(w, nd), _bcast_channel(b, nd)
        mc = _bcast_channel(inp["running_mean"], nd)
        vc = _bcast_channel(inp["running_var"], nd)

        def f():
            return (x - mc) / np.sqrt(vc + eps) * wc + bc
    else:
        raise ValueError(op)
    return f


def native_onnx_model(op, inp):
    """One-node model of onnxruntime's native operator."""
    import onnx
    from onnx import helper, numpy_helper

    x = inp["x"]
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    eps = float(inp["eps"])
    inits = [numpy_helper.from_array(inp["weight"], "scale")]
    if "bias" in inp:
        inits.append(numpy_helper.from_array(inp["bias"], "B"))
    if op == "layer_norm":
        opset = 17
        node = helper.make_node("LayerNormalization", ["x", "scale", "B"], ["y"],
                                axis=-len(inp["normalized_shape"]), epsilon=eps)
    elif op == "group_norm":
        opset = 21
        node = helper.make_node("GroupNormalization", ["x", "scale", "B"], ["y"],
                                num_groups=inp["num_groups"], epsilon=eps)
    elif op == "instance_norm":
        opset = 17
        node = helper.make_node("InstanceNormalization", ["x", "scale", "B"], ["y"],
                                epsilon=eps)
    elif op == "batch_norm":
        opset = 15
        inits += [numpy_helper.from_array(inp["running_mean"], "mean"),
                  numpy_helper.from_array(inp["running_var"], "var")]
        node = helper.make_node("BatchNormalization",
                                ["x", "scale", "B", "mean", "var"], ["y"],
                                epsilon=eps, training_mode=0)
    elif op == "rms_norm":
        opset = 23
        node = helper.make_node("RMSNormalization", ["x", "scale"], ["y"],
                                axis=-len(inp["normalized_shape"]), epsilon=eps)
    else:
        raise ValueError(op)
    graph = helper.make_graph(
        [node], f"native_{op}",
        [helper.make_tensor_value_info("x", elem, list(x.shape))],
        [helper.make_tensor_value_info("y", elem, list(x.shape))],
        initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    return model


def chosen_onnx_model(op, inp):
    """onnx_ops's chosen form (decompose=None), at the highest opset it
    supports (so rms_norm can pick the native opset-23 operator)."""
    import onnx_ops

    kw = op_kwargs(op, inp)
    last = None
    for opset in (23, 22, 21):
        try:
            return onnx_ops.to_onnx(op, input_shape=inp["x"].shape,
                                    dtype=str(inp["x"].dtype), opset=opset,
                                    decompose=None, **kw)
        except ValueError as e:  # opset not supported by this onnx_ops
            last = e
    raise last


def ort_impl(model, inp, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    feed = {"x": inp["x"]}
    return lambda: sess.run(["y"], feed)[0]


def torch_impl(op, inp):
    import torch
    import torch.nn.functional as F

    tx = torch.from_numpy(inp["x"])
    tw = torch.from_numpy(inp["weight"])
    tb = torch.from_numpy(inp["bias"]) if "bias" in inp else None
    eps = inp["eps"]
    if op == "layer_norm":
        ns = list(inp["normalized_shape"])
        call = lambda: F.layer_norm(tx, ns, tw, tb, eps)  # noqa: E731
    elif op == "group_norm":
        G = inp["num_groups"]
        call = lambda: F.group_norm(tx, G, tw, tb, eps)  # noqa: E731
    elif op == "instance_norm":
        call = lambda: F.instance_norm(tx, weight=tw, bias=tb, eps=eps)  # noqa: E731
    elif op == "batch_norm":
        rm = torch.from_numpy(inp["running_mean"])
        rv = torch.from_numpy(inp["running_var"])
        call = lambda: F.batch_norm(tx, rm, rv, tw, tb, training=False, eps=eps)  # noqa: E731
    elif op == "rms_norm":
        ns = list(inp["normalized_shape"])
        call = lambda: F.rms_norm(tx, ns, tw, eps)  # noqa: E731
    else:
        raise ValueError(op)

    def f():
        with torch.inference_mode():
            return call()
    return f


def limit_impl(inp):
    xf = inp["flat"]
    yf = placed_like(xf)
    return lambda: (_dispatch.affine(xf, yf, 1.5, 0.25), yf)[1]


def build_impls(case, inp, threads, have_onnx_ops, have_torch):
    """{name: callable or error string}."""
    op = case["op"]
    out = {}

    def attempt(name, factory):
        try:
            out[name] = factory()
        except Exception as e:  # a peer that cannot run this case
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" \
                if str(e) else type(e).__name__

    attempt("numbanorm", lambda: numbanorm_impl(op, inp))
    attempt("numbanorm out=", lambda: numbanorm_impl(op, inp, out=True))
    attempt("numpy", lambda: numpy_impl(op, inp))
    attempt("ort native", lambda: ort_impl(native_onnx_model(op, inp), inp, threads))
    if have_onnx_ops is True:
        attempt("ort onnx_ops", lambda: ort_impl(chosen_onnx_model(op, inp), inp, threads))
    else:
        out["ort onnx_ops"] = f"unavailable (import onnx_ops failed: {have_onnx_ops})"
    if have_torch:
        attempt("torch", lambda: torch_impl(op, inp))
    else:
        out["torch"] = "unavailable (torch not installed)"
    attempt("limit", lambda: limit_impl(inp))
    return out


# ---------------------------------------------------------------------------
# timing


def to_numpy(y):
    if isinstance(y, np.ndarray):
        return y
    try:
        return y.numpy()
    except AttributeError:
        return np.asarray(y)


IDLE_SECONDS = 0.05


def time_calls(fn, repeat):
    times = []
    pc = time.perf_counter_ns
    for _ in range(repeat):
        t0 = pc()
        fn()
        times.append(pc() - t0)
    return times


def pick_repeat(fn, forced):
    """Calls fn until warm (first call compiles), returns (repeat, last output).

    The repeat count comes from the median of the timed warm-up calls, not
    from one call: a single slow call (the first after the pause before
    each implementation, see run_counts) gave an implementation fewer
    calls per round than its speed warrants, e.g. 21 against 55 for
    numbanorm allocating and with out= on LayerNorm (8,128,768), and so a
    median weighted towards the slow first calls of each round."""
    y = fn()                       # compile / first touch
    t0 = time.perf_counter_ns()
    y = fn()
    est = max(time.perf_counter_ns() - t0, 1)
    # a few more warm-up calls (cheap for the small cases), timed
    times = [est]
    for _ in range(max(2, min(20, int(0.05e9 / est)))):
        t0 = time.perf_counter_ns()
        fn()
        times.append(max(time.perf_counter_ns() - t0, 1))
    if forced:
        return forced, y
    r = int(TARGET_SECONDS * 1e9 / statistics.median(times))
    return max(MIN_REPEAT, min(MAX_REPEAT, r)), y


def check_close(ref, y, dtype):
    """Max abs difference to numbanorm's output, and whether it is plausible."""
    y = to_numpy(y)
    if y.shape != ref.shape:
        return None, False
    err = float(np.max(np.abs(y.astype(np.float64) - ref.astype(np.float64)))) \
        if y.size else 0.0
    tol = 2e-3 if dtype == "float32" else 1e-6
    return err, bool(np.isfinite(err) and err <= tol)


def n_rounds(args):
    return 1 if args.quick else ROUNDS


def fail(entry, e, args):
    entry.clear()
    entry["error"] = (f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                      if str(e) else type(e).__name__)
    if args.verbose:
        traceback.print_exc()


def run_case(case, threads, args, have_onnx_ops, have_torch, pbar, only=None):
    return run_counts(case, [threads], args, have_onnx_ops, have_torch, pbar,
                      only)[threads]


def run_counts(case, counts, args, have_onnx_ops, have_torch, pbar, only=None):
    """{thread count: result} for one shape, every implementation at every
    count timed in the same interleaved rounds."""
    inp = make_inputs(case)
    x = inp["x"]
    forced = 3 if args.quick and not args.repeat else args.repeat
    results, live, impls = {}, {}, {}
    for n in counts:
        set_threads(n, have_torch)
        impls[n] = build_impls(case, inp, n, have_onnx_ops, have_torch)
        res = results[n] = dict(case)
        res["shape"] = list(case["shape"])
        res["elements"] = int(x.size)
        res["bytes_moved"] = int(2 * x.nbytes)
        res["threads"] = n
        res["impls"] = {}
        ref = None
        for name in IMPLS:
            if only is not None and name not in only:
                continue
            fn = impls[n][name]
            entry = res["impls"][name] = {}
            if isinstance(fn, str):
                entry["error"] = fn
                continue
            try:
                time.sleep(0 if args.quick else IDLE_SECONDS)  # see below
                repeat, y = pick_repeat(fn, forced)
                if name == "numbanorm":
                    ref = to_numpy(y).copy()
                elif name != "limit" and ref is not None:
                    err, ok = check_close(ref, y, case["dtype"])
                    entry["max_abs_diff_vs_numbanorm"] = err
                    entry["agrees"] = ok
                del y
                live[n, name] = (fn, repeat, [])
            except Exception as e:
                fail(entry, e, args)
    # Timed in ROUNDS interleaved rounds, each implementation (at each
    # thread count) taking its turn in a rotating order, so that a change in
    # the machine's speed during the run (other tenants, memory bandwidth)
    # falls on all of them alike instead of on whichever ran at that moment.
    rounds = n_rounds(args)
    keys = list(live)
    for rnd in range(rounds):
        k = rnd % max(1, len(keys))
        for key in keys[k:] + keys[:k]:
            fn, repeat, times = live[key]
            if fn is None:
                continue
            set_threads(key[0], have_torch)
            # let the previous implementation's thread pools (onnxruntime
            # and PyTorch spin after each call, tbb too) go idle, so that
            # they do not compete with this one for the cores
            time.sleep(0 if args.quick else IDLE_SECONDS)
            try:
                times.append(time_calls(fn, max(1, -(-repeat // rounds))))
            except Exception as e:
                fail(results[key[0]]["impls"][key[1]], e, args)
                live[key] = (None, repeat, times)
        if pbar is not None:
            pbar.update(1)
    per_round = {}
    for (n, name), (fn, repeat, times) in live.items():
        if fn is None:
            continue
        flat = [t for r in times for t in r]
        med = statistics.median(flat) / 1e6
        per_round[n, name] = [statistics.median(r) / 1e6 for r in times]
        results[n]["impls"][name].update(
            repeat=len(flat), times_ns=flat, median_ms=med,
            round_ms=per_round[n, name], min_ms=min(flat) / 1e6,
            gbps=results[n]["bytes_moved"] / (med * 1e-3) / 1e9)
    del impls, inp
    # Ratios: the median over rounds of the ratio of the two round medians,
    # so that both sides of a ratio come from the same moment of the run.
    for n, res in results.items():
        peer_ms = [(res["impls"][p]["median_ms"], p) for p in PEERS
                   if (n, p) in per_round]
        fastest = min(peer_ms) if peer_ms else None
        res["fastest_peer"] = fastest[1] if fastest else None
        for (m, name) in per_round:
            if m != n:
                continue
            e = res["impls"][name]
            if (n, "limit") in per_round:
                e["vs_limit"] = round_ratio(per_round[n, "limit"],
                                            per_round[n, name])
            if fastest and name in NUMBANORM:
                e["vs_fastest_peer"] = round_ratio(per_round[n, fastest[1]],
                                                   per_round[n, name])
            if m != counts[0] and (counts[0], name) in per_round:
                e["speedup_vs_%d_thread" % counts[0]] = round_ratio(
                    per_round[counts[0], name], per_round[n, name])
    set_threads(counts[-1], have_torch)
    return results


def round_ratio(a, b):
    """The median over rounds of a's round time / b's round time."""
    return statistics.median(x / y for x, y in zip(a, b))


# ---------------------------------------------------------------------------
# environment, table, plot


def set_threads(n, have_torch):
    numba.set_num_threads(n)
    if have_torch:
        import torch
        torch.set_num_threads(n)


def environment(threads):
    env = nn.info()
    env["threads"] = threads
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    try:
        import onnx
        env["onnx"] = onnx.__version__
    except ImportError:
        env["onnx"] = None
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    env["cores"] = os.cpu_count()
    env["platform"] = platform.platform()
    env["llc_bytes"] = llc_bytes()
    env["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return env


def header(env, have_onnx_ops):
    lines = [
        "numbanorm benchmark",
        f"  cpu: {env['cpu']} ({env['cores']} cores)",
        f"  numba threading layer: {env['threading_layer']}, threads: {env['threads']}",
        f"  numbanorm {env['numbanorm']}, numba {env['numba']}, numpy {env['numpy']}, "
        f"onnxruntime {env['onnxruntime']}, torch {env['torch'] or 'not installed'}, "
        f"python {env['python']}",
        f"  onnx_ops: {'available' if have_onnx_ops is True else 'unavailable: ' + str(have_onnx_ops)}",
        "  GB/s counts 2 * x.nbytes; vs limit = limit_ms / ms; "
        "vs peer = fastest_peer_ms / ms (numbanorm rows);",
        f"  ratios are medians over {ROUNDS} interleaved rounds of the ratio within a round",
    ]
    return "\n".join(lines)


def fmt_table(results):
    cols = ["shape", "implementation", "median ms", "GB/s", "vs limit", "vs peer", "note"]
    rows = []
    for r in results:
        first = True
        for name, e in r["impls"].items():
            label = r["label"] if first else ""
            first = False
            if "median_ms" not in e:
                rows.append([label, name, "-", "-", "-", "-", e.get("error", "")])
                continue
            note = []
            if name == r.get("fastest_peer"):
                note.append("fastest peer")
            if e.get("agrees") is False:
                d = e.get("max_abs_diff_vs_numbanorm")
                note.append(f"DIFFERS from numbanorm (max |diff| {d:.3g})"
                            if d is not None else "DIFFERS from numbanorm (shape)")
            rows.append([
                label, name, f"{e['median_ms']:.4f}", f"{e['gbps']:.2f}",
                f"{e['vs_limit']:.2f}" if "vs_limit" in e else "-",
                f"{e['vs_fastest_peer']:.2f}" if "vs_fastest_peer" in e else "",
                "; ".join(note)])
    widths = [max(len(str(x)) for x in [c] + [row[i] for row in rows])
              for i, c in enumerate(cols)]
    widths[-1] = len(cols[-1])
    right = {2, 3, 4, 5}

    def line(vals):
        return "  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    out = [line(cols), line(["-" * w for w in widths])]
    prev = None
    for row in rows:
        if row[0] and prev is not None:
            out.append("")
        out.append(line(row))
        prev = row
    return "\n".join(out)


def plot(results, path, env):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in IMPLS if n != "limit"]
    n = len(results)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * n + 4), 6))
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        xs, ys = [], []
        for i, r in enumerate(results):
            e = r["impls"].get(name, {})
            if "gbps" in e:
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(e["gbps"])
        if xs:
            ax.bar(xs, ys, width, label=name, color=cmap(k))
    lx = []
    for i, r in enumerate(results):
        e = r["impls"].get("limit", {})
        if "gbps" in e:
            ax.hlines(e["gbps"], i - 0.45, i + 0.45, colors="black", linewidth=2)
            lx.append(i)
    handles, labels = ax.get_legend_handles_labels()
    if lx:
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], color="black", linewidth=2))
        labels.append("limit (affine y = a*x + b)")
    ax.set_xticks(range(n))
    ax.set_xticklabels([r["label"] for r in results], rotation=40, ha="right",
                       fontsize=8)
    ax.set_ylabel("GB/s (2 * x.nbytes / median time)")
    ax.set_yscale("log")
    ax.set_title(f"numbanorm {env['numbanorm']}: {env['threads']} threads, "
                 f"{env['threading_layer']}, {env['cpu']}", fontsize=9)
    ax.legend(handles, labels, fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def llc_bytes():
    """The last-level cache as numbanorm reads it (8 MiB where unknown)."""
    return _dispatch._last_level_cache_bytes() or (8 << 20)


# ---------------------------------------------------------------------------
# main


def probe_optional():
    try:
        import onnx_ops  # noqa: F401
        have_onnx_ops = True
    except Exception as e:
        have_onnx_ops = f"{type(e).__name__}: {e}"
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    return have_onnx_ops, have_torch


def progress(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="round", file=sys.stderr,
                dynamic_ncols=True, leave=False)


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def main_bench(args, threads, have_onnx_ops, have_torch):
    cases = make_cases(args.quick, args.shapes)
    if not cases:
        print(f"no shape matches {args.shapes!r}", file=sys.stderr)
        return 2
    env = environment(threads)
    print(header(env, have_onnx_ops), flush=True)
    pbar = progress(len(cases) * n_rounds(args), "benchmark")
    results = []
    for case in cases:
        if pbar is not None:
            pbar.set_postfix_str(case["label"])
        results.append(run_case(case, threads, args, have_onnx_ops, have_torch, pbar))
    if pbar is not None:
        pbar.close()
    print()
    print(fmt_table(results), flush=True)
    warn = warnings(results)
    if warn:
        print("\nnotes:")
        for w in warn:
            print("  " + w)
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "bench.json")
    ppath = os.path.join(args.out, "bench.png")
    write_json(jpath, {"environment": env, "args": vars(args),
                       "implementations": IMPLS, "cases": results})
    plot(results, ppath, env)
    print(f"\nwrote {jpath} and {ppath}")
    return 0


def warnings(results):
    out = []
    for r in results:
        for name in NUMBANORM:
            e = r["impls"].get(name, {})
            if "error" in e:
                out.append(f"{r['label']}: {name} failed: {e['error']}")
            elif e.get("vs_limit") is not None and e["vs_limit"] < 0.5 \
                    and r["elements"] >= _dispatch.PARALLEL_MIN_ELEMENTS:
                out.append(f"{r['label']}: {name} at {e['vs_limit']:.2f}x of the limit")
        for name in PEERS:
            e = r["impls"].get(name, {})
            if e.get("agrees") is False:
                out.append(f"{r['label']}: {name} output differs from numbanorm "
                           f"(max |diff| {e.get('max_abs_diff_vs_numbanorm')})")
    return out


def main_scaling(args, threads, have_onnx_ops, have_torch):
    llc = llc_bytes()
    cases = [c for c in make_cases(args.quick, args.shapes)
             if 2 * math.prod(c["shape"]) * np.dtype(c["dtype"]).itemsize <= llc]
    if not cases:
        print("no in-cache shape selected", file=sys.stderr)
        return 2
    counts = [1, threads] if threads > 1 else [1]
    set_threads(threads, have_torch)
    env = environment(threads)
    print(header(env, have_onnx_ops))
    print(f"  scaling: shapes with 2 * x.nbytes <= last-level cache ({llc >> 20} MiB), "
          f"threads {counts}", flush=True)
    only = [n for n in IMPLS]
    pbar = progress(len(cases) * n_rounds(args), "scaling")
    per = {}
    for case in cases:
        if pbar is not None:
            pbar.set_postfix_str(case["label"])
        per[case["label"]] = run_counts(case, counts, args, have_onnx_ops,
                                        have_torch, pbar, only=only)
    if pbar is not None:
        pbar.close()
    set_threads(threads, have_torch)
    names = [n for n in only]
    hi = counts[-1]
    colw = max(len(n) for n in names) + 2
    labw = max(len(c["label"]) for c in cases) + 2
    print(f"\nspeedup {hi} threads vs 1 thread (t1_ms / t{hi}_ms, median over "
          f"{n_rounds(args)} rounds that alternate the thread counts)")
    print("shape".ljust(labw) + "".join(n.rjust(colw) for n in names))
    summary = {}
    for case in cases:
        lab = case["label"]
        row, summary[lab] = [], {}
        for name in names:
            s = per[lab][hi]["impls"].get(name, {}).get("speedup_vs_1_thread")
            summary[lab][name] = s
            row.append(f"{s:.2f}x" if s else "-")
        serial = math.prod(case["shape"]) < _dispatch.PARALLEL_MIN_ELEMENTS
        print(lab.ljust(labw) + "".join(v.rjust(colw) for v in row)
              + ("   (serial by design: < 2**15 elements)" if serial else ""))
    if hi == 2:
        par = [c["label"] for c in cases
               if math.prod(c["shape"]) >= _dispatch.PARALLEL_MIN_ELEMENTS]
        bad = [lab for lab in par if (summary[lab].get("numbanorm") or 0) < 1.7]
        if not par:
            verdict = "n/a (no selected shape runs the parallel kernels)"
        elif bad:
            verdict = "missed for " + ", ".join(bad)
        else:
            verdict = f"met for all {len(par)} parallel shapes"
        print("\ntarget (numbanorm, 2 threads >= 1.7x faster than 1): " + verdict)
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "scaling.json")
    write_json(jpath, {"environment": env, "args": vars(args), "threads": counts,
                       "speedup": summary,
                       "cases": {lab: {str(n): r for n, r in d.items()}
                                 for lab, d in per.items()}})
    print(f"\nwrote {jpath}")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None,
                   help="thread count for numba, onnxruntime and torch (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="tiny versions of every shape, 3 repeats (for the test)")
    p.add_argument("--shapes", default=None, metavar="SUBSTRING",
                   help="only the shapes whose label contains SUBSTRING "
                        "(e.g. group_norm, 8,128,768, NHWC, f64)")
    p.add_argument("--out", default="results", help="folder for bench.json and bench.png")
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="timed calls per measurement (default: ~0.75 s worth, 5..2000)")
    p.add_argument("--scaling", action="store_true",
                   help="time the in-cache shapes at 1 and N threads, print speedups")
    p.add_argument("--dask", action="store_true",
                   help="instead: layer_norm on a 2-worker Dask LocalCluster vs one "
                        "machine (needs numbanorm[dask]; see benchmarks/dask_case.py)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    return p.parse_args(argv)


def main_dask(args, threads):
    try:
        from benchmarks import dask_case
    except ImportError as e:
        print(f"--dask needs numbanorm[dask]: {e}", file=sys.stderr)
        return 2
    res = dask_case.run(threads=threads, quick=args.quick)
    print(dask_case.report(res))
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "dask.json")
    write_json(jpath, res)
    print(f"\nwrote {jpath}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or max_threads
    if threads < 1:
        print("--threads must be >= 1", file=sys.stderr)
        return 2
    if threads > max_threads:
        print(f"--threads {threads} > {max_threads} (NUMBA_NUM_THREADS); "
              f"using {max_threads}", file=sys.stderr)
        threads = max_threads
    if args.repeat is not None and args.repeat < 1:
        print("--repeat must be >= 1", file=sys.stderr)
        return 2
    if args.dask:
        return main_dask(args, threads)
    have_onnx_ops, have_torch = probe_optional()
    set_threads(threads, have_torch)
    if args.scaling:
        return main_scaling(args, threads, have_onnx_ops, have_torch)
    return main_bench(args, threads, have_onnx_ops, have_torch)


if __name__ == "__main__":
    sys.exit(main())
