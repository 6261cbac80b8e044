// The NVMe 1.4 controller of one VF in the reference card.
//
// Host threads touch only the register file (atomics, lock-free). Everything else is card
// state, touched only by the card under the card's lock (service(), reset(), the PF).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/fpga/card_storage.h"
#include "keel/fpga/iommu.h"
#include "keel/fpga/msix_interrupts.h"
#include "keel/wire/nvme.h"

namespace keel::fpga::model {

/// Wakes a sleeping free-running card when the host does something (doorbell, register write).
struct Activity {
  std::atomic<std::uint64_t> epoch{0};
  std::atomic<bool> sleeping{false};

  /// Host side, after its store (doorbell, register). The fence pairs with the one the card
  /// issues after setting `sleeping`: either the card sees the store, or this sees `sleeping`
  /// and wakes it. No read-modify-write on the shared line unless the card sleeps.
  void kick() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sleeping.load(std::memory_order_relaxed)) {
      epoch.fetch_add(1, std::memory_order_seq_cst);
      epoch.notify_all();
    }
  }
};

struct ControllerParams {
  unsigned vf_index = 0;
  unsigned function = 1;   ///< PCIe function number (vf_index + 1).
  unsigned max_ioq = 8;    ///< IO queue pairs the card can give one VF.
  unsigned mqes = 1023;    ///< CAP.MQES (0-based queue entries).
  unsigned mdts = 5;       ///< Identify MDTS: 2^mdts minimum pages per command.
  unsigned lba_shift = 9;  ///< LBA size 2^lba_shift bytes (ModelConfig::lba_shift).
  unsigned clock_mhz = 250;
};

/// Resources the PF grants a VF (VFCFG block).
struct VfResources {
  std::uint64_t slice_base = 0;  ///< First card LBA.
  std::uint64_t slice_lbas = 0;
  std::uint32_t ioq = 1;
  std::uint32_t weight = 1;
  std::uint32_t rate_mbps = 0;
  bool enabled = false;
  std::uint32_t err_code = 0;  ///< VFCFG STATUS.ERR_CODE of the last refused ENABLE.
};

/// Counters the PF reads (atomics: the host reads them while the card runs).
struct VfCounters {
  std::atomic<std::uint64_t> cmds{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> busy_cycles{0};
  std::atomic<std::uint64_t> cmd_errors{0};
  std::atomic<std::uint64_t> bad_doorbells{0};
};

/// Faults armed by the FaultInjector (card state).
struct VfFaults {
  unsigned drop = 0;
  unsigned delay_count = 0;
  std::uint64_t delay_ns = 0;
  std::uint64_t ready_delay_ns = 0;
  bool refuse_dma = false;
  unsigned duplicate = 0;       // completions posted twice
  unsigned stale = 0;           // completions preceded by a replay of the CQ's previous entry
  unsigned wrong_sq_id = 0;     // completions naming another SQ
  unsigned bad_sq_head = 0;     // completions with an SQ head beyond the SQ
  unsigned swallow_aborts = 0;  // Aborts acknowledged without completing their command
};

class VfController {
 public:
  VfController(const ControllerParams& params, Iommu& iommu, CardStorage& storage,
               Activity& activity);

  // ---- host side (any thread) ----
  std::uint32_t read32(std::uint64_t offset) const noexcept;
  std::uint64_t read64(std::uint64_t offset) const noexcept;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept;
  MsixInterrupts& interrupts() noexcept { return irq_; }
  bool removed() const noexcept { return removed_.load(std::memory_order_acquire); }
  const VfCounters& counters() const noexcept { return counters_; }

  // ---- card side (card lock held) ----
  /// Runs the controller for one arbitration turn: up to `budget` commands. Returns the number
  /// of commands completed or consumed.
  unsigned service(std::uint64_t now_ns, unsigned budget) noexcept;
  /// True when service() would do something now or at a later time without host input.
  bool busy(std::uint64_t now_ns) const noexcept;
  bool timers_pending() const noexcept;
  /// Controller reset (as CC.EN 1 -> 0): queues deleted, outstanding work dropped.
  void reset() noexcept;
  /// Function-level reset: controller reset plus register file back to reset values.
  void flr() noexcept;
  void set_removed(bool removed) noexcept;
  void raise_fatal() noexcept;

  VfResources& resources() noexcept { return res_; }
  VfFaults& faults() noexcept { return faults_; }
  const ControllerParams& params() const noexcept { return p_; }

 private:
  struct Sq {
    bool live = false;
    Iova base = 0;
    std::uint16_t size = 0;  // entries
    std::uint16_t head = 0;
    std::uint16_t cqid = 0;
  };
  struct Cq {
    bool live = false;
    Iova base = 0;
    std::uint16_t size = 0;
    std::uint16_t tail = 0;
    bool phase = true;
    bool ien = false;
    std::uint16_t iv = 0;
    unsigned sq_refs = 0;
    unsigned reserved = 0;  // completions delayed towards this CQ
    nvme::Cqe last{};       // the entry posted last (replayed by the stale-CQE fault)
    bool has_last = false;
  };
  struct Pending {
    std::uint64_t due_ns;
    std::uint16_t cqid;
    nvme::Cqe cqe;
  };
  struct Stuck {
    std::uint16_t sqid;
    std::uint16_t cqid;
    std::uint16_t cid;
    std::uint16_t sq_head;
  };
  struct Outcome {
    nvme::StatusCode status = nvme::sc::kSuccess;
    std::uint32_t dw0 = 0;
    bool no_completion = false;  // the command completes later (Async Event Request)
  };
  /// A failed command that must not be retried as is.
  static Outcome fail(nvme::StatusCode s) noexcept {
    return {static_cast<nvme::StatusCode>(s | nvme::kDnr)};
  }
  struct Segment {
    Iova iova;
    std::uint32_t bytes;
  };

