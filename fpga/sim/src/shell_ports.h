// The per-port models the Shell is made of: one class per group of the card's ports, each with
// its own sample() (before the clock edge: the handshakes of this cycle) and drive() (after the
// edge: what it presents during the next cycle).
//
// Every port draws its back-pressure from one shared Backpressure stream; the Shell calls the
// ports in a fixed order, so a stalled run is reproducible for a given seed.
//
// Threading: as the Shell (one thread at a time); only the atomics are read from elsewhere.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/fpga/card_storage.h"
#include "keel/fpga/iommu.h"
#include "keel/fpga/msix_interrupts.h"
#include "keel/fpga/sim/sim_card.h"

class Vkeel_card;

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

inline constexpr unsigned kShellRing = 32;  // outstanding requests per AXI channel
inline constexpr unsigned kMaxBeats = 256;  // AXI4 burst limit
inline constexpr unsigned kBeat = 64;       // bytes per 512-bit beat
inline constexpr std::uint8_t kOkay = 0;
inline constexpr std::uint8_t kSlvErr = 2;

/// Seeded back-pressure: stall() says whether a ready/valid the shell controls is withheld.
class Backpressure {
 public:
  Backpressure(unsigned percent, std::uint64_t seed) : percent_(percent), state_(seed | 1) {}
  bool stall() noexcept;

 private:
  unsigned percent_;
  std::uint64_t state_;
};

/// What every port uses: the card, the clock, the configuration, back-pressure and counters.
struct PortContext {
  Vkeel_card& top;
  const ShellConfig& cfg;
  const std::uint64_t& cycle;  ///< the shell's clock
  Backpressure& bp;
  SimStats& stats;
};

/// Checks an AXI address channel before the edge: an address offered and not taken must still
/// be offered, unchanged; no burst may cross a 4 KiB page.
class AddrChannelCheck {
 public:
  void check(SimStats& st, bool valid, bool ready, std::uint64_t addr, unsigned len, unsigned id);

 private:
  bool valid_ = false;
  std::uint64_t addr_ = 0;
  unsigned len_ = 0;
  unsigned id_ = 0;
};

/// A read burst accepted by a read port: its data (read at acceptance) and progress.
struct ReadBurst {
  std::uint8_t id = 0;
  std::uint8_t user = 0;
  std::uint64_t addr = 0;
  unsigned beats = 0;
  unsigned sent = 0;
  bool err = false;
  std::uint64_t ready_at = 0;
  std::vector<std::byte> data;
};

/// A write response waiting for its latency.
struct WriteResp {
  std::uint8_t id;
  std::uint8_t user;
  std::uint8_t resp;
  std::uint64_t ready_at;
};

/// Host-DMA read (AXI4 slave, 512-bit, through the IOMMU): requests in order, served one burst
/// after another after the configured latency.
class HostReadPort {
 public:
  HostReadPort(PortContext& pc, Iommu& iommu);
  void sample();
  void drive();
  bool quiet() const noexcept { return count_ == 0; }

 private:
  void accept(std::uint8_t id, std::uint8_t user, std::uint64_t addr, unsigned beats);

  PortContext& pc_;
  Iommu& iommu_;
  std::vector<ReadBurst> ring_;
  unsigned head_ = 0, count_ = 0;
  bool shown_ = false;  // a read beat is on the bus until taken
  AddrChannelCheck ar_check_;
};

/// Host-DMA write (AXI4 slave, through the IOMMU): addresses in order; data fills the oldest
/// one; a burst is written to host memory when its last beat is in, and answered after the
/// configured latency.
class HostWritePort {
 public:
  HostWritePort(PortContext& pc, Iommu& iommu);
  void sample();
  void drive();
  bool quiet() const noexcept { return count_ == 0 && b_count_ == 0; }

 private:
  struct Burst {
    std::uint8_t id = 0;
    std::uint8_t user = 0;
    std::uint64_t addr = 0;
    unsigned beats = 0;
    unsigned got = 0;
    std::vector<std::byte> data;
    std::vector<std::uint64_t> strb;
  };
  void finish(Burst& w);

  PortContext& pc_;
  Iommu& iommu_;
  std::vector<Burst> ring_;
  unsigned head_ = 0, count_ = 0;
  std::vector<WriteResp> b_;
  unsigned b_head_ = 0, b_count_ = 0;
  bool b_shown_ = false;  // a write response is on the bus until taken
  AddrChannelCheck aw_check_;
};

/// Card DDR read (AXI4 slave over the mmapped image).
class DdrReadPort {
 public:
  DdrReadPort(PortContext& pc, CardStorage& storage);
  void sample();
  void drive();
  bool quiet() const noexcept { return count_ == 0; }

