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

std::uint16_t load16(const std::byte* p) {
  return std::atomic_ref<std::uint16_t>(
             *const_cast<std::uint16_t*>(reinterpret_cast<const std::uint16_t*>(p)))
      .load(std::memory_order_acquire);
}
void store16(std::byte* p, std::uint16_t v) {
  std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p))
      .store(v, std::memory_order_release);
}

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
    Q.size = size;
    Q.desc = take(virtio::desc_bytes(size), 4096);
    Q.avail = take(virtio::avail_bytes(size), 64);
    Q.used = take(virtio::used_bytes(size), 4096);
    Q.hdr = take(std::uint64_t{size} * kScratch, 4096);
    std::byte* zero = mem.translate(Q.desc, Q.hdr + std::uint64_t{size} * kScratch - Q.desc);
    if (zero == nullptr)
      return make_error(Errc::invalid_argument, "rings do not fit in guest memory");
    std::memset(zero, 0, Q.hdr + std::uint64_t{size} * kScratch - Q.desc);
    for (unsigned i = size; i-- > 0;) Q.free.push_back(static_cast<std::uint16_t>(i));
    Q.chain_len.assign(size, 0);
    Q.kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    Q.call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    dev.set_kick_fd(q, Q.kick_fd);
    dev.set_call_fd(q, Q.call_fd);
    if (Status st = dev.set_queue(q, {size, Q.desc, Q.avail, Q.used}); !st.ok()) return st.error();
  }
  g->next_free_ = (at + (2u << 20) - 1) & ~std::uint64_t{(2u << 20) - 1};
  return g;
}

