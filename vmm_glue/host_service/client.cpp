// HostServiceClient: the paravisor's end of a host-service channel (protocol in ring_layout.h).
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <string>

#include "keel/vmm/host_service.h"
#include "ring_layout.h"

namespace keel::vmm {
namespace {

using detail::RingHeader;

Error sys_error(const std::string& what) {
  return make_error(Errc::io_error, what + " failed: " + std::strerror(errno));
}

/// A close-on-exec, non-blocking duplicate of `fd`, or -1.
int dup_nonblocking(int fd) noexcept {
  const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return -1;
  const int flags = fcntl(copy, F_GETFL);
  if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(copy, F_SETFL, flags | O_NONBLOCK) != 0)) {
    ::close(copy);
    return -1;
  }
  return copy;
}

std::string header_problem(const RingHeader& h, std::uint32_t entries) {
  if (h.magic != detail::kRingMagic) return "bad magic (not a keel host-service ring)";
  if (h.version != detail::kRingVersion) {
    return "version " + std::to_string(h.version) + ", expected " +
           std::to_string(detail::kRingVersion);
  }
  if (h.entries != entries) {
    return "ring has " + std::to_string(h.entries) + " entries, the channel says " +
           std::to_string(entries);
  }
  if (h.sqe_size != sizeof(detail::RingSqe) || h.cqe_size != sizeof(detail::RingCqe) ||
      h.sq_offset != detail::kSqOffset || h.cq_offset != detail::cq_offset(entries) ||
      h.total_bytes != detail::ring_bytes(entries)) {
    return "entry sizes or offsets differ from this build's layout";
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<HostServiceClient>> HostServiceClient::attach(const HostChannel& channel) {
  if (!detail::valid_entries(channel.entries)) {
    return make_error(Errc::invalid_argument, "host channel entries " +
                                                  std::to_string(channel.entries) +
                                                  " is not a power of two in 1..32768");
  }
  const std::uint64_t bytes = detail::ring_bytes(channel.entries);
  struct stat st {};
  if (fstat(channel.ring_fd, &st) != 0) return sys_error("fstat of the host channel's ring fd");
  if (static_cast<std::uint64_t>(st.st_size) < bytes) {
    return make_error(Errc::invalid_argument,
                      "host channel ring fd holds " + std::to_string(st.st_size) +
                          " bytes; a ring of " + std::to_string(channel.entries) +
                          " entries needs " + std::to_string(bytes));
  }
  std::unique_ptr<HostServiceClient> c(new HostServiceClient());
  // The shared rings (header, SQ, CQ) written by both sides; the memfd is sealed by the service.
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, channel.ring_fd, 0);
  if (map == MAP_FAILED) return sys_error("mmap of the host channel's rings");
  c->map_ = map;
  c->map_bytes_ = bytes;
  // reinterpret_cast: the header object the service constructed at offset 0 of the same memfd.
  c->header_ = reinterpret_cast<RingHeader*>(map);
  if (const std::string why = header_problem(*c->header_, channel.entries); !why.empty()) {
    return make_error(Errc::invalid_argument, "host channel: " + why);
  }
  // reinterpret_cast: the SQ and CQ arrays at their fixed offsets (checked just above).
  c->sq_ = reinterpret_cast<detail::RingSqe*>(static_cast<std::byte*>(map) + detail::kSqOffset);
  c->cq_ = reinterpret_cast<detail::RingCqe*>(static_cast<std::byte*>(map) +
                                              detail::cq_offset(channel.entries));
  c->submit_fd_ = dup_nonblocking(channel.submit_eventfd);
  c->complete_fd_ = dup_nonblocking(channel.complete_eventfd);
  if (c->submit_fd_ < 0 || c->complete_fd_ < 0) return sys_error("dup of a host channel eventfd");
  c->entries_ = channel.entries;
  c->mask_ = channel.entries - 1;
  // Continue where a previous client of this channel stopped (normally all zero).
  c->sq_tail_ = c->header_->sq_tail.load(std::memory_order_acquire);
  c->sq_published_ = c->sq_tail_;
  c->cq_head_ = c->header_->cq_head.load(std::memory_order_acquire);
  const std::uint32_t outstanding = c->sq_tail_ - c->cq_head_;
  if (outstanding > channel.entries) {
    return make_error(Errc::invalid_argument, "host channel: corrupt ring indices");
  }
  c->outstanding_ = outstanding;
  return c;
}

HostServiceClient::~HostServiceClient() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
  if (submit_fd_ >= 0) ::close(submit_fd_);
  if (complete_fd_ >= 0) ::close(complete_fd_);
}

