// keel/fpga/pf_function.h - what every card's physical function has in common.
#pragma once

#include <chrono>
#include <cstdint>

#include "keel/fpga/function.h"
#include "keel/result.h"

namespace keel::fpga {

/// Errors a PF gives for what only VFs do: wait_interrupt (the PF raises no interrupts keel
/// waits on) and flr (a PF is not reset with FLR here; VFs are reset one by one).
Error pf_raises_no_interrupts(unsigned vector);
Error pf_has_no_flr();

/// A card's PF: `Base` is the Function implementation it builds on (IommuFunction on simulated
/// cards, Function on boards); this adds the PF's answers to the VF-only calls, once for every
/// backend.
template <typename Base>
class PfFunctionBase : public Base {
 public:
  using Base::Base;
  Result<std::uint32_t> wait_interrupt(unsigned vector, std::chrono::nanoseconds) override {
    return pf_raises_no_interrupts(vector);
  }
  Status flr() override { return pf_has_no_flr(); }
};

}  // namespace keel::fpga
