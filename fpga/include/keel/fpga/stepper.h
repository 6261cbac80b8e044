// keel/fpga/stepper.h - what a bounded wait on a device does between two looks.
//
// A driver or paravisor that polls a device needs two things from the card, and no more: the
// time (a keel::Clock) and a way to let the device make progress while it waits. A lockstep
// card (model, sim) moves - and its clock advances - only when it is stepped, so a wait that
// did not step it would never end; a free-running card (silicon, threaded model) moves on its
// own and the waiter only eases off the CPU. That second need is this interface. fpga::Card
// implements it, but a component that waits is given a Stepper rather than the Card, so it
// cannot change the VF count or reach the fault injector (STYLE.md, "Give a component what it
// uses"). A single virtual call per poll costs nothing next to the MMIO read it follows.
#pragma once

#include <chrono>
#include <cstdint>

#include "keel/clock.h"

namespace keel::fpga {

class Stepper {
 public:
  virtual ~Stepper() = default;
  /// One turn of a wait: steps a lockstep card once; a short CPU pause on a free-running one.
  /// Thread-safe as the card's step() is.
  virtual void advance() noexcept = 0;

 protected:
  Stepper() = default;
  Stepper(const Stepper&) = default;
  Stepper& operator=(const Stepper&) = default;
};

/// Polls `done()` until it returns true or `timeout` passes on `clock`, advancing `stepper`
/// between polls (a lockstep card is stepped). Returns false on timeout.
template <typename Pred>
bool poll_until(const Clock& clock, Stepper& stepper, std::chrono::nanoseconds timeout,
                Pred&& done) {
  const auto deadline = clock.now_ns() + static_cast<std::uint64_t>(timeout.count());
  for (;;) {
    if (done()) return true;
    if (clock.now_ns() >= deadline) return done();
    stepper.advance();
  }
}

}  // namespace keel::fpga
