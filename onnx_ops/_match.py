"""Find the normalizations of a graph: native nodes and exporters' decomposed patterns.

Every finder returns a ``Norm`` (what to emit, and which nodes it replaces) or
None. The pattern finders check the whole pattern before accepting it: node
types and their order, that the same tensor flows where it must, the axes,
the constants (exponent 2, all-ones/all-zeros InstanceNormalization
parameters, the [0, G, -1] shape), a positive scalar epsilon, and that no
intermediate result is used outside the pattern (by another node, a subgraph or
as a graph output). Anything else is left alone.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import _opset
from ._emit import Ref
from ._graph import iter_graphs
from ._opset import DEFAULT_DOMAINS as _DEFAULT_DOMAINS



@dataclass
class Norm:
    """One normalization found in a graph, described in the emitters' terms."""

    op: str
    x: str
    output: str
    dtype: np.dtype
    shape: tuple = None  # x's shape (int, str or None entries), None if unknown
    eps: float = 1e-5
    nodes: list = field(default_factory=list)  # nodes it replaces, in graph order
    weight: object = None  # numpy array, Ref or None
    bias: object = None
    k: int = None  # layer_norm / rms_norm: number of normalized trailing axes
    num_groups: int = None
    per_group: bool = False  # GroupNormalization-18: scale and bias of shape (G,)
    running_mean: object = None
    running_var: object = None
    mean_output: str = None  # LayerNormalization's optional outputs
    rstd_output: str = None
    source_version: int = None  # the native operator's version in the source model
    channels: int = None  # C, from x's shape or from a per-channel constant

    @property
    def rank(self):
        return None if self.shape is None else len(self.shape)

    def normalized_shape(self):
        """The trailing k dims of x when all are known ints, else None."""
        if self.shape is None or self.k is None:
            return None
        dims = self.shape[len(self.shape) - self.k:]
        return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def _subgraph_refs(graph):
    """Names a subgraph reads without defining them (outer-scope references)."""
    defined, used = set(), set()
    for g in iter_graphs(graph):
        defined.update(v.name for v in g.input)
        defined.update(t.name for t in g.initializer)
        for node in g.node:
            defined.update(node.output)
            used.update(node.input)
        used.update(v.name for v in g.output)
    return used - defined


