"""Reading and writing model files defensively.

``load_model`` turns every way a file can fail to be a usable model (missing,
empty, truncated, another format, invalid, an opset outside the supported
range, external data outside the model's folder) into one ``ValueError`` that
names the file and the reason. ``save_model`` writes through a temporary file
in the destination folder and renames it into place, so a failure never
leaves a partial model behind. Neither ever writes to the file it reads.
"""

import os
import uuid

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ._opset import DEFAULT_DOMAINS as _DEFAULT_DOMAINS, MAX_OPSET, MIN_OPSET

# protobuf cannot serialize a message of 2 GiB or more.
_MAX_PROTO_BYTES = 2**31 - 1


def load_model(path, *, any_opset=False):
    """Read an ONNX model file, check it, and load its external data.

    Parameters
    ----------
    path : str or os.PathLike
        A binary (protobuf) ``.onnx`` file. Tensors stored as external data
        must live in files inside the model's folder.
    any_opset : bool
        Accept any default-domain opset, not only ``MIN_OPSET..MAX_OPSET``
        (for reading a model, e.g. to run it, rather than converting it).

    Returns
    -------
    onnx.ModelProto
        The model with its external data loaded into memory.

    Raises
    ------
    ValueError
        The path is missing, a directory or not a regular file; the file is
        empty, truncated or not an ONNX model; ``onnx.checker.check_model``
        rejects it; its default-domain opset is missing or outside
        ``MIN_OPSET..MAX_OPSET``; an external data location is absolute,
        leaves the model's folder (``..``, a symlink) or cannot be read. The
        message names the path and, for external data, the tensor and its
        location.
    """
    path = os.fspath(path)
    where = f"cannot load ONNX model {path!r}"
    if not os.path.lexists(path):
        raise ValueError(f"{where}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{where}: it is a directory")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: not a regular file (a broken symlink, a device or a pipe)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc}") from exc
    if not data:
        raise ValueError(f"{where}: the file is empty")

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise ValueError(
            f"{where}: not an ONNX model, or a truncated one (protobuf could not parse it: {exc})") from exc
    del data
    # Bytes that happen to parse as protobuf are not yet a model.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        missing = [name for name, ok in (("ir_version", model.ir_version > 0), ("graph", model.HasField("graph")),
                                          ("opset_import", bool(model.opset_import))) if not ok]
        raise ValueError(f"{where}: not an ONNX model, or a truncated one (no {', '.join(missing)})")

    opset = _default_opset(model, where, any_opset)
    base_dir = os.path.dirname(os.path.abspath(path))
    external = [t for t in _all_tensors(model) if t.data_location == TensorProto.EXTERNAL]
    # Every location is checked before any file is opened.
    targets = [_check_location(tensor, base_dir, where) for tensor in external]
    for tensor, target in zip(external, targets):
        _load_external(tensor, target, where)
    # protobuf cannot serialize 2 GiB for the in-memory checker; the path
    # form reads the file again and checks the external data files itself.
    try:
        onnx.checker.check_model(model if model.ByteSize() <= _MAX_PROTO_BYTES else path)
    except Exception as exc:  # the checker raises ValidationError, SchemaError, and C++ errors as others
        if "is deprecated in domain_version" not in str(exc):
            raise ValueError(
                f"{where}: onnx.checker.check_model rejects it (opset {opset}): {exc}") from exc
    return model


