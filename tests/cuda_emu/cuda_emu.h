// CUDA-on-CPU for tests: force-included (g++ -include) before a kernels/*.cu file so the host compiler builds the
// unchanged kernel source. Types and builtins of CUDA C++ device code, declared for the host; the grid runtime
// (blocks, threads as fibers, __syncthreads as a barrier) is in runtime.cpp. Test-only: nothing here ships.
//
// Supported: __global__ / __device__ / __host__ / __forceinline__ / __launch_bounds__, threadIdx / blockIdx /
// blockDim / gridDim (x, y, z), static __shared__ arrays (per block) and `extern __shared__` dynamic shared memory
// (the loader rewrites that one declaration, see build.py), __syncthreads(), __threadfence(), atomics on int /
// unsigned / unsigned long long / float / double, the math library (<math.h> plus CUDA's min/max, rsqrt, fast
// intrinsics), printf, assert. Warp-level primitives (__shfl*, __ballot_sync, ...) are not emulated: they are
// declared deleted, so a kernel using them fails to build here with a message naming them.
#pragma once

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifndef EMU_PARSE  // (the loader's signature pass keeps __global__ as a token to find the kernels)
#define __global__ __attribute__((used))
#endif
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#ifdef EMU_OS_THREADS
#define __shared__ static  // (MINISR_CUDA_EMU_THREADS=os: one block at a time)
#else
#define __shared__ static thread_local  // one worker OS thread runs one block at a time: per-block memory
#endif

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Set by the runtime for the thread (fiber) that runs; read by the kernels as in CUDA.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {
void syncthreads();           // the block barrier (runtime.cpp)
unsigned char* dynamic_shared();  // this block's `extern __shared__` memory (shared_mem bytes of the launch)
}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __trap() { __builtin_trap(); }

// ------------------------------------------------------------------------------------------------------ atomics
#define EMU_ATOMIC_INT(T)                                                                                     \
    inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }                     \
    inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }                     \
    inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }                     \
    inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }                       \
    inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }                     \
    inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }                   \
    inline T atomicCAS(T* a, T cmp, T v) {                                                                    \
        __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                   \
        return cmp;                                                                                           \
    }                                                                                                         \
    inline T atomicMax(T* a, T v) {                                                                           \
        T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
        while (old < v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) \
            ;                                                                                                 \
        return old;                                                                                           \
    }                                                                                                         \
    inline T atomicMin(T* a, T v) {                                                                           \
        T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
        while (old > v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) \
            ;                                                                                                 \
        return old;                                                                                           \
    }
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned int)
EMU_ATOMIC_INT(unsigned long long)
EMU_ATOMIC_INT(long long)
#undef EMU_ATOMIC_INT

#define EMU_ATOMIC_FLOAT(T)                                                                                   \
    inline T atomicAdd(T* a, T v) {                                                                           \
        T old, want;                                                                                          \
        __atomic_load(a, &old, __ATOMIC_SEQ_CST);                                                             \
        do {                                                                                                  \
            want = old + v;                                                                                   \
        } while (!__atomic_compare_exchange(a, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));      \
        return old;                                                                                           \
    }                                                                                                         \
    inline T atomicExch(T* a, T v) {                                                                          \
        T old;                                                                                                \
        __atomic_exchange(a, &v, &old, __ATOMIC_SEQ_CST);                                                     \
        return old;                                                                                           \
    }
EMU_ATOMIC_FLOAT(float)
EMU_ATOMIC_FLOAT(double)
#undef EMU_ATOMIC_FLOAT

inline unsigned int atomicInc(unsigned int* a, unsigned int limit) {
    unsigned int old = __atomic_load_n(a, __ATOMIC_SEQ_CST), want;
    do {
        want = old >= limit ? 0u : old + 1u;
    } while (!__atomic_compare_exchange_n(a, &old, want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}

// -------------------------------------------------------------------------------------------------------- math
// CUDA's min/max are overloaded for every arithmetic type pair (the usual conversions apply).
template <typename A, typename B>
inline auto max(A a, B b) -> decltype(a + b) {
    return a > b ? a : b;
}
template <typename A, typename B>
inline auto min(A a, B b) -> decltype(a + b) {
    return a < b ? a : b;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// ---------------------------------------------------------------------------------------- not emulated (warp)
template <typename... A>
void __syncwarp(A...) = delete;
template <typename... A>
void __shfl_sync(A...) = delete;
template <typename... A>
void __shfl_up_sync(A...) = delete;
template <typename... A>
void __shfl_down_sync(A...) = delete;
template <typename... A>
void __shfl_xor_sync(A...) = delete;
template <typename... A>
void __ballot_sync(A...) = delete;
template <typename... A>
void __any_sync(A...) = delete;
template <typename... A>
void __all_sync(A...) = delete;
template <typename... A>
void __activemask(A...) = delete;
template <typename... A>
void __syncthreads_count(A...) = delete;
template <typename... A>
void __syncthreads_and(A...) = delete;
template <typename... A>
void __syncthreads_or(A...) = delete;
