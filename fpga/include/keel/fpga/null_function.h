// keel/fpga/null_function.h - an NVMe function with nothing behind it (like Linux null_blk):
// the doorbell write that submits commands completes them at once, in the caller's thread, so
// a benchmark of the driver on it measures the driver alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/wire/nvme.h"

namespace keel::fpga {

struct NullFunctionConfig {
  /// Logical blocks of namespace 1 (512 bytes each).
  std::uint64_t blocks = std::uint64_t{1} << 21;  // 1 GiB
  /// IO queue pairs the controller grants at most.
  std::uint16_t io_queues = 8;
  /// Largest queue, in entries (CAP.MQES + 1).
  std::uint16_t max_queue_entries = 4096;
  /// Identify MDTS: the largest transfer is 4 KiB << mdts.
  std::uint8_t mdts = 5;
  /// PCIe function number reported by number().
  unsigned number = 1;
  /// Time the device's part of every doorbell write (TSC), for device_ns(): a few ns each.
  bool measure_device_time = false;
};

/// A minimal NVMe 1.4 controller with no thread and no media. BAR0 has CAP (MQES, CQR, TO = 1,
/// DSTRD = 0, CSS = NVM, 4 KiB pages), VS, CC, CSTS, AQA, ASQ, ACQ and the doorbells at
/// 0x1000 + 8 * qid; CC.EN takes effect (CSTS.RDY) within the write. The admin SQ tail doorbell
/// runs the admin commands there and then: Identify (controller, namespace 1, active namespace
/// list), Set/Get Features Number of Queues, Create/Delete IO CQ/SQ, Abort (finds nothing: every
/// command has completed); anything else completes with Invalid Opcode. An IO SQ tail doorbell
/// completes Read, Write, Flush and Write Zeroes (checked against the namespace and MDTS; no
/// data moves) and anything else with Invalid Opcode, each into its CQ with the right phase, SQ
/// head, SQ id and CID. A command whose CQ is full (per the host's CQ head doorbell) is not
/// fetched until a CQ head doorbell makes room: completions are held back, never overwritten.
/// No MSI-X vectors (polled queues only; a CQ with interrupts enabled is refused).
///
/// DMA: alloc_dma takes anonymous memory and map_dma records the caller's, at IOVAs as the
/// IommuFunction has them; the device reads queues through host pointers it resolves once, when
/// the queue is created (unmapping a live queue's memory makes the controller fatal, CSTS.CFS).
///
/// Threading: as Function, with one limit the hot path pays nothing for: the doorbells of one
/// queue pair are written by one thread at a time (the driver's QueuePair rule), and admin
/// commands, CC writes and FLR must not run while IO doorbells of the queues they delete or
/// reset are being written. The function is its own Stepper: nothing to advance.
class NullFunction final : public Function, public Stepper, private DmaOwner {
 public:
  explicit NullFunction(const NullFunctionConfig& config = {});
  ~NullFunction() override;

  unsigned number() const noexcept override { return config_.number; }
  std::uint64_t bar_size() const noexcept override { return kBarBytes; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  Result<DmaBuffer> alloc_dma(std::size_t bytes) override;
  Status map_dma(void* host, std::size_t bytes, Iova iova) override;
  Status unmap_dma(Iova iova) override;
  unsigned num_vectors() const noexcept override { return 0; }
  Result<std::uint32_t> wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) override;
  Status flr() override;

  /// Stepper: the device has done everything by the time the doorbell write returns.
  void advance() noexcept override {}

  struct Stats {
    std::uint64_t sq_doorbells = 0;  ///< IO SQ tail doorbell writes.
    std::uint64_t cq_doorbells = 0;  ///< IO CQ head doorbell writes.
    std::uint64_t io_commands = 0;   ///< IO commands completed.
    std::uint64_t io_errors = 0;     ///< ... of which with an error status.
    /// Times a doorbell left commands unfetched because their CQ was full.
    std::uint64_t cq_full = 0;
    std::uint64_t admin_commands = 0;
    /// Doorbell writes ignored: no such queue, a value beyond the queue, controller not ready.
    std::uint64_t bad_doorbells = 0;
  };
  /// Sums over the queues; read it while no doorbell is being written.
  Stats stats() const noexcept;
  /// With measure_device_time: nanoseconds spent inside IO doorbell writes (the device's work
  /// plus the timer reads), summed over the queues. 0 otherwise.
  double device_ns() const noexcept;

