"""LayerNorm on a Dask cluster against numbanorm on one machine.

    python -m benchmarks.dask_case [--threads N] [--quick]

``numbanorm.dask.layer_norm`` on a (256, 512, 768) float32 array in 16 blocks
along the batch, on a ``LocalCluster`` of 2 single-thread worker processes
talking over loopback TCP, against ``numbanorm.layer_norm`` on the same data
in this process (``--threads`` numba threads, default all cores).

Measured (medians of a few repeats, after a warm-up):

* ``local_s``: ``numbanorm.layer_norm(x, 768)`` (allocating, no ``out=``);
* ``cluster_s``: building the graph and running it with x already resident
  on the workers (generated there, block by block, from the same seeds) and
  the result left there (``persist``): compute plus Dask's overheads;
* ``cluster_gather_s``: the same, then gathering y to this process;
* ``block_compute_s``: one block's kernel time on a worker (from the
  scheduler's task stream), and ``block_local_1thread_s``: one block on one
  thread in this process;
* ``transfer_bytes_per_s``: bytes of one result block over the time to
  gather it from a worker (serialization and TCP over loopback).

:func:`crossover_estimate` turns these into the number of machines a
cluster would need to beat one machine (see its docstring for the model).
"""

import argparse
import itertools
import math
import statistics
import time

import numba
import numpy as np

import numbanorm

SHAPE = (256, 512, 768)
QUICK_SHAPE = (16, 8, 64)
BLOCKS = 16
WORKERS = 2
THREADS_PER_WORKER = 1
SEED = 2024
# nominal links for the estimate, bytes/s: 10 and 100 Gbit/s Ethernet
NETWORKS = {"10GbE": 1.25e9, "100GbE": 12.5e9}


def _block(block_id=None, rows=1, tail=(), seed=SEED):
    """Block i of x: its own seed, so that the workers and this process
    build the same data independently."""
    rng = np.random.default_rng([seed, block_id[0]])
    return rng.standard_normal((rows,) + tuple(tail), dtype=np.float32)


def _local_x(shape):
    rows = shape[0] // BLOCKS
    x = np.empty(shape, np.float32)
    for i in range(BLOCKS):
        x[i * rows:(i + 1) * rows] = _block((i,), rows, shape[1:])
    return x


def _median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def crossover_estimate(m, network_bytes_per_s=None, nbytes=None,
                       max_machines=100000):
    """Machines (each like the measured one: ``slots`` single-thread
    workers) a Dask cluster needs for ``layer_norm`` to beat ``numbanorm`` on
    one machine, from the measurements of :func:`run`.

    Model, per byte of x (LayerNorm's cost is linear in the data):

    * one machine: ``T_1(B) = B * s_l`` with ``s_l = local_s / nbytes``;
    * M machines: ``T_M(B) = o + B * s_c / M [+ 2 * B / bw]``, where
      ``s_c = blocks * block_compute_s / (slots * nbytes)`` is one machine's
      worth of workers' kernel time per byte, ``o = cluster_s - nbytes *
      s_c`` the fixed cost measured on those workers (graph, scheduling,
      dispatch; assumed not to grow with M), and the bracketed term applies
      when x starts and y must end on one machine ("shipped"): ``2 * B``
      bytes cross that machine's link of ``bw`` bytes/s, a cost that more
      machines do not share. Without it, x and y live on the cluster
      ("resident").

    The cluster wins when ``T_M(B) < T_1(B)``: for
    ``M > s_c / (s_l - 2/bw - o/B)``, which needs ``B > o / (s_l - 2/bw)``
    (``min_nbytes``: below it no number of machines helps) and, when
    shipping, ``bw > 2 / s_l`` (the link must be faster than twice the
    local kernel's throughput, else never).

    Parameters
    ----------
    m : dict
        The result of :func:`run`.
    network_bytes_per_s : float, optional
        Link bandwidth for the shipped case; default the measured
        ``transfer_bytes_per_s``.
    nbytes : int, optional
        Size of x to estimate for; default the measured size.
    max_machines : int
        Larger answers are reported as None.

    Returns
    -------
    dict
        ``overhead_s`` (o), ``local_s_per_gb`` (s_l) and
        ``cluster_machine_s_per_gb`` (s_c) in seconds per 1e9 bytes,
        ``network_bytes_per_s``, ``nbytes``, and per case (``resident``,
        ``shipped``) the machines needed at ``nbytes`` (None: never) and
        ``min_nbytes_<case>`` (None: no size).
    """
    slots = m["workers"] * m["threads_per_worker"]
    s_l = m["local_s"] / m["nbytes"]
    s_c = m["blocks"] * m["block_compute_s"] / (slots * m["nbytes"])
    o = max(0.0, m["cluster_s"] - m["nbytes"] * s_c)
    bw = network_bytes_per_s or m["transfer_bytes_per_s"]
    B = nbytes or m["nbytes"]
    out = {"overhead_s": o, "local_s_per_gb": s_l * 1e9,
           "cluster_machine_s_per_gb": s_c * 1e9, "network_bytes_per_s": bw,
           "nbytes": B}
    for case, ship in (("resident", 0.0), ("shipped", 2.0 / bw)):
        gain = s_l - ship            # seconds per byte an ideal cluster saves
        out[f"min_nbytes_{case}"] = math.ceil(o / gain) if gain > 0 else None
        room = gain - o / B
        M = math.floor(s_c / room) + 1 if room > 0 else None
        out[case] = M if M is not None and M <= max_machines else None
    return out


