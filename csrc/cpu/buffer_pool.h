// Large CPU buffers (lattice tensors, filter outputs and scratch) from a small pool.
//
// A CRF call allocates and frees the same multi-megabyte buffers again and again (every
// mean-field iteration, and every call of an evaluation loop). Fresh allocations that size
// come from the kernel page by page (glibc maps anything over 32 MiB anew each time), and
// zeroing those pages costs about as much as the filtering at Cityscapes sizes. Freed
// buffers are therefore kept, up to kMaxCachedBytes in total, and reused for requests that
// fit; blocks are 2 MiB-aligned and advised to use transparent huge pages.
// `release_cached_buffers()` (torch.ops.lightning_deeplab) returns them to the system.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lightning_deeplab {

class BufferPool {
 public:
  // Buffers below this size come from the ordinary allocator.
  static constexpr size_t kMinPooledBytes = size_t{4} << 20;

  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: tensors may outlive exit
    return *pool;
  }

  void* acquire(size_t bytes, size_t* capacity) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto best = blocks_.end();
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        if (it->bytes >= bytes && it->bytes <= 4 * bytes &&
            (best == blocks_.end() || it->bytes < best->bytes)) {
          best = it;
        }
      }
      if (best != blocks_.end()) {
        void* data = best->data;
        *capacity = best->bytes;
        cached_bytes_ -= best->bytes;
        blocks_.erase(best);
        return data;
      }
    }
    constexpr size_t kHugePage = size_t{2} << 20;
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* data = nullptr;
    if (posix_memalign(&data, kHugePage, rounded) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data, rounded, MADV_HUGEPAGE);  // advice only: ignored where THP is off
#endif
    *capacity = rounded;
    return data;
  }

  void release(void* data, size_t capacity) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ + capacity <= kMaxCachedBytes) {
        blocks_.push_back({data, capacity});
        cached_bytes_ += capacity;
        return;
      }
    }
    std::free(data);
  }

  // Frees every cached block; returns how many bytes went back to the system.
  int64_t release_all() {
    std::vector<Block> blocks;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(blocks_);
      cached_bytes_ = 0;
    }
    int64_t bytes = 0;
    for (const Block& block : blocks) {
      bytes += static_cast<int64_t>(block.bytes);
      std::free(block.data);
    }
    return bytes;
  }

 private:
  // Mirrored in lightning_deeplab/crf/memory.py (POOL_CACHE_BYTES).
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;
  struct Block {
    void* data;
    size_t bytes;
  };
  std::mutex mutex_;
  std::vector<Block> blocks_;
  size_t cached_bytes_ = 0;
};

// An uninitialised contiguous CPU tensor; large ones come from (and return to) the pool.
inline at::Tensor empty_pooled(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType());
  if (bytes < BufferPool::kMinPooledBytes) return at::empty(sizes, options);
  size_t capacity = 0;
  void* data = BufferPool::instance().acquire(bytes, &capacity);
  return at::from_blob(
      data, sizes, [capacity](void* p) { BufferPool::instance().release(p, capacity); }, options);
}

}  // namespace lightning_deeplab
