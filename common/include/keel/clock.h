// keel/clock.h - one notion of time for every component that waits.
//
// Every bounded wait in keel (command timeouts, quiesce, NBD deadlines) reads a Clock it was
// given instead of the host's clock, so a test can run it on test time: a lockstep card's
// clock (fpga::Card is a Clock), or a ManualClock the test advances. Daemons pass the host's
// monotonic clock (steady_clock()).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

namespace keel {

/// A monotonic time source in nanoseconds. Implementations are thread-safe: now_ns() may be
/// called from any thread.
class Clock {
 public:
  virtual ~Clock() = default;
  /// Nanoseconds since an arbitrary epoch; never goes backwards.
  virtual std::uint64_t now_ns() const noexcept = 0;

  /// now_ns() + `d`, saturating: a deadline `d` from now.
  std::uint64_t deadline_after(std::chrono::nanoseconds d) const noexcept {
    const std::uint64_t now = now_ns();
    const auto add = static_cast<std::uint64_t>(d.count() < 0 ? 0 : d.count());
    return add > UINT64_MAX - now ? UINT64_MAX : now + add;
  }

 protected:
  Clock() = default;
  Clock(const Clock&) = default;
  Clock& operator=(const Clock&) = default;
};

/// The host's CLOCK_MONOTONIC.
class SteadyClock final : public Clock {
 public:
  std::uint64_t now_ns() const noexcept override;
};

/// The process-wide SteadyClock.
const Clock& steady_clock() noexcept;
/// The same, for a config that holds its clock by shared_ptr (it owns nothing).
std::shared_ptr<const Clock> shared_steady_clock();

/// Test time: moves only when advance() or set() is called.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(std::uint64_t start_ns = 0) noexcept : ns_(start_ns) {}
  std::uint64_t now_ns() const noexcept override { return ns_.load(std::memory_order_acquire); }
  void advance(std::chrono::nanoseconds d) noexcept {
    ns_.fetch_add(static_cast<std::uint64_t>(d.count()), std::memory_order_acq_rel);
  }

 private:
  std::atomic<std::uint64_t> ns_;
};

}  // namespace keel