def save_model(model, path, *, protect=()):
    """Write ``model`` to ``path`` atomically.

    The model is serialized to a temporary file in the destination folder,
    flushed to disk and renamed over ``path``: readers see either the old
    file or the complete new one, and on any error the temporary file is
    removed and ``path`` is left as it was. An existing file keeps its
    permissions.

    Parameters
    ----------
    model : onnx.ModelProto
    path : str or os.PathLike
    protect : str, os.PathLike or an iterable of them
        Files that must not be overwritten, typically the model that was
        loaded (and its external data files):
        ``save_model(m, out, protect=in_path)``. Compared as files
        (the same file under another name or through a symlink is refused).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        ``model`` is not an ``onnx.ModelProto``.
    ValueError
        ``path`` is a protected file, a directory, or in a folder that does
        not exist; the model cannot be serialized (2 GiB or more: use
        ``onnx.save_model`` with ``save_as_external_data=True``); writing
        failed (the message includes the OS error).
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__}")
    path = os.fspath(path)
    where = f"cannot save the ONNX model to {path!r}"
    if isinstance(protect, (str, bytes, os.PathLike)):
        protect = [protect]
    for p in protect:
        if _same_file(path, os.fspath(p)):
            raise ValueError(f"{where}: it is {os.fspath(p)!r}, which must not be overwritten")
    if os.path.isdir(path):
        raise ValueError(f"{where}: it is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{where}: the folder {folder!r} does not exist")
    try:
        data = model.SerializeToString()
    except Exception as exc:  # protobuf's own types (EncodeError, ValueError), e.g. over 2 GiB
        raise ValueError(
            f"{where}: the model cannot be serialized ({exc}); a model of 2 GiB or more must be saved "
            "with onnx.save_model(..., save_as_external_data=True)") from exc

    exists = os.path.exists(path)
    mode = os.stat(path).st_mode & 0o7777 if exists else 0o666  # a new file: 0o666 narrowed by the umask
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc}") from exc
    try:
        with open(fd, "wb") as f:
            if exists:
                os.fchmod(f.fileno(), mode)  # the umask applied at creation must not narrow it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ValueError(f"{where}: {exc.strerror or exc}") from exc
        raise
    _fsync_dir(folder)


def _default_opset(model, where, any_opset=False):
    versions = [imp.version for imp in model.opset_import if imp.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ValueError(f"{where}: it has no default-domain ('' / 'ai.onnx') opset import")
    opset = int(versions[0])
    if not any_opset and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"{where}: its default-domain opset is {opset}, outside the supported range "
            f"{MIN_OPSET}..{MAX_OPSET}")
    return opset


def _location(tensor):
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def _check_location(tensor, base_dir, where):
    """Refuse an external data location that is not a file inside ``base_dir``."""
    location = _location(tensor)
    what = f"{where}: tensor {tensor.name!r} has external data location {location!r}"
    if not location:
        raise ValueError(f"{where}: tensor {tensor.name!r} is stored as external data but has no location")
    if "\0" in location:
        raise ValueError(f"{what}, which contains a NUL character")
    if os.path.isabs(location) or os.path.splitdrive(location)[0]:
        raise ValueError(f"{what}: an absolute path; external data must be inside the model's folder {base_dir!r}")
    root = os.path.realpath(base_dir)
    target = os.path.realpath(os.path.join(base_dir, location))
    if os.path.commonpath([root, target]) != root:
        raise ValueError(f"{what}, which resolves to {target!r}, outside the model's folder {root!r}")
    if not os.path.isfile(target):
        raise ValueError(f"{what}: no such file in the model's folder {root!r}")
    return target


def _load_external(tensor, target, where):
    """Read a tensor's bytes from ``target`` (its checked, resolved location) into raw_data.

    Read here rather than by onnx.external_data_helper, which refuses any
    symlink, also one that stays inside the model's folder.
    """
    fields = {entry.key: entry.value for entry in tensor.external_data}
    what = f"{where}: tensor {tensor.name!r} (external data {fields.get('location')!r})"
    try:
        offset = int(fields.get("offset", 0))
        length = None if "length" not in fields else int(fields["length"])
    except ValueError:
        raise ValueError(f"{what} has a non-integer offset or length: {fields}") from None
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"{what} has a negative offset or length: {fields}")
    try:
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if length is None:
                length = max(0, size - offset)
            if offset + length > size:
                raise ValueError(
                    f"{what}: offset {offset} + length {length} is past the end of the file ({size} bytes)")
            f.seek(offset)
            data = f.read(length)
    except OSError as exc:
        raise ValueError(f"{what}: {exc.strerror or exc}") from exc
    tensor.raw_data = data
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]


def _all_tensors(model):
    """Every TensorProto of the model: initializers, sparse initializers and
    attribute tensors, in the graph, its subgraphs and the model's functions."""

    def from_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                for st in attr.sparse_tensors:
                    yield st.values
                    yield st.indices
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for g in attr.graphs:
                    yield from from_graph(g)

    def from_graph(graph):
        yield from graph.initializer
        for st in graph.sparse_initializer:
            yield st.values
            yield st.indices
        yield from from_nodes(graph.node)

    yield from from_graph(model.graph)
    for function in model.functions:
        yield from from_nodes(function.node)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
