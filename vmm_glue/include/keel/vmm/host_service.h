// keel/vmm/host_service.h - the software fallback: a host storage service that performs a
// guest's block IO on the backing image with io_uring, and the client the paravisor uses to
// reach it through a shared-memory ring with eventfd notification.
//
// The wire format and the wake-up protocol are documented in vmm_glue/host_service/ring_layout.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "keel/clock.h"
#include "keel/result.h"

namespace keel::vmm {

namespace detail {
struct RingHeader;
struct RingSqe;
struct RingCqe;
}  // namespace detail

/// Segments one request may carry.
inline constexpr unsigned kHostMaxSegments = 64;

enum class HostOp : std::uint8_t { read, write, flush, write_zeroes };

/// Where add_shared_region() places memory in the service's address space: far above any
/// guest-physical address, so a shared region never aliases guest RAM.
inline constexpr std::uint64_t kHostSharedBase = std::uint64_t{1} << 56;

/// A piece of memory the service maps: an address in its address space (the guest-physical
/// address for guest RAM, the address add_shared_region() returned for a shared region) and a
/// length.
struct HostSegment {
  std::uint64_t gpa;
  std::uint32_t bytes;
};

/// The outcome of one request: its tag, and 0 or -errno. Errors the service produces itself:
/// -EINVAL (unknown op, no or more than kHostMaxSegments segments, a zero-length segment, a
/// flush/write_zeroes with segments, write_zeroes of 0 bytes, a range outside the slice),
/// -EFAULT (a segment outside every region the service maps), -ECANCELED (the service stopped
/// first and the request is out of the kernel, not done), -ETIMEDOUT (the service stopped and
/// the request was still in the kernel after stop_timeout_ms: it may yet read or write its
/// memory and its range of the image), -EIO (the image ended early); anything else comes from
/// the IO itself.
struct HostCompletion {
  std::uint64_t tag;
  std::int32_t result;
};

/// One mapping of guest RAM: `bytes` of `fd` from `fd_offset` appear at guest address `gpa`
/// (a vhost-user memory table entry). A segment must lie within one region.
struct HostMemoryRegion {
  int fd = -1;
  std::uint64_t fd_offset = 0;
  std::uint64_t gpa = 0;
  std::uint64_t bytes = 0;
};

/// A region the service maps, as regions() reports it.
struct HostRegionInfo {
  std::uint64_t gpa = 0;    ///< Address of its first byte in the service's address space.
  std::uint64_t bytes = 0;  ///< Length.
  std::uint64_t dev = 0;    ///< st_dev and st_ino of the fd it maps: which memory it is.
  std::uint64_t ino = 0;
  bool shared = false;  ///< Added with add_shared_region() (not guest RAM given at start).
};

/// How the service reaches the image: through the kernel's page cache, or around it (O_DIRECT).
enum class HostDirectIo : std::uint8_t {
  automatic,  ///< O_DIRECT for a block device, the page cache for a regular file.
  on,         ///< O_DIRECT whatever the image is (tests use it on a file in /tmp).
  off,        ///< The page cache, a block device too (not coherent with a VF on the same media).
};

struct HostServiceConfig {
  std::string image_path;         ///< The same disk image the card's storage maps.
  int image_fd = -1;              ///< If >= 0, used (duplicated) instead of image_path.
  std::uint64_t base_offset = 0;  ///< Byte offset of this guest's slice in the image.
  std::uint64_t length = 0;       ///< Slice length in bytes; 0: to the end of the image.
  /// memfd of guest RAM at GPA 0 (mapped MAP_SHARED). Leave -1 (and `regions` empty) for a
  /// service that must not see guest RAM: a confidential guest's, which gets only the shared
  /// pool its paravisor registers with add_shared_region().
  int guest_memory_fd = -1;
  std::uint64_t guest_memory_bytes = 0;
  std::vector<HostMemoryRegion> regions;  ///< Instead of guest_memory_fd: several regions.
  unsigned io_uring_depth = 128;          ///< io_uring entries = requests in flight at once.
  bool zero_range = true;  ///< write_zeroes via fallocate(ZERO_RANGE) where supported.
  /// Page cache or O_DIRECT. A block device is the PF's namespace of an SR-IOV SSD whose VF
  /// writes the same media behind the page cache, so by default (automatic) it is read and
  /// written with O_DIRECT; a regular file is shared with the card's MAP_SHARED mapping
  /// through the page cache, so it keeps buffered IO. With O_DIRECT, base_offset and the
  /// slice's end must be multiples of the image's direct IO alignment (the logical block size
  /// of a block device); requests need not be (see HostStorageService).
  HostDirectIo direct = HostDirectIo::automatic;
  unsigned idle_timeout_ms = 100;  ///< Longest sleep of the service thread between checks.
  /// How long stopping waits for IO already in the kernel to be cancelled or to finish.
  unsigned stop_timeout_ms = 5000;
  /// The clock stop_timeout_ms (and stop()'s bound on the service thread) is counted on; null:
  /// the host's monotonic clock. A test passes a ManualClock to make a stop time out on cue
  /// (shared: a service thread stuck in the kernel outlives the service object).
  std::shared_ptr<const Clock> clock;
};

/// What a client attaches to. The fds belong to the service and stay open until it is
/// destroyed; a client duplicates what it keeps (another process receives them by SCM_RIGHTS).
struct HostChannel {
  int ring_fd;           ///< memfd of the shared rings (sealed against resizing).
  int submit_eventfd;    ///< Client -> service kick.
  int complete_eventfd;  ///< Service -> client kick.
  unsigned entries;      ///< Size of each ring; also the client's limit of outstanding requests.
};

/// What a paravisor needs of its host storage service: channels, a shared region for a
/// confidential guest's bounce pool, and what the service maps. Implemented in this process by
/// HostStorageService and across processes by RemoteHostStorage (keel-hostd; remote_host.h).
class HostStorage {
 public:
  virtual ~HostStorage() = default;
  /// A new channel with rings of `entries` (a power of two, 1..32768). One per virtqueue. Its
  /// fds stay valid while this object lives; a client duplicates what it keeps.
  virtual Result<HostChannel> open_channel(unsigned entries = 256) = 0;
  /// Maps `bytes` of `fd` from `fd_offset` into the service; returns where (see
  /// HostStorageService::add_shared_region).
  virtual Result<std::uint64_t> add_shared_region(int fd, std::uint64_t fd_offset,
                                                  std::uint64_t bytes) = 0;
  /// Every region the service maps, by address.
  virtual std::vector<HostRegionInfo> regions() const = 0;

