#include "keel/vmm/split_ring_driver.h"

#include <atomic>
#include <cstring>

namespace keel::vmm {
namespace {

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

SplitRingDriver::SplitRingDriver(Translate translate, const Layout& layout)
    : translate_(std::move(translate)), layout_(layout) {
  const std::uint16_t n = layout.size;
  std::memset(at(layout.desc, virtio::desc_bytes(n)), 0, virtio::desc_bytes(n));
  std::memset(at(layout.avail, virtio::avail_bytes(n)), 0, virtio::avail_bytes(n));
  std::memset(at(layout.used, virtio::used_bytes(n)), 0, virtio::used_bytes(n));
  for (unsigned i = n; i-- > 0;) free_.push_back(static_cast<std::uint16_t>(i));
  chain_len_.assign(n, 0);
}

Result<std::uint16_t> SplitRingDriver::publish(std::span<const Piece> pieces) {
  const std::size_t need = pieces.size();
  if (need == 0 || free_.size() < need) return make_error(Errc::busy, "virtqueue full");
  std::vector<std::uint16_t> idx(need);
  for (auto& i : idx) {
    i = free_.back();
    free_.pop_back();
  }
  for (std::size_t k = 0; k < need; ++k) {
    const bool last = k + 1 == need;
    const virtio::Desc d{
        pieces[k].gpa, pieces[k].len,
        static_cast<std::uint16_t>((pieces[k].device_writes ? virtio::kDescWrite : 0) |
                                   (last ? 0 : virtio::kDescNext)),
        last ? std::uint16_t{0} : idx[k + 1]};
    std::memcpy(at(layout_.desc + 16u * idx[k], 16), &d, sizeof d);
  }
  chain_len_[idx[0]] = static_cast<std::uint16_t>(need);
  publish_head(idx[0]);
  return idx[0];
}

void SplitRingDriver::write_raw(std::span<const virtio::Desc> descs, std::uint16_t first) {
  for (std::size_t i = 0; i < descs.size(); ++i) {
    std::memcpy(at(layout_.desc + 16u * ((first + i) % layout_.size), 16), &descs[i], 16);
  }
}

void SplitRingDriver::publish_head(std::uint16_t head) {
  std::memcpy(at(layout_.avail + 4 + 2u * (avail_idx_ % layout_.size), 2), &head, 2);
  ++avail_idx_;
  store16(at(layout_.avail + 2, 2), avail_idx_);  // release: the chain is visible first
}

std::uint16_t SplitRingDriver::used_idx() const { return load16(at(layout_.used + 2, 2)); }

std::optional<virtio::UsedElem> SplitRingDriver::pop_used() {
  if (used_idx() == last_used_) return std::nullopt;
  virtio::UsedElem e;
  std::memcpy(&e, at(layout_.used + 4 + 8u * (last_used_ % layout_.size), 8), sizeof e);
  ++last_used_;
  if (e.id >= layout_.size) return e;  // a broken device: nothing of ours to free
  // Free the chain: walk it by its recorded length (0 for a head published raw, whose
  // descriptors never left the free list).
  auto i = static_cast<std::uint16_t>(e.id);
  for (unsigned k = 0; k < chain_len_[e.id]; ++k) {
    virtio::Desc d;
    std::memcpy(&d, at(layout_.desc + 16u * i, 16), sizeof d);
    free_.push_back(i);
    if ((d.flags & virtio::kDescNext) == 0) break;
    i = d.next;
  }
  chain_len_[e.id] = 0;
  return e;
}

void SplitRingDriver::arm_used_event() {
  store16(at(layout_.avail + 4 + 2u * layout_.size, 2), last_used_);
}

bool SplitRingDriver::need_kick() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint16_t avail_event = load16(at(layout_.used + 4 + 8u * layout_.size, 2));
  const std::uint16_t old = kicked_at_;
  kicked_at_ = avail_idx_;
  // vring_need_event(avail_event, new, old)
  return static_cast<std::uint16_t>(avail_idx_ - avail_event - 1) <
         static_cast<std::uint16_t>(avail_idx_ - old);
}

}  // namespace keel::vmm
