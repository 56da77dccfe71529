"""The self-check behind ``numbanorm`` / ``numbanorm selfcheck``.

Every norm on a realistic shape, in float32 and float16, on N(0,1) data and
on data with a large offset, through four paths that all see the same input:

- the numbanorm kernel;
- the ONNX graphs of ``onnx_ops.to_onnx`` (the native operator and the
  decomposition, and for GroupNorm also the default shifted-InstanceNorm form),
  each run in onnxruntime (CPU) and in ``onnx.reference.ReferenceEvaluator``.

Each result is compared with the float64 reference of ``_reference.py``.
numbanorm is held to its accuracy contract; the runtimes (peers) to a looser
bound (both in ``_accuracy.py``). Only numbanorm failures fail the check: a
peer beyond its bound is reported as "off", with the known cause where there
is one.
"""

import sys
import time
import warnings
from typing import NamedTuple

import numpy as np
from onnx_ops._opset import NATIVE_OP_TYPE

from . import _accuracy, _api, _reference


class Problem(NamedTuple):
    label: str  # the op as the table shows it
    workload: str  # where such a shape occurs
    op: str
    shape: tuple
    extra: dict  # further arguments of the op (num_groups)


PROBLEMS = [
    Problem("LayerNorm", "transformer", "layer_norm", (8, 512, 768), {}),
    Problem("RMSNorm", "LLM", "rms_norm", (4, 512, 4096), {}),
    Problem("GroupNorm G=32", "UNet", "group_norm", (4, 256, 32, 32), {"num_groups": 32}),
    Problem("InstanceNorm", "style transfer", "instance_norm", (1, 64, 256, 256), {}),
    Problem("BatchNorm", "ResNet", "batch_norm", (16, 64, 56, 56), {}),
]

DTYPES = ("float32", "float16")

# (label, offset, std) per dtype. The offset rows break one-pass variance
# formulas: in float32 an offset of 1e4 at std 1 leaves E[x^2] - E[x]^2 with
# no correct digit (float32 is exact to ~1e-3 at 1e8); in float16 an offset
# of 300 makes E[x^2] (9e4) overflow the float16 range (65504), while larger
# offsets would round the data itself to a few values.
DATA = {
    "float32": [("N(0,1)", 0.0, 1.0), ("offset 1e4, std 1", 1e4, 1.0)],
    "float16": [("N(0,1)", 0.0, 1.0), ("offset 300, std 1", 300.0, 1.0)],
}

# (form label, opset, decompose) of the ONNX graphs: the native operator at
# the opset that introduced it (InstanceNorm and BatchNorm exist at every
# supported opset; 17 and 15 are their current versions there), the
# decomposition at opset 13 (the oldest onnx_ops supports, the widest reach).
FORMS = {
    "layer_norm": [("native", 17, False), ("decomposed", 13, True)],
    "rms_norm": [("native", 23, False), ("decomposed", 13, True)],
    "group_norm": [("native", 21, False), ("via InstanceNorm", 21, None),
                   ("decomposed", 13, True)],
    "instance_norm": [("native", 17, False), ("decomposed", 13, True)],
    "batch_norm": [("native", 15, False), ("decomposed", 13, True)],
}

RUNTIMES = ("onnxruntime", "onnx.reference")


# Known causes of a peer being off, by (runtime, op, form), as measured by
# benchmarks/onnx_support_table.py and by this check's own offset rows.
_ONE_PASS = ("has no GroupNormalization kernel: it runs the operator's function "
             "body, whose one-pass variance E[x^2]-E[x]^2 cancels when |mean| >> std")
CAUSES = {
    ("onnxruntime", "group_norm", "native"): "onnxruntime " + _ONE_PASS,
    ("onnx.reference", "group_norm", "native"): "onnx.reference " + _ONE_PASS,
    ("onnxruntime", "layer_norm", "native"):
        "onnxruntime's LayerNormalization kernel loses precision when |mean| >> std",
    ("onnxruntime", "instance_norm", "native"):
        "onnxruntime's InstanceNormalization kernel loses precision when |mean| >> std",
    ("onnxruntime", "batch_norm", "native"):
        "onnxruntime's BatchNormalization kernel loses precision when |mean| >> std",
}
_REFERENCE_NATIVE = ("onnx.reference computes native operators in the input dtype (it "
                     "ignores stash_type): in float32 the mean of offset data is rounded at "
                     "the offset's magnitude, float16 sums lose precision or overflow")

