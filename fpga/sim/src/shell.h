// The PCIe shell around the Verilated keel_card: what a QDMA-style shell and the host provide
// to the card's user logic, as per-clock C++ models - one per group of ports (shell_ports.h),
// composed here: the Shell owns the card and the clock and calls every port's sample() before
// the edge and drive() after it.
//
// Threading: a Shell is driven by one thread at a time (the card's lock is held around every
// call); only the atomics it exposes (interrupts, counters, mirrors) are read from elsewhere.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/fpga/card_storage.h"
#include "keel/fpga/iommu.h"
#include "keel/fpga/msix_interrupts.h"
#include "keel/fpga/sim/sim_card.h"
#include "shell_nic_port.h"
#include "shell_ports.h"

class Vkeel_card;
class VerilatedContext;

namespace keel::fpga::sim {

class Shell {
 public:
  /// `irqs[f]` are the MSI-X vectors of function f (0: the PF).
  /// `nic_irqs[n]`: NIC VF n's; `link`: the NIC's uplink frames.
  Shell(const ShellConfig& config, Iommu& iommu, CardStorage& storage,
        std::vector<std::unique_ptr<MsixInterrupts>>& irqs,
        std::vector<std::unique_ptr<MsixInterrupts>>& nic_irqs, NicLink& link);
  ~Shell();
  Shell(const Shell&) = delete;
  Shell& operator=(const Shell&) = delete;

  /// Holds reset for `cycles` clocks, then releases it.
  void reset(unsigned cycles);
  /// One clock cycle of card and shell.
  void cycle();
  std::uint64_t cycles() const noexcept { return cycle_; }

  /// MMIO: one transaction at a time. start_mmio() when !mmio_busy(); the result of a read is
  /// valid once mmio_busy() turns false.
  bool mmio_busy() const noexcept { return mmio_.busy(); }
  void start_mmio(const MmioOp& op);
  std::uint64_t mmio_result() const noexcept { return mmio_.result(); }

  /// Side-band requests, sent on the next free cycle.
  void request_flr(unsigned fn);
  void request_dbg(const DbgOp& op);
  bool side_band_pending() const noexcept { return !side_band_.quiet(); }

  /// While on, every translation request of the function is refused (DMA refusal fault).
  void set_refuse(unsigned fn, bool on) noexcept;
  /// FLRs completed for the function (the card's FLR_DONE events).
  std::uint64_t flr_done(unsigned fn) const noexcept;

  /// Mirrors of the card's status outputs (updated every cycle; readable from any thread).
  unsigned num_vfs() const noexcept { return num_vfs_.load(std::memory_order_acquire); }
  unsigned nic_num_vfs() const noexcept { return nic_num_vfs_.load(std::memory_order_acquire); }
  bool vf_removed(unsigned vf) const noexcept {
    return ((removed_.load(std::memory_order_acquire) >> vf) & 1u) != 0;
  }
  /// True when nothing is in flight on any shell port.
  bool quiet() const noexcept;
  /// Fast-forward: true when the card reports nothing to do but timers and the shell is quiet;
  /// wake() is the number of cycles until the card's next timer (~0u: none).
  bool can_skip() const noexcept;
  std::uint32_t wake() const noexcept;
  /// One clock that stands for 1 + k cycles (only when can_skip() and k < wake()).
  void skip(std::uint32_t k);

  SimStats stats() const;

 private:
  void sample();
  void drive();

  ShellConfig cfg_;
  std::vector<std::unique_ptr<MsixInterrupts>>& irqs_;
  std::unique_ptr<VerilatedContext> ctx_;
  std::unique_ptr<Vkeel_card> top_;
  std::uint64_t cycle_ = 0;
  Backpressure bp_;
  SimStats st_;
  PortContext pc_;

  // The ports, in the order they are sampled and driven (the order back-pressure is drawn in).
  HostReadPort host_read_;
  HostWritePort host_write_;
  DdrReadPort ddr_read_;
  DdrWritePort ddr_write_;
  TranslationPort ats_;
  MsixPort msix_;
  SideBandPort side_band_;
  FlushPort flush_;
  MmioMaster mmio_;
  NicPort nic_;

  // Mirrors of the card's status outputs.
  std::atomic<unsigned> num_vfs_{0};
  std::atomic<unsigned> nic_num_vfs_{0};
  std::atomic<std::uint64_t> removed_{0};
};

}  // namespace keel::fpga::sim
