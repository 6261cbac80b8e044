// MSI-X vectors of one simulated function: the shell fires them, host threads wait.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

namespace keel::fpga::sim {

class SimIrq {
 public:
  explicit SimIrq(unsigned vectors)
      : count_(std::make_unique<std::atomic<std::uint32_t>[]>(vectors)), vectors_(vectors) {}

  unsigned vectors() const noexcept { return vectors_; }

  /// Card side: one message for `vector` (out-of-range vectors are dropped).
  void fire(unsigned vector) noexcept {
    if (vector >= vectors_) return;
    count_[vector].fetch_add(1, std::memory_order_release);
    if (waiters_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard lock(mu_);
      cv_.notify_all();
    }
  }

  /// Wakes every waiter (the function was reset or removed).
  void wake_all() noexcept {
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }

  /// Messages since the last take().
  std::uint32_t take(unsigned vector) noexcept {
    return count_[vector].exchange(0, std::memory_order_acquire);
  }

  void clear() noexcept {
    for (unsigned v = 0; v < vectors_; ++v) count_[v].store(0, std::memory_order_relaxed);
  }

  /// Free-running card: blocks until the vector fired, stop() holds, or the deadline passes.
  /// Returns the count taken (0 on timeout or stop).
  template <typename Stop>
  std::uint32_t wait_until(unsigned vector, std::chrono::steady_clock::time_point deadline,
                           Stop&& stop) {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    std::unique_lock lock(mu_);
    std::uint32_t got = 0;
    cv_.wait_until(lock, deadline, [&] {
      got = take(vector);
      return got != 0 || stop();
    });
    waiters_.fetch_sub(1, std::memory_order_seq_cst);
    return got;
  }

 private:
  std::unique_ptr<std::atomic<std::uint32_t>[]> count_;
  unsigned vectors_;
  std::atomic<int> waiters_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace keel::fpga::sim