TIMED_CALLS = 5  # numbanorm and onnxruntime: median of these, after a warm-up call


class Row(NamedTuple):
    """One line of the self-check table."""

    op: str
    workload: str
    shape: tuple
    dtype: str
    data: str
    form: str  # "kernel" for numbanorm
    opset: int  # None for numbanorm
    runtime: str  # "numbanorm", "onnxruntime", "onnx.reference"
    max_abs: float  # NaN when the result has NaN/Inf where the reference does not
    ulps: float  # in units of eps * max(1, |y_ref|), see _accuracy
    ms: float  # per call; None when not run
    gbs: float  # one read of x and one write of y per call
    status: str  # numbanorm: "pass"/"FAIL"; peers: "ok"/"off"/"not supported"
    reason: str  # why a peer is off or not supported; "" otherwise
    op_key: str  # the numbanorm function name


def _params(problem, dtype, offset, std, rng):
    """Keyword arguments of the op: parameters rounded to ``dtype`` (as an
    exported model holds them) and returned as float64."""
    op, shape = problem.op, problem.shape
    n = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]

    def rounded(a):
        return a.astype(dtype).astype(np.float64)

    kw = dict(problem.extra)
    if op in ("layer_norm", "rms_norm"):
        kw["normalized_shape"] = shape[-1]
    kw["weight"] = rounded(rng.standard_normal(n))
    if op != "rms_norm":
        kw["bias"] = rounded(rng.standard_normal(n))
    kw["eps"] = 1e-6 if op == "rms_norm" else 1e-5
    if op == "batch_norm":
        kw["running_mean"] = rounded(rng.standard_normal(n) * std + offset)
        kw["running_var"] = rounded((rng.random(n) + 0.5) * std * std)
    return kw