 protected:
  HostStorage() = default;
  HostStorage(const HostStorage&) = default;
  HostStorage& operator=(const HostStorage&) = default;
};

/// The host side: one thread that serves every channel (one per virtqueue) with io_uring on
/// the image. Guest memory is mapped at start and must not change afterwards.
///
/// Page cache (HostServiceConfig::direct): a regular file is read and written through the page
/// cache, which keeps it coherent with the card's MAP_SHARED mapping of the same file. A block
/// device is read and written with O_DIRECT: a VF of the same SSD reads and writes its media
/// without the host kernel, so a block the host path left in the page cache (or read from it)
/// would be stale for one side or the other after a failover. A request whose offset, segment
/// addresses and segment lengths are all multiples of the direct IO alignment goes to the
/// device as it is; any other is carried through a bounce buffer of the request's slot
/// (aligned windows of at most 128 KiB; the partial blocks at a write's edges are read first
/// and written back whole, while no other write to those blocks is in flight). Nothing goes
/// through the page cache either way; flush is fdatasync.
///
/// Confidential guests: their RAM is private, so the service is started without guest memory
/// (or with other guests' only) and their paravisor registers a shared bounce pool it owns with
/// add_shared_region(); requests of that guest name only pool addresses, and a segment naming
/// guest RAM completes with -EFAULT. regions() tells what the service can reach.
///
/// Threading: open_channel(), add_shared_region(), regions(), stats(), thread_cpu_ns(),
/// io_worker_cpu_ns() and last_error() may be called from any thread while the service lives.
///
/// Memory: a channel of 256 entries is a 280 KiB memfd (1088-byte SQ entries, 16-byte CQ
/// entries); the service adds 136 KiB per 128 of io_uring_depth. With O_DIRECT it reserves a
/// 128 KiB bounce buffer per io_uring_depth entry (address space only: a page is allocated when
/// an unaligned request first uses it, and kept).
class HostStorageService final : public HostStorage {
 public:
  /// Opens the image, maps guest memory and starts the service thread.
  /// Errors: invalid_argument (no image, bad depth, empty/overlapping regions, slice past the
  /// end of the image; with O_DIRECT: a slice not on the alignment, an image that refuses
  /// O_DIRECT or needs an alignment above the page size), not_found (image missing), io_error
  /// (open, mmap, io_uring, thread).
  static Result<std::unique_ptr<HostStorageService>> start(const HostServiceConfig& config);
  /// Stops the service (at most once; later calls return the first call's outcome). Every
  /// request in its hands completes exactly once: IO in the kernel is cancelled
  /// (IORING_OP_ASYNC_CANCEL) and its completion awaited for up to stop_timeout_ms; a request
  /// whose completion came back reports its real result (-ECANCELED when the kernel cancelled
  /// it: "not done", a write may have reached part of its range, so the caller re-issues it in
  /// full). A request still in the kernel after that is completed -ETIMEDOUT, and the memory
  /// it names stays mapped for the life of the process (leaked on purpose: the kernel may still
  /// write to it). Requests not yet taken are completed by their client with -ECANCELED.
  /// Errors: timeout (requests were still in the kernel, or the service thread did not finish;
  /// the message says which and how many).
  Status stop();
  /// stop(), then releases everything that no IO in the kernel can still use.
  ~HostStorageService() override;
  HostStorageService(const HostStorageService&) = delete;
  HostStorageService& operator=(const HostStorageService&) = delete;

