// The host storage service's private state: channels as the service sees them, the requests in
// its hands, and the thread that serves them.
#pragma once

#include <liburing.h>
#include <sys/uio.h>
#include <time.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keel/thread_cpu.h"
#include "keel/unique_fd.h"
#include "keel/vmm/host_service.h"
#include "ring_layout.h"

namespace keel::vmm::detail {

inline constexpr std::uint64_t kZeroChunk = 1 << 20;  // bytes of the zero source (per iovec)
/// O_DIRECT: bytes of each slot's bounce buffer (the largest window of an unaligned request).
inline constexpr std::uint64_t kBounceBytes = 128 << 10;

/// A channel on the service side. Built by open_channel() on any thread, then handed to the
/// service thread, which alone touches the fields below the fds.
struct ServiceChannel {
  UniqueFd ring_fd;
  UniqueFd submit_fd;
  UniqueFd complete_fd;
  void* map = nullptr;
  std::uint64_t map_bytes = 0;
  RingHeader* header = nullptr;
  RingSqe* sq = nullptr;
  RingCqe* cq = nullptr;
  std::uint32_t entries = 0;
  std::uint32_t mask = 0;
  std::uint32_t sq_head = 0;  // next SQ index to consume (published to header->sq_head)
  std::uint32_t cq_tail = 0;  // next CQ index to fill (published in batches)
  std::uint32_t held = 0;     // requests taken from the SQ and not yet completed
  bool dirty = false;         // cq_tail moved since it was last published
  bool broken = false;        // corrupt indices seen: the SQ is no longer read
  unsigned id = 0;            // order of adoption, for messages

  ServiceChannel() = default;
  ServiceChannel(const ServiceChannel&) = delete;
  ServiceChannel& operator=(const ServiceChannel&) = delete;
  ~ServiceChannel();

  /// A sealed memfd of ring_bytes(entries), mapped and initialised, and its two eventfds.
  static Result<std::unique_ptr<ServiceChannel>> create(std::uint32_t entries);
};

/// What a slot's operation in the kernel does.
enum class Stage : std::uint8_t {
  sync,       // flush: fdatasync
  vectored,   // readv/writev of the request's iovecs (page cache, or O_DIRECT and aligned)
  zero,       // write_zeroes of [position + done, + step_bytes): fallocate, or zero writes
  read_head,  // O_DIRECT write: read the partial block at the start of the window
  read_tail,  // O_DIRECT write: read the partial block at the end of the window
  transfer,   // O_DIRECT: the window between the image and the bounce buffer
};

/// One request in the service's hands, from the SQ until its completion is posted.
struct Slot {
  ServiceChannel* channel = nullptr;
  std::uint64_t tag = 0;
  std::uint64_t position = 0;  // image offset where the request starts
  std::uint64_t total = 0;     // bytes to move (read/write/write_zeroes)
  std::uint64_t done = 0;      // bytes moved so far (short IO continues from here)
  HostOp op = HostOp::read;
  Stage stage = Stage::vectored;
  bool busy = false;
  bool cancel_sent = false;  // stopping: an IORING_OP_ASYNC_CANCEL for it is in the ring
  bool zero_fill = false;    // write_zeroes carried out by writing zeroes
  bool replan = false;       // issue() picks the next step first (Impl::plan)
  bool tail_edge = false;    // the window's last block is partial and read on its own
  bool waiting = false;      // in Impl::deferred: its blocks are busy with another write
  bool claimed = false;      // O_DIRECT write step in flight over [claim_lo, claim_hi)
  bool rmw = false;          // ... and it is a read-modify-write of that window
  unsigned retries = 0;
  unsigned iov_first = 0;
  unsigned iov_count = 0;
  std::uint64_t step_bytes = 0;    // request bytes the current step moves
  std::uint64_t window = 0;        // O_DIRECT bounce: image offset of the window (aligned)
  std::uint64_t window_bytes = 0;  // its length (aligned, at most kBounceBytes)
  std::uint64_t claim_lo = 0;
  std::uint64_t claim_hi = 0;
  std::byte* bounce = nullptr;  // kBounceBytes of Impl::bounce_map (O_DIRECT only)
  iovec iov[kMaxSegments];
};

inline constexpr unsigned kMaxRetries = 16;  // resubmissions of one operation (EAGAIN, EINTR)

/// Drops the first `n` bytes from the slot's iovecs (after a short transfer).
inline void advance(Slot& s, std::uint64_t n) noexcept {
  while (n > 0 && s.iov_count > 0) {
    iovec& v = s.iov[s.iov_first];
    if (n < v.iov_len) {
      v.iov_base = static_cast<std::byte*>(v.iov_base) + n;
      v.iov_len -= n;
      return;
    }
    n -= v.iov_len;
    ++s.iov_first;
    --s.iov_count;
  }
}

/// A region of guest memory (or a shared region) mapped into the service.
struct MappedRegion {
  std::uint64_t gpa = 0;
  std::uint64_t bytes = 0;
  std::uint64_t dev = 0;  // st_dev, st_ino of the fd it maps
  std::uint64_t ino = 0;
  std::byte* host = nullptr;  // host address of gpa
  void* map = nullptr;        // the mapping (starts at or before host: page-aligned offset)
  std::uint64_t map_bytes = 0;
};

}  // namespace keel::vmm::detail