GuestDriver::~GuestDriver() {
  for (unsigned i = 0; i < queues_.size(); ++i) {
    dev_.set_kick_fd(i, -1);
    dev_.set_call_fd(i, -1);
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
  return static_cast<unsigned>(queues_[q].free.size());
}

Result<std::uint16_t> GuestDriver::publish(unsigned q, std::uint32_t type, std::uint64_t sector,
                                           std::span<const DataSeg> data, bool device_writes,
                                           std::span<const std::byte> payload) {
  Queue& Q = queues_[q];
  // As Linux does with VIRTIO_BLK_F_SIZE_MAX: no descriptor longer than size_max.
  const std::uint32_t size_max = std::max<std::uint32_t>(dev_.config_space().size_max, 512);
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
  if (Q.free.size() < need) return make_error(Errc::busy, "virtqueue full");
  std::vector<std::uint16_t> idx(need);
  for (auto& i : idx) {
    i = Q.free.back();
    Q.free.pop_back();
  }
  const std::uint16_t head = idx[0];
  // Header and status live in a per-head scratch area of guest memory.
  const std::uint64_t hdr_gpa = Q.hdr + std::uint64_t{head} * kScratch;
  const blk::OutHeader h{type, 0, sector};
  std::memcpy(mem_.translate(hdr_gpa, 16), &h, sizeof h);
  std::byte* status = mem_.translate(hdr_gpa + 16, 1);
  *status = std::byte{0xFF};
  auto* table = reinterpret_cast<virtio::Desc*>(mem_.translate(Q.desc, virtio::desc_bytes(Q.size)));
  std::size_t k = 0;
  auto put = [&](std::uint64_t addr, std::uint32_t len, bool w) {
    const bool last = k + 1 == need;
    table[idx[k]] = virtio::Desc{
        addr, len,
        static_cast<std::uint16_t>((w ? virtio::kDescWrite : 0) | (last ? 0 : virtio::kDescNext)),
        last ? std::uint16_t{0} : idx[k + 1]};
    ++k;
  };
  put(hdr_gpa, 16, false);
  if (!payload.empty()) {
    const std::uint64_t pl = hdr_gpa + 32;  // the payload slot of this head's scratch area
    std::memcpy(mem_.translate(pl, payload.size()), payload.data(), payload.size());
    put(pl, static_cast<std::uint32_t>(payload.size()), false);
  }
  for (const DataSeg& d : data) put(d.gpa, d.len, device_writes);
  put(hdr_gpa + 16, 1, true);
  Q.chain_len[head] = static_cast<std::uint16_t>(need);
  std::byte* avail = mem_.translate(Q.avail, virtio::avail_bytes(Q.size));
  std::memcpy(avail + 4 + 2u * (Q.avail_idx % Q.size), &head, 2);
  ++Q.avail_idx;
  store16(avail + 2, Q.avail_idx);  // release: the chain is visible first
  return head;
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
  Queue& Q = queues_[q];
  auto* table = reinterpret_cast<virtio::Desc*>(mem_.translate(Q.desc, virtio::desc_bytes(Q.size)));
  for (std::size_t i = 0; i < descs.size(); ++i) table[(first + i) % Q.size] = descs[i];
  std::byte* avail = mem_.translate(Q.avail, virtio::avail_bytes(Q.size));
  std::memcpy(avail + 4 + 2u * (Q.avail_idx % Q.size), &head, 2);
  ++Q.avail_idx;
  store16(avail + 2, Q.avail_idx);
}

unsigned GuestDriver::reap(unsigned q, std::span<GuestCompletion> out) {
  Queue& Q = queues_[q];
  std::byte* used = mem_.translate(Q.used, virtio::used_bytes(Q.size));
  const std::uint16_t idx = load16(used + 2);
  unsigned n = 0;
  while (Q.last_used != idx && n < out.size()) {
    virtio::UsedElem e;
    std::memcpy(&e, used + 4 + 8u * (Q.last_used % Q.size), sizeof e);
    ++Q.last_used;
    const auto head = static_cast<std::uint16_t>(e.id % Q.size);
    const std::uint8_t status =
        static_cast<std::uint8_t>(*mem_.translate(Q.hdr + std::uint64_t{head} * kScratch + 16, 1));
    out[n++] = GuestCompletion{head, status, e.len};
    // Free the chain: walk it by its recorded length.
    const auto* table =
        reinterpret_cast<const virtio::Desc*>(mem_.translate(Q.desc, virtio::desc_bytes(Q.size)));
    std::uint16_t i = head;
    for (unsigned k = 0; k < std::max<unsigned>(Q.chain_len[head], 1); ++k) {
      Q.free.push_back(i);
      if ((table[i].flags & virtio::kDescNext) == 0) break;
      i = table[i].next;
    }
  }
  // EVENT_IDX: ask to be interrupted when the next entry is used.
  std::byte* avail = mem_.translate(Q.avail, virtio::avail_bytes(Q.size));
  store16(avail + 4 + 2u * Q.size, Q.last_used);
  return n;
}

void GuestDriver::wait(unsigned q, int timeout_ms) {
  Queue& Q = queues_[q];
  // reap() published used_event; an entry used after that and before this check may have
  // been pushed without a notification (the device read the old used_event): look first,
  // as a virtio driver does after virtqueue_enable_cb().
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::byte* used = mem_.translate(Q.used, virtio::used_bytes(Q.size));
  if (load16(used + 2) != Q.last_used) return;
  pollfd p{Q.call_fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) > 0) {
    std::uint64_t v;
    (void)!read(queues_[q].call_fd, &v, sizeof v);
  }
}

void GuestDriver::kick(unsigned q) {
  Queue& Q = queues_[q];
  std::atomic_thread_fence(std::memory_order_seq_cst);
  std::byte* used = mem_.translate(Q.used, virtio::used_bytes(Q.size));
  const std::uint16_t avail_event = load16(used + 4 + 8u * Q.size);
  const std::uint16_t old = Q.kicked_at;
  Q.kicked_at = Q.avail_idx;
  // vring_need_event(avail_event, new, old)
  if (static_cast<std::uint16_t>(Q.avail_idx - avail_event - 1) <
      static_cast<std::uint16_t>(Q.avail_idx - old)) {
    const std::uint64_t one = 1;
    (void)!write(Q.kick_fd, &one, sizeof one);
  }
}

}  // namespace keel::vmm
