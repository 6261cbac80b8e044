#include "keel/vmm/guest_driver.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace keel::vmm {

namespace blk = virtio::blk;

namespace {

// Per chain head: 16-byte request header, status byte at +16, write-zeroes payload at +32.
constexpr std::uint64_t kScratch = 64;

}  // namespace

Result<std::unique_ptr<GuestDriver>> GuestDriver::attach(Paravisor& dev, GuestMemory& mem,
                                                         unsigned queues, std::uint16_t size,
                                                         std::uint64_t ring_gpa) {
  std::unique_ptr<GuestDriver> g(new GuestDriver(dev, mem));
  const std::uint64_t features = dev.device_features();  // take everything offered
  if (Status st = dev.set_features(features); !st.ok()) return st.error();
  std::uint64_t at = ring_gpa;
  auto take = [&](std::uint64_t bytes, std::uint64_t align) {
    at = (at + align - 1) & ~(align - 1);
    const std::uint64_t p = at;
    at += bytes;
    return p;
  };
  g->queues_.resize(queues);
  for (unsigned q = 0; q < queues; ++q) {
    Queue& Q = g->queues_[q];
    SplitRingDriver::Layout L;
    L.size = size;
    L.desc = take(virtio::desc_bytes(size), 4096);
    L.avail = take(virtio::avail_bytes(size), 64);
    L.used = take(virtio::used_bytes(size), 4096);
    Q.hdr = take(std::uint64_t{size} * kScratch, 4096);
    std::byte* zero = mem.translate(L.desc, Q.hdr + std::uint64_t{size} * kScratch - L.desc);
    if (zero == nullptr)
      return make_error(Errc::invalid_argument, "rings do not fit in guest memory");
    std::memset(zero, 0, Q.hdr + std::uint64_t{size} * kScratch - L.desc);
    Q.ring = std::make_unique<SplitRingDriver>(
        [&mem](std::uint64_t gpa, std::uint64_t len) { return mem.translate(gpa, len); }, L);
    Q.kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    Q.call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    dev.set_kick_fd(q, Q.kick_fd);
    dev.set_call_fd(q, Q.call_fd);
    if (Status st = dev.set_queue(q, {size, L.desc, L.avail, L.used}); !st.ok()) return st.error();
  }
  g->next_free_ = (at + (2u << 20) - 1) & ~std::uint64_t{(2u << 20) - 1};
  g->size_max_ = std::max<std::uint32_t>(dev.config_space().size_max, 512);
  return g;
}

Status GuestDriver::rebind(Paravisor& dev, std::span<const std::uint16_t> last_avail) {
  if (last_avail.size() != queues_.size()) {
    return make_error(Errc::invalid_argument, "one last_avail per queue");
  }
  if (Status st = dev.set_features(dev.device_features()); !st.ok()) return st;
  for (unsigned q = 0; q < queues_.size(); ++q) {
    const Queue& Q = queues_[q];
    dev.set_kick_fd(q, Q.kick_fd);
    dev.set_call_fd(q, Q.call_fd);
    const SplitRingDriver::Layout& L = Q.ring->layout();
    if (Status st = dev.set_queue(q, {L.size, L.desc, L.avail, L.used}, last_avail[q]); !st.ok()) {
      return st;
    }
  }
  dev_ = &dev;
  size_max_ = std::max<std::uint32_t>(dev.config_space().size_max, 512);
  return {};
}

GuestDriver::~GuestDriver() {
  for (unsigned i = 0; i < queues_.size(); ++i) {
    dev_->set_kick_fd(i, -1);
    dev_->set_call_fd(i, -1);
    if (queues_[i].kick_fd >= 0) close(queues_[i].kick_fd);
    if (queues_[i].call_fd >= 0) close(queues_[i].call_fd);
  }
}

std::uint64_t GuestDriver::alloc(std::uint64_t bytes, std::uint64_t align) {
  next_free_ = (next_free_ + align - 1) & ~(align - 1);
  const std::uint64_t p = next_free_;
  next_free_ += bytes;
  return p;
}

unsigned GuestDriver::free_descriptors(unsigned q) const {
  return static_cast<unsigned>(queues_[q].ring->free_descriptors());
}

