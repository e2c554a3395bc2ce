// Shared helpers for minisr's CUDA kernels. Each .cu file defines its kernels once as a template and instantiates
// them for float and double under the names <kernel>_f32 and <kernel>_f64 (extern "C", so cupy.RawModule finds them).
#pragma once

typedef long long idx_t;

#define MINISR_GRID_STRIDE(k, n) \
    for (idx_t k = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; k < (n); k += (idx_t)blockDim.x * gridDim.x)
