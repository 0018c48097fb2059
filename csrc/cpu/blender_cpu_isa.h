// Which extra instruction-set copies of the CPU kernels this compiler can build.
#pragma once

// AVX2+FMA copy (blender_cpu_avx2.cpp): GCC or Clang targeting x86-64, which accept
// per-function target attributes and __builtin_cpu_supports for the run-time choice.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(BLENDMASK_CPU_NO_AVX2)
#define BLENDMASK_CPU_HAS_AVX2 1
#else
#define BLENDMASK_CPU_HAS_AVX2 0
#endif