namespace keel::vmm {

struct HostStorageService::Impl {
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl();

  // Setup (host_service.cpp).
  Status open_image(const HostServiceConfig& config);
  /// Replaces image_fd by an O_DIRECT descriptor of the same file and sets dio_align.
  Status open_direct(const std::string& name, bool block_device);
  Status map_guest_memory(const HostServiceConfig& config);
  /// Checks and maps one region (any thread); `what` names it in errors.
  static Result<detail::MappedRegion> map_region(const HostMemoryRegion& region,
                                                 const std::string& what);
  Status init_io(const HostServiceConfig& config);

  // The thread (service_loop.cpp).
  void run() noexcept;
  bool adopt_channels() noexcept;  // and shared regions
  bool drain(detail::ServiceChannel& ch) noexcept;
  bool can_take(const detail::ServiceChannel& ch) const noexcept;
  void publish(detail::ServiceChannel& ch) noexcept;
  void publish_all() noexcept;
  void sleep_until_work() noexcept;
  void shut_down() noexcept;
  void mark_broken(detail::ServiceChannel& ch, const char* why) noexcept;
  void note_error(const std::string& message) noexcept;

  // Requests (service_io.cpp).
  void take(detail::ServiceChannel& ch, const detail::RingSqe& entry) noexcept;
  int prepare(detail::Slot& slot, const detail::RingSqe& entry) noexcept;
  void issue(std::uint32_t slot_index) noexcept;
  bool reap() noexcept;
  void on_complete(std::uint64_t user_data, int res) noexcept;
  void finish(std::uint32_t slot_index, int result) noexcept;
  void post(detail::ServiceChannel& ch, std::uint64_t tag, int result) noexcept;
  std::byte* translate(std::uint64_t gpa, std::uint64_t bytes) const noexcept;
  void submit_prepared() noexcept;
  /// Queues a cancel for every request in the kernel that has none yet; false if the ring had
  /// no room for all of them (the rest are tried again).
  bool cancel_in_flight() noexcept;
  void vectored_done(std::uint32_t slot_index, int res) noexcept;
  void zero_done(std::uint32_t slot_index, int res) noexcept;
  void prep_zero(io_uring_sqe* sqe, detail::Slot& slot) noexcept;

  // O_DIRECT (service_direct.cpp).
  /// Whether what is left of a read/write may go to the O_DIRECT descriptor as it is.
  bool aligned_rest(const detail::Slot& slot) const noexcept;
  /// Picks the next step of a write_zeroes or of a bounced read/write.
  void plan(detail::Slot& slot) noexcept;
  /// O_DIRECT: reserves the blocks the slot's next step writes; false if another write holds
  /// them in a way that excludes it (the slot then waits in `deferred`).
  bool claim(detail::Slot& slot) noexcept;
  void release(detail::Slot& slot) noexcept;
  /// Issues the deferred slots again (or, stopping, completes them -ECANCELED).
  void wake_deferred() noexcept;
  void prep_bounce(io_uring_sqe* sqe, detail::Slot& slot) noexcept;
  void edge_done(std::uint32_t slot_index, int res) noexcept;
  void transfer_done(std::uint32_t slot_index, int res) noexcept;

