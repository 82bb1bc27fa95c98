// Peak-memory measurement for tests: wraps ATen's CPU allocator and counts live bytes.
#pragma once

#include <c10/core/Allocator.h>

#include <atomic>
#include <cstring>

namespace llmtrain::testing {

/// Counts the bytes of live CPU tensors, and their peak. Install with c10::SetCPUAllocator.
class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    auto* record = new Record{std::move(inner), n, this};
    const int64_t now = current_.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    return {data, record, &Release, c10::Device(c10::kCPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
  void ResetPeak() { peak_ = current_.load(); }
  int64_t current() const { return current_; }
  int64_t peak() const { return peak_; }

 private:
  struct Record {
    c10::DataPtr inner;
    size_t size;
    TrackingAllocator* owner;
  };
  static void Release(void* ptr) {
    auto* record = static_cast<Record*>(ptr);
    record->owner->current_ -= static_cast<int64_t>(record->size);
    delete record;
  }
  c10::Allocator* base_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

}  // namespace llmtrain::testing
