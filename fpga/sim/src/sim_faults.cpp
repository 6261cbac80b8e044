// Fault injection into the simulated card.
//
// Where each fault lives:
//   refuse_dma           the shell: the VF's translation requests are refused (and counted),
//                        so its data transfers fail while queue fetches and completions still
//                        work, as on the reference model; an FLR of the VF turns it off.
//   drop / delay         the RTL's completion writer (debug port): dropped completions park as
//                        "stuck" commands that Abort and Delete I/O SQ finish; delayed ones are
//                        posted when due, holding their CQ slot meanwhile.
//   delay_ready, fatal   the RTL's VF controller (debug port).
//   surprise_remove      the RTL (debug port): the VF is reset and then reads as all ones;
//   / restore            restore resets it again and brings it back.
#include <string>

#include "sim_impl.h"

namespace keel::fpga::sim {
namespace {

constexpr std::uint64_t kNsPerCycle = 4;

std::uint64_t to_cycles(std::chrono::nanoseconds d) {
  const auto ns = static_cast<std::uint64_t>(d.count() < 0 ? 0 : d.count());
  return (ns + kNsPerCycle - 1) / kNsPerCycle;
}

class SimFaults final : public FaultInjector {
 public:
  explicit SimFaults(SimCard::Impl& card) : card_(card) {}

  Status drop_completions(unsigned vf, unsigned count) override {
    return dbg(vf, kDbgDrop, count, 0);
  }
  Status delay_completions(unsigned vf, unsigned count, std::chrono::nanoseconds delay) override {
    return dbg(vf, kDbgDelay, count, to_cycles(delay));
  }
  Status delay_ready(unsigned vf, std::chrono::nanoseconds delay) override {
    return dbg(vf, kDbgReadyDelay, 0, to_cycles(delay));
  }
  Status raise_fatal(unsigned vf) override { return dbg(vf, kDbgFatal, 0, 0); }
  Status refuse_dma(unsigned vf, bool on) override {
    if (Status st = check(vf); !st.ok()) return st;
    card_.shell->set_refuse(vf + 1, on);
    return {};
  }
  Status surprise_remove(unsigned vf) override { return reset_via(vf, kDbgRemove); }
  Status restore(unsigned vf) override { return reset_via(vf, kDbgRestore); }

 private:
  Status check(unsigned vf) const {
    if (vf >= card_.shell->num_vfs()) {
      return make_error(Errc::not_found,
                        "fault injection: VF " + std::to_string(vf) + " is not present");
    }
    return {};
  }
  Status dbg(unsigned vf, std::uint8_t op, std::uint32_t arg0, std::uint64_t arg1) {
    if (Status st = check(vf); !st.ok()) return st;
    card_.send_dbg(DbgOp{op, static_cast<std::uint8_t>(vf), arg0, arg1});
    return {};
  }
  Status reset_via(unsigned vf, std::uint8_t op) {
    if (Status st = check(vf); !st.ok()) return st;
    const DbgOp d{op, static_cast<std::uint8_t>(vf), 0, 0};
    return card_.do_flr(vf + 1, &d);
  }

  SimCard::Impl& card_;
};

}  // namespace

std::unique_ptr<FaultInjector> make_sim_fault_injector(SimCard::Impl& card) {
  return std::make_unique<SimFaults>(card);
}

}  // namespace keel::fpga::sim