 private:
  void accept(std::uint64_t addr, unsigned beats);

  PortContext& pc_;
  CardStorage& storage_;
  std::vector<ReadBurst> ring_;
  unsigned head_ = 0, count_ = 0;
  bool shown_ = false;
  AddrChannelCheck ar_check_;
};

/// Card DDR write (AXI4 slave over the mmapped image): beats land as they come.
class DdrWritePort {
 public:
  DdrWritePort(PortContext& pc, CardStorage& storage);
  void sample();
  void drive();
  bool quiet() const noexcept { return aw_count_ == 0 && b_count_ == 0; }

 private:
  PortContext& pc_;
  CardStorage& storage_;
  std::uint64_t addr_ = 0;  // next DDR write beat
  unsigned left_ = 0;       // beats of the DDR burst being written
  bool err_ = false;
  std::vector<std::uint64_t> aw_addr_;  // accepted DDR write addresses
  std::vector<unsigned> aw_beats_;
  unsigned aw_head_ = 0, aw_count_ = 0;
  std::vector<WriteResp> b_;
  unsigned b_head_ = 0, b_count_ = 0;
  bool b_shown_ = false;
  AddrChannelCheck aw_check_;
};

/// Flush requests: persist a byte range of card DDR (done the cycle after acceptance).
class FlushPort {
 public:
  FlushPort(PortContext& pc, CardStorage& storage);
  void sample();
  void drive();
  bool quiet() const noexcept { return !busy_; }

 private:
  PortContext& pc_;
  CardStorage& storage_;
  bool busy_ = false;
  bool done_ = false;
  bool err_ = false;
  bool done_shown_ = false;  // done was presented this cycle
};

/// Address-translation checks (ATS-style): is [addr, addr + len) mapped for the function?
/// One at a time, answered after the configured latency; refused ones count as DMA faults.
class TranslationPort {
 public:
  TranslationPort(PortContext& pc, Iommu& iommu, unsigned functions);
  void sample();
  void drive();
  bool quiet() const noexcept { return !pending_; }
  /// While on, every translation request of the function is refused.
  void set_refuse(unsigned fn, bool on) noexcept;

 private:
  PortContext& pc_;
  Iommu& iommu_;
  unsigned functions_;
  std::unique_ptr<std::atomic<bool>[]> refuse_;
  bool pending_ = false;
  bool ok_ = false;
  std::uint64_t at_ = 0;
  bool resp_shown_ = false;  // the response was presented this cycle
};

/// MSI-X requests to the functions' interrupt models.
class MsixPort {
 public:
  MsixPort(PortContext& pc, std::vector<std::unique_ptr<MsixInterrupts>>& irqs);
  void sample();
  void drive();

 private:
  PortContext& pc_;
  std::vector<std::unique_ptr<MsixInterrupts>>& irqs_;
};

/// Side band: FLR requests and fault-injection requests to the card, and the card's function
/// events (an FLR or controller reset has finished: the shell drops per-function state).
class SideBandPort {
 public:
  SideBandPort(PortContext& pc, std::vector<std::unique_ptr<MsixInterrupts>>& irqs,
               TranslationPort& ats);
  void sample();
  void drive();
  bool quiet() const noexcept { return flr_queue_.empty() && dbg_queue_.empty(); }
  void request_flr(unsigned fn) { flr_queue_.push_back(fn); }
  void request_dbg(const DbgOp& op) { dbg_queue_.push_back(op); }
  std::uint64_t flr_done(unsigned fn) const noexcept;

 private:
  void on_event(unsigned fn, unsigned kind);

  PortContext& pc_;
  std::vector<std::unique_ptr<MsixInterrupts>>& irqs_;
  TranslationPort& ats_;
  std::vector<unsigned> flr_queue_;
  std::vector<DbgOp> dbg_queue_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> flr_done_;
};

/// The AXI4-Lite master for BAR accesses: one transaction at a time.
class MmioMaster {
 public:
  enum class State { idle, w_addr, w_resp, r_addr, r_data };

  MmioMaster(PortContext& pc, Iommu& iommu);
  /// `num_vfs` is the card's NUM_VFS before the access.
  void start(const MmioOp& op, unsigned num_vfs);
  void sample();
  void drive();
  bool busy() const noexcept { return state_ != State::idle; }
  std::uint64_t result() const noexcept { return result_; }

 private:
  void after_write();

  PortContext& pc_;
  Iommu& iommu_;
  State state_ = State::idle;
  MmioOp op_;
  std::uint64_t result_ = 0;
  unsigned nv_before_ = 0;
};

}  // namespace keel::fpga::sim
