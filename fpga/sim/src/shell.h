// The PCIe shell around the Verilated keel_card: what a QDMA-style shell and the host provide
// to the card's user logic, as per-clock C++ models.
//
// Threading: a Shell is driven by one thread at a time (the card's lock is held around every
// call); only the atomics it exposes (interrupts, counters, mirrors) are read from elsewhere.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/fpga/card_storage.h"
#include "keel/fpga/iommu.h"
#include "keel/fpga/msix_interrupts.h"
#include "keel/fpga/sim/sim_card.h"

class Vkeel_card;
class VerilatedContext;

namespace keel::fpga::sim {

/// One BAR access as an AXI4-Lite transaction (64-bit data, byte strobes).
struct MmioOp {
  bool write = false;
  std::uint8_t fn = 0;     ///< PCIe function: 0 PF, n + 1 VF n.
  std::uint16_t addr = 0;  ///< BAR offset, 8-byte aligned.
  std::uint64_t data = 0;
  std::uint8_t strb = 0xFF;
};

/// A fault-injection request on the card's debug port.
struct DbgOp {
  std::uint8_t op = 0;  ///< keel_pkg::DBG_*.
  std::uint8_t vf = 0;
  std::uint32_t arg0 = 0;
  std::uint64_t arg1 = 0;
};

inline constexpr std::uint8_t kDbgDrop = 0;
inline constexpr std::uint8_t kDbgDelay = 1;
inline constexpr std::uint8_t kDbgReadyDelay = 2;
inline constexpr std::uint8_t kDbgFatal = 3;
inline constexpr std::uint8_t kDbgRemove = 4;
inline constexpr std::uint8_t kDbgRestore = 5;

struct ShellConfig {
  unsigned max_vfs = 8;
  unsigned max_ioq = 8;
  unsigned host_read_latency = 16;
  unsigned ddr_read_latency = 8;
  unsigned write_resp_latency = 4;
  unsigned ats_latency = 1;
  unsigned stall_percent = 0;
  std::uint64_t stall_seed = 1;
};

class Shell {
 public:
  /// `irqs[f]` are the MSI-X vectors of function f (0: the PF).
  Shell(const ShellConfig& config, Iommu& iommu, CardStorage& storage,
        std::vector<std::unique_ptr<MsixInterrupts>>& irqs);
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
  bool mmio_busy() const noexcept { return mmio_state_ != MmioState::idle; }
  void start_mmio(const MmioOp& op);
  std::uint64_t mmio_result() const noexcept { return mmio_result_; }

  /// Side-band requests, sent on the next free cycle.
  void request_flr(unsigned fn);
  void request_dbg(const DbgOp& op);
  bool side_band_pending() const noexcept { return !flr_queue_.empty() || !dbg_queue_.empty(); }

  /// While on, every translation request of the function is refused (DMA refusal fault).
  void set_refuse(unsigned fn, bool on) noexcept;
  /// FLRs completed for the function (the card's FLR_DONE events).
  std::uint64_t flr_done(unsigned fn) const noexcept;

  /// Mirrors of the card's status outputs (updated every cycle; readable from any thread).
  unsigned num_vfs() const noexcept { return num_vfs_.load(std::memory_order_acquire); }
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
  struct RdReq;
  struct WrReq;
  struct BResp {
    std::uint8_t id;
    std::uint8_t user;
    std::uint8_t resp;
    std::uint64_t ready_at;
  };
  enum class MmioState { idle, w_addr, w_resp, r_addr, r_data };

  void sample();
  void update();
  void drive();
  void host_read_accept(std::uint8_t id, std::uint8_t user, std::uint64_t addr, unsigned beats);
  void host_write_finish(WrReq& w);
  void ddr_read_accept(std::uint64_t addr, unsigned beats);
  void on_event(unsigned fn, unsigned kind);
  void after_mmio_write();

  ShellConfig cfg_;
  Iommu& iommu_;
  CardStorage& storage_;
  std::vector<std::unique_ptr<MsixInterrupts>>& irqs_;
  std::unique_ptr<VerilatedContext> ctx_;
  std::unique_ptr<Vkeel_card> top_;
  std::uint64_t cycle_ = 0;

  // Host-DMA read: requests in order, served one burst after another.
  std::vector<RdReq> hr_;
  unsigned hr_head_ = 0, hr_count_ = 0;
  // Host-DMA write: addresses in order; data fills the oldest one.
  std::vector<WrReq> hw_;
  unsigned hw_head_ = 0, hw_count_ = 0, hw_data_ = 0;  // hw_data_: requests with all data in
  std::vector<BResp> hb_;
  unsigned hb_head_ = 0, hb_count_ = 0;
  // Card DDR.
  std::vector<RdReq> dr_;
  unsigned dr_head_ = 0, dr_count_ = 0;
  std::uint64_t dw_addr_ = 0;  // next DDR write beat
  unsigned dw_left_ = 0;       // beats of the DDR burst being written
  bool dw_err_ = false;
  std::vector<std::uint64_t> dwq_addr_;  // accepted DDR write addresses
  std::vector<unsigned> dwq_beats_;
  unsigned dwq_head_ = 0, dwq_count_ = 0;
  std::vector<BResp> db_;
  unsigned db_head_ = 0, db_count_ = 0;
  // Translation checks.
  bool ats_pending_ = false;
  bool ats_ok_ = false;
  std::uint64_t ats_at_ = 0;
  // Flush.
  bool flush_busy_ = false;
  bool flush_done_ = false;
  bool flush_err_ = false;
  // MMIO.
  MmioState mmio_state_ = MmioState::idle;
  MmioOp mmio_op_;
  std::uint64_t mmio_result_ = 0;
  unsigned mmio_nv_before_ = 0;
  // Side band.
  std::vector<unsigned> flr_queue_;
  std::vector<DbgOp> dbg_queue_;

  // Per-function state.
  std::unique_ptr<std::atomic<bool>[]> refuse_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> flr_done_;
  std::atomic<unsigned> num_vfs_{0};
  std::atomic<std::uint64_t> removed_{0};

  // Handshakes seen before the clock edge (sample) and applied after it (update).
  struct Seen;
  std::unique_ptr<Seen> seen_;

  // Back-pressure and protocol checks.
  bool stall() noexcept;
  void check_protocol();
  std::uint64_t stall_state_;
  bool hr_shown_ = false;  // a read beat / write response is on the bus until taken
  bool hb_shown_ = false;
  bool dr_shown_ = false;
  bool db_shown_ = false;
  struct AddrBeat {
    bool valid = false;
    std::uint64_t addr = 0;
    unsigned len = 0;
    unsigned id = 0;
  };
  AddrBeat prev_har_, prev_haw_, prev_dar_, prev_daw_;

  std::atomic<std::uint64_t> st_cycles_{0};
  SimStats st_;
};

}  // namespace keel::fpga::sim