Result<std::uint16_t> GuestDriver::publish(unsigned q, std::uint32_t type, std::uint64_t sector,
                                           std::span<const DataSeg> data, bool device_writes,
                                           std::span<const std::byte> payload) {
  Queue& Q = queues_[q];
  // As Linux does with VIRTIO_BLK_F_SIZE_MAX: no descriptor longer than size_max.
  const std::uint32_t size_max = size_max_.load(std::memory_order_relaxed);
  std::vector<DataSeg> pieces;
  for (const DataSeg& d : data) {
    for (std::uint32_t off = 0; off < d.len || (d.len == 0 && off == 0);) {
      const std::uint32_t n = std::min(d.len - off, size_max);
      pieces.push_back({d.gpa + off, n});
      off += n;
      if (n == 0) break;
    }
  }
  data = pieces;
  const std::size_t need = data.size() + 2 + (payload.empty() ? 0 : 1);
  if (Q.ring->free_descriptors() < need) return make_error(Errc::busy, "virtqueue full");
  // The head is the descriptor the ring hands out first: its scratch area holds the header
  // and the status byte.
  const std::uint16_t head = Q.ring->next_free();
  const std::uint64_t hdr_gpa = Q.hdr + std::uint64_t{head} * kScratch;
  const blk::OutHeader h{type, 0, sector};
  std::memcpy(mem_.translate(hdr_gpa, 16), &h, sizeof h);
  std::byte* status = mem_.translate(hdr_gpa + 16, 1);
  *status = std::byte{0xFF};
  std::vector<SplitRingDriver::Piece> chain;
  chain.reserve(need);
  chain.push_back({hdr_gpa, 16, false});
  if (!payload.empty()) {
    const std::uint64_t pl = hdr_gpa + 32;  // the payload slot of this head's scratch area
    std::memcpy(mem_.translate(pl, payload.size()), payload.data(), payload.size());
    chain.push_back({pl, static_cast<std::uint32_t>(payload.size()), false});
  }
  for (const DataSeg& d : data) chain.push_back({d.gpa, d.len, device_writes});
  chain.push_back({hdr_gpa + 16, 1, true});
  return Q.ring->publish(chain);
}

Result<std::uint16_t> GuestDriver::submit(unsigned q, std::uint32_t type, std::uint64_t sector,
                                          std::span<const DataSeg> data) {
  return publish(q, type, sector, data, type == blk::kIn || type == blk::kGetId, {});
}

Result<std::uint16_t> GuestDriver::write_zeroes(unsigned q, std::uint64_t sector,
                                                std::uint32_t sectors) {
  // The 16-byte payload travels in the head's scratch area: no guest memory is consumed.
  const blk::DiscardWriteZeroes wz{sector, sectors, 0};
  return publish(q, blk::kWriteZeroes, 0, {}, false,
                 {reinterpret_cast<const std::byte*>(&wz), sizeof wz});
}

void GuestDriver::publish_raw(unsigned q, std::span<const virtio::Desc> descs, std::uint16_t first,
                              std::uint16_t head) {
  queues_[q].ring->write_raw(descs, first);
  queues_[q].ring->publish_head(head);
}

unsigned GuestDriver::reap(unsigned q, std::span<GuestCompletion> out) {
  Queue& Q = queues_[q];
  const std::uint16_t size = Q.ring->layout().size;
  unsigned n = 0;
  while (n < out.size()) {
    const std::optional<virtio::UsedElem> e = Q.ring->pop_used();
    if (!e) break;
    const auto head = static_cast<std::uint16_t>(e->id % size);
    const std::uint8_t status =
        static_cast<std::uint8_t>(*mem_.translate(Q.hdr + std::uint64_t{head} * kScratch + 16, 1));
    out[n++] = GuestCompletion{head, status, e->len};
  }
  // EVENT_IDX: ask to be interrupted when the next entry is used.
  Q.ring->arm_used_event();
  return n;
}

void GuestDriver::wait(unsigned q, int timeout_ms) {
  Queue& Q = queues_[q];
  // reap() published used_event; an entry used after that and before this check may have
  // been pushed without a notification (the device read the old used_event): look first,
  // as a virtio driver does after virtqueue_enable_cb().
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (Q.ring->used_idx() != Q.ring->last_used()) return;
  pollfd p{Q.call_fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) > 0) {
    std::uint64_t v;
    (void)!read(queues_[q].call_fd, &v, sizeof v);
  }
}

void GuestDriver::kick(unsigned q) {
  Queue& Q = queues_[q];
  if (Q.ring->need_kick()) {
    const std::uint64_t one = 1;
    (void)!write(Q.kick_fd, &one, sizeof one);
  }
}

}  // namespace keel::vmm
