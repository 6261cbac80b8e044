// The shell's ports of the card's NIC half (keel_nic): a byte-addressed 64-bit host DMA read
// and write port through the IOMMU, MSI-X requests to the NIC VFs' interrupt models, and the
// uplink's two frame streams (one frame in or out is one read or write of the uplink fd; the
// frames themselves move through NicLink, filled and drained by fpga/sim's SimNic).
//
// Threading: as the Shell (one thread at a time, the card's lock held); NicLink has its own
// lock for the uplink reader thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "keel/fpga/iommu.h"
#include "keel/fpga/msix_interrupts.h"
#include "shell_ports.h"

namespace keel::fpga::sim {

/// NIC VFs of the Verilated card (keel_card NIC_VFS).
inline constexpr unsigned kSimNicVfs = 4;
inline constexpr std::size_t kUplinkQueue = 4096;  ///< Frames the uplink reader may hold.

/// What the shell's NIC port shares with SimNic.
struct NicLink {
  std::mutex mu;                             ///< guards rx
  std::deque<std::vector<std::uint8_t>> rx;  ///< frames read from the uplink, not yet in
  std::atomic<std::uint64_t> overflow{0};    ///< frames the reader had no room for
  std::atomic<bool> has_rx{false};
  std::atomic<bool> on{false};            ///< an uplink is attached
  std::atomic<bool> up{false};            ///< and its reader still runs
  std::atomic<std::uint32_t> removed{0};  ///< surprise-removed NIC VFs
  /// Writes one frame to the uplink (called with the card's lock held); false: not sent.
  std::function<bool(std::span<const std::uint8_t>)> send;
};

class NicPort {
 public:
  NicPort(PortContext& pc, Iommu& iommu, std::vector<std::unique_ptr<MsixInterrupts>>& irqs,
          NicLink& link);
  void sample();
  void drive();
  bool quiet() const noexcept;

 private:
  struct Read {
    std::vector<std::uint8_t> data;
    bool err = false;
    unsigned beats = 0, sent = 0;
    std::uint64_t ready_at = 0;
  };
  struct Resp {
    bool err;
    std::uint64_t ready_at;
  };

  PortContext& pc_;
  Iommu& iommu_;
  std::vector<std::unique_ptr<MsixInterrupts>>& irqs_;
  NicLink& link_;
  std::deque<Read> reads_;
  bool rd_shown_ = false;
  // Write being collected.
  bool collecting_ = false;
  unsigned wfn_ = 0;
  std::uint64_t waddr_ = 0;
  std::vector<std::uint8_t> wdata_;
  std::size_t wlen_ = 0;
  std::deque<Resp> resps_;
  bool wb_shown_ = false;
  // Uplink.
  std::vector<std::uint8_t> in_;  ///< frame being streamed in
  bool in_valid_ = false;
  std::size_t in_off_ = 0;
  std::vector<std::uint8_t> out_;
  unsigned tx_drops_ = 0;
};

}  // namespace keel::fpga::sim
