// nbd_clock.h - the NBD server's two times: real time (the loop's pacing, the stop budget) and
// the clock of the peers' and the device's timeouts (NbdServerConfig::clock, which tests move).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <utility>

#include "keel/clock.h"

namespace keel::vmm::nbd_internal {

/// Real time (CLOCK_MONOTONIC), in nanoseconds.
inline std::uint64_t real_ns() noexcept { return steady_clock().now_ns(); }

inline std::uint64_t ns(std::chrono::milliseconds ms) noexcept {
  return static_cast<std::uint64_t>(ms.count()) * 1'000'000ull;
}

/// The clock the timeouts are measured on.
class TimeoutClock {
 public:
  /// `source` null: the host's monotonic clock.
  explicit TimeoutClock(std::shared_ptr<const Clock> source) : source_(std::move(source)) {}

  /// Now, in nanoseconds. Never 0, which marks a time that is not set (a message's start, a
  /// send stall, a deadline).
  std::uint64_t now() const {
    const std::uint64_t t = source_ ? source_->now_ns() : real_ns();
    return t > 0 ? t : 1;
  }

 private:
  std::shared_ptr<const Clock> source_;
};

}  // namespace keel::vmm::nbd_internal