  void handle_cc(std::uint64_t now_ns) noexcept;
  void enable(std::uint64_t now_ns) noexcept;
  unsigned drain_sq(std::uint16_t qid, unsigned budget, std::uint64_t now_ns) noexcept;
  bool cq_has_room(const Cq& cq, unsigned entries = 1) const noexcept;
  /// Posts a completion, wrong if a CqeFault is armed.
  void post_faulty(std::uint16_t cqid, nvme::Cqe cqe) noexcept;
  void complete(std::uint16_t sqid, std::uint16_t cqid, const nvme::Sqe& sqe, Outcome r,
                std::uint64_t now_ns) noexcept;
  bool post(std::uint16_t cqid, nvme::Cqe cqe) noexcept;
  void post_due(std::uint64_t now_ns) noexcept;
  void fatal() noexcept;

  Outcome admin(const nvme::Sqe& sqe, std::uint64_t now_ns) noexcept;
  Outcome identify(const nvme::Sqe& sqe) noexcept;
  Outcome create_cq(const nvme::Sqe& sqe) noexcept;
  Outcome create_sq(const nvme::Sqe& sqe) noexcept;
  Outcome delete_cq(const nvme::Sqe& sqe) noexcept;
  Outcome delete_sq(const nvme::Sqe& sqe) noexcept;
  Outcome features(const nvme::Sqe& sqe, bool set) noexcept;
  Outcome get_log_page(const nvme::Sqe& sqe) noexcept;
  Outcome abort_cmd(const nvme::Sqe& sqe, std::uint64_t now_ns) noexcept;

  Outcome io(const nvme::Sqe& sqe, std::uint64_t now_ns) noexcept;
  Outcome rw(const nvme::Sqe& sqe, bool write) noexcept;
  Outcome write_zeroes(const nvme::Sqe& sqe) noexcept;
  Outcome flush_cmd(const nvme::Sqe& sqe) noexcept;
  /// Copies `bytes` between `host` and the PRPs of `sqe` (to the host when `to_host`).
  nvme::StatusCode transfer(const nvme::Sqe& sqe, std::byte* card, std::size_t bytes,
                            bool to_host) noexcept;
  nvme::StatusCode copy_out(const void* src, std::size_t bytes, const nvme::Sqe& sqe) noexcept;
  bool rate_allows(std::uint64_t now_ns) noexcept;

  std::uint32_t page_bytes() const noexcept;
  std::uint64_t cap() const noexcept;

  const ControllerParams p_;
  Iommu& iommu_;
  CardStorage& storage_;
  Activity& activity_;
  MsixInterrupts irq_;

  // Register file (host-written, card-read).
  std::atomic<std::uint32_t> cc_{0};
  std::atomic<std::uint32_t> csts_{0};
  std::atomic<std::uint32_t> aqa_{0};
  std::atomic<std::uint64_t> asq_{0};
  std::atomic<std::uint64_t> acq_{0};
  std::atomic<std::uint32_t> intms_{0};
  std::unique_ptr<std::atomic<std::uint32_t>[]> doorbells_;  // [2*qid] SQ tail, [2*qid+1] CQ head
  std::atomic<bool> removed_{false};
  // Set by a host write of CC with EN = 0, so that an EN 1 -> 0 -> 1 sequence written between
  // two card steps still resets the controller (the RTL sees every register write).
  std::atomic<bool> en_cleared_{false};

  // Card state.
  std::uint32_t last_cc_ = 0;
  bool ready_ = false;
  bool fatal_ = false;
  std::uint64_t ready_at_ns_ = 0;
  bool ready_pending_ = false;
  std::vector<Sq> sqs_;
  std::vector<Cq> cqs_;
  std::vector<Pending> pending_;
  std::vector<Stuck> stuck_;
  std::vector<std::uint16_t> aers_;  // outstanding Async Event Request CIDs
  std::uint32_t nsqa_ = 0;           // Number of Queues allocated (1-based), 0: not set
  std::uint32_t ncqa_ = 0;
  unsigned rr_ = 1;          // next IO SQ in round robin
  std::int64_t tokens_ = 0;  // rate limiter (bytes)
  std::uint64_t tokens_at_ns_ = 0;
  std::uint64_t host_reads_ = 0, host_writes_ = 0, units_read_ = 0, units_written_ = 0;
  std::vector<std::byte> scratch_;  // identify / log page staging
  std::uint16_t cur_sqid_ = 0;
  std::vector<Segment> segs_;            // PRP walk result, reused
  std::vector<std::uint64_t> prp_list_;  // one PRP list page, reused

  VfResources res_;
  VfFaults faults_;
  VfCounters counters_;
};

}  // namespace keel::fpga::model
