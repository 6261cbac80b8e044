// keel/fpga/msix_interrupts.h - MSI-X vectors of one function of a simulated card (model and
// sim): the card fires them, host threads wait on them or on their eventfds.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "keel/result.h"

namespace keel::fpga {

/// One function's MSI-X table as the host sees it: a message count per vector (for
/// Function::wait_interrupt), an eventfd per vector (Function::interrupt_fd) and the per-vector
/// mask with its pending bit (Function::set_interrupt_masked).
///
/// Threading: fire() comes from the card's thread (or a lockstep caller's), everything else
/// from host threads; all of it may run concurrently.
class MsixInterrupts {
 public:
  explicit MsixInterrupts(unsigned vectors);
  ~MsixInterrupts();
  MsixInterrupts(const MsixInterrupts&) = delete;
  MsixInterrupts& operator=(const MsixInterrupts&) = delete;

  unsigned vectors() const noexcept { return vectors_; }

  /// The eventfd of `vector`, created on first use (non-blocking, close-on-exec). -1 if the
  /// vector is out of range or eventfd() failed. The fd lives as long as this object.
  int fd(unsigned vector);

  /// Host side: from now on a message of `vector` signals `eventfd` (duplicated) instead of
  /// fd(vector); -1 goes back to fd(vector). Replaced targets stay open until this object goes
  /// (the card may be signalling one as it is replaced). Errors: invalid_argument, io_error.
  Status set_target(unsigned vector, int eventfd);

  /// Card side: one MSI-X message for `vector` (out-of-range vectors are dropped).
  void fire(unsigned vector) noexcept;

  /// Host side: the per-vector mask. While masked, a message is recorded as pending and the
  /// eventfd is signalled when the vector is unmasked.
  void set_masked(unsigned vector, bool masked) noexcept;

  /// Wakes every waiter (the function was reset or went away).
  void wake_all() noexcept;

  /// Host side: messages since the last take() (0 for an out-of-range vector).
  std::uint32_t take(unsigned vector) noexcept;

  /// Forgets the message counts (function reset). Masks, pending bits and fds stay, as the
  /// MSI-X table is not part of the reset here.
  void clear() noexcept;

  /// Function::wait_interrupt() of VF `vf` of a simulated card. `lockstep`: the caller's thread
  /// moves the card one `step()` at a time and `now_ns()` is card time; otherwise the card runs
  /// on its own thread and the wait is on the host clock. `gone()`: the VF was removed.
  /// Errors: invalid_argument (no such vector), gone, timeout.
  template <typename Now, typename Step, typename Gone>
  Result<std::uint32_t> wait(unsigned vf, unsigned vector, std::chrono::nanoseconds timeout,
                             bool lockstep, Now&& now_ns, Step&& step, Gone&& gone) {
    if (vector >= vectors_) return no_vector_error(vf, vector);
    if (gone()) return gone_error(vf);
    if (lockstep) {
      const std::uint64_t deadline = now_ns() + static_cast<std::uint64_t>(timeout.count());
      for (;;) {
        if (const std::uint32_t n = take(vector); n != 0) return n;
        if (gone()) return gone_error(vf);
        if (now_ns() >= deadline) break;
        step();
      }
    } else {
      const std::uint32_t n = wait_until(vector, std::chrono::steady_clock::now() + timeout, gone);
      if (n != 0) return n;
      if (gone()) return gone_error(vf);
    }
    return timeout_error(vf, vector, timeout);
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

 private:
  /// Signals the eventfd if a message is pending.
  void deliver(unsigned vector) noexcept;
  Error no_vector_error(unsigned vf, unsigned vector) const;
  static Error gone_error(unsigned vf);
  static Error timeout_error(unsigned vf, unsigned vector, std::chrono::nanoseconds timeout);

  std::unique_ptr<std::atomic<std::uint32_t>[]> count_;
  std::unique_ptr<std::atomic<int>[]> fds_;
  std::unique_ptr<std::atomic<int>[]> targets_;  ///< -1: signal fds_[v]
  std::vector<int> old_targets_;                 ///< Replaced, closed at destruction (mu_).
  std::unique_ptr<std::atomic<bool>[]> masked_;
  std::unique_ptr<std::atomic<bool>[]> pending_;
  unsigned vectors_;
  std::atomic<int> waiters_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace keel::fpga