class GraphIndex:
    """Producers, consumers and constants of one graph."""

    def __init__(self, graph):
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            # Each consuming node once, also when it reads a name twice (Mul(d, d)).
            reads = {name for name in node.input if name}
            for attribute in node.attribute:
                subs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
                for sub in subs:
                    reads |= _subgraph_refs(sub)
            for name in reads:
                self.consumers[name].append(node)
        self.graph_outputs = {v.name for v in graph.output}
        graph_inputs = {v.name for v in graph.input}
        # Initializers that are also graph inputs can be overridden when the
        # model runs, so they are not constants.
        self.constants = {
            t.name: t for t in graph.initializer if t.name not in graph_inputs
        }
        self.constant_nodes = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and len(node.attribute) == 1:
                self.constant_nodes[node.output[0]] = node

    def const(self, name):
        """The value of a constant tensor (initializer or Constant node), else None."""
        if name in self.constants:
            return numpy_helper.to_array(self.constants[name])
        node = self.constant_nodes.get(name)
        if node is None:
            return None
        attribute = node.attribute[0]
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attribute))
        return None

    def sole_consumer(self, name, op_types):
        """The only consumer of ``name`` if it has one of ``op_types`` and ``name`` is no graph output."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        node = users[0]
        if node.op_type not in op_types or node.domain not in _DEFAULT_DOMAINS:
            return None
        return node

    def private(self, name, allowed):
        """True if ``name`` is used only by the nodes in ``allowed`` and is no graph output."""
        if name in self.graph_outputs:
            return False
        ids = {id(n) for n in allowed}
        return all(id(n) in ids for n in self.consumers.get(name, []))


def get_attr(node, name, default=None):
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scalar(value):
    """A float from a constant with exactly one element, else None."""
    if value is None or value.size != 1 or value.dtype.kind not in "fiu":
        return None
    return float(value.reshape(()))


def reduce_axes(node, index, rank):
    """Normalized (non-negative when rank is known) axes of a keepdims ReduceMean, or None."""
    if get_attr(node, "keepdims", 1) != 1:
        return None
    axes = get_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = index.const(node.input[1])
        if value is None:
            return None
        axes = value.reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        # No axes: all axes (noop_with_empty_axes=1 would mean none; not a norm).
        if get_attr(node, "noop_with_empty_axes", 0) or rank is None:
            return None
        return list(range(rank))
    axes = [int(a) for a in axes]
    if rank is None:
        return sorted(axes) if all(a < 0 for a in axes) else None
    if any(not -rank <= a < rank for a in axes):
        return None
    return sorted(a % rank for a in axes)


def trailing_count(axes, rank):
    """k if ``axes`` are exactly the last k axes, else None."""
    if not axes:
        return None
    k = len(axes)
    want = list(range(-k, 0)) if rank is None else list(range(rank - k, rank))
    return k if axes == want else None


def _other_input(node, name):
    """For a binary node with ``name`` as one input, the other input (or None)."""
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]


def _trailing_param(value, norm):
    """A constant broadcast over the normalized (trailing k) axes only, reshaped to k dims.

    None if it would broadcast over other axes or expand x.
    """
    if value is None or value.dtype != norm.dtype or norm.rank is None:
        return None
    k, rank = norm.k, norm.rank
    if value.ndim > rank:
        return None
    lead = value.shape[: max(0, value.ndim - k)]
    if any(d != 1 for d in lead):
        return None
    tail = (1,) * max(0, k - value.ndim) + value.shape[max(0, value.ndim - k):]
    for have, want in zip(tail, norm.shape[rank - k:]):
        if have != 1 and have != want:
            return None
    return value.reshape(tail)


def _channel_param(value, norm):
    """A constant that varies along axis 1 only (e.g. PyTorch's (C, 1, 1)), as shape (C,)."""
    if value is None or value.dtype != norm.dtype or norm.rank is None:
        return None
    rank, C = norm.rank, norm.shape[1]
    if value.ndim > rank or value.ndim < rank - 1 or value.size != C:
        return None
    aligned = (1,) * (rank - value.ndim) + value.shape
    if aligned[1] != C or any(d != 1 for i, d in enumerate(aligned) if i != 1):
        return None
    return value.reshape(C)


def _affine_tail(index, norm, end, nodes, param_reader, with_bias=True):
    """Extend a match over a following Mul by a weight and an Add of a bias, if present and valid."""
    mul = index.sole_consumer(end, ("Mul",))
    if mul is not None:
        w = param_reader(index.const(_other_input(mul, end) or ""), norm)
        if w is not None:
            norm.weight = w
            nodes.append(mul)
            end = mul.output[0]
    if with_bias:
        add = index.sole_consumer(end, ("Add",))
        if add is not None:
            b = param_reader(index.const(_other_input(add, end) or ""), norm)
            if b is not None:
                norm.bias = b
                nodes.append(add)
                end = add.output[0]
    return end


def _float_info(infos, name):
    info = infos.get(name)
    if info is None or info.dtype not in _opset.FLOAT_DTYPES:
        return None
    return info


def _is_square(node, index, value):
    """Pow(value, 2) or Mul(value, value)."""
    if node.domain not in _DEFAULT_DOMAINS or not node.input or node.input[0] != value:
        return False
    if node.op_type == "Pow":
        return len(node.input) == 2 and _scalar(index.const(node.input[1])) == 2.0
    return node.op_type == "Mul" and list(node.input) == [value, value]


def _eps_of(add, index, value):
    eps = _scalar(index.const(_other_input(add, value) or ""))
    return eps if eps is not None and np.isfinite(eps) and eps > 0 else None


def match_layer_norm(node, index, infos):
    """PyTorch's opset<17 LayerNorm: ReduceMean, Sub, [Cast], Pow, ReduceMean, Add, Sqrt, Div, [Cast], Mul, Add.

    Mul(d, d) is accepted in place of Pow(d, 2) (LayerNormalization's own
    function body squares that way).
    """
    if node.op_type != "ReduceMean" or not node.input:
        return None
    x = node.input[0]
    info = _float_info(infos, x)
    if info is None:
        return None
    axes = reduce_axes(node, index, info.rank)
    k = trailing_count(axes, info.rank)
    if k is None:
        return None
    sub = index.sole_consumer(node.output[0], ("Sub",))
    if sub is None or list(sub.input) != [x, node.output[0]]:
        return None
    centered = sub.output[0]
    nodes = [node, sub]
    cast_in = None
    users = index.consumers.get(centered, [])
    if len(users) == 1 and users[0].op_type == "Cast":
        # Half-precision export: the deviations are upcast for the statistics.
        cast_in = users[0]
        if get_attr(cast_in, "to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) or info.dtype != np.float16:
            return None
        if centered in index.graph_outputs:
            return None
        nodes.append(cast_in)
        centered = cast_in.output[0]
    users = index.consumers.get(centered, [])
    squares = [u for u in users if _is_square(u, index, centered)]
    divs = [u for u in users if u.op_type == "Div" and list(u.input)[:1] == [centered]]
    if len(squares) != 1 or len(divs) != 1 or len(users) != 2 or centered in index.graph_outputs:
        return None
    square, div = squares[0], divs[0]
    rm2 = index.sole_consumer(square.output[0], ("ReduceMean",))
    if rm2 is None or rm2.input[0] != square.output[0] or reduce_axes(rm2, index, info.rank) != axes:
        return None
    add = index.sole_consumer(rm2.output[0], ("Add",))
    eps = None if add is None else _eps_of(add, index, rm2.output[0])
    if eps is None:
        return None
    sqrt = index.sole_consumer(add.output[0], ("Sqrt",))
    if sqrt is None or index.sole_consumer(sqrt.output[0], ("Div",)) is not div or div.input[1] != sqrt.output[0]:
        return None
    nodes += [square, rm2, add, sqrt, div]
    end = div.output[0]
    if cast_in is not None:
        cast_out = index.sole_consumer(end, ("Cast",))
        if cast_out is None or get_attr(cast_out, "to") != _opset.tensor_type(info.dtype):
            return None
        nodes.append(cast_out)
        end = cast_out.output[0]
    norm = Norm("layer_norm", x, end, info.dtype, info.shape, eps, k=k)
    end = _affine_tail(index, norm, end, nodes, _trailing_param)
    norm.output = end
    norm.nodes = nodes
    return norm


def match_group_norm(node, index, infos):
    """PyTorch's GroupNorm: Reshape[0,G,-1], InstanceNormalization(ones, zeros), Reshape(Shape(x)), Mul, Add."""
    if node.op_type != "Reshape" or len(node.input) != 2 or get_attr(node, "allowzero", 0):
        return None
    x = node.input[0]
    info = _float_info(infos, x)
    if info is None or info.rank is None or info.rank < 2 or not isinstance(info.shape[1], int):
        return None
    target = index.const(node.input[1])
    if target is None or target.shape != (3,) or target[0] != 0 or target[2] != -1 or target[1] < 1:
        return None
    G, C = int(target[1]), info.shape[1]
    if C % G:
        return None
    inorm = index.sole_consumer(node.output[0], ("InstanceNormalization",))
    if inorm is None or len(inorm.input) != 3 or inorm.input[0] != node.output[0]:
        return None
    scale, shift = index.const(inorm.input[1]), index.const(inorm.input[2])
    if scale is None or shift is None or scale.shape != (G,) or shift.shape != (G,):
        return None
    if not (np.all(scale == 1) and np.all(shift == 0)):
        return None
    back = index.sole_consumer(inorm.output[0], ("Reshape",))
    if back is None or back.input[0] != inorm.output[0] or get_attr(back, "allowzero", 0):
        return None
    shape_node = index.producer.get(back.input[1])
    if (
        shape_node is None
        or shape_node.op_type != "Shape"
        or list(shape_node.input) != [x]
        or get_attr(shape_node, "start") not in (None, 0)
        or get_attr(shape_node, "end") is not None
        or not index.private(back.input[1], [back])
    ):
        return None
    nodes = [node, inorm, shape_node, back]
    norm = Norm("group_norm", x, back.output[0], info.dtype, info.shape, float(get_attr(inorm, "epsilon", 1e-5)),
                num_groups=G, channels=C)
    end = _affine_tail(index, norm, back.output[0], nodes, _channel_param)
    norm.output = end
    norm.nodes = nodes
    return norm


def _is_centered(name, index):
    """True if ``name`` is a - ReduceMean(a) (possibly Cast): the tail of a LayerNorm pattern.

    Such a chain is a LayerNorm that did not match exactly (an intermediate is
    used elsewhere, say). Fusing its tail into RMSNormalization would be
    correct but would turn half a LayerNorm into an RMSNorm; it is left alone.
    """
    node = index.producer.get(name)
    if node is not None and node.op_type == "Cast":
        node = index.producer.get(node.input[0])
    if node is None or node.op_type != "Sub" or len(node.input) != 2:
        return False
    mean = index.producer.get(node.input[1])
    return mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == node.input[0]


def match_rms_norm(node, index, infos):
    """RMSNorm chains: Pow(x, 2) or Mul(x, x), ReduceMean, Add, Sqrt, then
    Div(x, .) or Reciprocal / Div(1, .) and Mul(x, .), then Mul by a weight."""
    if node.op_type not in ("Pow", "Mul") or not node.input:
        return None
    x = node.input[0]
    info = _float_info(infos, x)
    if info is None or not _is_square(node, index, x) or _is_centered(x, index):
        return None
    rm = index.sole_consumer(node.output[0], ("ReduceMean",))
    if rm is None or rm.input[0] != node.output[0]:
        return None
    axes = reduce_axes(rm, index, info.rank)
    k = trailing_count(axes, info.rank)
    if k is None:
        return None
    add = index.sole_consumer(rm.output[0], ("Add",))
    eps = None if add is None else _eps_of(add, index, rm.output[0])
    if eps is None:
        return None
    sqrt = index.sole_consumer(add.output[0], ("Sqrt",))
    if sqrt is None:
        return None
    nodes = [node, rm, add, sqrt]
    nxt = index.sole_consumer(sqrt.output[0], ("Div", "Reciprocal"))
    if nxt is None:
        return None
    if nxt.op_type == "Div" and list(nxt.input) == [x, sqrt.output[0]]:
        nodes.append(nxt)
    else:
        is_recip = nxt.op_type == "Reciprocal"
        is_one_over = (
            nxt.op_type == "Div" and nxt.input[1] == sqrt.output[0] and _scalar(index.const(nxt.input[0])) == 1.0
        )
        if not (is_recip or is_one_over):
            return None
        mul = index.sole_consumer(nxt.output[0], ("Mul",))
        if mul is None or _other_input(mul, nxt.output[0]) != x:
            return None
        nodes += [nxt, mul]
    norm = Norm("rms_norm", x, nodes[-1].output[0], info.dtype, info.shape, eps, k=k)
    end = _affine_tail(index, norm, nodes[-1].output[0], nodes, _trailing_param, with_bias=False)
    norm.output = end
    norm.nodes = nodes
    return norm


PATTERNS = {
    "layer_norm": match_layer_norm,
    "group_norm": match_group_norm,
    "rms_norm": match_rms_norm,
}


def claim_patterns(graph, index, infos, keep=None):
    """The decomposed patterns of ``graph``, no two sharing a node.

    Matchers are tried in ``PATTERNS`` order over the nodes; a match that
    overlaps one already claimed, or that ``keep(op, norm)`` declines, is
    skipped. Returns ``(claimed, found)``: the ids of the claimed nodes and
    the list of ``(op, norm)``.
    """
    claimed = set()
    found = []
    for op, matcher in PATTERNS.items():
        for node in graph.node:
            if id(node) in claimed or node.domain not in _DEFAULT_DOMAINS:
                continue
            norm = matcher(node, index, infos)
            if norm is None or any(id(n) in claimed for n in norm.nodes):
                continue
            if keep is not None and not keep(op, norm):
                continue
            claimed.update(id(n) for n in norm.nodes)
            found.append((op, norm))
    return claimed, found


# ------------------------------------------------------------ native nodes

NATIVE_OPS = {v: k for k, v in _opset.NATIVE_OP_TYPE.items()}


def _operand(index, infos, name):
    """A node input as an emitter operand: constant array, Ref, or None if absent."""
    if not name:
        return None
    value = index.const(name)
    if value is not None:
        return value
    info = infos.get(name)
    return Ref(name, None if info is None else info.dtype)


def read_native(node, index, infos, source_opset):
    """A native normalization node as a Norm; None for nodes ``convert`` leaves alone.

    BatchNormalization in training mode is not a rewrite candidate: it is left
    to onnx.version_converter with the rest of the model.
    """
    op = NATIVE_OPS.get(node.op_type)
    if op is None or node.domain not in _DEFAULT_DOMAINS:
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, source_opset)
    except onnx.defs.SchemaError:
        raise ValueError(
            f"{_where(node)}: the model's opset {source_opset} has no {node.op_type} "
            "(the model is invalid; onnx.checker.check_model tells more)"
        ) from None
    version = schema.since_version
    if (op == "batch_norm" and version < 9) or (op == "instance_norm" and version < 6):
        return None  # pre-opset-9 BatchNormalization has other semantics (spatial, is_test)
    _check_required_inputs(node, schema)
    x = node.input[0]
    info = infos.get(x)
    dtype = None if info is None else info.dtype
    shape = None if info is None else info.shape
    outputs = list(node.output) + [""] * 3
    norm = Norm(op, x, outputs[0], dtype, shape, float(get_attr(node, "epsilon", 1e-5)), nodes=[node],
                source_version=version)
    if op == "layer_norm":
        axis = int(get_attr(node, "axis", -1))
        if axis < 0:
            norm.k = -axis
        elif norm.rank is not None:
            norm.k = norm.rank - axis
        norm.weight = _operand(index, infos, node.input[1])
        norm.bias = _operand(index, infos, node.input[2] if len(node.input) > 2 else "")
        norm.mean_output, norm.rstd_output = outputs[1] or None, outputs[2] or None
    elif op == "rms_norm":
        axis = int(get_attr(node, "axis", -1))
        norm.k = -axis if axis < 0 else (None if norm.rank is None else norm.rank - axis)
        norm.weight = _operand(index, infos, node.input[1])
    elif op == "group_norm":
        groups = get_attr(node, "num_groups")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{_where(node)}: num_groups must be a positive int, got {groups!r}")
        norm.num_groups = groups
        norm.per_group = version == 18
        norm.weight = _operand(index, infos, node.input[1])
        norm.bias = _operand(index, infos, node.input[2])
    elif op == "instance_norm":
        norm.weight = _operand(index, infos, node.input[1])
        norm.bias = _operand(index, infos, node.input[2])
    elif op == "batch_norm":
        if get_attr(node, "training_mode", 0) or any(outputs[1:]):
            return None
        norm.weight = _operand(index, infos, node.input[1])
        norm.bias = _operand(index, infos, node.input[2])
        norm.running_mean = _operand(index, infos, node.input[3])
        norm.running_var = _operand(index, infos, node.input[4])
    _check_operand_shapes(node, schema, norm, infos)
    if op in ("group_norm", "instance_norm", "batch_norm"):
        norm.channels = _channels(norm)
    return norm


def _where(node):
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def _check_required_inputs(node, schema):
    """Every input the operator requires is present (a name, not "")."""
    for i, param in enumerate(schema.inputs[: schema.min_input]):
        if i >= len(node.input) or not node.input[i]:
            raise ValueError(
                f"{_where(node)}: its required input {i} ({param.name}) is missing; "
                f"{node.op_type}-{schema.since_version} takes {schema.min_input} to {schema.max_input} "
                f"inputs, the node has {list(node.input)}"
            )


def _operand_shape(value, infos):
    """The shape of a constant or of a Ref (entries int, str or None), None if unknown."""
    if isinstance(value, np.ndarray):
        return value.shape
    if isinstance(value, Ref):
        info = infos.get(value.name)
        return None if info is None else info.shape
    return None


def _dims_agree(have, want):
    return not (isinstance(have, int) and isinstance(want, int)) or have == want


def _check_operand_shapes(node, schema, norm, infos):
    """Raise if a weight, bias or running statistic cannot have the shape the operator needs.

    Only what is known is checked: a symbolic or unknown dim agrees with
    anything. The emitters reshape these operands (to (C, 1, ...) or
    (G, C/G, 1)), so a wrong size would otherwise surface there as a numpy
    reshape error, or silently as a model that fails when it runs.
    """
    named = [(norm.weight, 1), (norm.bias, 2), (norm.running_mean, 3), (norm.running_var, 4)]
    operands = [(i, value) for value, i in named if value is not None]
    x_shape = "unknown" if norm.shape is None else tuple(norm.shape)

    def fail(i, shape, expected):
        raise ValueError(
            f"{_where(node)}: input {i} ({schema.inputs[i].name}, tensor {node.input[i]!r}) has shape {tuple(shape)}, "
            f"expected {expected}; input 0 ({node.input[0]!r}) has shape {x_shape}"
        )

    if norm.op in ("layer_norm", "rms_norm"):
        axis = int(get_attr(node, "axis", -1))
        rank = norm.rank
        if rank is not None and not -rank <= axis < rank:
            raise ValueError(f"{_where(node)}: axis={axis} is out of range for input 0 of shape {x_shape}")
        if rank is None:
            return
        k = norm.k
        normalized = tuple(norm.shape[rank - k:])
        for i, value in operands:
            shape = _operand_shape(value, infos)
            if shape is None:
                continue
            lead = shape[: max(0, len(shape) - k)]
            tail = shape[max(0, len(shape) - k):]
            ok = len(shape) <= rank and all(d == 1 for d in lead if isinstance(d, int))
            ok = ok and all(d == 1 or _dims_agree(d, w) for d, w in zip(tail, normalized[k - len(tail):]))
            if not ok:
                fail(i, shape, f"the normalized shape {normalized} (axis={axis}) or a shape broadcasting to it")
        return

    channels = norm.shape[1] if norm.rank is not None and norm.rank >= 2 else None
    channels = channels if isinstance(channels, int) else None
    if norm.rank is not None and norm.rank < 2:
        raise ValueError(f"{_where(node)}: input 0 has shape {x_shape}; (N, C, ...) with rank >= 2 is needed")
    G = norm.num_groups
    if norm.op == "group_norm" and isinstance(channels, int) and channels % G:
        raise ValueError(
            f"{_where(node)}: num_groups={G} does not divide the {channels} channels of input 0 (shape {x_shape})"
        )
    # GroupNormalization-18 has one scale and bias per group, the others one per channel.
    size, unit = (G, "one per group") if norm.per_group else (channels, "one per channel")
    for i, value in operands:
        shape = _operand_shape(value, infos)
        if shape is None:
            continue
        want = "C" if size is None else size
        if len(shape) != 1 or not _dims_agree(shape[0], size):
            fail(i, shape, f"({want},) ({unit})")
        if size is None and isinstance(shape[0], int):
            size = shape[0]  # unknown C: the first known operand fixes it for the others


def _channels(norm):
    """C from x's shape, else from the size of a per-channel constant."""
    if norm.rank is not None and norm.rank >= 2 and isinstance(norm.shape[1], int):
        return norm.shape[1]
    if norm.per_group:
        return None
    for value in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
        if isinstance(value, np.ndarray):
            return int(value.size)
    return None