  /// A new channel with rings of `entries` (a power of two, 1..32768). One per virtqueue.
  /// Errors: invalid_argument (entries), io_error (memfd, mmap, eventfd), gone (stopped).
  Result<HostChannel> open_channel(unsigned entries = 256) override;

  /// Maps `bytes` of `fd` from `fd_offset` (MAP_SHARED; the fd is not kept) at a free address
  /// at or above kHostSharedBase, above every region already mapped, and returns that address.
  /// Once it returns, requests on every channel may name the region. It stays mapped until the
  /// service is destroyed (it cannot go away under IO in flight). Used by the paravisor of a
  /// confidential guest for the pool it bounces data through.
  /// Errors: invalid_argument (no fd, 0 bytes, fd smaller than fd_offset + bytes), io_error
  /// (mmap), gone (stopping).
  Result<std::uint64_t> add_shared_region(int fd, std::uint64_t fd_offset,
                                          std::uint64_t bytes) override;
  /// Every region the service maps (guest RAM given at start, then shared regions), by address.
  std::vector<HostRegionInfo> regions() const override;

  /// CPU time the service thread has used (user + system), in nanoseconds.
  std::uint64_t thread_cpu_ns() const;
  /// CPU time of the kernel's io_uring worker threads of this service ("iou-wrk-<tid>"), in
  /// nanoseconds. io_uring hands them what cannot complete without blocking: on ext4 every
  /// buffered write, every flush and fallocate. Host-side cost is thread_cpu_ns() plus this.
  /// Sampled per call from /proc (control path); a worker's time counts up to the last sample
  /// before it exits (workers exit only after seconds of idleness).
  std::uint64_t io_worker_cpu_ns() const;

  struct Stats {
    std::uint64_t requests = 0;           ///< Requests completed by the service.
    std::uint64_t bytes = 0;              ///< Bytes read, written or zeroed successfully.
    std::uint64_t errors = 0;             ///< Requests completed with an error.
    std::uint64_t io_uring_submits = 0;   ///< io_uring_submit() calls that submitted work.
    std::uint64_t retries = 0;            ///< Short or interrupted IO resubmitted.
    std::uint64_t sleeps = 0;             ///< Times the thread slept in epoll_wait.
    std::uint64_t client_kicks = 0;       ///< Completion eventfd writes.
    std::uint64_t broken_channels = 0;    ///< Channels dropped for corrupt ring indices.
    std::uint64_t cancelled_at_stop = 0;  ///< Requests the kernel cancelled when stopping.
    std::uint64_t stuck_at_stop = 0;      ///< Requests still in the kernel after stop_timeout_ms.
    /// O_DIRECT: transfers between the image and a bounce buffer (windows of unaligned requests).
    std::uint64_t bounced = 0;
    std::uint64_t rmw_reads = 0;  ///< O_DIRECT: partial edge blocks read for an unaligned write.
    /// O_DIRECT: writes held back until a read-modify-write of the same blocks was done (or an
    /// unaligned write until the writes to its blocks were).
    std::uint64_t overlap_waits = 0;
  };
  Stats stats() const;
  /// The last problem the service noticed on its own (corrupt channel, stuck IO at stop), or "".
  std::string last_error() const;

