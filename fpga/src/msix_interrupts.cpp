#include "keel/fpga/msix_interrupts.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <string>

namespace keel::fpga {

MsixInterrupts::MsixInterrupts(unsigned vectors)
    : count_(std::make_unique<std::atomic<std::uint32_t>[]>(vectors)),
      fds_(std::make_unique<std::atomic<int>[]>(vectors)),
      targets_(std::make_unique<std::atomic<int>[]>(vectors)),
      masked_(std::make_unique<std::atomic<bool>[]>(vectors)),
      pending_(std::make_unique<std::atomic<bool>[]>(vectors)),
      vectors_(vectors) {
  for (unsigned v = 0; v < vectors; ++v) {
    fds_[v].store(-1);
    targets_[v].store(-1);
  }
}

MsixInterrupts::~MsixInterrupts() {
  for (unsigned v = 0; v < vectors_; ++v) {
    if (const int efd = fds_[v].load(); efd >= 0) close(efd);
    if (const int t = targets_[v].load(); t >= 0) close(t);
  }
  for (const int t : old_targets_) close(t);
}

Status MsixInterrupts::set_target(unsigned vector, int eventfd) {
  if (vector >= vectors_) {
    return make_error(Errc::invalid_argument, "no MSI-X vector " + std::to_string(vector));
  }
  int mine = -1;
  if (eventfd >= 0) {
    mine = fcntl(eventfd, F_DUPFD_CLOEXEC, 0);
    if (mine < 0) return make_error(Errc::io_error, "dup of an interrupt eventfd failed");
  }
  std::lock_guard lock(mu_);
  const int old = targets_[vector].exchange(mine, std::memory_order_acq_rel);
  if (old >= 0) old_targets_.push_back(old);
  return {};
}

int MsixInterrupts::fd(unsigned vector) {
  if (vector >= vectors_) return -1;
  std::lock_guard lock(mu_);
  if (fds_[vector].load() < 0) fds_[vector].store(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  return fds_[vector].load();
}

void MsixInterrupts::fire(unsigned vector) noexcept {
  if (vector >= vectors_) return;
  count_[vector].fetch_add(1, std::memory_order_release);
  // MSI-X with the per-vector mask: record pending; deliver unless masked. Paired with
  // set_masked() (both sides store, then check the other's flag, seq_cst): a message is never
  // lost, at worst delivered twice.
  pending_[vector].store(true, std::memory_order_seq_cst);
  if (!masked_[vector].load(std::memory_order_seq_cst)) deliver(vector);
  if (waiters_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }
}

void MsixInterrupts::set_masked(unsigned vector, bool masked) noexcept {
  if (vector >= vectors_) return;
  masked_[vector].store(masked, std::memory_order_seq_cst);
  if (!masked) deliver(vector);
}

void MsixInterrupts::wake_all() noexcept {
  std::lock_guard lock(mu_);
  cv_.notify_all();
}

std::uint32_t MsixInterrupts::take(unsigned vector) noexcept {
  if (vector >= vectors_) return 0;
  return count_[vector].exchange(0, std::memory_order_acquire);
}

void MsixInterrupts::clear() noexcept {
  for (unsigned v = 0; v < vectors_; ++v) count_[v].store(0, std::memory_order_relaxed);
}

void MsixInterrupts::deliver(unsigned vector) noexcept {
  if (!pending_[vector].exchange(false, std::memory_order_seq_cst)) return;
  int efd = targets_[vector].load(std::memory_order_acquire);
  if (efd < 0) efd = fds_[vector].load(std::memory_order_acquire);
  if (efd >= 0) {
    const std::uint64_t one = 1;
    (void)!write(efd, &one, sizeof one);  // the MSI-X message, as an eventfd signal
  }
}

Error MsixInterrupts::no_vector_error(unsigned vf, unsigned vector) const {
  return make_error(Errc::invalid_argument, "VF " + std::to_string(vf) + " has no MSI-X vector " +
                                                std::to_string(vector) + " (it has " +
                                                std::to_string(vectors_) + ")");
}

Error MsixInterrupts::gone_error(unsigned vf) {
  return make_error(Errc::gone, "VF " + std::to_string(vf) + " was removed");
}

Error MsixInterrupts::timeout_error(unsigned vf, unsigned vector,
                                    std::chrono::nanoseconds timeout) {
  return make_error(
      Errc::timeout,
      "no interrupt on VF " + std::to_string(vf) + " vector " + std::to_string(vector) +
          " within " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
          " ms");
}

}  // namespace keel::fpga
