// MSI-X vectors of one simulated function: the card fires, host threads wait.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

namespace keel::fpga::model {

class Interrupts {
 public:
  explicit Interrupts(unsigned vectors)
      : count_(std::make_unique<std::atomic<std::uint32_t>[]>(vectors)),
        fds_(std::make_unique<std::atomic<int>[]>(vectors)),
        masked_(std::make_unique<std::atomic<bool>[]>(vectors)),
        pending_(std::make_unique<std::atomic<bool>[]>(vectors)),
        vectors_(vectors) {
    for (unsigned v = 0; v < vectors; ++v) fds_[v].store(-1);
  }
  ~Interrupts() {
    for (unsigned v = 0; v < vectors_; ++v) {
      if (fds_[v].load() >= 0) close(fds_[v].load());
    }
  }
  Interrupts(const Interrupts&) = delete;
  Interrupts& operator=(const Interrupts&) = delete;

  /// The eventfd of `vector`, created on first use. -1 if out of range or eventfd failed.
  int fd(unsigned vector) {
    if (vector >= vectors_) return -1;
    std::lock_guard lock(mu_);
    if (fds_[vector].load() < 0) fds_[vector].store(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    return fds_[vector].load();
  }

  unsigned vectors() const noexcept { return vectors_; }

  /// Card side: one MSI-X message for `vector`.
  void fire(unsigned vector) noexcept {
    if (vector >= vectors_) return;
    count_[vector].fetch_add(1, std::memory_order_release);
    // MSI-X with the per-vector mask: record pending; deliver unless masked. Paired with
    // set_masked() (both sides store, then check the other's flag, seq_cst): a message is
    // never lost, at worst delivered twice.
    pending_[vector].store(true, std::memory_order_seq_cst);
    if (!masked_[vector].load(std::memory_order_seq_cst)) deliver(vector);
    if (waiters_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard lock(mu_);
      cv_.notify_all();
    }
  }

  /// MSI-X per-vector mask (host side).
  void set_masked(unsigned vector, bool masked) noexcept {
    if (vector >= vectors_) return;
    masked_[vector].store(masked, std::memory_order_seq_cst);
    if (!masked) deliver(vector);
  }

  /// Wakes every waiter (the function went away).
  void wake_all() noexcept {
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }

  /// Host side: messages since the last take().
  std::uint32_t take(unsigned vector) noexcept {
    return count_[vector].exchange(0, std::memory_order_acquire);
  }

  /// Host side, free-running card: blocks until the vector fired, `stop()` is true, or the
  /// deadline passes. Returns the count taken (0 on timeout or stop).
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

  void deliver(unsigned vector) noexcept {
    if (!pending_[vector].exchange(false, std::memory_order_seq_cst)) return;
    if (const int efd = fds_[vector].load(std::memory_order_acquire); efd >= 0) {
      const std::uint64_t one = 1;
      (void)!write(efd, &one, sizeof one);  // the MSI-X message, as an eventfd signal
    }
  }

  void clear() noexcept {
    for (unsigned v = 0; v < vectors_; ++v) count_[v].store(0, std::memory_order_relaxed);
  }

 private:
  std::unique_ptr<std::atomic<std::uint32_t>[]> count_;
  std::unique_ptr<std::atomic<int>[]> fds_;
  std::unique_ptr<std::atomic<bool>[]> masked_;
  std::unique_ptr<std::atomic<bool>[]> pending_;
  unsigned vectors_;
  std::atomic<int> waiters_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace keel::fpga::model