 private:
  struct Impl;
  friend struct HostServiceForTests;  // test seam (tests/host_service): stands in for a hung device
  explicit HostStorageService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The paravisor side of one channel; one client per channel. Owned by one thread:
/// submit/notify/poll take no locks, allocate nothing and make no system call except the
/// eventfd write of notify() when the service may be asleep. Completions arrive in any order.
/// May outlive the service (its fds and mapping are its own).
class HostServiceClient {
 public:
  /// Maps the channel's rings and duplicates its eventfds.
  /// Errors: invalid_argument (not a host-service ring, wrong entries), io_error (dup, mmap).
  static Result<std::unique_ptr<HostServiceClient>> attach(const HostChannel& channel);
  ~HostServiceClient();
  HostServiceClient(const HostServiceClient&) = delete;
  HostServiceClient& operator=(const HostServiceClient&) = delete;

  /// Queues a request (segments are service addresses: guest-physical, or in a shared region;
  /// at most kHostMaxSegments). Nothing is validated here: the service completes a malformed
  /// request with -EINVAL/-EFAULT. Returns false, queuing nothing, if `entries` requests are
  /// outstanding or the service has stopped.
  bool submit(std::uint64_t tag, HostOp op, std::uint64_t offset_bytes,
              std::span<const HostSegment> segs, std::uint32_t zero_bytes = 0) noexcept;
  /// Publishes queued requests; writes the submit eventfd only if the service may be asleep.
  void notify() noexcept;
  /// Reaps up to out.size() completions without blocking; returns how many.
  unsigned poll(std::span<HostCompletion> out) noexcept;
  /// notify(), then blocks on the completion eventfd until at least one completion arrives or
  /// `timeout` passes; returns the number reaped (0 on timeout, or at once if nothing is
  /// outstanding).
  unsigned wait(std::span<HostCompletion> out, std::chrono::nanoseconds timeout) noexcept;

  /// For callers with their own event loop: call prepare_wait() before sleeping on
  /// completion_fd(); if it returns false, completions are already there (poll instead).
  /// completion_fd() is non-blocking; read it (8 bytes) after it becomes readable, then call
  /// end_wait() (else the service's next completion still writes the eventfd once).
  bool prepare_wait() noexcept;
  void end_wait() noexcept;
  int completion_fd() const noexcept { return complete_fd_; }

  unsigned capacity() const noexcept { return entries_; }
  /// Requests submitted whose completion has not been reaped yet.
  unsigned outstanding() const noexcept { return outstanding_; }
  /// False once the service has stopped (its remaining requests complete with -ECANCELED).
  bool service_alive() const noexcept;

  struct Stats {
    std::uint64_t submitted = 0;
    std::uint64_t completed = 0;
    std::uint64_t kicks = 0;       ///< Submit eventfd writes.
    std::uint64_t sleeps = 0;      ///< Blocking waits on the completion eventfd.
    std::uint64_t idle_polls = 0;  ///< poll() calls that found nothing.
  };
  const Stats& stats() const noexcept { return stats_; }

 private:
  HostServiceClient() = default;
  unsigned cancel_unconsumed(std::span<HostCompletion> out) noexcept;

  detail::RingHeader* header_ = nullptr;
  detail::RingSqe* sq_ = nullptr;
  detail::RingCqe* cq_ = nullptr;
  void* map_ = nullptr;
  std::uint64_t map_bytes_ = 0;
  int submit_fd_ = -1;
  int complete_fd_ = -1;
  unsigned entries_ = 0;
  std::uint32_t mask_ = 0;
  std::uint32_t sq_tail_ = 0;       // next SQ index to fill
  std::uint32_t sq_published_ = 0;  // last sq_tail stored to the header
  std::uint32_t cq_head_ = 0;       // next CQ index to consume
  std::uint32_t cancel_next_ = 0;   // after the service stopped: next SQ index to cancel
  unsigned outstanding_ = 0;
  bool stopped_ = false;  // the service's stop has been seen
  Stats stats_;
};

}  // namespace keel::vmm
