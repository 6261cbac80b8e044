// keel/fpga/card.h - the one interface through which keel reaches a card.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keel/clock.h"
#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/result.h"

namespace keel::fpga {

class FaultInjector;
class NicCard;

/// A card: one PF and up to max_vfs() VFs. Implemented by fpga/model (C++ reference card),
/// fpga/sim (Verilated RTL), and the real-board backends.
///
/// Time: a lockstep card only moves when its caller calls step(); its clock (now_ns) is card
/// time, so every bounded wait on it is deterministic. A free-running card works on its own
/// thread like silicon and now_ns() is the host's monotonic clock. A component that only waits
/// on the card is given it as a Clock and a Stepper, not as a Card.
class Card : public Clock, public Stepper {
 public:
  ~Card() override = default;

  /// "model", "sim", "vfio", "xrt".
  virtual std::string_view backend() const noexcept = 0;
  /// One line for humans: backend, storage size, VF count.
  virtual std::string describe() const = 0;

  virtual Function& pf() noexcept = 0;
  /// VF `index` (0-based). Errors: not_found (index >= present VFs).
  virtual Result<Function*> vf(unsigned index) = 0;
  /// How many VFs the card can expose.
  virtual unsigned max_vfs() const noexcept = 0;
  /// How many VFs are present on the bus now.
  virtual unsigned num_vfs() const noexcept = 0;
  /// Creates or removes VFs (SR-IOV NumVFs). As with sysfs sriov_numvfs, changing a non-zero
  /// count requires writing 0 first. Errors: invalid_argument (n > max_vfs()), busy
  /// (non-zero to non-zero), unavailable.
  virtual Status set_num_vfs(unsigned n) = 0;

  /// False when the PF is not this process's (a card of one function: a VM's VF, a VF or NVMe
  /// controller opened on its own): pf() is then absent (reads all ones) and the PF manager
  /// cannot run here; vf(0) is the function.
  virtual bool owns_pf() const noexcept { return true; }

  /// True when the card moves only on step().
  virtual bool lockstep() const noexcept = 0;
  /// The kernel thread id of the thread a free-running simulated card runs on (its silicon,
  /// which benchmarks do not count as host CPU but whose starvation they report); -1 when
  /// there is none (lockstep, a board, a card in another process), or not yet.
  virtual int thread_id() const noexcept { return -1; }
  /// Advances a lockstep card by `n` steps (each one arbitration round and a fixed slice of
  /// card time). Returns the number of commands the card completed. No-op on a free card.
  virtual unsigned step(unsigned n = 1) = 0;
  // now_ns() (Clock): card time in nanoseconds (see the class comment). A card is the clock
  // of everything that waits on it.

  /// Stepper: one step(1) on a lockstep card, a CPU pause on a free-running one.
  void advance() noexcept final {
    if (lockstep()) {
      step(1);
    } else {
      __builtin_ia32_pause();
    }
  }

  /// The card's fault injector, or nullptr on real hardware.
  virtual FaultInjector* faults() noexcept { return nullptr; }

  /// The card's NIC (a PF of its own with its VFs and the embedded switch), or nullptr when the
  /// backend has none (a plain NVMe device, or a card whose NIC this backend cannot reach yet).
  virtual NicCard* nic() noexcept { return nullptr; }

