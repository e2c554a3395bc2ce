"""The CUDA emulator itself (tests/cuda_emu): what it must catch -- arguments that do not match a kernel's C
signature, a missing or divergent __syncthreads(), writes outside an array or past the dynamic shared memory,
host arrays in device code -- and the CUDA semantics it must get right (per-block shared memory, atomics between
blocks running in parallel, 3-d grids). These run on the CPU always: they test the emulator, not a device."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import emulated, unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")

SOURCE = r"""
typedef long long idx_t;
extern "C" __global__ void scale(const float* x, float* y, int n, double s) {
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += blockDim.x * gridDim.x) y[k] = (float)(x[k] * s);
}
// block sums with a shared-memory tree: (BARRIER & 1) the barrier after the stores, (BARRIER & 2) the one in the loop
template <int BARRIER>
__device__ void block_sum(const float* x, float* out, idx_t n) {
    extern __shared__ unsigned char smem_raw[];
    float* s = reinterpret_cast<float*>(smem_raw);
    float acc = 0;
    for (idx_t k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (idx_t)blockDim.x * gridDim.x) acc += x[k];
    s[threadIdx.x] = acc;
    if (BARRIER & 1) __syncthreads();
    for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        if (BARRIER & 2) __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}
extern "C" __global__ void sum_ok(const float* x, float* out, idx_t n) { block_sum<3>(x, out, n); }
extern "C" __global__ void sum_no_first_barrier(const float* x, float* out, idx_t n) { block_sum<2>(x, out, n); }
extern "C" __global__ void sum_no_loop_barrier(const float* x, float* out, idx_t n) { block_sum<1>(x, out, n); }
extern "C" __global__ void divergent(float* y) {
    if (threadIdx.x < 7) __syncthreads();
    y[threadIdx.x] = 1;
}
extern "C" __global__ void static_shared_sum(const float* x, float* out) {
    __shared__ float tile[64];
    tile[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (int i = 0; i < 64; ++i) s += tile[i];
        out[blockIdx.x] = s;
    }
}
extern "C" __global__ void count(unsigned long long* c, double* d) { atomicAdd(c, 1ull); atomicAdd(d, 0.5); }
extern "C" __global__ void write_index(int* out, int n, int shift) {
    int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int k = b * blockDim.x * blockDim.y * blockDim.z + t;
    if (k < n) out[k + shift] = k;  // (shift 1: the last thread writes out[n])
}
extern "C" __global__ void smem_fill(float* out, int m) {
    extern __shared__ float s[];
    for (int i = threadIdx.x; i < m; i += blockDim.x) s[i] = i;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}
