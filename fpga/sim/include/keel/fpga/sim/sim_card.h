// keel/fpga/sim/sim_card.h - the keel card's RTL (hdl/), Verilated, behind the Card interface.
//
// A C++ model of the PCIe shell drives the Verilated keel_card: BAR accesses become AXI4-Lite
// transactions, card DMA goes through the shared IOMMU model into host memory, MSI-X requests
// land in per-function interrupt counters, FLR requests and events pass through, and the
// card's DDR is the disk image, mmapped. Lockstep cards move only on step() (each step a fixed
// number of 4 ns clock cycles); free-running cards clock the RTL on their own thread.
#pragma once

#include <cstdint>
#include <memory>

#include "keel/fpga/card.h"
#include "keel/fpga/iommu.h"

namespace keel::fpga::sim {

/// Tunables of the simulated card beyond CardOptions. Every member has a default.
struct SimConfig {
  CardOptions card;
  /// Clock cycles one lockstep step() advances (250 cycles: 1 us of card time at 250 MHz).
  unsigned cycles_per_step = 250;
  /// Shell latencies, in card cycles: address to first read beat (host memory, card DDR), last
  /// write beat to write response, translation request to answer.
  unsigned host_read_latency = 16;
  unsigned ddr_read_latency = 8;
  unsigned write_resp_latency = 4;
  unsigned ats_latency = 1;
  /// Free-running card: cycles run between looks at host requests.
  unsigned cycles_per_batch = 64;
  /// Lockstep card: while the RTL reports itself idle (only timers running) and nothing is on
  /// the shell's ports, clock it once for many cycles instead of cycle by cycle. Card time and
  /// behaviour are the same; tests that wait seconds of card time finish in milliseconds.
  bool fast_forward = true;
  /// Random back-pressure from the shell (a testbench knob): with probability stall_percent
  /// per cycle and channel the shell withholds ready, or delays presenting read data or a
  /// write response. Seeded; 0 percent is off.
  unsigned stall_percent = 0;
  std::uint64_t stall_seed = 1;
};

/// What the shell observed; for benchmarks and tests.
struct SimStats {
  std::uint64_t cycles = 0;            ///< Card clock cycles since reset.
  std::uint64_t host_read_beats = 0;   ///< 64-byte beats on the host-DMA read channel.
  std::uint64_t host_write_beats = 0;  ///< Beats on the host-DMA write channel.
  std::uint64_t host_data_bytes = 0;   ///< Data bytes (strobed) written or read by data bursts.
  std::uint64_t completions = 0;       ///< CQE writes.
  std::uint64_t msix = 0;              ///< MSI-X messages.
  std::uint64_t dma_refused = 0;       ///< Host DMA requests and translations refused.
  std::uint64_t ddr_read_beats = 0;
  std::uint64_t ddr_write_beats = 0;
  std::uint64_t skipped_cycles = 0;  ///< Idle cycles fast-forwarded (not evaluated).
  /// AXI rules the card broke: a valid dropped or a payload changed before the handshake, a
  /// burst crossing 4 KiB, WLAST on the wrong beat. Always 0 for a correct card.
  std::uint64_t protocol_errors = 0;
};

class SimCard final : public Card {
 public:
  /// Builds the card and takes the RTL out of reset. A free-running card (config.card.lockstep
  /// == false) starts its thread here. Errors: invalid_argument (max_vfs 0 or above the
  /// Verilated card's VF count, max_ioq_per_vf 0 or above its queue count, storage size, zero
  /// step or batch), io_error (image file).
  static Result<std::unique_ptr<SimCard>> create(const SimConfig& config);
  ~SimCard() override;

  std::string_view backend() const noexcept override { return "sim"; }
  std::string describe() const override;
  Function& pf() noexcept override;
  Result<Function*> vf(unsigned index) override;
  unsigned max_vfs() const noexcept override;
  unsigned num_vfs() const noexcept override;
  Status set_num_vfs(unsigned n) override;
  bool lockstep() const noexcept override;
  int thread_id() const noexcept override;
  unsigned step(unsigned n = 1) override;
  std::uint64_t now_ns() const noexcept override;
  FaultInjector* faults() noexcept override;
  /// The NIC half (keel_nic): 4 NIC VFs of 4 queue pairs, the embedded switch, the uplink.
  NicCard* nic() noexcept override;

  /// The IOMMU of the shell (tests inspect its windows and fault counts).
  Iommu& iommu() noexcept;
  /// Runs a lockstep card for exactly `cycles` clock cycles; returns completions posted.
  unsigned run_cycles(std::uint64_t cycles);
  SimStats stats() const;

  /// VFs and IO queues per VF of the Verilated card (its NUM_VFS / NUM_IOQ parameters).
  static unsigned hardware_vfs() noexcept;
  static unsigned hardware_ioq() noexcept;

  struct Impl;

 private:
  explicit SimCard(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::fpga::sim
