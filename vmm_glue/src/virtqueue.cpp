#include "keel/vmm/virtqueue.h"

#include <atomic>
#include <cstring>
#include <string>

#include "keel/vmm/vhost_user_inflight.h"

namespace keel::vmm {

namespace {

// Ring fields are little-endian 16-bit words in guest memory shared with the driver's CPUs:
// accessed through atomic_ref with the orderings the spec's barriers call for.
std::uint16_t load16(const std::byte* p, std::memory_order o) {
  return std::atomic_ref<std::uint16_t>(
             *const_cast<std::uint16_t*>(reinterpret_cast<const std::uint16_t*>(p)))
      .load(o);
}
void store16(std::byte* p, std::uint16_t v, std::memory_order o) {
  std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p)).store(v, o);
}

}  // namespace

const char* to_string(ChainError e) noexcept {
  switch (e) {
    case ChainError::ok: return "ok";
    case ChainError::bad_index: return "descriptor index beyond the queue";
    case ChainError::loop: return "descriptor chain loops (longer than the queue)";
    case ChainError::indirect: return "indirect descriptor, which was not negotiated";
    case ChainError::outside_memory: return "buffer outside guest memory";
    case ChainError::write_before_read: return "driver-readable buffer after a device-writable one";
  }
  return "unknown";
}

std::uint64_t region_run(const GuestMemory& mem, std::uint64_t gpa) noexcept {
  for (const GuestMemory::Region& r : mem.regions()) {
    if (gpa >= r.gpa && gpa - r.gpa < r.bytes) return r.bytes - (gpa - r.gpa);
  }
  return 0;
}

bool in_guest_memory(const GuestMemory& mem, std::uint64_t gpa, std::uint64_t len) noexcept {
  if (gpa + len < gpa) return false;
  while (len > 0) {
    const std::uint64_t run = region_run(mem, gpa);
    if (run == 0) return false;
    const std::uint64_t take = run < len ? run : len;
    gpa += take;
    len -= take;
  }
  return true;
}

Status Virtqueue::setup(const GuestMemory& mem, const Layout& l, bool event_idx,
                        std::uint16_t last_avail) {
  const unsigned n = l.size;
  if (n == 0 || n > virtio::kMaxQueueSize || (n & (n - 1)) != 0) {
    return make_error(Errc::invalid_argument,
                      "virtqueue size " + std::to_string(n) + " is not a power of two up to 32768");
  }
  if (l.desc % 16 != 0 || l.avail % 2 != 0 || l.used % 4 != 0) {
    return make_error(Errc::invalid_argument,
                      "virtqueue areas misaligned (descriptors 16, avail 2, used 4 bytes)");
  }
  std::byte* d = mem.translate(l.desc, virtio::desc_bytes(n));
  std::byte* a = mem.translate(l.avail, virtio::avail_bytes(n));
  std::byte* u = mem.translate(l.used, virtio::used_bytes(n));
  if (d == nullptr || a == nullptr || u == nullptr) {
    return make_error(Errc::invalid_argument, "virtqueue areas lie outside guest memory");
  }
  mem_ = &mem;
  size_ = l.size;
  event_idx_ = event_idx;
  desc_ = reinterpret_cast<virtio::Desc*>(d);  // descriptor table in guest RAM, 16-aligned
  avail_ = a;
  used_ = u;
  last_avail_ = last_avail;
  used_idx_ = load16(used_ + 2, std::memory_order_relaxed);
  signalled_used_ = used_idx_;
  broken_ = false;
  inflight_ = nullptr;
  return {};
}

std::uint16_t Virtqueue::avail_idx() const noexcept {
  return load16(avail_ + 2, std::memory_order_acquire);
}

bool Virtqueue::pop(std::uint16_t* head) noexcept {
  if (size_ == 0 || broken_) return false;
  const std::uint16_t idx = avail_idx();
  const std::uint16_t pending = static_cast<std::uint16_t>(idx - last_avail_);
  if (pending == 0) return false;
  if (pending > size_) {  // the driver claims more entries than the ring holds
    broken_ = true;
    return false;
  }
  const std::uint16_t slot = static_cast<std::uint16_t>(last_avail_ % size_);
  *head = load16(avail_ + 4 + 2u * slot, std::memory_order_relaxed);
  ++last_avail_;
  return true;
}

ChainError Virtqueue::read_chain(std::uint16_t head, std::vector<ChainSeg>& out) const noexcept {
  out.clear();
  if (head >= size_) return ChainError::bad_index;
  std::uint16_t i = head;
  bool seen_write = false;
  ChainError soft = ChainError::ok;
  for (unsigned count = 0;; ++count) {
    if (count >= size_) return ChainError::loop;
    virtio::Desc d;
    std::memcpy(&d, &desc_[i], sizeof d);
    if ((d.flags & virtio::kDescIndirect) != 0) return ChainError::indirect;
    const bool w = (d.flags & virtio::kDescWrite) != 0;
    if (!w && seen_write && soft == ChainError::ok) soft = ChainError::write_before_read;
    seen_write = seen_write || w;
    if (d.len > 0 && !in_guest_memory(*mem_, d.addr, d.len) && soft == ChainError::ok) {
      soft = ChainError::outside_memory;
    }
    out.push_back({d.addr, d.len, w});  // callers reserve the queue size: no allocation
    if ((d.flags & virtio::kDescNext) == 0) break;
    if (d.next >= size_) return ChainError::bad_index;
    i = d.next;
  }
  return soft;
}

void Virtqueue::mark_taken(std::uint16_t head) noexcept {
  if (inflight_ != nullptr) inflight_->taken(head);
}

void Virtqueue::mark_given_back(std::uint16_t head) noexcept {
  if (inflight_ != nullptr) inflight_->given_back(head);
}

void Virtqueue::push_used(std::uint16_t head, std::uint32_t written) noexcept {
  if (inflight_ != nullptr) inflight_->before_used(head);
  const std::uint16_t slot = static_cast<std::uint16_t>(used_idx_ % size_);
  virtio::UsedElem e{head, written};
  std::memcpy(used_ + 4 + 8u * slot, &e, sizeof e);
  ++used_idx_;
  // The element must be visible before the index that publishes it.
  store16(used_ + 2, used_idx_, std::memory_order_release);
  if (inflight_ != nullptr) inflight_->after_used(head, used_idx_);
}

bool Virtqueue::should_notify() noexcept {
  // Order the used->idx store before reading the driver's suppression fields.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint16_t old = signalled_used_;
  const std::uint16_t now = used_idx_;
  signalled_used_ = now;
  if (old == now) return false;
  if (!event_idx_) {
    return (load16(avail_, std::memory_order_relaxed) & virtio::kAvailNoInterrupt) == 0;
  }
  const std::uint16_t used_event = load16(avail_ + 4 + 2u * size_, std::memory_order_relaxed);
  // vring_need_event(): notify if used_event lies in (old, now].
  return static_cast<std::uint16_t>(now - used_event - 1) < static_cast<std::uint16_t>(now - old);
}

bool Virtqueue::enable_kicks() noexcept {
  if (event_idx_) {
    store16(used_ + 4 + 8u * size_, last_avail_, std::memory_order_relaxed);  // avail_event
  } else {
    store16(used_, 0, std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return avail_idx() != last_avail_;
}

void Virtqueue::disable_kicks() noexcept {
  if (!event_idx_) store16(used_, virtio::kUsedNoNotify, std::memory_order_relaxed);
}

}  // namespace keel::vmm
