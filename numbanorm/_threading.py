"""Which numba threading layer the parallel kernels use, and the guards
that keep every layer safe inside a host process.

numba picks its threading layer at the first parallel launch, from
``numba.config.THREADING_LAYER`` (default: the first that loads of tbb,
omp, workqueue). The layers differ in what they survive:

=========  ==========================  ===================================
layer      fork after a parallel call  parallel calls from many threads
=========  ==========================  ===================================
tbb        safe                        safe
omp (GNU)  the child is killed at its  safe
           first parallel launch
workqueue  safe                        the process aborts
=========  ==========================  ===================================

So, in order:

1. ``auto`` (the default) makes tbb loadable and lets numba prefer it.
   The ``tbb`` wheel installs ``libtbb.so.12`` into the environment's
   ``lib`` folder, where the dynamic loader of a plain virtual environment
   does not look; loading it by path, globally, before numba's first
   launch is enough for numba's own ``tbbpool`` module to link.
2. If the layer in use turns out to be omp, a process forked after a
   parallel call runs the serial builds (same results, one thread).
3. If it is workqueue, at most one thread at a time launches a parallel
   kernel; the others run the serial builds instead of waiting.

Before the first launch the layer is unknown, so that launch is treated
as if it were workqueue.

Overrides, in this order of precedence: :func:`set_threading`, the
environment variable ``NUMBANORM_THREADING`` (``auto``, ``serial``, or a
layer name ``tbb``, ``omp``, ``workqueue``), then ``NUMBA_THREADING_LAYER``
if the user set it (numbanorm still makes tbb loadable for it).
"""

import ctypes
import glob
import os
import sys
import threading

import numba

MODES = ("auto", "serial", "tbb", "omp", "workqueue")
_LAYERS = ("tbb", "omp", "workqueue")

_state = {
    "mode": "auto",
    "requested": None,      # the layer asked of numba, None: numba's choice
    "tbb_library": None,    # path of the libtbb loaded by numbanorm
    "layer": None,          # the layer numba started, once known
    "forked_omp": False,    # this process is a fork of an omp user
}
_launch_lock = threading.Lock()


def _tbb_candidates():
    names = ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll")
    roots = [sys.prefix, sys.base_prefix, getattr(sys, "exec_prefix", "")]
    for root in dict.fromkeys(r for r in roots if r):
        for sub in ("lib", "Library/bin", "bin"):
            for name in names:
                yield os.path.join(root, sub, name)
    try:  # a tbb wheel installed with --user or --target
        from importlib import metadata

        for f in metadata.files("tbb") or ():
            if os.path.basename(str(f)) in names:
                yield str(f.locate())
    except Exception:  # no tbb distribution, or unreadable metadata
        pass
    yield from sorted(glob.glob(os.path.join(sys.prefix, "lib*", "libtbb.so.1*")))


def _load_tbb():
    """Load libtbb globally so numba's tbbpool links; returns its path or
    None. Never raises: without tbb, numba falls back to omp/workqueue."""
    if _state["tbb_library"]:
        return _state["tbb_library"]
    try:
        import numba.np.ufunc.tbbpool  # noqa: F401  already loadable
        _state["tbb_library"] = "(found by the system loader)"
        return _state["tbb_library"]
    except ImportError:
        pass
    for path in _tbb_candidates():
        if not os.path.isfile(path):
            continue
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            import numba.np.ufunc.tbbpool  # noqa: F401
        except (OSError, ImportError):
            continue
        _state["tbb_library"] = path
        return path
    return None


def _started_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel launch yet in this process
        return None


def configure(mode=None):
    """Apply ``mode`` (or the environment's choice) before numba's first
    parallel launch. Called once on import."""
    if mode is None:
        mode = os.environ.get("NUMBANORM_THREADING", "auto").strip().lower() or "auto"
        if mode not in MODES:
            raise ValueError(
                f"NUMBANORM_THREADING={mode!r} is not one of {', '.join(MODES)}")
    _state["mode"] = mode
    _state["layer"] = _started_layer()
    if mode == "serial" or _state["layer"] is not None:
        return
    user_layer = str(numba.config.THREADING_LAYER).lower()
    if mode in _LAYERS:
        numba.config.THREADING_LAYER = mode
        _state["requested"] = mode
    elif user_layer != "default":
        _state["requested"] = user_layer
    if _state["requested"] in (None, "tbb", "threadsafe", "forksafe", "safe"):
        _load_tbb()


def set_threading(mode):
    """Choose how numbanorm runs its parallel kernels.

    Parameters
    ----------
    mode : {"auto", "serial", "tbb", "omp", "workqueue"}
        ``"serial"`` runs every kernel on the calling thread only;
        ``"auto"`` lets numbanorm choose (tbb when it can be loaded); a layer
        name asks numba for that layer. A layer can only be chosen before
        the first parallel launch in the process (numba starts one layer
        per process); ``"serial"`` and ``"auto"`` can be switched any time.

    Raises
    ------
    ValueError
        For an unknown mode, or a layer other than the one already started.
    """
    if mode not in MODES:
        raise ValueError(f"set_threading: mode must be one of {MODES}, got {mode!r}")
    started = _started_layer()
    if mode in _LAYERS and started is not None and started != mode:
        raise ValueError(
            f"set_threading: numba already started the {started!r} threading "
            f"layer in this process; cannot switch to {mode!r}")
    configure(mode)


def parallel_allowed():
    return _state["mode"] != "serial" and not _state["forked_omp"]


def acquire():
    """Called before a parallel launch. True: launch the parallel build
    (call :func:`release` after); False: run the serial build instead."""
    layer = _state["layer"]
    if layer is None or layer == "workqueue":
        if not _launch_lock.acquire(blocking=False):
            return False
        return True
    return True


def release():
    layer = _state["layer"]
    if layer is None:
        _state["layer"] = _started_layer()
        _launch_lock.release()
    elif layer == "workqueue":
        _launch_lock.release()


def _after_fork_in_child():
    global _launch_lock
    _launch_lock = threading.Lock()  # a parent's thread may have held it
    # numba.get_num_threads() also starts the layer, without a launch
    if (_state["layer"] or _started_layer()) == "omp":
        _state["forked_omp"] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def describe():
    """What is in force, for :func:`numbanorm.info`."""
    layer = _state["layer"] or _started_layer()
    if _state["mode"] == "serial":
        policy = "serial: every kernel runs on the calling thread"
    elif _state["forked_omp"]:
        policy = "serial: forked from a process using GNU OpenMP"
    elif layer == "tbb":
        policy = "parallel; fork-safe and thread-safe"
    elif layer == "omp":
        policy = "parallel; thread-safe; forked children run serial kernels"
    elif layer == "workqueue":
        policy = "parallel; one thread at a time launches parallel kernels, the others run serial ones"
    else:
        policy = "not started yet"
    return {
        "threading_mode": _state["mode"],
        "threading_layer": layer or "(not started)",
        "threading_policy": policy,
        "tbb_library": _state["tbb_library"] or "(not loaded)",
    }
