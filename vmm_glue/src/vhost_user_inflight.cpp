// vhost-user inflight I/O tracking: the shared record (created for GET_INFLIGHT_FD, mapped from
// SET_INFLIGHT_FD), the per-request stores of the data path, and the check and resolution of a
// record a previous back end left behind. The record is shared with the front end: the data
// path only writes it, and start() reads it once into a snapshot before it trusts anything.
#include "keel/vmm/vhost_user_inflight.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

namespace keel::vmm {

namespace vu = vhost_user;

namespace {

constexpr std::size_t kHeaderBytes = sizeof(vu::InflightQueueHeader);
constexpr std::size_t kDescBytes = sizeof(vu::InflightDesc);

// Stores into the shared record: atomic_ref keeps them in program order (release) and whole,
// so a crash between any two leaves a state start() can resolve. `p` points into the mapping at
// a field's offset (the record is 64-byte aligned, every field naturally aligned).
template <typename T>
void put(std::byte* p, T v, std::memory_order o) noexcept {
  std::atomic_ref<T>(*reinterpret_cast<T*>(p)).store(v, o);
}

bool queue_size_ok(std::uint32_t n) { return n != 0 && n <= 32768 && (n & (n - 1)) == 0; }

}  // namespace

// ---- InflightQueue ----

void InflightQueue::taken(std::uint16_t head) noexcept {
  std::byte* d = area_ + kHeaderBytes + kDescBytes * head;
  put<std::uint64_t>(d + offsetof(vu::InflightDesc, counter), counter_++,
                     std::memory_order_relaxed);
  put<std::uint8_t>(d + offsetof(vu::InflightDesc, inflight), 1, std::memory_order_release);
}

void InflightQueue::before_used(std::uint16_t head) noexcept {
  std::byte* d = area_ + kHeaderBytes + kDescBytes * head;
  put<std::uint16_t>(d + offsetof(vu::InflightDesc, next), last_batch_, std::memory_order_relaxed);
  put<std::uint16_t>(area_ + offsetof(vu::InflightQueueHeader, last_batch_head), head,
                     std::memory_order_release);
  last_batch_ = head;
}

void InflightQueue::after_used(std::uint16_t head, std::uint16_t used_idx) noexcept {
  std::byte* d = area_ + kHeaderBytes + kDescBytes * head;
  put<std::uint8_t>(d + offsetof(vu::InflightDesc, inflight), 0, std::memory_order_release);
  put<std::uint16_t>(area_ + offsetof(vu::InflightQueueHeader, used_idx), used_idx,
                     std::memory_order_release);
}

void InflightQueue::given_back(std::uint16_t head) noexcept {
  std::byte* d = area_ + kHeaderBytes + kDescBytes * head;
  put<std::uint8_t>(d + offsetof(vu::InflightDesc, inflight), 0, std::memory_order_release);
}

void InflightQueue::reset(std::uint16_t used_idx) noexcept {
  put<std::uint16_t>(area_ + offsetof(vu::InflightQueueHeader, version), 0,
                     std::memory_order_release);
  std::memset(area_ + kHeaderBytes, 0, kDescBytes * capacity_);
  vu::InflightQueueHeader h{};
  h.desc_num = capacity_;
  h.used_idx = used_idx;
  std::memcpy(area_, &h, sizeof h);  // version still 0: a crash here leaves a fresh record
  put<std::uint16_t>(area_ + offsetof(vu::InflightQueueHeader, version), vu::kInflightVersion,
                     std::memory_order_release);
  counter_ = 0;
  last_batch_ = 0;
  resubmit_.clear();
}

InflightQueue::Start InflightQueue::start(std::uint16_t ring_size, std::uint16_t used_idx,
                                          std::uint16_t base) {
  Start s;
  s.last_avail = base;
  resubmit_.clear();
  if (ring_size == 0 || ring_size > capacity_) {
    s.rejected = "the ring has " + std::to_string(ring_size) + " entries, more than the record's " +
                 std::to_string(capacity_) +
                 " (GET_INFLIGHT_FD queue_size): its requests are not tracked";
    return s;
  }
  s.tracking = true;
  auto reject = [&](std::string why) {
    s.rejected = std::move(why);
    s.last_avail = base;
    reset(used_idx);
    return s;
  };
  // One read of everything; from here on only the snapshot counts.
  vu::InflightQueueHeader h;
  std::memcpy(&h, area_, sizeof h);
  std::vector<vu::InflightDesc> d(capacity_);
  std::memcpy(d.data(), area_ + kHeaderBytes, kDescBytes * capacity_);
  if (h.version == 0) {  // fresh (GET_INFLIGHT_FD, or a front end that reset it)
    reset(used_idx);
    return s;
  }
  if (h.version != vu::kInflightVersion) {
    return reject("version " + std::to_string(h.version) + " (keel writes version " +
                  std::to_string(vu::kInflightVersion) + ")");
  }
  if (h.desc_num != capacity_) {
    return reject("desc_num " + std::to_string(h.desc_num) + ", but the record holds " +
                  std::to_string(capacity_) + " descriptors");
  }
  if (h.features != 0) return reject("unknown feature flags in the record");
  // The last batch: put on the used ring (used->idx moved past the record's used_idx) before
  // its flags were cleared. Those requests are complete.
  const auto batch = static_cast<std::uint16_t>(used_idx - h.used_idx);
  if (batch > ring_size) {
    return reject("the used ring's idx " + std::to_string(used_idx) + " is " +
                  std::to_string(batch) + " entries past the record's used_idx " +
                  std::to_string(h.used_idx) + " (at most the ring size, " +
                  std::to_string(ring_size) + ")");
  }
  std::uint16_t at = h.last_batch_head;
  for (unsigned i = 0; i < batch; ++i) {
    if (at >= ring_size) {
      return reject("the last batch of used heads reaches head " + std::to_string(at) +
                    ", beyond the ring of " + std::to_string(ring_size));
    }
    d[at].inflight = 0;
    at = d[at].next;
  }
  std::vector<std::pair<std::uint64_t, std::uint16_t>> live;
  for (unsigned i = 0; i < capacity_; ++i) {
    if (d[i].inflight > 1) {
      return reject("inflight byte " + std::to_string(d[i].inflight) + " on head " +
                    std::to_string(i) + " (must be 0 or 1)");
    }
    if (d[i].inflight == 0) continue;
    if (i >= ring_size) {
      return reject("head " + std::to_string(i) + " is marked inflight, beyond the ring of " +
                    std::to_string(ring_size));
    }
    live.emplace_back(d[i].counter, static_cast<std::uint16_t>(i));
  }
  std::sort(live.begin(), live.end());
  for (std::size_t i = 1; i < live.size(); ++i) {
    if (live[i].first == live[i - 1].first) {
      return reject("heads " + std::to_string(live[i - 1].second) + " and " +
                    std::to_string(live[i].second) + " share counter " +
                    std::to_string(live[i].first));
    }
  }
  if (!live.empty() && live.back().first == UINT64_MAX) {
    return reject("a counter at its maximum value");
  }
  if (!live.empty()) {
    // Every avail entry taken is used or inflight: the inflight ones lie before this index.
    const auto after = static_cast<std::uint16_t>(used_idx + live.size());
    if (base != after && base != used_idx) {
      return reject("SET_VRING_BASE " + std::to_string(base) + " is neither the used idx " +
                    std::to_string(used_idx) + " (a lost connection) nor the used idx plus the " +
                    std::to_string(live.size()) + " inflight requests (a clean stop)");
    }
    s.last_avail = after;
  }
  // The resolved state, back into the shared record: the last batch's flags, then used_idx.
  for (unsigned i = 0; i < capacity_; ++i) {
    put<std::uint8_t>(area_ + kHeaderBytes + kDescBytes * i + offsetof(vu::InflightDesc, inflight),
                      d[i].inflight, std::memory_order_release);
  }
  put<std::uint16_t>(area_ + offsetof(vu::InflightQueueHeader, used_idx), used_idx,
                     std::memory_order_release);
  counter_ = live.empty() ? 0 : live.back().first + 1;
  last_batch_ = h.last_batch_head;
  resubmit_.reserve(live.size());
  for (const auto& [counter, head] : live) resubmit_.push_back(head);
  return s;
}

// ---- InflightRegion ----

Result<std::unique_ptr<InflightRegion>> InflightRegion::create(std::uint16_t num_queues,
                                                               std::uint16_t queue_size) {
  if (num_queues == 0 || !queue_size_ok(queue_size)) {
    return make_error(Errc::invalid_argument,
                      "inflight record for " + std::to_string(num_queues) + " queues of " +
                          std::to_string(queue_size) +
                          " entries (1 queue at least; sizes are powers of two up to 32768)");
  }
  vu::Inflight desc{};
  desc.num_queues = num_queues;
  desc.queue_size = queue_size;
  desc.mmap_size = num_queues * vu::inflight_queue_bytes(queue_size);
  UniqueFd fd(memfd_create("keel-vhost-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) {
    return make_error(Errc::io_error, std::string("memfd_create: ") + std::strerror(errno));
  }
  // Sealed at its size: neither side can shrink it under the other's mapping (SIGBUS).
  if (ftruncate(fd.get(), static_cast<off_t>(desc.mmap_size)) != 0 ||
      fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return make_error(Errc::io_error,
                      std::string("sizing the inflight record: ") + std::strerror(errno));
  }
  std::unique_ptr<InflightRegion> r(new InflightRegion());
  if (Status st = r->attach(std::move(fd), desc); !st.ok()) return st.error();
  return r;
}

Result<std::unique_ptr<InflightRegion>> InflightRegion::map(UniqueFd fd, const vu::Inflight& desc) {
  if (desc.num_queues == 0 || !queue_size_ok(desc.queue_size)) {
    return make_error(Errc::invalid_argument,
                      std::to_string(desc.num_queues) + " queues of " +
                          std::to_string(desc.queue_size) +
                          " entries (1 queue at least; sizes are powers of two up to 32768)");
  }
  const std::uint64_t want = desc.num_queues * vu::inflight_queue_bytes(desc.queue_size);
  if (desc.mmap_size != want) {
    return make_error(Errc::invalid_argument,
                      "mmap_size " + std::to_string(desc.mmap_size) + " for " +
                          std::to_string(desc.num_queues) + " queues of " +
                          std::to_string(desc.queue_size) + " entries (keel's record is " +
                          std::to_string(want) + " bytes: send back what GET_INFLIGHT_FD gave)");
  }
  if (desc.mmap_offset % kPage != 0 || desc.mmap_offset > UINT64_MAX - want ||
      desc.mmap_offset + want > static_cast<std::uint64_t>(INT64_MAX)) {
    return make_error(Errc::out_of_range, "mmap_offset " + std::to_string(desc.mmap_offset) +
                                              " is not page-aligned or runs past any file");
  }
  if (!fd.valid()) return make_error(Errc::invalid_argument, "no file descriptor");
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) {
    return make_error(Errc::io_error, std::string("fstat: ") + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return make_error(Errc::invalid_argument, "its fd is not a regular file (a memfd)");
  }
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return make_error(Errc::invalid_argument,
                      "its file is not sealed against shrinking (F_SEAL_SHRINK); keel's "
                      "GET_INFLIGHT_FD record is");
  }
  if (static_cast<std::uint64_t>(st.st_size) < desc.mmap_offset + want) {
    return make_error(Errc::out_of_range, "its file holds " + std::to_string(st.st_size) +
                                              " bytes, less than mmap_offset + mmap_size (" +
                                              std::to_string(desc.mmap_offset + want) + ")");
  }
  std::unique_ptr<InflightRegion> r(new InflightRegion());
  if (Status s = r->attach(std::move(fd), desc); !s.ok()) return s.error();
  return r;
}

Status InflightRegion::attach(UniqueFd fd, const vu::Inflight& desc) {
  // The one mapping of the record; its size and the file's were checked by the caller.
  void* p = mmap(nullptr, desc.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(),
                 static_cast<off_t>(desc.mmap_offset));
  if (p == MAP_FAILED) {
    return make_error(Errc::io_error,
                      std::string("mapping the inflight record: ") + std::strerror(errno));
  }
  fd_ = std::move(fd);
  desc_ = desc;
  base_ = static_cast<std::byte*>(p);
  mapped_ = desc.mmap_size;
  const std::uint64_t stride = vu::inflight_queue_bytes(desc.queue_size);
  queues_.reserve(desc.num_queues);
  for (unsigned q = 0; q < desc.num_queues; ++q)
    queues_.emplace_back(base_ + q * stride, desc.queue_size);
  return {};
}

InflightRegion::~InflightRegion() {
  if (base_ != nullptr) munmap(base_, mapped_);
}

}  // namespace keel::vmm
