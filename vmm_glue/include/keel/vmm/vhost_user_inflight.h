// keel/vmm/vhost_user_inflight.h - vhost-user inflight I/O tracking for split rings
// (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD; QEMU docs/interop/vhost-user.rst, "Inflight I/O
// tracking"): the shared record's wire layout, the record itself (a sealed memfd the back end
// creates on GET_INFLIGHT_FD and the front end hands back with SET_INFLIGHT_FD after a back-end
// restart), and the tracker one virtqueue keeps in it, so that a back end started after a crash
// resubmits, once and in order, every request its predecessor took and did not complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::vhost_user {

/// GET_INFLIGHT_FD (request and reply) and SET_INFLIGHT_FD payload. The request of GET carries
/// num_queues and queue_size; its reply all four fields and the record's fd (SCM_RIGHTS).
struct Inflight {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
  std::uint16_t num_queues;
  std::uint16_t queue_size;
};
static_assert(sizeof(Inflight) == 24 && offsetof(Inflight, mmap_offset) == 8 &&
              offsetof(Inflight, num_queues) == 16 && offsetof(Inflight, queue_size) == 18);

/// The state of one head descriptor (the spec's DescStateSplit).
struct InflightDesc {
  std::uint8_t inflight;  ///< 1 while taken from the avail ring and not yet returned.
  std::uint8_t padding[5];
  std::uint16_t next;     ///< Links the last batch of used heads (from last_batch_head).
  std::uint64_t counter;  ///< Order in which the heads were taken.
};
static_assert(sizeof(InflightDesc) == 16 && offsetof(InflightDesc, next) == 6 &&
              offsetof(InflightDesc, counter) == 8);

/// Start of one queue's record (the spec's QueueRegionSplit); desc_num InflightDesc follow.
struct InflightQueueHeader {
  std::uint64_t features;  ///< 0.
  std::uint16_t version;   ///< kInflightVersion; 0: never used (a fresh record).
  std::uint16_t desc_num;  ///< Descriptors in the record (the queue_size of GET_INFLIGHT_FD).
  std::uint16_t last_batch_head;
  std::uint16_t used_idx;  ///< The used ring's idx once the last batch was fully recorded.
};
static_assert(sizeof(InflightQueueHeader) == 16 && offsetof(InflightQueueHeader, version) == 8 &&
              offsetof(InflightQueueHeader, desc_num) == 10 &&
              offsetof(InflightQueueHeader, last_batch_head) == 12 &&
              offsetof(InflightQueueHeader, used_idx) == 14);

inline constexpr std::uint16_t kInflightVersion = 1;

/// Bytes of one queue's record in keel's layout: the header and queue_size descriptors, rounded
/// up to 64 bytes. The queues' records follow each other from mmap_offset.
constexpr std::uint64_t inflight_queue_bytes(std::uint32_t queue_size) {
  return (sizeof(InflightQueueHeader) + std::uint64_t{queue_size} * sizeof(InflightDesc) + 63) &
         ~std::uint64_t{63};
}

}  // namespace keel::vhost_user

namespace keel::vmm {

/// One virtqueue's inflight record, written by the queue's worker (one thread at a time), over
/// shared memory the front end (and nobody else) can also write. The data path only ever
/// writes it: what it reads back is a snapshot, taken once at ring start and validated.
///
/// Per request, in the spec's order: taken() (counter, then the inflight flag) before the
/// request is submitted; before_used() (next, last_batch_head), then the used element and
/// used->idx (Virtqueue::push_used), then after_used() (clear the flag, record used_idx).
/// A crash between any two of these stores is resolved by start().
class InflightQueue {
 public:
  /// Over `area`: inflight_queue_bytes(capacity) bytes, 8-byte aligned, that outlive it.
  InflightQueue(std::byte* area, std::uint16_t capacity) noexcept
      : area_(area), capacity_(capacity) {}

