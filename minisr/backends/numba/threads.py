"""The conv worker threads: one per Numba thread, each bound to its own CPU, running one share of a conv's
bands, runs or chunks (``_run``), with NumPy's BLAS held at one thread meanwhile when the work calls it.

OpenBLAS's thread count is process-wide in the builds NumPy ships (its ``openblas_set_num_threads_local`` sets it
and returns the old value), so it is 1 only while the workers run and restored at once. Work that runs on the
calling thread alone (one Numba thread, or a single band) gets as many BLAS threads as Numba has, so that
``NUMBA_NUM_THREADS`` bounds both. Without that function (another BLAS), work that calls BLAS runs on the calling
thread, and each GEMM uses the BLAS's own threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import queue
import threading

import numba
import numpy as np


def _openblas_libs():
    """The OpenBLAS libraries shipped inside NumPy's wheel (Linux, macOS), loaded with ctypes."""
    here = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        for path in glob.glob(os.path.join(here, pattern)):
            try:
                yield ctypes.CDLL(path)
            except OSError:
                continue


def _find_blas_thread_setter():
    for lib in _openblas_libs():
        fn = getattr(lib, "openblas_set_num_threads_local", None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


_set_blas_threads = _find_blas_thread_setter()
_pool, _pool_pid, _pool_lock = None, None, threading.Lock()
_batch_lock = threading.Lock()


class _Workers:
    """One worker thread per share index t, each bound to its own CPU (as OpenMP's proc_bind does): a thread
    that the scheduler wakes on a busy CPU would otherwise share it for milliseconds (measured: one call in
    three of a 6 ms conv took twice as long)."""

    def __init__(self, n):
        self.queues = []
        self.ensure(n)

    def ensure(self, n):
        """At least n workers: start the missing ones (worker t on CPU t modulo the CPUs this process may use)."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        for t in range(len(self.queues), n):
            q = queue.SimpleQueue()
            self.queues.append(q)
            cpu = {cpus[t % len(cpus)]} if cpus else None
            threading.Thread(target=self._loop, args=(q, cpu), name=f"minisr-conv-{t}", daemon=True).start()

    @staticmethod
    def _loop(q, cpu):
        if cpu is not None:
            try:
                os.sched_setaffinity(0, cpu)  # (this thread only)
            except OSError:
                pass
        while True:
            fn, call = q.get()
            with call.cond:
                if call.cancelled:  # (the caller was interrupted before this share started: skip it)
                    fn = None
                    continue
                call.running += 1
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 -- handed to the caller
                call.errors.append(e)
            finally:
                fn = None  # (its closure refers to the call's arrays: keep none of them alive while waiting)
                with call.cond:
                    call.running -= 1
                    call.finished += 1
                    call.cond.notify_all()

    def run(self, fns):
        """Run fns[t] on worker t, all at once; returns when all are done (re-raising the first error).

        If the wait is interrupted (Ctrl-C, or any exception), the shares not yet started are cancelled and the
        running ones waited for before the exception goes on: the caller's batch lock is then released only
        when no worker still writes its scratch buffers or the call's output."""
        if len(fns) > len(self.queues):  # (zip would drop the extra shares, and the wait below never end)
            raise ValueError(f"_Workers.run: {len(fns)} shares for {len(self.queues)} workers")
        call = _Call()
        try:
            for q, fn in zip(self.queues, fns):
                q.put((fn, call))
            with call.cond:
                while call.finished < len(fns):
                    call.cond.wait()
        except BaseException:
            call.cancel_and_wait()
            raise
        if call.errors:
            raise call.errors[0]


class _Call:
    """One run() of the workers: how many of its shares are running and finished, and whether it was cancelled."""

    def __init__(self):
        self.cond = threading.Condition()
        self.running = self.finished = 0
        self.cancelled = False
        self.errors = []

    def cancel_and_wait(self):
        while True:
            try:
                with self.cond:
                    self.cancelled = True
                    while self.running:
                        self.cond.wait()
                return
            except BaseException:  # noqa: BLE001 -- (a second Ctrl-C: the running shares are still waited for)
                continue


def _workers(n):
    """The conv worker threads, at least n of them (made on first use, one per Numba thread, and again in a forked
    child, which inherits no threads; more when asked for more, as a test forcing two shares under
    ``NUMBA_NUM_THREADS=1`` does)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = _Workers(numba.config.NUMBA_NUM_THREADS)
            _pool_pid = os.getpid()
        _pool.ensure(n)
        return _pool


def _threads(blas: bool = True) -> int:
    """Worker threads for a conv: Numba's thread count; for work that calls BLAS, 1 when NumPy's BLAS thread
    count cannot be set (not OpenBLAS): its own threads would then fight ours."""
    return numba.get_num_threads() if (_set_blas_threads is not None or not blas) else 1


@contextlib.contextmanager
def _blas_threads(n):
    """NumPy's BLAS on n threads inside the block, its count before restored after (nothing when n is None or the
    count cannot be set)."""
    if n is None or _set_blas_threads is None:
        yield
        return
    before = _set_blas_threads(n)
    try:
        yield
    finally:
        _set_blas_threads(before)


def _sum_parts(parts: dict):
    """The sum of the worker threads' partial results {thread: array} (the weight gradients' sum over images)."""
    total = parts.pop(0)
    for p in parts.values():
        total += p
    return total


def _run(bands, work, whole_images=False, blas=True):
    """work(t, bands share) on T threads (with single-threaded BLAS when the work calls BLAS); shares are
    contiguous (whole images when whole_images). On one thread, work that calls BLAS runs with as many BLAS
    threads as Numba has: with ``NUMBA_NUM_THREADS=1`` BLAS's own threads would wait for cores that other
    processes hold (measured beside two busy runs on 2 cores: an FSRCNN x3 training step 369-682 ms, 85 ms with one
    BLAS thread)."""
    T = min(_threads(blas), len(bands))
    if whole_images:
        T = min(T, bands[-1][0] + 1)
    if T < 2:
        with _batch_lock, _blas_threads(numba.get_num_threads() if blas else None):  # (thread 0's scratch buffers)
            work(0, bands)
        return
    if whole_images:  # split by image
        N = bands[-1][0] + 1
        cut = [N * t // T for t in range(T + 1)]
        shares = [[b for b in bands if cut[t] <= b[0] < cut[t + 1]] for t in range(T)]
    else:
        cut = [len(bands) * t // T for t in range(T + 1)]
        shares = [bands[cut[t]:cut[t + 1]] for t in range(T)]

    def share(t):
        if blas:
            _set_blas_threads(1)  # (in case a future OpenBLAS makes the setting really thread-local)
        work(t, shares[t])

    with _batch_lock, _blas_threads(1 if blas else None):  # one batch at a time: the BLAS thread count is shared
        _workers(T).run([lambda t=t: share(t) for t in range(T)])
