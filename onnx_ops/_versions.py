"""Bring the nodes ``convert`` does not rewrite to the target opset.

onnx.version_converter does this, but it has no downgrade adapter for many
operators whose newer version only added types or optional attributes (for
example Add, Mul, Reshape 14 -> 13 and Pow, Shape 15 -> 14), so it fails on
almost any model going down to opset 13. Such a node is still valid at the
older version when it uses none of the additions; it keeps its meaning since
the upgrade was declared compatible. Those nodes are "restamped": hidden from
the converter in a private domain and given back unchanged. Everything else
goes through the converter.
"""

import onnx
from onnx import helper

from ._graph import iter_graphs
from ._opset import DEFAULT_DOMAINS as _DEFAULT_DOMAINS

_HIDDEN_DOMAIN = "onnx_ops.restamped"

# Operator versions (since_version) whose change from the previous version is
# registered as a CompatibleAdapter in onnx/version_converter/convert.h (the
# new version only adds types, optional attributes or optional inputs, with
# defaults meaning the old behaviour). Operators whose new version added
# attribute *values* (Resize modes, Pad's "wrap") are left out: the
# converter's own adapters handle those. If, Loop and Scan are restamped only
# when nothing in their bodies needs the converter, which does not look
# inside the bodies of nodes it does not know.
_COMPATIBLE_SINCE = {
    14: {"Add", "CumSum", "Div", "Identity", "Mul", "Relu", "Reshape", "Sub"},
    15: {"Pow", "Shape"},
    16: {"Identity", "Where", "LessOrEqual", "GreaterOrEqual", "LeakyRelu", "PRelu", "If", "Loop", "Scan"},
    19: {"Equal", "AveragePool", "Cast", "CastLike", "Constant", "Identity", "Reshape", "Shape", "Size", "If",
         "Loop", "Scan"},
    20: {"ConstantOfShape", "IsInf", "IsNaN", "ReduceMax", "ReduceMin"},
    21: {"Cast", "CastLike", "Constant", "ConstantOfShape", "Flatten", "Identity", "Reshape", "Shape", "Size",
         "Squeeze", "Transpose", "Unsqueeze", "If", "Loop", "Scan"},
    22: {"EyeLike", "ThresholdedRelu", "Selu", "Elu", "Mish", "HardSigmoid", "HardSwish", "Softsign", "Softplus",
         "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Round", "Det",
         "AveragePool", "MaxPool", "MaxUnpool", "LpPool", "MaxRoiPool", "Conv", "ConvTranspose", "DeformConv",
         "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "LpNormalization", "Dropout", "RNN", "GRU",
         "LSTM"},
    23: {"Cast", "CastLike", "Constant", "ConstantOfShape", "Flatten", "Identity", "Reshape", "Shape", "Size",
         "Squeeze", "Transpose", "Unsqueeze", "If", "Loop", "Scan"},
}


def _since(op_type, opset):
    return onnx.defs.get_schema(op_type, opset).since_version


def _history(op_type, lo, hi):
    """The since_versions of ``op_type`` in (lo, hi]."""
    out = set()
    for v in range(lo + 1, hi + 1):
        try:
            out.add(_since(op_type, v))
        except onnx.defs.SchemaError:
            return None
    return {s for s in out if s > lo}


def _types_allowed(schema, params, names, infos):
    """True if every tensor in ``names`` has a type allowed by ``params`` of ``schema``."""
    constraints = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
    for i, name in enumerate(names):
        if not name:
            continue
        if i < len(params):
            param = params[i]
        elif params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            param = params[-1]
        else:
            return False
        info = infos.get(name)
        if info is None or info.elem_type is None:
            return False
        type_str = f"tensor({onnx.TensorProto.DataType.Name(info.elem_type).lower()})"
        allowed = constraints.get(param.type_str, {param.type_str})
        if type_str not in allowed:
            return False
    return True


def restampable(node, infos, source, target):
    """True if ``node`` is valid, with the same meaning, at ``target`` as it is."""
    try:
        before, after = _since(node.op_type, source), _since(node.op_type, target)
    except onnx.defs.SchemaError:
        return False
    if before == after:
        return True
    lo, hi = min(source, target), max(source, target)
    changes = _history(node.op_type, lo, hi)
    if changes is None or any(node.op_type not in _COMPATIBLE_SINCE.get(v, ()) for v in changes):
        return False
    schema = onnx.defs.get_schema(node.op_type, target)
    if any(a.name not in schema.attributes for a in node.attribute if not _is_new_default(node, a, source)):
        return False
    if not schema.min_input <= len(node.input) <= schema.max_input:
        return False
    if not schema.min_output <= len(node.output) <= schema.max_output:
        return False
    if not (_types_allowed(schema, schema.inputs, node.input, infos)
            and _types_allowed(schema, schema.outputs, node.output, infos)):
        return False
    return all(
        restampable(inner, infos, source, target)
        for attribute in node.attribute
        for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs)
        for g in iter_graphs(body)
        for inner in g.node
        if inner.domain in _DEFAULT_DOMAINS
    )


def _is_new_default(node, attribute, source):
    """True if ``attribute`` is set to the default value it has in the source schema.

    An attribute that an older version lacks but that is set to its default
    (e.g. Reshape's allowzero=0, which exporters write out) asks for the old
    behaviour and can be dropped.
    """
    spec = onnx.defs.get_schema(node.op_type, source).attributes.get(attribute.name)
    if spec is None or not spec.default_value.name:
        return False
    return helper.get_attribute_value(spec.default_value) == helper.get_attribute_value(attribute)


def _drop_new_defaults(node, source, target):
    schema = onnx.defs.get_schema(node.op_type, target)
    extra = [a for a in node.attribute if a.name not in schema.attributes and _is_new_default(node, a, source)]
    for a in extra:
        node.attribute.remove(a)


def _needs_change(node, source, target):
    try:
        return _since(node.op_type, source) != _since(node.op_type, target)
    except onnx.defs.SchemaError:
        return True


def convert_rest(model, source, target, infos):
    """Bring every default-domain node of ``model`` to ``target``; return the model.

    Raises ValueError when onnx.version_converter is needed and fails.
    """
    if source == target:
        return model
    for g in iter_graphs(model.graph):
        for node in g.node:
            if node.domain in _DEFAULT_DOMAINS and _needs_change(node, source, target):
                if restampable(node, infos, source, target):
                    _drop_new_defaults(node, source, target)
                    node.domain = _HIDDEN_DOMAIN
    remaining = [
        n.op_type
        for g in iter_graphs(model.graph)
        for n in g.node
        if n.domain in _DEFAULT_DOMAINS and _needs_change(n, source, target)
    ]
    if remaining:
        model.opset_import.append(helper.make_opsetid(_HIDDEN_DOMAIN, 1))
        try:
            model = onnx.version_converter.convert_version(model, target)
        except Exception as exc:  # the converter raises several exception types
            raise ValueError(
                f"onnx.version_converter could not convert {sorted(set(remaining))} from opset "
                f"{source} to {target}: {exc}"
            ) from exc
        kept = [imp for imp in model.opset_import if imp.domain != _HIDDEN_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    else:
        for imp in model.opset_import:
            if imp.domain in _DEFAULT_DOMAINS:
                imp.version = target
    for g in iter_graphs(model.graph):
        for node in g.node:
            if node.domain == _HIDDEN_DOMAIN:
                node.domain = ""
    return model
