"""The ``numbanorm`` command: argument parsing and printing.

The work is done in ``_selfcheck.py`` (the default command) and
``_modelcheck.py`` (``check``, ``convert``); models are read and written
with ``onnx_ops._io``. Every error is one line on stderr,
``numbanorm: error: ...``, and exit status 2.
"""

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

OPS = ("layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm")
# accepted spellings of each op, compared lowercased without "_" and "-"
_OP_ALIASES = {
    "layernorm": "layer_norm", "layernormalization": "layer_norm",
    "groupnorm": "group_norm", "groupnormalization": "group_norm",
    "instancenorm": "instance_norm", "instancenormalization": "instance_norm",
    "batchnorm": "batch_norm", "batchnormalization": "batch_norm",
    "rmsnorm": "rms_norm", "rmsnormalization": "rms_norm",
}
_NATIVE_OP_TYPES = ("LayerNormalization", "GroupNormalization", "InstanceNormalization",
                    "BatchNormalization", "RMSNormalization")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
# an environment variable for bug reports: re-raise instead of the one-line error
_TRACEBACK_ENV = "NUMBANORM_TRACEBACK"


class CommandError(Exception):
    """A usage or input error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CommandError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------- argument types


def _parse_shape(text, option="--shape"):
    """``"N,3,224,224"`` -> ``("N", 3, 224, 224)``; ``?`` is an unnamed dim."""
    dims = []
    for part in text.split(","):
        part = part.strip()
        if part.isdigit() and int(part) > 0:
            dims.append(int(part))
        elif part == "?":
            dims.append(None)
        elif _NAME.match(part):
            dims.append(part)
        else:
            what = "an empty dim" if not part else f"{part!r} is neither a positive int nor a dim name"
            raise CommandError(f"bad {option} {text!r}: {what} (e.g. {option} N,3,224,224)")
    return tuple(dims)


def _parse_ints(text, option):
    """``"64,768"`` -> ``(64, 768)``, all positive."""
    dims = _parse_shape(text, option)
    if not all(isinstance(d, int) for d in dims):
        raise CommandError(f"bad {option} {text!r}: expected positive ints, e.g. {option} 768")
    return dims


def _parse_dims(items):
    """``["N=4", "seq=128"]`` -> ``{"N": 4, "seq": 128}``."""
    dims = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _NAME.match(name) or not value.isdigit() or int(value) < 1:
            raise CommandError(f"bad --dim {item!r}: expected NAME=VALUE with a positive int, "
                               "e.g. --dim N=4")
        if name in dims:
            raise CommandError(f"--dim {name} is given twice")
        dims[name] = int(value)
    return dims


def _parse_op(text):
    op = _OP_ALIASES.get(text.lower().replace("_", "").replace("-", ""))
    if op is None:
        raise CommandError(f"unknown op {text!r}; expected one of {', '.join(OPS)}")
    return op


# -------------------------------------------------------------------- printing


def _fmt(v, spec):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


def _fmt_ulps(v):
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    return f"{v:.2f}" if v < 1000 else f"{v:.1e}"


def _print_table(head, rows, out=None, gap_after=None):
    """Columns left-aligned to their widest cell; a blank line between groups
    when ``gap_after(i)`` says so."""
    out = out or sys.stdout
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    print(line(head), file=out)
    print("-" * len(line(head)), file=out)
    for i, r in enumerate(rows):
        print(line(r), file=out)
        if gap_after and i + 1 < len(rows) and gap_after(i):
            print(file=out)


# ------------------------------------------------------------------ selfcheck


def _cmd_selfcheck(args):
    import numbanorm
    from numbanorm import _accuracy, _selfcheck

    start = time.perf_counter()
    info = numbanorm.info()
    versions = _versions()
    print(f"numbanorm {numbanorm.__version__} self-check: numba {info['numba']} "
          f"({info['threading_layer']}, {info['threads']} threads), "
          f"onnxruntime {versions['onnxruntime']} (CPU), onnx {versions['onnx']}")
    shapes = ", ".join(f"{p.label.split()[0]} ({p.workload})" for p in _selfcheck.PROBLEMS)
    print("Every norm on a realistic shape, float32 and float16, on N(0,1) data and on data "
          "with a large offset,\nthrough numbanorm and the ONNX graphs of onnx_ops.to_onnx "
          "run in onnxruntime and onnx.reference,\nagainst a float64 reference. Shapes: "
          f"{shapes}.\n")
    rows = _selfcheck.run(progress=not args.no_progress)
    head = ("op", "shape", "dtype", "data", "form", "opset", "runtime", "max abs err",
            "ulps", "ms", "GB/s", "result")
    cells = [(r.op, str(r.shape), r.dtype, r.data, r.form, _fmt(r.opset, "d"), r.runtime,
              _fmt(r.max_abs, ".2e"), _fmt_ulps(r.ulps), _fmt(r.ms, ".2f"), _fmt(r.gbs, ".1f"),
              r.status) for r in rows]
    _print_table(head, cells, gap_after=lambda i: rows[i].op != rows[i + 1].op)

    ours = [r for r in rows if r.runtime == "numbanorm"]
    peers = [r for r in rows if r.runtime != "numbanorm"]
    failed = [r for r in ours if r.status != "pass"]
    bound_nb, bound_peer = _accuracy.describe_bounds()
    print()
    if failed:
        print(f"FAILED: {len(failed)} of {len(ours)} numbanorm results are beyond its bound "
              f"({bound_nb}):")
        for r in failed:
            print(f"  {r.op} {r.shape} {r.dtype} {r.data}: max abs err {_fmt(r.max_abs, '.2e')}")
    else:
        print(f"all {len(ours)} numbanorm results pass (bound: {bound_nb})")
    counts = {s: sum(r.status == s for r in peers) for s in ("ok", "off", "not supported")}
    notes = ([f"  - {n}" for n in _selfcheck.off_notes(rows)]
             + [f"  - not supported: {n}" for n in _selfcheck.unsupported_notes(rows)])
    print(f"runtimes: {counts['ok']} ok, {counts['off']} off, {counts['not supported']} "
          f"not supported (bound: {bound_peer})"
          + ("; off is the runtime's error, not numbanorm's:" if notes else ""))
    for note in notes:
        print(note)
    print("ulps: the largest error in units of eps*max(1,|y|) of the output dtype (a correctly "
          f"rounded result is within 0.5);\nms: median of {_selfcheck.TIMED_CALLS} calls "
          "(onnx.reference: 1 call); GB/s: one read of x and one write of y per call.")
    print(f"{len(rows)} results in {time.perf_counter() - start:.1f} s")
    return 0 if _selfcheck.passed(rows) else 1


def _versions():
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


# --------------------------------------------------------------------- export

_PARAM_KEYS = {
    "layer_norm": ("weight", "bias"),
    "rms_norm": ("weight",),
    "group_norm": ("weight", "bias"),
    "instance_norm": ("weight", "bias"),
    "batch_norm": ("weight", "bias", "running_mean", "running_var"),
}


def _export_args(args, op, shape):
    import numpy as np

    from numbanorm import _modelcheck

    if op == "group_norm" and args.num_groups is None:
        raise CommandError("group_norm needs --num-groups")
    if op != "group_norm" and args.num_groups is not None:
        raise CommandError(f"--num-groups applies to group_norm only, not {op}")
    if op not in ("layer_norm", "rms_norm") and args.normalized_shape is not None:
        raise CommandError(f"--normalized-shape applies to layer_norm and rms_norm only, not {op}")
    kw = {}
    if op in ("layer_norm", "rms_norm"):
        if args.normalized_shape is not None:
            ns = _parse_ints(args.normalized_shape, "--normalized-shape")
        elif isinstance(shape[-1], int):
            ns = (shape[-1],)
        else:
            raise CommandError(f"the last dim of --shape is symbolic ({shape[-1]}): give "
                               "--normalized-shape")
        kw["normalized_shape"] = ns
        pshape, what = ns, "normalized_shape"
    else:
        if len(shape) < 2 or not isinstance(shape[1], int):
            raise CommandError(f"{op} needs --shape N,C,... with an int channel count C, "
                               f"got {_show_shape(shape)}")
        pshape, what = (shape[1],), "one per channel"
    if op == "group_norm":
        kw["num_groups"] = args.num_groups
    defaults = {"weight": np.ones(pshape), "bias": np.zeros(pshape),
                "running_mean": np.zeros(pshape), "running_var": np.ones(pshape)}
    keys = _PARAM_KEYS[op]
    given = {}
    if args.params:
        given = _modelcheck.read_npz(args.params)
        for key, a in given.items():
            if key not in keys:
                raise CommandError(f"{args.params}: unexpected array {key!r}; {op} takes "
                                   f"{', '.join(keys)}")
            if a.dtype.kind not in "fiu":
                raise CommandError(f"{args.params}: {key!r} has dtype {a.dtype}, expected "
                                   "real numbers")
            if a.shape != tuple(pshape):
                raise CommandError(f"{args.params}: {key!r} has shape {a.shape}, expected "
                                   f"{tuple(pshape)} ({what})")
    for key in keys:
        kw[key] = given.get(key, defaults[key])
    if args.eps is not None:
        kw["eps"] = args.eps
    return kw


def _show_shape(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _cmd_export(args):
    import onnx_ops
    from onnx_ops._io import save_model

    op = _parse_op(args.op)
    shape = _parse_shape(args.shape)
    kw = _export_args(args, op, shape)
    decompose = True if args.decompose else (False if args.native else None)
    model = onnx_ops.to_onnx(op, input_shape=shape, dtype=args.dtype, opset=args.opset,
                             decompose=decompose, **kw)
    save_model(model, args.output)
    types = [n.op_type for n in model.graph.node]
    native = [t for t in types if t in _NATIVE_OP_TYPES]
    form = f"native {native[0]}" if len(types) == 1 and native else (
        f"{len(types)} nodes around {native[0]}" if native
        else f"decomposed, {_plural(len(types), 'node')}")
    print(f"wrote {args.output}: {op} ({form}), opset {args.opset}, {args.dtype}, "
          f"x {_show_shape(shape)}")
    return 0


# -------------------------------------------------------------------- convert


def _norm_counts(model):
    counts = {}
    for node in model.graph.node:
        if node.op_type in _NATIVE_OP_TYPES:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _opset(model):
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)


def _cmd_convert(args):
    import onnx_ops
    from numbanorm import _modelcheck
    from onnx_ops._io import load_model, save_model

    dims = _parse_dims(args.dim)
    if args.tolerance is not None and not (args.tolerance >= 0 and math.isfinite(args.tolerance)):
        raise CommandError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    model = load_model(args.input)
    decompose = True if args.decompose else (False if args.fuse else None)
    converted = onnx_ops.convert(model, args.target_opset, decompose=decompose)
    before, after = _norm_counts(model), _norm_counts(converted)
    changes = ", ".join(f"{t} {before.get(t, 0)} -> {after.get(t, 0)}"
                        for t in _NATIVE_OP_TYPES if before.get(t, 0) or after.get(t, 0))
    print(f"{args.input} (opset {_opset(model)}, {_plural(len(model.graph.node), 'node')}) -> "
          f"opset {args.target_opset}, {_plural(len(converted.graph.node), 'node')}"
          f"{'; ' + changes if changes else ''}")
    feeds, used = _modelcheck.random_inputs(model, dims, seed=args.seed)
    results = _modelcheck.compare_models(model, converted, feeds, args.tolerance)
    print(f"both run in onnxruntime on random inputs (N(0,1), seed {args.seed}"
          f"{_dims_text(used)}):")
    _print_table(("output", "dtype", "shape", "max abs diff", "relative", "tolerance", "result"),
                [(r["name"], r["dtype"], str(r["shape"]), _fmt(r["max_abs_diff"], ".2e"),
                  _fmt(r["relative"], ".2e"), _fmt(r["tolerance"], ".0e"),
                  "ok" if r["ok"] else "DIFFERS") for r in results])
    bad = [r for r in results if not r["ok"]]
    if bad:
        r = bad[0]
        if r.get("note"):
            how = r["note"]
        elif math.isnan(r["max_abs_diff"]):
            how = "the models disagree on where the output is NaN/Inf"
        else:
            how = (f"it differs by {r['max_abs_diff']:.2e} (relative {r['relative']:.2e}, "
                   f"tolerance {r['tolerance']:.0e} for {r['dtype']})")
        print(f"numbanorm: refusing to write {args.output}: output {r['name']!r}: {how}; "
              "`numbanorm check` on each model tells which one is off", file=sys.stderr)
        return 1
    save_model(converted, args.output, protect=args.input)
    print(f"wrote {args.output}")
    return 0


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _dims_text(used):
    return "".join(f", {k}={v}" for k, v in used.items())


# ---------------------------------------------------------------------- check


def _cmd_check(args):
    import onnxruntime

    from numbanorm import _accuracy, _modelcheck
    from onnx_ops._inspect import count_nested_normalizations
    from onnx_ops._io import load_model

    if args.inputs and (args.dim or args.offset is not None or args.seed is not None):
        raise CommandError("--dim, --offset and --seed apply to random inputs, not to --inputs")
    if not math.isfinite(args.offset or 0.0):
        raise CommandError(f"--offset must be finite, got {args.offset}")
    dims = _parse_dims(args.dim)
    model = load_model(args.model, any_opset=True)
    seed = 0 if args.seed is None else args.seed
    if args.inputs:
        feeds = _modelcheck.load_inputs(args.inputs, model)
        source = {"source": args.inputs}
        source_text = f"inputs from {args.inputs}"
    else:
        feeds, used = _modelcheck.random_inputs(model, dims, seed, args.offset or 0.0)
        source = {"source": "random", "distribution": "N(0,1) + offset", "seed": seed,
                  "offset": args.offset or 0.0, "dims": used}
        offset_text = f" + {args.offset:g}" if args.offset else ""
        source_text = f"random inputs N(0,1){offset_text}, seed {seed}{_dims_text(used)}"
    results = _modelcheck.check_model(model, feeds)
    nested = count_nested_normalizations(model)
    if nested:
        print(f"numbanorm: note: {nested} normalization node(s) inside subgraphs or local "
              "functions are not checked", file=sys.stderr)
    flagged = sum(r["flagged"] for r in results)
    if args.json:
        print(json.dumps({
            "model": args.model, "opset": _opset(model), "inputs": source,
            "onnxruntime": onnxruntime.__version__,
            "bounds": dict(zip(("numbanorm", "runtime"), _accuracy.describe_bounds())),
            "nodes": results, "flagged": flagged,
        }, indent=2, allow_nan=False))
        return 1 if flagged else 0
    print(f"{args.model}: opset {_opset(model)}; onnxruntime {onnxruntime.__version__} (CPU) "
          f"on {source_text}")
    if not results:
        print("no normalization found (native LayerNormalization, GroupNormalization, "
              "InstanceNormalization, BatchNormalization, RMSNormalization nodes or the "
              "decomposed patterns onnx_ops.convert fuses)")
        return 0
    rows = []
    for r in results:
        rows.append((r["name"], r["op"], str(tuple(r["shape"])), r["dtype"],
                     _err(r, "runtime"), _fmt_ulps(r["runtime_ulps"]) if r["runtime_ok"] is not None
                     else "-", _err(r, "numbanorm"), r["verdict"]))
    _print_table(("node", "op", "shape", "dtype", "runtime err", "ulps", "numbanorm err",
                 "verdict"), rows)
    bound_nb, bound_peer = _accuracy.describe_bounds()
    print(f"\n{_plural(len(results), 'normalization')} checked against a float64 reference: "
          f"{flagged} flagged.\nbounds: onnxruntime {bound_peer}; numbanorm {bound_nb}; ulps of "
          "max(1,|y|).")
    return 1 if flagged else 0


def _err(r, who):
    v = r[f"{who}_max_abs_err"]
    if r[f"{who}_ok"] is None:
        return "-"
    if v is None:
        return "nan/inf"
    return f"{v:.2e}"


# ----------------------------------------------------------------- bench, info


def _cmd_bench(argv):
    """Hand the arguments to ``benchmarks.bench.main`` of a source checkout."""
    bench = _import_bench()
    if bench is None:
        raise CommandError(
            "`numbanorm bench` needs a source checkout: the benchmarks/ folder is not "
            "installed with the package; run it from a clone of the repository")
    return bench.main(argv)


def _import_bench():
    # the checkout this package was imported from, then the current folder
    roots = [Path(__file__).resolve().parent.parent, Path.cwd()]
    for root in roots:
        if (root / "benchmarks" / "bench.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            import importlib

            try:
                return importlib.import_module("benchmarks.bench")
            except ImportError as exc:
                raise CommandError(f"cannot import benchmarks.bench from {root}: {exc}") from None
    return None


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cmd_compile(args):
    import numba

    from numbanorm import _warmup

    t0 = time.perf_counter()
    times, (kernels, hits, misses) = _warmup.compile_all(jobs=args.jobs)
    for name, sec in times.items():
        print(f"{name:9s} {sec:7.2f} s")
    where = numba.config.CACHE_DIR or "next to the package, or the per-user cache " \
        "(~/.cache/numba) when the package folder is read-only"
    print(f"{kernels} kernels, {misses} signatures compiled, {hits} loaded from the cache, "
          f"in {time.perf_counter() - t0:.1f} s; cache: {where}")
    return 0


def _cmd_info(args):
    import numbanorm

    info = dict(numbanorm.info())
    for key, value in _versions().items():
        info.setdefault(key, value)
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0


# ---------------------------------------------------------------------- parser


def build_parser():
    """The argument parser of the ``numbanorm`` command.

    Returns
    -------
    argparse.ArgumentParser
        Its errors raise ``CommandError`` instead of exiting; ``bench`` is
        listed for ``--help`` only, :func:`main` hands its arguments over
        before parsing.
    """
    p = _Parser(
        prog="numbanorm",
        description="Normalization layers as parallel Numba kernels, and ONNX tools. Without a "
                    "command: the self-check.",
        epilog=f"Errors are one line on stderr and exit status 2 (set {_TRACEBACK_ENV}=1 for a "
               "traceback).")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = sub.add_parser(
        "selfcheck", help="check every norm against a float64 reference, with the ONNX forms "
                          "in onnxruntime and onnx.reference (the default command)",
        description="Every norm on realistic shapes, float32 and float16, N(0,1) and "
                    "large-offset data: numbanorm, and onnx_ops's native and decomposed graphs "
                    "in onnxruntime and onnx.reference, against a float64 reference. Exit "
                    "status 0 if every numbanorm result is within its accuracy bound; runtimes "
                    "beyond theirs are reported as 'off' and do not fail the check.")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    s.set_defaults(handler=_cmd_selfcheck)

    e = sub.add_parser(
        "export", help="write one normalization as an ONNX model (onnx_ops.to_onnx)",
        description="Write one normalization as an ONNX model with input 'x' and output 'y'. "
                    "Weights are ones and biases zeros (BatchNorm: running mean 0, running "
                    "variance 1) unless --params gives them.")
    e.add_argument("op", metavar="OP", help=f"one of {', '.join(OPS)} (also LayerNorm, ...)")
    e.add_argument("--shape", required=True,
                   help="input shape, comma-separated; a name is a symbolic dim, '?' an "
                        "unnamed one (e.g. N,3,224,224)")
    e.add_argument("--opset", type=int, default=21, help="default-domain opset, 13..23 "
                   "(default 21)")
    form = e.add_mutually_exclusive_group()
    form.add_argument("--decompose", action="store_true",
                      help="basic operators only (runs anywhere; accurate on large offsets)")
    form.add_argument("--native", action="store_true",
                      help="the native ONNX operator (an error if the opset lacks it)")
    e.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16"))
    e.add_argument("--num-groups", type=int, metavar="G", help="group_norm: number of groups")
    e.add_argument("--eps", type=float, metavar="E",
                   help="added to the variance (default 1e-5; rms_norm: the dtype's epsilon)")
    e.add_argument("--normalized-shape", metavar="DIMS",
                   help="layer_norm/rms_norm: trailing dims to normalize (default: the last dim)")
    e.add_argument("--params", metavar="NPZ",
                   help="an .npz with weight, bias (and for batch_norm running_mean, "
                        "running_var) of the parameter shape")
    e.add_argument("-o", "--output", required=True, help="the model file to write")
    e.set_defaults(handler=_cmd_export)

    c = sub.add_parser(
        "convert", help="rewrite a model's normalizations for another opset, verified in "
                        "onnxruntime",
        description="onnx_ops.convert, then both models run in onnxruntime on the same random "
                    "inputs (N(0,1)); the result is written (atomically) only if every output "
                    "agrees within the tolerance of its dtype, relative to max(1, max|y|): "
                    "float16 1e-2, float32 1e-4, float64 1e-10 (integers: equal). Exit status "
                    "1 when they differ.")
    c.add_argument("input", help="the model to convert")
    c.add_argument("output", help="the model file to write")
    c.add_argument("--target-opset", type=int, required=True, metavar="N", help="13..23")
    form = c.add_mutually_exclusive_group()
    form.add_argument("--decompose", action="store_true",
                      help="basic operators only: every normalization decomposed")
    form.add_argument("--fuse", action="store_true",
                      help="native operators wherever the target opset has them (exporters' "
                           "decomposed patterns fused)")
    c.add_argument("--dim", action="append", metavar="NAME=VALUE",
                   help="value of a symbolic input dim (repeatable; default 2)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    c.add_argument("--tolerance", type=float, metavar="T",
                   help="override the relative tolerance for every output")
    c.set_defaults(handler=_cmd_convert)

    k = sub.add_parser(
        "check", help="cross-check every normalization of a model as onnxruntime runs it",
        description="Run the model in onnxruntime with the input and output of every "
                    "normalization (native nodes and the decomposed patterns onnx_ops "
                    "recognizes) exposed, recompute each with numbanorm from the same input, "
                    "and compare both with a float64 reference. Exit status 1 if a node is "
                    "flagged (onnxruntime beyond its tolerance, e.g. float16 overflow or a "
                    "one-pass variance on large offsets), 0 otherwise. Random inputs: float "
                    "N(0,1) + --offset, integers uniform in [0, 10), bools fair coin flips.")
    k.add_argument("model", help="the ONNX model")
    k.add_argument("--inputs", metavar="NPZ", help="an .npz with one array per model input")
    k.add_argument("--dim", action="append", metavar="NAME=VALUE",
                   help="value of a symbolic input dim (repeatable; default 2)")
    k.add_argument("--offset", type=float, default=None,
                   help="add this to the random float inputs (e.g. 1e4 probes one-pass "
                        "variance formulas)")
    k.add_argument("--seed", type=int, default=None, help="seed of the random inputs (default 0)")
    k.add_argument("--json", action="store_true", help="machine-readable output")
    k.set_defaults(handler=_cmd_check)

    sub.add_parser("bench", add_help=False,
                   help="the benchmark suite (python -m benchmarks.bench; needs a source "
                        "checkout); arguments are passed through")

    w = sub.add_parser(
        "compile", help="compile every kernel ahead of use, into numba's disk cache",
        description="Call every kernel once for every dtype and plan, so that numba compiles "
                    "them into its on-disk cache (e.g. while building a container image); "
                    "later processes load them. The cache sits next to the package, or in "
                    "the per-user cache folder when the package folder is read-only "
                    "(NUMBA_CACHE_DIR overrides both).")
    w.add_argument("--jobs", type=_positive_int, default=_cpus(), metavar="N",
                   help="compile in N processes at once (default: one per CPU, %(default)s "
                        "here)")
    w.set_defaults(handler=_cmd_compile)

    i = sub.add_parser("info", help="versions, threading layer, thread count, CPU, cache folder")
    i.set_defaults(handler=_cmd_info)
    return p


def main(argv=None):
    """Run the ``numbanorm`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit status: 0 success; 1 ``selfcheck`` with a numbanorm
        failure, ``check`` with a flagged node, ``convert`` refusing a result
        that differs; 2 an error (one line on stderr), 130 interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            return _cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            args = build_parser().parse_args(["selfcheck"])
        return args.handler(args)
    except KeyboardInterrupt:
        print("numbanorm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (numbanorm ... | head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get(_TRACEBACK_ENV):
            raise
        print(f"numbanorm: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, (CommandError, ValueError, TypeError)):
        return text or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