"""


@pytest.fixture(scope="module", params=["fibers", "os"])
def emu(request):
    """The emulator with the threads of a block as fibers (the default) and as OS threads
    (MINISR_CUDA_EMU_THREADS=os)."""
    with emulated():
        import cupy

        yield cupy, cupy.RawModule(code=SOURCE, options=("-std=c++14",), emu_threads=request.param)


@pytest.fixture(scope="module")
def emu_fibers():
    with emulated():
        import cupy

        yield cupy, cupy.RawModule(code=SOURCE, options=("-std=c++14",), emu_threads="fibers")


def test_arguments_are_checked_against_the_c_signature(emu):
    cp, mod = emu
    k = mod.get_function("scale")
    x, y = cp.asarray(np.arange(10, dtype=np.float32)), cp.empty(10, np.float32)
    k((1,), (32,), (x, y, np.int32(10), np.float64(2.0)))
    np.testing.assert_array_equal(y.get(), 2 * np.arange(10))
    k((1,), (32,), (x, y, np.int32(10), 3.0))  # a Python float is a double, as CuPy passes it
    bad = {
        "takes 4 arguments, got 3": (x, y, np.int32(10)),
        r"argument 2 'int n': a int64 scalar for a int32 parameter": (x, y, np.int64(10), 2.0),
        r"argument 2 'int n': a int64 scalar": (x, y, 10, 2.0),  # a Python int is an int64
        r"argument 3 'double s': a float32 scalar for a float64 parameter": (x, y, np.int32(10), np.float32(2)),
        r"argument 1 'float\* y': an array of float64 for a pointer to float32": (x, cp.empty(10), np.int32(10), 2.0),
        r"argument 0 'const float\* x': a NumPy \(host\) array": (x.get(), y, np.int32(10), 2.0),
        r"argument 1 'float\* y': a non-contiguous array": (x, cp.empty(20, np.float32)[::2], np.int32(10), 2.0),
        r"argument 2 'int n': a device array": (x, y, x, 2.0),
        r"argument 1 'float\* y': a scalar float32 for a pointer": (x, np.float32(1), np.int32(10), 2.0),
    }
    for match, args in bad.items():
        with pytest.raises(TypeError, match=match):
            k((1,), (32,), args)
    with pytest.raises(ValueError, match="more than 1024 threads"):
        k((1,), (64, 32), (x, y, np.int32(10), 2.0))


@pytest.mark.parametrize("blocks", [1, 3])
def test_a_missing_syncthreads_is_caught(emu_fibers, blocks):
    """The block sum is right with both barriers and wrong (NaN: unwritten shared memory, or a partial sum) without
    either of them, on one block or several. (Fibers only: with OS threads a race shows when the scheduler happens
    to interleave the threads so; the fibers catch it on every run.)"""
    cp, mod = emu_fibers
    x = np.random.default_rng(0).random(3000).astype(np.float32)
    dx, out = cp.asarray(x), cp.empty(blocks, np.float32)
    mod.get_function("sum_ok")((blocks,), (128,), (dx, out, np.int64(x.size)), shared_mem=128 * 4)
    np.testing.assert_allclose(out.get().sum(), x.sum(dtype=np.float64), rtol=1e-5)
    for racy in ("sum_no_first_barrier", "sum_no_loop_barrier"):
        mod.get_function(racy)((blocks,), (128,), (dx, out, np.int64(x.size)), shared_mem=128 * 4)
        got = out.get().sum()
        assert not np.isclose(got, x.sum(dtype=np.float64), rtol=1e-3), f"{racy}: {got} (the race went unseen)"


def test_a_barrier_in_divergent_code_is_an_error(emu):
    cp, mod = emu
    with pytest.raises(RuntimeError, match="divergent"):
        mod.get_function("divergent")((2,), (32,), (cp.empty(32, np.float32),))


def test_static_shared_memory_is_per_block_and_atomics_are_atomic(emu):
    cp, mod = emu
    x = np.random.default_rng(1).random(64 * 40).astype(np.float32)
    out = cp.empty(40, np.float32)
    mod.get_function("static_shared_sum")((40,), (64,), (cp.asarray(x), out))
    np.testing.assert_allclose(out.get(), x.reshape(40, 64).sum(axis=1), rtol=1e-5)
    c, d = cp.zeros(1, np.uint64), cp.zeros(1, np.float64)
    mod.get_function("count")((50,), (8, 4), (c, d))  # blocks run on several OS threads at once
    assert int(c.get()[0]) == 50 * 32 and d.get()[0] == 50 * 32 * 0.5


def test_writes_outside_an_array_or_the_shared_memory_are_caught(emu):
    cp, mod = emu
    grid, block = (2, 3, 2), (4, 2, 2)
    n = 2 * 3 * 2 * 4 * 2 * 2
    out = cp.empty(n, np.int32)
    mod.get_function("write_index")(grid, block, (out, np.int32(n), np.int32(0)))  # 3-d grid and block indices
    np.testing.assert_array_equal(out.get(), np.arange(n))
    with pytest.raises(RuntimeError, match="wrote past the end of this array"):
        mod.get_function("write_index")(grid, block, (out, np.int32(n), np.int32(1)))
    with pytest.raises(RuntimeError, match="wrote before the start of this array"):
        mod.get_function("write_index")(grid, block, (cp.empty(n, np.int32), np.int32(n), np.int32(-1)))
    fill = mod.get_function("smem_fill")
    out = cp.empty(32, np.float32)
    fill((1,), (32,), (out, np.int32(100)), shared_mem=100 * 4)
    np.testing.assert_array_equal(out.get(), np.arange(32))
    with pytest.raises(RuntimeError, match="past the end of its dynamic shared memory"):
        fill((1,), (32,), (out, np.int32(100)), shared_mem=64 * 4)


def test_device_arrays_refuse_host_arrays_like_cupy(emu):
    cp, _ = emu
    a = cp.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)
    with pytest.raises(TypeError, match="host"):
        a + np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="host"):
        cp.matmul(a, np.ones((3, 2), np.float32))
    s = a.sum()
    assert type(s) is cp.ndarray and s.shape == () and float(s) == 15.0  # reductions stay on the device
    assert type(a.T) is cp.ndarray and type(a + 1) is cp.ndarray and np.isnan(cp.empty(3).get()).all()
    with pytest.raises(TypeError, match="expected cupy.ndarray"):
        cp.ascontiguousarray(np.ones(3))
