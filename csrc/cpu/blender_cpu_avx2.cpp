// The CPU kernels of blender_cpu_kernels.h compiled for AVX2+FMA (namespace cpu::avx2);
// blender_cpu.cpp calls them when the CPU supports both. ATen, the standard library and
// blender_math.h are included before the target switch, so only the kernels defined in
// blender_cpu_kernels.h take the AVX2 target (the shared inline math is inlined into them).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "../blender.h"
#include "../blender_math.h"
#include "blender_cpu_isa.h"

#if BLENDMASK_CPU_HAS_AVX2
#include <immintrin.h>
#endif

#if BLENDMASK_CPU_HAS_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define BLENDMASK_CPU_ISA avx2
#define BLENDMASK_CPU_PAIR_LOADS 1  // gather_pairs' 64-bit pair loads (SSE/AVX intrinsics)
#include "blender_cpu_kernels.h"
#undef BLENDMASK_CPU_PAIR_LOADS
#undef BLENDMASK_CPU_ISA

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // BLENDMASK_CPU_HAS_AVX2