def _median_ms(fn, calls=TIMED_CALLS):
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def _reason(exc):
    """The first line of an exception's message, without onnxruntime's prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[ONNXRuntimeError]"):
        # "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find ..."
        parts = [p.strip() for p in text.split(" : ")]
        text = ": ".join(parts[2:]) if len(parts) > 2 else text
    return text if len(text) <= 160 else text[:157] + "..."


def _gbs(nbytes, ms):
    return 2 * nbytes / (ms * 1e-3) / 1e9 if ms else None


def _plan():
    """The (problem, dtype, data) cases, in table order."""
    return [(p, dt, d) for p in PROBLEMS for dt in DTYPES for d in DATA[dt]]


def _rows_per_case(problem):
    return 1 + len(FORMS[problem.op]) * len(RUNTIMES)


def run(progress=True):
    """Run the self-check.

    Parameters
    ----------
    progress : bool
        Show a tqdm progress bar on stderr (only when stderr is a terminal).

    Returns
    -------
    list of Row
        For every problem of ``PROBLEMS``, dtype of ``DTYPES`` and data set
        of ``DATA``: numbanorm's row, then one row per ONNX form of
        ``FORMS`` and runtime of ``RUNTIMES``. A form that cannot be built or
        run gives a "not supported" row with the reason.

    Notes
    -----
    All paths of a case see the same input, with parameters rounded to the
    dtype as an exported model holds them, and are compared with one float64
    reference. numbanorm and onnxruntime are timed as the median of
    ``TIMED_CALLS`` calls after a warm-up call, onnx.reference by one call.
    """
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    from tqdm import tqdm

    import onnx_ops

    cases = _plan()
    total = sum(_rows_per_case(p) for p, _, _ in cases)
    bar = tqdm(total=total, desc="numbanorm selfcheck", unit="row", file=sys.stderr,
               disable=None if progress else True, leave=False, dynamic_ncols=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors surface as exceptions; no warnings on stderr
    rng = np.random.default_rng(0)
    rows = []
    try:
        for problem, dtype, (data, offset, std) in cases:
            op, shape = problem.op, problem.shape
            bar.set_postfix_str(f"{problem.label} {dtype} {data}")
            x = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
                 + np.float32(offset)).astype(dtype)
            kw = _params(problem, dtype, offset, std, rng)
            y_ref = _accuracy.Reference(getattr(_reference, op)(x, **kw), dtype)

            def row(form, opset, runtime, y, ms, status=None, reason="", bound="peer"):
                if y is None:
                    err = _accuracy.Error(float("nan"), float("nan"), 0, False)
                else:
                    err = _accuracy.measure(y, y_ref, bound)
                if status is None:
                    if runtime == "numbanorm":
                        status = "pass" if err.within else "FAIL"
                    else:
                        status = "ok" if err.within else "off"
                if status == "off":
                    reason = _cause(runtime, op, form, dtype)
                rows.append(Row(problem.label, problem.workload, shape, dtype, data, form,
                                opset, runtime, err.max_abs, err.ulps, ms,
                                _gbs(x.nbytes, ms), status, reason, op))
                bar.update(1)

            fn = getattr(_api, op)
            y = fn(x, **kw)  # warm-up (and compile on a cold cache)
            ms = _median_ms(lambda: fn(x, **kw, out=y))
            row("kernel", None, "numbanorm", y, ms, bound="contract")

            for form, opset, decompose in FORMS[op]:
                try:
                    model = onnx_ops.to_onnx(op, input_shape=shape, dtype=dtype, opset=opset,
                                             decompose=decompose, **kw)
                except Exception as exc:  # a form the exporter cannot build: a row, not a crash
                    for runtime in RUNTIMES:
                        row(form, opset, runtime, None, None, "not supported",
                            f"onnx_ops: {_reason(exc)}")
                    continue
                try:
                    session = ort.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
                    y = session.run(None, {"x": x})[0]
                    ms = _median_ms(lambda: session.run(None, {"x": x}))
                    row(form, opset, "onnxruntime", y, ms)
                except Exception as exc:
                    row(form, opset, "onnxruntime", None, None, "not supported", _reason(exc))
                try:
                    with warnings.catch_warnings(), np.errstate(all="ignore"):
                        warnings.simplefilter("ignore")
                        evaluator = ReferenceEvaluator(model)
                        t = time.perf_counter()
                        y = evaluator.run(None, {"x": x})[0]
                        ms = (time.perf_counter() - t) * 1e3
                    row(form, opset, "onnx.reference", np.asarray(y), ms)
                except Exception as exc:
                    row(form, opset, "onnx.reference", None, None, "not supported", _reason(exc))
    finally:
        bar.close()
    return rows


def _cause(runtime, op, form, dtype):
    cause = CAUSES.get((runtime, op, form))
    if cause is None and runtime == "onnx.reference" and form == "native":
        cause = _REFERENCE_NATIVE
    return cause or "beyond tolerance"


def passed(rows):
    """Whether every numbanorm row of ``rows`` passed; peers do not count.

    Parameters
    ----------
    rows : list of Row

    Returns
    -------
    bool
    """
    return all(r.status == "pass" for r in rows if r.runtime == "numbanorm")


def off_notes(rows):
    """Where and why peers are off.

    Parameters
    ----------
    rows : list of Row

    Returns
    -------
    list of str
        One line per runtime and ONNX operator (or form) with "off" rows:
        the dtypes and data sets, their errors and the known cause.
    """
    groups = {}
    for r in rows:
        if r.status != "off":
            continue
        what = (f"{NATIVE_OP_TYPE[r.op_key]}-{r.opset}" if r.form == "native"
                else f"{r.op_key} {r.form} (opset {r.opset})")
        key = (r.runtime, what)
        groups.setdefault(key, {"cases": [], "reason": r.reason})
        err = "NaN/Inf" if np.isnan(r.max_abs) else f"{r.max_abs:.1e}"
        groups[key]["cases"].append(f"{r.dtype} {r.data}: {err}")
    return [f"{runtime} {what}, max abs err {'; '.join(g['cases'])}. {g['reason']}"
            for (runtime, what), g in groups.items()]


def unsupported_notes(rows):
    """Why forms could not be built or run.

    Parameters
    ----------
    rows : list of Row

    Returns
    -------
    list of str
        One line per distinct reason, with the forms and runtimes it hit.
    """
    seen = {}
    for r in rows:
        if r.status == "not supported":
            where, runtimes = seen.setdefault(r.reason, ({}, {}))
            where[f"{r.op_key} {r.form} opset {r.opset} {r.dtype}"] = None
            runtimes[r.runtime] = None
    return [f"{', '.join(where)} ({', '.join(runtimes)}): {reason}"
            for reason, (where, runtimes) in seen.items()]
