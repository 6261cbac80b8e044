// Fault injection into the reference card.
#include <string>

#include "card_impl.h"

namespace keel::fpga::model {
namespace {

class ModelFaults final : public FaultInjector {
 public:
  explicit ModelFaults(ModelCard::Impl& card) : card_(card) {}

  Status drop_completions(unsigned vf, unsigned count) override {
    return with_vf(vf, [&](VfController& c) { c.faults().drop += count; });
  }
  Status delay_completions(unsigned vf, unsigned count, std::chrono::nanoseconds delay) override {
    return with_vf(vf, [&](VfController& c) {
      c.faults().delay_count = count;
      c.faults().delay_ns = static_cast<std::uint64_t>(delay.count());
    });
  }
  Status delay_ready(unsigned vf, std::chrono::nanoseconds delay) override {
    return with_vf(vf, [&](VfController& c) {
      c.faults().ready_delay_ns = static_cast<std::uint64_t>(delay.count());
    });
  }
  Status raise_fatal(unsigned vf) override {
    return with_vf(vf, [&](VfController& c) { c.raise_fatal(); });
  }
  Status refuse_dma(unsigned vf, bool on) override {
    return with_vf(vf, [&](VfController& c) { c.faults().refuse_dma = on; });
  }
  Status surprise_remove(unsigned vf) override {
    return with_vf(vf, [&](VfController& c) { c.set_removed(true); });
  }
  Status restore(unsigned vf) override {
    return with_vf(vf, [&](VfController& c) { c.set_removed(false); });
  }
  Status corrupt_completions(unsigned vf, CqeFault fault, unsigned count) override {
    return with_vf(vf, [&](VfController& c) {
      VfFaults& f = c.faults();
      switch (fault) {
        case CqeFault::duplicate: f.duplicate += count; break;
        case CqeFault::stale: f.stale += count; break;
        case CqeFault::wrong_sq_id: f.wrong_sq_id += count; break;
        case CqeFault::bad_sq_head: f.bad_sq_head += count; break;
      }
    });
  }
  Status swallow_aborts(unsigned vf, unsigned count) override {
    return with_vf(vf, [&](VfController& c) { c.faults().swallow_aborts += count; });
  }

 private:
  template <typename F>
  Status with_vf(unsigned vf, F&& f) {
    std::lock_guard lock(card_.mu);
    if (vf >= card_.num_vfs.load()) {
      return make_error(Errc::not_found,
                        "fault injection: VF " + std::to_string(vf) + " is not present");
    }
    f(*card_.ctrls[vf]);
    card_.activity.kick();
    return {};
  }

  ModelCard::Impl& card_;
};

}  // namespace

std::unique_ptr<FaultInjector> make_fault_injector(ModelCard::Impl& card) {
  return std::make_unique<ModelFaults>(card);
}

}  // namespace keel::fpga::model
