// A minimal test-side NVMe host: SQEs written into DMA memory, doorbells rung, CQEs polled.
//
// Deliberately simple and separate from drivers/nvme so the card suite tests the card, not the
// driver. Works on every backend through the Card/Function interface; on a lockstep card every
// wait steps the card. One NvmeHost per function, used from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "keel/fpga/card.h"
#include "keel/result.h"
#include "keel/wire/nvme.h"

namespace keel::testing {

using namespace std::chrono_literals;

class NvmeHost {
 public:
  static constexpr std::uint32_t kPage = 4096;

  NvmeHost(fpga::Card& card, fpga::Function& fn) : card_(card), fn_(fn) {}

  /// CC.EN 0 (wait RDY 0), admin queues, CC.EN 1 (wait RDY 1), bounded by CAP.TO.
  /// Errors: timeout, device_error (CSTS.CFS), no_memory.
  Status enable(std::uint16_t admin_entries = 32, std::uint32_t mps = 0);
  /// CC.EN 0 and wait for RDY 0. Errors: timeout.
  Status disable();

  /// Writes the SQE into queue `qid` (assigning the next CID unless keep_cid) and rings the
  /// SQ tail doorbell. Returns the CID used.
  std::uint16_t submit(std::uint16_t qid, nvme::Sqe sqe, bool keep_cid = false);
  /// Writes the SQE without ringing the doorbell (for batching); ring() publishes.
  std::uint16_t queue(std::uint16_t qid, nvme::Sqe sqe);
  void ring(std::uint16_t qid);
  /// Next completion on the CQ paired with `qid`, polling (and stepping a lockstep card).
  /// Errors: timeout.
  Result<nvme::Cqe> reap(std::uint16_t qid, std::chrono::nanoseconds timeout = 1s);
  /// Non-blocking: true and *out when a completion is there.
  bool try_reap(std::uint16_t qid, nvme::Cqe* out);
  /// submit + reap, checking that the completion belongs to the command.
  Result<nvme::Cqe> run(std::uint16_t qid, nvme::Sqe sqe, std::chrono::nanoseconds timeout = 1s);

  /// Create IO CQ `qid` then IO SQ `qid` bound to it. Returns the failing completion's status
  /// as device_error.
  Status create_io_pair(std::uint16_t qid, std::uint16_t entries, bool irq = false,
                        std::uint16_t vector = 0);
  /// Forget a queue pair on the host side (after Delete or a reset).
  void drop_queue(std::uint16_t qid);

  /// Fills prp1/prp2 of `sqe` for `bytes` at `iova`, building a PRP list (chained when
  /// `list_slots` limits entries per list page) in host memory owned by this host.
  Status set_prps(nvme::Sqe& sqe, fpga::Iova iova, std::size_t bytes, unsigned list_slots = 0);

  nvme::Sqe rw_cmd(bool write, std::uint64_t slba, std::uint32_t nlb, fpga::Iova iova,
                   std::size_t bytes);

  fpga::Function& fn() { return fn_; }
  fpga::Card& card() { return card_; }
  std::chrono::nanoseconds ready_timeout() const;

 private:
  struct Queue {
    fpga::DmaBuffer sq;
    fpga::DmaBuffer cq;
    std::uint16_t entries = 0;
    std::uint16_t sq_tail = 0;
    std::uint16_t cq_head = 0;
    bool phase = true;
    bool live = false;
  };
  Queue& q(std::uint16_t qid);
  void write_sqe(Queue& queue, const nvme::Sqe& sqe);

  fpga::Card& card_;
  fpga::Function& fn_;
  std::vector<Queue> queues_;
  std::vector<fpga::DmaBuffer> prp_pages_;  // PRP list pages, kept until the host dies
  std::size_t next_prp_page_ = 0;
  std::uint16_t next_cid_ = 1;
};

/// Deterministic data for block `lba` written in `round`, so a read can be checked without
/// keeping copies.
void fill_pattern(std::byte* dst, std::size_t bytes, std::uint64_t lba, std::uint32_t seed);
/// Index of the first byte that differs from the pattern, or -1.
long check_pattern(const std::byte* src, std::size_t bytes, std::uint64_t lba, std::uint32_t seed);

}  // namespace keel::testing
