// Large CPU buffers (filter outputs and scratch) from a small pool.
//
// The mean-field loop allocates and frees the same few multi-megabyte buffers every
// iteration. Fresh allocations that size are mapped from the kernel page by page (glibc
// mmaps anything over 32 MiB) and the page faults cost as much as the filtering at
// Cityscapes sizes. Freed buffers are therefore kept (at most kMaxCachedBlocks of them)
// and reused for requests that fit; blocks are 2 MiB-aligned and advised to use
// transparent huge pages. The pool never holds more than the few buffers one CRF call
// cycles through.
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
        if (it->bytes >= bytes && it->bytes <= 2 * bytes &&
            (best == blocks_.end() || it->bytes < best->bytes)) {
          best = it;
        }
      }
      if (best != blocks_.end()) {
        void* data = best->data;
        *capacity = best->bytes;
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
      if (blocks_.size() < kMaxCachedBlocks) {
        blocks_.push_back({data, capacity});
        return;
      }
    }
    std::free(data);
  }

 private:
  static constexpr size_t kMaxCachedBlocks = 4;
  struct Block {
    void* data;
    size_t bytes;
  };
  std::mutex mutex_;
  std::vector<Block> blocks_;
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
