"""Graph plumbing: unique names, a node collector, and tensor types.

``Scope`` collects the nodes and initializers of one normalization. It hands
out unique names under a user-given prefix and knows the target opset, so the
emitters never spell a name or an opset-dependent form by hand. It does not
touch the graph: the caller decides where the collected nodes go (appended by
the public builders, spliced in place by ``convert``).

``TensorInfo`` / ``lookup_tensor`` tell the dtype and shape of a tensor from
what a graph declares, falling back to ONNX shape inference.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import _opset


def iter_graphs(graph):
    """Yield ``graph`` and all its subgraphs (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def graph_names(graph):
    """Every node and tensor name used in ``graph`` and its subgraphs."""
    names = set()
    for g in iter_graphs(graph):
        names.update(v.name for v in g.input)
        names.update(v.name for v in g.output)
        names.update(v.name for v in g.value_info)
        names.update(t.name for t in g.initializer)
        names.update(t.name for t in g.sparse_initializer if t.values.name)
        for node in g.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def unique_scope(base, taken):
    """``base``, or ``base_1``, ``base_2``... so that no taken name is it or starts with ``scope/``."""

    def free(candidate):
        stem = candidate + "/"
        return candidate not in taken and not any(n.startswith(stem) for n in taken)

    if free(base):
        return base
    i = 1
    while not free(f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


class Scope:
    """Collects the nodes and initializers of one normalization under a name prefix.

    Parameters
    ----------
    opset : int
        Default-domain opset the nodes are written for.
    prefix : str
        Unique prefix; every node and new tensor is named ``prefix/...``.
    taken : set of str
        Names already used in the model; updated as names are handed out.
    """

    def __init__(self, opset, prefix, taken):
        self.opset = opset
        self.prefix = prefix
        self.taken = taken
        self.nodes = []
        self.initializers = []

    def fresh(self, hint):
        name = f"{self.prefix}/{hint}"
        i = 1
        while name in self.taken:
            name = f"{self.prefix}/{hint}_{i}"
            i += 1
        self.taken.add(name)
        return name

    def node(self, op_type, inputs, *, hint=None, outputs=None, **attrs):
        """Append one node; return its output name (or the list, if ``outputs`` is a list)."""
        single = outputs is None or isinstance(outputs, str)
        if outputs is None:
            outputs = [self.fresh(hint or op_type)]
        elif isinstance(outputs, str):
            outputs = [outputs]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(op_type), **attrs))
        return outputs[0] if single else list(outputs)

    def finish(self, value, output):
        """Make the tensor ``value`` appear under the name ``output``.

        Renames the output of the node that produced ``value`` when this scope
        made it (the usual case: no extra node), else adds an Identity.
        """
        if value == output:
            return output
        for node in reversed(self.nodes):
            if value in node.output:
                consumers = [n for n in self.nodes if value in n.input]
                if not consumers:
                    node.output[list(node.output).index(value)] = output
                    self.taken.discard(value)
                    return output
                break
        return self.node("Identity", [value], outputs=output)

    def const(self, value, dtype, hint):
        """A constant tensor (initializer) holding ``value`` converted to ``dtype``."""
        array = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def int64s(self, values, hint):
        return self.const(np.asarray(values, dtype=np.int64), np.int64, hint)

    def cast(self, x, from_dtype, to_dtype, hint=None):
        if np.dtype(from_dtype) == np.dtype(to_dtype):
            return x
        return self.node("Cast", [x], hint=hint or f"{x.rsplit('/', 1)[-1]}_cast", to=_opset.tensor_type(to_dtype))

    def reduce_mean(self, x, axes, hint):
        """ReduceMean with keepdims=1, in the form ``self.opset`` requires."""
        axes = [int(a) for a in axes]
        if _opset.reduce_axes_as_input(self.opset):
            return self.node("ReduceMean", [x, self.int64s(axes, "axes")], hint=hint, keepdims=1)
        return self.node("ReduceMean", [x], hint=hint, axes=axes, keepdims=1)


class TensorInfo:
    """dtype and shape of a tensor; shape entries are int, str (symbolic) or None."""

    def __init__(self, dtype, shape, elem_type=None):
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.shape = None if shape is None else tuple(shape)
        self.elem_type = elem_type if elem_type is not None else (
            None if dtype is None else helper.np_dtype_to_tensor_dtype(self.dtype)
        )

    @property
    def rank(self):
        return None if self.shape is None else len(self.shape)

    def __repr__(self):
        return f"TensorInfo({self.dtype}, {self.shape})"


def _info_from_type(tp):
    if not tp.HasField("tensor_type"):
        return None
    tt = tp.tensor_type
    if tt.elem_type == TensorProto.UNDEFINED:
        return None
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
    except (KeyError, ValueError):
        return None
    shape = None
    if tt.HasField("shape"):
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
    return TensorInfo(dtype, shape, tt.elem_type)


def collect_tensor_infos(graph, infos=None):
    """Map tensor name -> TensorInfo from inputs, outputs, value_info, initializers."""
    infos = {} if infos is None else infos
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        info = _info_from_type(vi.type)
        if info is not None:
            infos[vi.name] = info
    for t in graph.initializer:
        infos[t.name] = TensorInfo(helper.tensor_dtype_to_np_dtype(t.data_type), list(t.dims), t.data_type)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _opset.DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    infos[node.output[0]] = TensorInfo(
                        helper.tensor_dtype_to_np_dtype(attr.t.data_type), list(attr.t.dims), attr.t.data_type
                    )
    return infos


def lookup_tensor(graph, name, opset):
    """dtype and shape of ``name`` in a graph under construction.

    Looks at the graph's inputs, value_info, outputs and initializers first and
    falls back to ONNX shape inference on a copy of the graph.
    """
    info = collect_tensor_infos(graph).get(name)
    if info is None or info.shape is None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # inference is only a fallback; the error below explains what to do
            inferred = None
        if inferred is not None:
            found = collect_tensor_infos(inferred.graph).get(name)
            if found is not None and (info is None or found.shape is not None):
                info = found
    if info is None or info.shape is None:
        raise ValueError(
            f"cannot determine the dtype and shape of {name!r}: declare it, e.g. "
            f"graph.value_info.append(onnx.helper.make_tensor_value_info({name!r}, "
            "onnx.TensorProto.FLOAT, [shape]))"
        )
    return info
