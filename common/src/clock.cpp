#include "keel/clock.h"

#include <time.h>

namespace keel {

std::uint64_t SteadyClock::now_ns() const noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

const Clock& steady_clock() noexcept {
  static const SteadyClock clock;
  return clock;
}

std::shared_ptr<const Clock> shared_steady_clock() {
  // Aliasing constructor: points at the static clock, owns nothing.
  return std::shared_ptr<const Clock>(std::shared_ptr<const Clock>(), &steady_clock());
}

}  // namespace keel