  struct Start {
    /// The ring fits the record (ring size <= capacity): its requests are tracked.
    bool tracking = false;
    /// Where the ring takes its next avail entry.
    std::uint16_t last_avail = 0;
    /// Why the record was not trusted (then nothing is resubmitted and it starts afresh).
    std::string rejected;
  };
  /// The ring starts with `ring_size` entries, the used ring's idx at `used_idx` and
  /// SET_VRING_BASE at `base`. A fresh record (version 0) is initialised. A used record is read
  /// once and checked: version, desc_num, a last batch within the ring, every inflight flag 0
  /// or 1 and only on heads within the ring, distinct counters. A record that fails any check
  /// is logged, reset and resubmits nothing (last_avail = base). Otherwise the last batch is
  /// resolved (a head put on the used ring before its flag was cleared is not inflight), and
  /// resubmit() lists the heads still inflight by counter. Their avail entries lie before
  /// used_idx + their number: that is where the ring goes on (a front end whose connection
  /// broke sends the used idx as base, QEMU's behaviour; after a clean stop base already is
  /// that sum). A base that is neither rejects the record. Never fails.
  Start start(std::uint16_t ring_size, std::uint16_t used_idx, std::uint16_t base);
  /// The heads start() found inflight, oldest first. They stay inflight (with their counters)
  /// until they are used.
  const std::vector<std::uint16_t>& resubmit() const noexcept { return resubmit_; }

  // ---- the data path: `head` < the ring size given to start(); stores only ----
  /// Taken from the avail ring, about to be submitted.
  void taken(std::uint16_t head) noexcept;
  /// About to be put on the used ring.
  void before_used(std::uint16_t head) noexcept;
  /// Put on the used ring, which now has idx `used_idx`.
  void after_used(std::uint16_t head, std::uint16_t used_idx) noexcept;
  /// Given back to the avail ring unprocessed (Virtqueue::unpop): no longer taken.
  void given_back(std::uint16_t head) noexcept;

 private:
  void reset(std::uint16_t used_idx) noexcept;

  std::byte* area_;
  std::uint16_t capacity_;
  std::uint64_t counter_ = 0;
  std::uint16_t last_batch_ = 0;
  std::vector<std::uint16_t> resubmit_;
};

/// A whole record: its file, its mapping here, a tracker per queue.
class InflightRegion {
 public:
  /// GET_INFLIGHT_FD: a memfd of num_queues x inflight_queue_bytes(queue_size) bytes, zero
  /// (every queue fresh), sealed against resizing, mapped. Errors: invalid_argument
  /// (num_queues 0, queue_size not a power of two up to 32768), io_error (memfd, mmap).
  static Result<std::unique_ptr<InflightRegion>> create(std::uint16_t num_queues,
                                                        std::uint16_t queue_size);
  /// SET_INFLIGHT_FD: maps the record the front end sends. Its description must be what
  /// create() makes: queue_size a power of two up to 32768, num_queues >= 1, mmap_size exactly
  /// num_queues x inflight_queue_bytes(queue_size), mmap_offset page-aligned, the fd a regular
  /// file sealed with F_SEAL_SHRINK holding mmap_offset + mmap_size bytes (so that no access
  /// to the mapping can fault). Errors: invalid_argument, out_of_range, io_error (fstat, mmap).
  static Result<std::unique_ptr<InflightRegion>> map(UniqueFd fd, const vhost_user::Inflight& desc);
  ~InflightRegion();
  InflightRegion(const InflightRegion&) = delete;
  InflightRegion& operator=(const InflightRegion&) = delete;

  int fd() const noexcept { return fd_.get(); }
  const vhost_user::Inflight& description() const noexcept { return desc_; }
  /// Queue q's tracker, or nullptr past num_queues.
  InflightQueue* queue(unsigned q) noexcept { return q < queues_.size() ? &queues_[q] : nullptr; }
  /// The mapping (mmap_size bytes), for tests.
  std::byte* data() noexcept { return base_; }

 private:
  static constexpr std::uint64_t kPage = 4096;
  InflightRegion() = default;
  Status attach(UniqueFd fd, const vhost_user::Inflight& desc);

  UniqueFd fd_;
  vhost_user::Inflight desc_{};
  std::byte* base_ = nullptr;  // mapping of [mmap_offset, mmap_offset + mmap_size)
  std::uint64_t mapped_ = 0;
  std::vector<InflightQueue> queues_;
};

}  // namespace keel::vmm