def run(threads=None, quick=False):
    """Times layer_norm on a 2-worker LocalCluster and on one machine.

    Parameters
    ----------
    threads : int, optional
        numba threads for the one-machine run (default: all cores). Each
        worker runs 1 thread, and numbanorm.dask runs 1 numba thread per
        block.
    quick : bool
        A tiny shape and 2 repeats (for the test suite).

    Returns
    -------
    dict
        The measurements described in the module docstring, plus
        ``overhead_ratio = cluster_s / local_s``, ``crossover`` (from
        :func:`crossover_estimate` with the measured bandwidth) and
        ``crossover_<network>`` for the nominal networks in ``NETWORKS``.
    """
    import dask.array as da
    from distributed import (Client, LocalCluster, futures_of,
                             get_task_stream, wait)

    import numbanorm.dask as nd

    shape = QUICK_SHAPE if quick else SHAPE
    repeat = 2 if quick else 5
    rows = shape[0] // BLOCKS
    L = shape[-1]
    threads = threads or numba.config.NUMBA_NUM_THREADS
    res = {"shape": shape, "dtype": "float32", "blocks": BLOCKS,
           "workers": WORKERS, "threads_per_worker": THREADS_PER_WORKER,
           "local_threads": threads, "repeat": repeat}

    # one machine
    x = _local_x(shape)
    res["nbytes"] = x.nbytes
    res["block_bytes"] = x.nbytes // BLOCKS
    prev = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        numbanorm.layer_norm(x, L)
        res["local_s"], res["local_times"] = _median_time(
            lambda: numbanorm.layer_norm(x, L), repeat)
        numba.set_num_threads(1)
        res["block_local_1thread_s"], _ = _median_time(
            lambda: numbanorm.layer_norm(x[:rows], L), repeat)
    finally:
        numba.set_num_threads(prev)
    y_local = numbanorm.layer_norm(x, L)
    del x

    # the cluster
    with LocalCluster(n_workers=WORKERS, threads_per_worker=THREADS_PER_WORKER,
                      processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client, \
            client.as_current():
        xd = da.map_blocks(_block, chunks=((rows,) * BLOCKS,) + tuple(
            (d,) for d in shape[1:]), dtype=np.float32, rows=rows,
            tail=shape[1:], meta=np.empty((0,) * len(shape), np.float32))
        xd = client.persist(xd)
        wait(xd)

        runs = itertools.count()

        def graph():
            # A distinct eps per run gives distinct task keys: a run must
            # not find the previous run's blocks still in the cluster's
            # memory (releasing them is asynchronous).
            return nd.layer_norm(xd, L, eps=1e-5 * (1 + next(runs) * 2.0**-30))

        def persisted():
            y = client.persist(graph())
            wait(y)
            return y

        persisted()  # warm-up: numba's cache loads in each worker
        with get_task_stream(client=client) as stream:
            res["cluster_s"], res["cluster_times"] = _median_time(
                persisted, repeat)
        computes = [ss["stop"] - ss["start"] for t in stream.data
                    if "layer_norm_block" in str(t["key"])
                    for ss in t["startstops"] if ss["action"] == "compute"]
        res["block_compute_s"] = statistics.median(computes)

        futs = futures_of(persisted())
        t = []
        for f in futs[:4]:
            t0 = time.perf_counter()
            client.gather(f)
            t.append(time.perf_counter() - t0)
        res["transfer_s_per_block"] = statistics.median(t)
        res["transfer_bytes_per_s"] = (res["block_bytes"]
                                       / res["transfer_s_per_block"])
        del futs

        res["cluster_gather_s"], _ = _median_time(
            lambda: client.compute(graph()).result(), min(repeat, 3))
        y = client.compute(nd.layer_norm(xd, L)).result()
        res["identical"] = bool(np.array_equal(y, y_local))
        del y, xd
    res["overhead_ratio"] = res["cluster_s"] / res["local_s"]
    res["crossover"] = crossover_estimate(res)
    for name, bw in NETWORKS.items():
        res[f"crossover_{name}"] = crossover_estimate(res, bw)
    return res


def report(res):
    """The measurements and the crossover estimate as text."""
    def ms(s):
        return f"{s * 1e3:.2f} ms"

    def gbs(b):
        return f"{b / 1e9:.2f} GB/s"

    lines = [
        f"layer_norm {res['shape']} {res['dtype']}, {res['blocks']} blocks "
        f"of {res['block_bytes'] / 2**20:.1f} MiB along the batch",
        f"  one machine, numbanorm.layer_norm ({res['local_threads']} "
        f"threads): {ms(res['local_s'])} "
        f"({gbs(2 * res['nbytes'] / res['local_s'])})",
        f"  LocalCluster {res['workers']} workers x "
        f"{res['threads_per_worker']} thread, x resident, y persisted: "
        f"{ms(res['cluster_s'])} "
        f"(overhead ratio {res['overhead_ratio']:.2f}x)",
        f"  ... and y gathered to the client:  {ms(res['cluster_gather_s'])}",
        f"  per block: kernel on a worker {ms(res['block_compute_s'])}, "
        f"on 1 thread here {ms(res['block_local_1thread_s'])}",
        f"  transfer (gather one block, loopback): "
        f"{ms(res['transfer_s_per_block'])} per block = "
        f"{gbs(res['transfer_bytes_per_s'])}",
        f"  identical to numbanorm.layer_norm: {res['identical']}",
        "crossover estimate (machines like this one, see crossover_estimate):",
        f"  per GB: one machine {res['crossover']['local_s_per_gb']:.3f} s, "
        f"cluster kernels {res['crossover']['cluster_machine_s_per_gb']:.3f}"
        f" s / M machines + fixed overhead "
        f"{ms(res['crossover']['overhead_s'])}",
    ]
    for key in ["crossover"] + [f"crossover_{n}" for n in NETWORKS]:
        c = res[key]
        net = "measured" if key == "crossover" else key.split("_", 1)[1]
        lines.append(
            f"  link {gbs(c['network_bytes_per_s'])} ({net}): at this size, "
            f"data resident on the cluster: {_m(c['resident'])}, "
            f"data on one machine: {_m(c['shipped'])}; a cluster can win "
            f"from x of {_size(c['min_nbytes_resident'])} resident, "
            f"{_size(c['min_nbytes_shipped'])} shipped")
    return "\n".join(lines)


def _m(M):
    return "never" if M is None else f"{M} machine(s)"


def _size(b):
    return "no size" if b is None else f"{b / 1e9:.2f} GB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(report(run(args.threads, args.quick)))


if __name__ == "__main__":
    main()
