// nbd_clock.h - the NBD server's two times: real time (the loop's pacing, the stop budget) and
// the clock of the peers' and the device's timeouts (NbdServerConfig::clock, which tests move).
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <utility>

namespace keel::vmm::nbd_internal {

/// Real time (CLOCK_MONOTONIC), in nanoseconds.
inline std::uint64_t real_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

inline std::uint64_t ns(std::chrono::milliseconds ms) noexcept {
  return static_cast<std::uint64_t>(ms.count()) * 1'000'000ull;
}

/// The clock the timeouts are measured on.
class TimeoutClock {
 public:
  /// `source` empty: CLOCK_MONOTONIC.
  explicit TimeoutClock(std::function<std::chrono::nanoseconds()> source)
      : source_(std::move(source)) {}

  /// Now, in nanoseconds. Never 0, which marks a time that is not set (a message's start, a
  /// send stall, a deadline).
  std::uint64_t now() const {
    if (!source_) return real_ns();
    const std::int64_t t = source_().count();
    return t > 0 ? static_cast<std::uint64_t>(t) : 1;
  }

 private:
  std::function<std::chrono::nanoseconds()> source_;
};

}  // namespace keel::vmm::nbd_internal