bool HostServiceClient::submit(std::uint64_t tag, HostOp op, std::uint64_t offset_bytes,
                               std::span<const HostSegment> segs,
                               std::uint32_t zero_bytes) noexcept {
  if (outstanding_ >= entries_ || stopped_) return false;
  if (header_->service_state.load(std::memory_order_relaxed) == detail::kServiceStopped) {
    return false;  // poll() notices the stop properly and cancels what is queued
  }
  detail::RingSqe& e = sq_[sq_tail_ & mask_];
  e.tag = tag;
  e.offset = offset_bytes;
  e.zero_bytes = zero_bytes;
  e.segment_count = static_cast<std::uint32_t>(
      std::min<std::size_t>(segs.size(), std::numeric_limits<std::uint32_t>::max()));
  e.op = static_cast<std::uint8_t>(op);
  const std::size_t n = std::min<std::size_t>(segs.size(), detail::kMaxSegments);
  for (std::size_t i = 0; i < n; ++i) e.segments[i] = {segs[i].gpa, segs[i].bytes, 0};
  ++sq_tail_;
  ++outstanding_;
  ++stats_.submitted;
  return true;
}

void HostServiceClient::notify() noexcept {
  if (sq_tail_ == sq_published_) return;
  sq_published_ = sq_tail_;
  // Waker side of the protocol (ring_layout.h): seq_cst tail store, then seq_cst flag load.
  header_->sq_tail.store(sq_tail_, std::memory_order_seq_cst);
  if (header_->service_needs_wakeup.load(std::memory_order_seq_cst) != 0 &&
      header_->service_needs_wakeup.exchange(0, std::memory_order_acq_rel) != 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t w = ::write(submit_fd_, &one, sizeof one);
    ++stats_.kicks;
  }
}

unsigned HostServiceClient::poll(std::span<HostCompletion> out) noexcept {
  if (out.empty()) return 0;
  // Acquired before the CQ tail: a stopped service published its last completions first.
  const bool stopped =
      stopped_ || header_->service_state.load(std::memory_order_acquire) == detail::kServiceStopped;
  std::uint32_t avail = header_->cq_tail.load(std::memory_order_acquire) - cq_head_;
  if (avail > entries_) avail = 0;  // corrupt tail: never read outside the ring
  unsigned n = static_cast<unsigned>(std::min<std::size_t>(avail, out.size()));
  for (unsigned i = 0; i < n; ++i) {
    const detail::RingCqe& e = cq_[cq_head_ & mask_];
    out[i] = HostCompletion{e.tag, e.result};
    ++cq_head_;
  }
  if (n > 0) header_->cq_head.store(cq_head_, std::memory_order_release);
  outstanding_ -= std::min(n, outstanding_);
  if (stopped && n == avail) n += cancel_unconsumed(out.subspan(n));
  stats_.completed += n;
  if (n == 0) ++stats_.idle_polls;
  return n;
}

unsigned HostServiceClient::cancel_unconsumed(std::span<HostCompletion> out) noexcept {
  if (!stopped_) {
    stopped_ = true;
    // The service's final head; it will not consume past it. Clamp a bogus one into the ring.
    cancel_next_ = header_->sq_head.load(std::memory_order_acquire);
    if (sq_tail_ - cancel_next_ > entries_)
      cancel_next_ = sq_tail_ - std::min(outstanding_, entries_);
  }
  unsigned n = 0;
  while (n < out.size() && cancel_next_ != sq_tail_) {
    out[n++] = HostCompletion{sq_[cancel_next_ & mask_].tag, -ECANCELED};
    ++cancel_next_;
  }
  outstanding_ -= std::min(n, outstanding_);
  return n;
}

bool HostServiceClient::prepare_wait() noexcept {
  // Sleeper side of the protocol (ring_layout.h): seq_cst flag store, then seq_cst re-check.
  header_->client_needs_wakeup.store(1, std::memory_order_seq_cst);
  const bool ready =
      header_->cq_tail.load(std::memory_order_seq_cst) != cq_head_ ||
      header_->service_state.load(std::memory_order_seq_cst) == detail::kServiceStopped;
  if (ready) header_->client_needs_wakeup.store(0, std::memory_order_relaxed);
  return !ready;
}

void HostServiceClient::end_wait() noexcept {
  header_->client_needs_wakeup.store(0, std::memory_order_relaxed);
}

unsigned HostServiceClient::wait(std::span<HostCompletion> out,
                                 std::chrono::nanoseconds timeout) noexcept {
  notify();
  unsigned n = poll(out);
  if (n > 0 || outstanding_ == 0 || out.empty()) return n;
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (prepare_wait()) {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        end_wait();
        return poll(out);
      }
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      const timespec ts{static_cast<time_t>(ns / 1'000'000'000),
                        static_cast<long>(ns % 1'000'000'000)};
      pollfd p{complete_fd_, POLLIN, 0};
      ++stats_.sleeps;
      if (::ppoll(&p, 1, &ts, nullptr) > 0) {
        std::uint64_t value = 0;
        [[maybe_unused]] const ssize_t r = ::read(complete_fd_, &value, sizeof value);
      }
      end_wait();
    }
    n = poll(out);
    if (n > 0 || outstanding_ == 0 || Clock::now() >= deadline) return n;
  }
}

bool HostServiceClient::service_alive() const noexcept {
  return !stopped_ &&
         header_->service_state.load(std::memory_order_acquire) != detail::kServiceStopped;
}

}  // namespace keel::vmm