  static constexpr std::uint64_t kBarBytes = 0x4000;

 private:
  struct Window {
    std::byte* host;
    std::size_t bytes;
    bool owned;  // alloc_dma's (freed by release_dma) or the caller's (map_dma)
  };
  struct Cq {
    bool live = false;
    std::byte* base = nullptr;
    Iova iova = 0;
    std::uint16_t size = 0;
    std::uint16_t tail = 0;  // next entry the device writes
    std::uint16_t head = 0;  // per the host's CQ head doorbell
    bool phase = true;
    bool starved = false;  // an SQ of this CQ has commands left unfetched for lack of room
    std::uint16_t sq_refs = 0;
    std::atomic<std::uint64_t> doorbells{0};
  };
  struct Sq {
    bool live = false;
    const std::byte* base = nullptr;
    Iova iova = 0;
    std::uint16_t size = 0;
    std::uint16_t head = 0;  // next entry the device fetches
    std::uint16_t tail = 0;  // per the host's SQ tail doorbell
    std::uint16_t cqid = 0;
    std::atomic<std::uint64_t> doorbells{0};
    std::atomic<std::uint64_t> commands{0};
    std::atomic<std::uint64_t> errors{0};
    std::atomic<std::uint64_t> cq_full{0};
    std::atomic<std::uint64_t> device_ticks{0};
  };

  void release_dma(void* host, std::size_t bytes, Iova iova) noexcept override;
  /// Host address of [iova, iova + bytes) when one window holds all of it, else null.
  std::byte* translate(Iova iova, std::size_t bytes) const noexcept;
  void write_cc(std::uint32_t value) noexcept;
  void controller_reset() noexcept;
  void doorbell(std::uint64_t offset, std::uint32_t value) noexcept;
  /// Fetches and completes commands of SQ `qid` while its CQ has room.
  void run_sq(std::uint16_t qid) noexcept;
  /// The completion status of IO command `sqe` (no data moves).
  keel::nvme::StatusCode execute_io(const keel::nvme::Sqe& sqe) const noexcept;
  struct AdminOutcome {
    keel::nvme::StatusCode status = keel::nvme::sc::kSuccess;
    std::uint32_t dw0 = 0;
  };
  AdminOutcome execute_admin(const keel::nvme::Sqe& sqe) noexcept;
  AdminOutcome identify(const keel::nvme::Sqe& sqe) noexcept;
  AdminOutcome create_cq(const keel::nvme::Sqe& sqe) noexcept;
  AdminOutcome create_sq(const keel::nvme::Sqe& sqe) noexcept;
  AdminOutcome delete_cq(const keel::nvme::Sqe& sqe) noexcept;
  AdminOutcome delete_sq(const keel::nvme::Sqe& sqe) noexcept;
  AdminOutcome features(const keel::nvme::Sqe& sqe, bool set) noexcept;
  /// Writes `bytes` (<= 4096) of admin data to the command's PRP1 (and PRP2). False on a bad
  /// address.
  bool to_host(const keel::nvme::Sqe& sqe, const void* data, std::size_t bytes) noexcept;
  void fatal() noexcept;
  std::uint16_t granted_sqs() const noexcept { return nsqa_ != 0 ? nsqa_ : config_.io_queues; }
  std::uint16_t granted_cqs() const noexcept { return ncqa_ != 0 ? ncqa_ : config_.io_queues; }

  const NullFunctionConfig config_;
  const std::uint64_t cap_;
  std::atomic<std::uint64_t> admin_commands_{0};
  std::atomic<std::uint64_t> bad_doorbells_{0};
  std::atomic<std::uint32_t> cc_{0};
  std::atomic<std::uint32_t> csts_{0};
  std::uint32_t aqa_ = 0;
  std::uint64_t asq_ = 0, acq_ = 0;
  std::uint16_t nsqa_ = 0, ncqa_ = 0;  // granted by Set Features (0: not set)
  std::vector<Sq> sqs_;                // by qid; 0 is the admin queue
  std::vector<Cq> cqs_;
  mutable std::mutex dma_mu_;
  std::map<Iova, Window> windows_;  // keyed by start IOVA
  Iova next_iova_;
  std::uint64_t tsc0_ = 0, steady0_ns_ = 0;
};

}  // namespace keel::fpga