 protected:
  Card() = default;
  Card(const Card&) = delete;
  Card& operator=(const Card&) = delete;
};

/// Ways a faulty device gets a completion queue entry wrong (FaultInjector::corrupt_completions).
enum class CqeFault : std::uint8_t {
  duplicate,    ///< Posted twice in a row.
  stale,        ///< Preceded by a replay of the previous entry posted to the same CQ (old CID).
  wrong_sq_id,  ///< Names an SQ other than the one the command came from.
  bad_sq_head,  ///< Carries an SQ head pointer beyond the end of the SQ.
};

/// Faults a simulated card can inject, per VF (0-based index). Every call fails with not_found
/// for a VF that is not present.
class FaultInjector {
 public:
  virtual ~FaultInjector() = default;
  /// The next `count` completions of the VF are never posted (the commands hang until aborted
  /// or the controller is reset).
  virtual Status drop_completions(unsigned vf, unsigned count) = 0;
  /// The next `count` completions are posted `delay` later than they would be.
  virtual Status delay_completions(unsigned vf, unsigned count, std::chrono::nanoseconds delay) = 0;
  /// The next CC.EN 0->1 sets CSTS.RDY only after `delay`.
  virtual Status delay_ready(unsigned vf, std::chrono::nanoseconds delay) = 0;
  /// Sets CSTS.CFS; the controller stops processing until it is reset.
  virtual Status raise_fatal(unsigned vf) = 0;
  /// While on, every host DMA of the VF is refused (and counted) as if the IOMMU had no window.
  virtual Status refuse_dma(unsigned vf, bool on) = 0;
  /// The VF disappears: BAR reads return all ones, writes are dropped, nothing is processed,
  /// interrupt waits fail with gone.
  virtual Status surprise_remove(unsigned vf) = 0;
  /// Brings a removed VF back as after an FLR.
  virtual Status restore(unsigned vf) = 0;
  /// The next `count` completions the VF posts (admin or IO, in order) are wrong as `fault`
  /// says. Errors: also unavailable where the backend cannot inject that fault.
  virtual Status corrupt_completions(unsigned vf, CqeFault fault, unsigned count) {
    (void)vf, (void)fault, (void)count;
    return make_error(Errc::unavailable, "this card cannot inject corrupt completions");
  }
  /// The next `count` Aborts that find their command acknowledge it as aborted (dw0 bit 0
  /// clear) but never complete it: it stays outstanding until the controller is reset.
  /// Errors: also unavailable where the backend cannot inject it.
  virtual Status swallow_aborts(unsigned vf, unsigned count) {
    (void)vf, (void)count;
    return make_error(Errc::unavailable, "this card cannot inject swallowed aborts");
  }
};

/// How to stand up a card that is not real hardware. Every member has a default.
struct CardOptions {
  /// Disk image backing the card's storage. Empty: an anonymous in-memory image.
  std::string image_path;
  /// Storage size in bytes when the image is created (or is anonymous). An existing image
  /// keeps its size.
  std::uint64_t storage_bytes = 64ull << 20;
  /// VFs the card can expose.
  unsigned max_vfs = 8;
  /// IO queue pairs one VF can be given.
  unsigned max_ioq_per_vf = 8;
  /// true: the card moves only on step(); false: it runs on its own thread.
  bool lockstep = true;
  /// vfio-user: a connection to the function another process handed over
  /// (Function::hand_over), taken instead of dialing the socket (its VERSION was negotiated
  /// then); -1: dial. Duplicated: the caller keeps its descriptor.
  int adopt_connection = -1;
};

/// Opens a card from a spec: "model", "sim", "vfio:<BDF>", "xrt:<index>", or
/// "vfio-user:<socket>" (a card served by keel-card in another process).
/// Errors: invalid_argument (malformed spec), unavailable (backend not built or no board),
/// plus whatever the backend's constructor returns.
Result<std::unique_ptr<Card>> open_card(std::string_view spec, const CardOptions& options = {});

/// Backends every test suite runs on: "model", "sim" when it is built, plus the board named
/// by KEEL_CARD if set. KEEL_TEST_BACKENDS (comma-separated specs) overrides the list.
std::vector<std::string> test_backends();

/// poll_until (stepper.h) on a card, which is both the clock and the stepper: polls `done()`
/// until it returns true or `timeout` of card time passes, stepping a lockstep card between
/// polls. Returns false on timeout.
template <typename Pred>
bool poll_until(Card& card, std::chrono::nanoseconds timeout, Pred&& done) {
  return poll_until(card, card, timeout, std::forward<Pred>(done));
}

}  // namespace keel::fpga