  HostServiceConfig config;
  UniqueFd image_fd;
  std::uint64_t base_offset = 0;
  std::uint64_t length = 0;
  std::vector<detail::MappedRegion> regions;  // service thread only, after start
  const std::byte* zeros = nullptr;  // read-only anonymous mapping: reads as zeroes, no RSS
  /// O_DIRECT: alignment of file offsets, lengths and memory (a power of two up to the page
  /// size); 0: the page cache.
  std::uint64_t dio_align = 0;
  std::byte* bounce_map = nullptr;  // O_DIRECT: kBounceBytes per slot, populated on first use
  std::uint64_t bounce_map_bytes = 0;
  unsigned rmw_holders = 0;             // slots with `rmw` set
  bool wake_pending = false;            // a claim was released while slots were deferred
  std::vector<std::uint32_t> deferred;  // slots waiting for a claim (capacity: depth)
  std::vector<std::uint32_t> woken;     // wake_deferred()'s working list (capacity: depth)

  io_uring ring{};
  bool ring_ready = false;
  unsigned prepared = 0;  // SQEs prepared since the last io_uring_submit
  UniqueFd uring_event_fd;
  UniqueFd control_fd;  // stop and new channels
  UniqueFd epoll_fd;
  bool zero_range = true;
  bool stopping = false;
  /// Tests only (HostServiceForTests): false stands in for IO the kernel cannot cancel.
  bool cancel_at_stop = true;
  /// Set by shut_down() when requests were still in the kernel: the regions and the zero
  /// mapping they may use are never unmapped.
  bool leak_mappings = false;
  unsigned stuck_at_stop = 0;  // read by stop() after the thread has finished

  std::vector<detail::Slot> slots;
  std::vector<std::uint32_t> free_slots;
  std::vector<std::unique_ptr<detail::ServiceChannel>> channels;  // service thread only

  // guards pending, pending_regions, region_info, regions_added/adopted, closed and
  // last_error_text
  std::mutex pending_mutex;
  std::vector<std::unique_ptr<detail::ServiceChannel>> pending;
  std::vector<detail::MappedRegion> pending_regions;  // shared regions not yet adopted
  std::vector<HostRegionInfo> region_info;            // everything mapped, for regions()
  std::uint64_t regions_added = 0;                    // shared regions handed to the thread
  std::uint64_t regions_adopted = 0;                  // of those, in `regions`
  std::condition_variable regions_cv;                 // regions_adopted moved
  bool closed = false;  // shut_down() has taken the last pending channels
  std::string last_error_text;
  std::atomic<bool> has_pending{false};
  std::atomic<bool> stop{false};
  /// The thread's last act is to set `done` here: shared, so that a stop() that gives up
  /// waiting (and detaches) never frees what the thread still touches.
  struct Finished {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
  };
  std::shared_ptr<Finished> finished = std::make_shared<Finished>();
  std::mutex stop_mutex;  // serialises stop()
  bool stopped = false;   // stop() has run (guarded by stop_mutex)
  Status stop_status;     // its outcome (guarded by stop_mutex)

  std::thread thread;
  ThreadCpuMeter cpu;              // the service thread's CPU time (started and finished by run())
  std::atomic<int> thread_tid{0};  // kernel tid of the service thread, once it runs

  std::mutex worker_mutex;                 // guards worker_ns
  std::map<int, std::uint64_t> worker_ns;  // io-wq worker tid -> CPU ns at its last sample

  // Written by the service thread only (relaxed load + store), read by stats().
  struct Counters {
    std::atomic<std::uint64_t> requests{0}, bytes{0}, errors{0}, io_uring_submits{0};
    std::atomic<std::uint64_t> retries{0}, sleeps{0}, client_kicks{0}, broken_channels{0};
    std::atomic<std::uint64_t> cancelled_at_stop{0}, stuck_at_stop{0};
    std::atomic<std::uint64_t> bounced{0}, rmw_reads{0}, overlap_waits{0};
  } counters;
};

/// Single-writer counter increment: no locked instruction on the service's hot path.
inline void bump(std::atomic<std::uint64_t>& counter, std::uint64_t n = 1) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace keel::vmm
