"""Options of the pytest-benchmark suite (``pytest bench/ ...``; not part of the default ``pytest`` run).

    --bench-tiny         tiny shapes (a correctness run in seconds: ``pytest bench/ --benchmark-disable --bench-tiny``)
    --bench-threads N    threads for Numba, OpenBLAS and PyTorch (default: all cores)

They are handed to bench/_common.py through ``MINISR_BENCH_TINY`` / ``MINISR_BENCH_THREADS``, which it reads on
import (before NumPy is imported, so that OpenBLAS starts with that many threads).
"""

import os


def pytest_addoption(parser):
    group = parser.getgroup("minisr benchmarks")
    group.addoption("--bench-tiny", action="store_true", help="tiny shapes (MINISR_BENCH_TINY=1)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for Numba, OpenBLAS and PyTorch (MINISR_BENCH_THREADS; default all cores)")


def pytest_configure(config):
    if config.getoption("--bench-tiny"):
        os.environ["MINISR_BENCH_TINY"] = "1"
    if config.getoption("--bench-threads"):
        os.environ["MINISR_BENCH_THREADS"] = str(config.getoption("--bench-threads"))
