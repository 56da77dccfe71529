"""``convert``: rewrite the normalizations of a model for another opset.

The rewrite runs in three steps, so that onnx.version_converter never sees a
node this module writes:

1. Plan, at the source opset: find the exporters' decomposed patterns worth
   fusing and the native normalization nodes that must change; replace each
   by one placeholder node in a private domain, remembering what to emit.
2. Bring every other node to the target opset (``_versions.py``): restamp
   nodes whose operator change is backward compatible and unused by the node,
   run onnx.version_converter for the rest (it passes unknown domains, and so
   the placeholders, through).
3. Expand each placeholder into the native operator or the decomposition,
   written directly for the target opset by the same emitters as ``to_onnx``.
"""

import numpy as np
import onnx
from onnx import helper

from . import _emit, _opset
from ._graph import Scope, collect_tensor_infos, graph_names, iter_graphs, unique_scope
from ._match import GraphIndex, claim_patterns, read_native
from ._versions import convert_rest
from ._opset import DEFAULT_DOMAINS as _DEFAULT_DOMAINS

_PENDING_DOMAIN = "onnx_ops.pending"


def convert(model, target_opset, decompose=None):
    """Rewrite every normalization of ``model`` for ``target_opset``.

    Native operators the target lacks become decompositions
    (LayerNormalization below 17, GroupNormalization below 21,
    RMSNormalization below 23, also the deprecated GroupNormalization-18), and
    the decomposed patterns that exporters emit are fused into the native
    operator when the target has it:

    - PyTorch's LayerNorm below opset 17: ReduceMean, Sub, Pow, ReduceMean,
      Add, Sqrt, Div, Mul, Add (also its float16 form with Casts to a wider
      type around the statistics), with or without the Mul/Add;
    - PyTorch's GroupNorm: Reshape to [0, G, -1], InstanceNormalization with
      ones(G)/zeros(G), Reshape to Shape(x), Mul, Add;
    - RMSNorm chains: Pow(x, 2) or Mul(x, x), ReduceMean, Add, Sqrt, then
      Div(x, .) or Reciprocal / Div(1, .) and Mul(x, .), then Mul by a weight.

    A pattern is fused only if it matches exactly: node types and wiring, the
    axes (the trailing axes, the same in both reductions), the constants, a
    positive scalar epsilon, weights that vary only along the normalized
    axes (or the channel axis) and intermediate results used nowhere else.
    Otherwise it is left as it is, which is still correct.

    Parameters
    ----------
    model : onnx.ModelProto
        The model; it is not modified.
    target_opset : int
        Default-domain opset of the result, 13..23.
    decompose : bool or None, default None
        Picks the form of every normalization that is rewritten, as in
        :func:`onnx_ops.to_onnx` at the target opset. False: native operators
        wherever the target has them (patterns fused, native nodes kept),
        decompositions elsewhere. True: basic operators only: every native
        normalization node (InstanceNormalization and BatchNormalization
        included) is decomposed and nothing is fused. None: the default form
        of :func:`onnx_ops.to_onnx`: LayerNormalization and RMSNormalization
        native where available (their patterns fused), native
        GroupNormalization nodes become the shifted InstanceNormalization
        graph, InstanceNormalization native except in float64,
        BatchNormalization native. Patterns are only ever fused: one that is
        not (PyTorch's GroupNorm pattern under None, any pattern under True,
        or below the opset of its operator) stays as found, except that
        True also decomposes the InstanceNormalization inside PyTorch's
        GroupNorm pattern.

    Returns
    -------
    onnx.ModelProto
        A new model computing the same outputs. Nodes outside the
        normalizations are kept. Those whose operator changes version between
        the two opsets are restamped when the change only added types or
        attributes they do not use (onnx.version_converter has no downgrade
        adapter for most of these, e.g. Add or Reshape 14 -> 13); any other
        version change goes through ``onnx.version_converter``. The IR
        version is raised if the target opset needs it.

    Raises
    ------
    ValueError
        ``target_opset`` out of range; a model without a default-domain
        opset, or with one onnx does not know; a native normalization node
        without a required input, with a scale, bias or running statistic of
        the wrong shape, or whose num_groups does not divide the channels
        (the message names the node, the input and the shapes); a
        normalization that must be rewritten but whose input dtype or shape
        cannot be inferred; or onnx.version_converter failing on the rest of
        the model (the message includes its error).
    TypeError
        ``model`` is not a ModelProto, or ``decompose`` is not a bool or None.

    Notes
    -----
    BatchNormalization in training mode is not a normalization here: it is
    left to onnx.version_converter. Normalizations inside model-local
    functions are not rewritten; those inside If/Loop/Scan bodies are.

    Examples
    --------
    >>> import onnx_ops
    >>> m = onnx_ops.to_onnx("layer_norm", input_shape=("N", 8), normalized_shape=8, opset=17)
    >>> [n.op_type for n in onnx_ops.convert(m, 13).graph.node][:3]
    ['Slice', 'Sub', 'ReduceMean']
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__}")
    target = _opset.check_opset(target_opset, "target_opset")
    if decompose is not None and not isinstance(decompose, (bool, np.bool_)):
        raise TypeError(f"decompose must be True, False or None, got {decompose!r}")
    source = _default_opset(model)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    infos = _tensor_infos(out)
    taken = graph_names(out.graph)
    pending = {}
    removed_inputs, removed_outputs = set(), set()
    for graph in list(iter_graphs(out.graph)):
        _plan(graph, infos, source, target, decompose, taken, pending, removed_inputs, removed_outputs)

    if pending:
        out.opset_import.append(helper.make_opsetid(_PENDING_DOMAIN, 1))
    out = convert_rest(out, source, target, infos)

    for graph in list(iter_graphs(out.graph)):
        _expand(graph, target, taken, pending)
    _remove_dead(out.graph, removed_inputs, removed_outputs)
    kept = [imp for imp in out.opset_import if imp.domain != _PENDING_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    out.ir_version = max(out.ir_version, _opset.min_ir_version(target))
    return out


def _default_opset(model):
    versions = [imp.version for imp in model.opset_import if imp.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ValueError("the model has no default-domain ('' / 'ai.onnx') opset import")
    source = int(versions[0])
    known = onnx.defs.onnx_opset_version()
    if not 1 <= source <= known:
        # onnx.defs would answer with the schemas of its newest opset, silently
        raise ValueError(
            f"the model's default-domain opset {source} is unknown to onnx {onnx.__version__} (1..{known})")
    return source


def _tensor_infos(model):
    """dtype and shape of every tensor ONNX shape inference can tell, in every (sub)graph."""
    declared = {}
    for g in iter_graphs(model.graph):
        collect_tensor_infos(g, declared)
    try:
        inferred_model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # e.g. deprecated operators; the declared types still help
        return declared
    infos = {}
    for g in iter_graphs(inferred_model.graph):
        collect_tensor_infos(g, infos)
    for name, info in declared.items():
        if name not in infos or (infos[name].shape is None and info.shape is not None):
            infos[name] = info
    return infos


def _form(op, target, dtype, decompose):
    """The form to emit; decompose=False falls back to the decomposition where the target lacks the op."""
    if decompose is False and not _opset.has_native(op, target):
        return _opset.DECOMPOSED
    return _opset.resolve_form(op, target, dtype, decompose)


def _keepable(norm, target):
    """A native node that stays native and whose operator version does not change."""
    op_type = _opset.NATIVE_OP_TYPE[norm.op]
    return onnx.defs.get_schema(op_type, target).since_version == norm.source_version


def _check_emittable(norm, target):
    """Raise if the norm lacks what its emitter needs (dtype, rank, channels)."""
    node = norm.nodes[0]
    where = f"{node.op_type} node {node.name or '(unnamed)'} (input {norm.x!r})"
    if norm.dtype not in _opset.FLOAT_DTYPES:
        raise ValueError(
            f"cannot rewrite {where} for opset {target}: its input dtype is "
            f"{'unknown' if norm.dtype is None else norm.dtype}; float16/32/64 are supported"
        )
    for value in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
        if isinstance(value, _emit.Ref) and value.dtype not in _opset.FLOAT_DTYPES:
            raise ValueError(f"cannot rewrite {where} for opset {target}: the dtype of {value.name!r} is unknown")
    if norm.op in ("layer_norm", "rms_norm"):
        if norm.k is None:
            raise ValueError(f"cannot rewrite {where}: a positive axis needs the input rank, which is unknown")
        return
    if norm.op == "group_norm" and (norm.channels is None or norm.channels % norm.num_groups):
        raise ValueError(
            f"cannot rewrite {where} for opset {target}: it needs the channel count, which is unknown "
            f"(inferred shape {norm.shape})"
        )


def _plan(graph, infos, source, target, decompose, taken, pending, removed_inputs, removed_outputs):
    index = GraphIndex(graph)
    # patterns are only fused; otherwise they stay as found
    claimed, patterns = claim_patterns(
        graph, index, infos,
        keep=lambda op, norm: _form(op, target, norm.dtype, decompose) == _opset.NATIVE)
    found = [(norm, _opset.NATIVE) for _, norm in patterns]
    for node in graph.node:
        if id(node) in claimed:
            continue
        norm = read_native(node, index, infos, source)
        if norm is None:
            continue
        if norm.dtype is None and decompose is not True and _opset.has_native(norm.op, target):
            # Without a dtype the policy cannot be applied; keep the operator if it can stay.
            form = _opset.NATIVE
        else:
            form = _form(norm.op, target, norm.dtype, decompose)
        if form == _opset.NATIVE and _keepable(norm, target):
            continue
        claimed.add(id(node))
        found.append((norm, form))

    if not found:
        return
    replacement = {}
    for norm, form in found:
        _check_emittable(norm, target)
        outputs = [norm.output, norm.mean_output or "", norm.rstd_output or ""]
        while outputs[-1] == "":
            outputs.pop()
        inputs = [norm.x] + [
            v.name for v in (norm.weight, norm.bias, norm.running_mean, norm.running_var) if isinstance(v, _emit.Ref)
        ]
        name = unique_scope("onnx_ops_pending", taken)
        taken.add(name)
        placeholder = helper.make_node(norm.op, inputs, outputs, name=name, domain=_PENDING_DOMAIN)
        pending[name] = (norm, form)
        replacement[id(norm.nodes[-1])] = placeholder
        for n in norm.nodes:
            removed_inputs.update(n.input)
            removed_outputs.update(n.output)
    new_nodes = []
    for node in graph.node:
        if id(node) in replacement:
            new_nodes.append(replacement[id(node)])
        elif id(node) not in claimed:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)


def _scope_base(norm):
    first = norm.nodes[0].name
    prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
    return prefix + norm.op


def _expand(graph, target, taken, pending):
    if not any(n.domain == _PENDING_DOMAIN for n in graph.node):
        return
    new_nodes = []
    for node in graph.node:
        if node.domain != _PENDING_DOMAIN:
            new_nodes.append(node)
            continue
        norm, form = pending[node.name]
        s = Scope(target, unique_scope(_scope_base(norm), taken), taken)
        _emit_norm(s, norm, form)
        new_nodes.extend(s.nodes)
        graph.initializer.extend(s.initializers)
    del graph.node[:]
    graph.node.extend(new_nodes)


def _per_channel(s, value, groups, channels, dtype, hint):
    """GroupNormalization-18's per-group scale/bias repeated to one value per channel."""
    if isinstance(value, _emit.Ref):
        col = s.node("Reshape", [s.cast(value.name, value.dtype, dtype), s.int64s([groups, 1], f"{hint}_col")])
        wide = s.node("Expand", [col, s.int64s([groups, channels // groups], f"{hint}_wide")])
        return _emit.Ref(s.node("Reshape", [wide, s.int64s([channels], f"{hint}_flat")], hint=hint), np.dtype(dtype))
    return np.repeat(np.asarray(value).reshape(groups), channels // groups)


def _emit_norm(s, norm, form):
    dt, x, out, eps = norm.dtype, norm.x, norm.output, norm.eps
    native = form == _opset.NATIVE
    if norm.op == "layer_norm":
        if native:
            _emit.layer_norm_native(s, x, dt, norm.k, norm.normalized_shape(), norm.weight, norm.bias, eps, out,
                                    norm.mean_output, norm.rstd_output)
        else:
            _emit.layer_norm_decomposed(s, x, dt, norm.k, norm.weight, norm.bias, eps, out,
                                        norm.mean_output, norm.rstd_output)
    elif norm.op == "rms_norm":
        if native:
            _emit.rms_norm_native(s, x, dt, norm.k, norm.normalized_shape(), norm.weight, eps, out)
        else:
            _emit.rms_norm_decomposed(s, x, dt, norm.k, norm.weight, eps, out)
    elif norm.op == "group_norm":
        C, G = norm.channels, norm.num_groups
        rest = None if norm.shape is None else norm.shape[2:]
        if native:
            weight, bias = norm.weight, norm.bias
            if norm.per_group:
                weight = _per_channel(s, weight, G, C, dt, "weight")
                bias = _per_channel(s, bias, G, C, dt, "bias")
            _emit.group_norm_native(s, x, dt, C, G, weight, bias, eps, out)
        elif form == _opset.VIA_INSTANCE_NORM:
            _emit.group_norm_via_instance_norm(s, x, dt, C, rest, G, norm.weight, norm.bias, eps, out,
                                               per_group=norm.per_group)
        else:
            _emit.group_norm_decomposed(s, x, dt, C, rest, G, norm.weight, norm.bias, eps, out,
                                        per_group=norm.per_group)
    elif norm.op == "instance_norm":
        if native:
            _emit.instance_norm_native(s, x, dt, norm.channels, norm.weight, norm.bias, eps, out)
        else:
            _emit.instance_norm_decomposed(s, x, dt, norm.rank, norm.weight, norm.bias, eps, out)
    elif norm.op == "batch_norm":
        args = (norm.running_mean, norm.running_var, norm.weight, norm.bias, eps, out)
        if native:
            _emit.batch_norm_native(s, x, dt, norm.channels, *args)
        else:
            _emit.batch_norm_decomposed(s, x, dt, norm.rank, *args)


def _remove_dead(graph, removed_inputs, removed_outputs):
    """Drop what the replaced nodes alone used: constants, and value_info of vanished tensors."""
    for g in iter_graphs(graph):
        used = set()
        for h in iter_graphs(g):
            for node in h.node:
                used.update(node.input)
            used.update(v.name for v in h.output)
        produced = {o for n in g.node for o in n.output} | {v.name for v in g.input}
        produced |= {t.name for t in g.initializer}
        dead = [t for t in g.initializer if t.name in removed_inputs and t.name not in used
                and t.name not in {v.name for v in g.input}]
        for t in dead:
            g.initializer.remove(t)
        dead_nodes = [n for n in g.node if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS
                      and n.output[0] in removed_inputs and n.output[0] not in used]
        for n in dead_nodes:
            g.node.remove(n)
        stale = [v for v in g.value_info if v.name in removed_outputs and v.name not in produced]
        for v in stale:
            g.value_info.remove(v)
