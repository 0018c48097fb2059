// A small host-side emulator of a CUDA launch, for running the real __global__ kernels of
// csrc/cuda/blender_cuda_kernels.cuh on the CPU in the tests (tests/ops/test_cuda_emulated.py).
//
// What it models:
//   * gridDim / blockDim / blockIdx / threadIdx (x only; y and z are 1 / 0);
//   * every thread of every block as a real std::thread, all blocks at once, so the
//     grid-stride loops, the index arithmetic and the inter-block atomics run concurrently;
//   * __syncthreads as a std::barrier per block (a thread that returns drops out of it);
//   * dynamic shared memory: one zero-filled buffer per block (BLENDMASK_DYNAMIC_SHARED);
//   * atomicAdd on float / double as std::atomic_ref<T>::fetch_add.
//
// What it does not model: warps and their lock-step execution (warp shuffles, implicit warp
// synchronisation: the kernels use neither), memory coherence and ordering beyond what the
// host's atomics and barriers give, register and shared-memory limits and occupancy, the
// launch-bounds of a real grid (65535 blocks is not enforced), the device math library
// (blender_math.h takes its host branch: <cmath>, and exp_vectorizable for float exp),
// fp16/bf16 device intrinsics (c10::Half / c10::BFloat16 convert on the host), streams,
// asynchrony and CUDA error reporting.
#pragma once

#include <barrier>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define BLENDMASK_EMULATED_CUDA 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct EmulatedDim3 {
  unsigned int x = 0, y = 0, z = 0;
};

inline thread_local EmulatedDim3 threadIdx;
inline thread_local EmulatedDim3 blockIdx;
inline thread_local EmulatedDim3 blockDim;
inline thread_local EmulatedDim3 gridDim;

namespace emulator {

inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local unsigned char* block_shared = nullptr;

/// Runs ``body`` once per thread of a (grid x block) launch with ``shared_bytes`` of dynamic
/// shared memory per block, and returns when every thread has finished.
inline void launch(unsigned int grid, unsigned int block, size_t shared_bytes, const std::function<void()>& body) {
  std::vector<std::unique_ptr<std::barrier<>>> barriers;
  std::vector<std::vector<unsigned char>> shared(grid, std::vector<unsigned char>(shared_bytes + 16, 0));
  std::vector<std::thread> threads;
  for (unsigned int b = 0; b < grid; ++b) barriers.push_back(std::make_unique<std::barrier<>>(block));
  for (unsigned int b = 0; b < grid; ++b) {
    for (unsigned int t = 0; t < block; ++t) {
      threads.emplace_back([&, b, t] {
        gridDim = {grid, 1, 1};
        blockDim = {block, 1, 1};
        blockIdx = {b, 0, 0};
        threadIdx = {t, 0, 0};
        block_barrier = barriers[b].get();
        block_shared = shared[b].data();
        body();
        block_barrier->arrive_and_drop();
      });
    }
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace emulator

inline void __syncthreads() {
  emulator::block_barrier->arrive_and_wait();
}

template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

#define BLENDMASK_DYNAMIC_SHARED(name) unsigned char* name = emulator::block_shared
