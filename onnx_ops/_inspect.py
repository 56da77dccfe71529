"""Read-only inspection of a model's normalizations, for tools that check models.

``find_normalizations`` reports what ``convert`` would see in the main graph
(native normalization nodes and the exporters' decomposed patterns), without
rewriting anything.
"""

import onnx

from ._convert import _default_opset, _tensor_infos
from ._graph import iter_graphs
from ._match import GraphIndex, claim_patterns, read_native
from ._opset import NATIVE_OP_TYPE
from ._opset import DEFAULT_DOMAINS as _DEFAULT_DOMAINS



def tensor_infos(model):
    """dtype and shape of every tensor of ``model`` that it declares or ONNX
    shape inference can tell, in every (sub)graph.

    Returns
    -------
    dict of str to onnx_ops._graph.TensorInfo
        ``.dtype`` (numpy dtype), ``.shape`` (int, str or None entries, or
        None) and ``.elem_type`` (the ONNX element type).
    """
    return _tensor_infos(model)


def find_normalizations(model, infos=None):
    """The normalizations of ``model``'s main graph, in graph order.

    Parameters
    ----------
    model : onnx.ModelProto
    infos : dict, optional
        The result of :func:`tensor_infos`, when the caller already has it.

    Returns
    -------
    list of (onnx_ops._match.Norm, str)
        Each normalization with its kind: ``"native"`` for a
        LayerNormalization, GroupNormalization, InstanceNormalization,
        BatchNormalization (inference mode) or RMSNormalization node,
        ``"pattern"`` for a decomposed chain that ``onnx_ops.convert`` would
        fuse (PyTorch's LayerNorm and GroupNorm exports, RMSNorm chains). A
        node belongs to at most one normalization: the InstanceNormalization
        inside PyTorch's GroupNorm pattern is part of the pattern. The Norm's
        ``x`` and ``output`` are the input and output tensor names; its
        parameters are numpy arrays (constants), ``onnx_ops._emit.Ref``
        (tensors computed or fed at run time) or None.

    Raises
    ------
    TypeError
        ``model`` is not a ModelProto.
    ValueError
        The model has no default-domain opset import, or a native
        normalization node is invalid (a missing input, a parameter of the
        wrong shape).

    Notes
    -----
    Normalizations inside If/Loop/Scan bodies and model-local functions are
    not reported; :func:`count_nested_normalizations` counts the native ones.
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__}")
    source = _default_opset(model)
    infos = _tensor_infos(model) if infos is None else infos
    graph = model.graph
    index = GraphIndex(graph)
    position = {id(node): i for i, node in enumerate(graph.node)}
    claimed, patterns = claim_patterns(graph, index, infos)
    found = [(norm, "pattern") for _, norm in patterns]
    for node in graph.node:
        if id(node) in claimed:
            continue
        norm = read_native(node, index, infos, source)
        if norm is not None:
            found.append((norm, "native"))
    found.sort(key=lambda item: min(position[id(n)] for n in item[0].nodes))
    return found


def count_nested_normalizations(model):
    """Count the native normalization nodes :func:`find_normalizations` skips.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    int
        The LayerNormalization, GroupNormalization, InstanceNormalization,
        BatchNormalization and RMSNormalization nodes inside subgraphs
        (If/Loop/Scan bodies) and model-local functions.
    """
    op_types = set(NATIVE_OP_TYPE.values())

    def is_norm(node):
        return node.op_type in op_types and node.domain in _DEFAULT_DOMAINS

    count = sum(is_norm(n) for g in list(iter_graphs(model.graph))[1:] for n in g.node)
    for function in model.functions:
        for node in function.node:
            count += is_norm(node)
            for attr in node.attribute:
                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                count += sum(is_norm(n) for sub in subgraphs for g in iter_graphs(sub) for n in g.node)
    return count
