// Ordering of overlapping NBD requests (see nbd_overlap.h).
#include "nbd_overlap.h"

namespace keel::vmm::nbd_internal {

void RangeOrder::hold(HeldRange& r) noexcept {
  std::lock_guard lock(mu_);
  if (r.linked || r.begin >= r.end) return;
  r.linked = true;
  r.next = nullptr;
  r.prev = tail_;
  if (tail_ != nullptr) {
    tail_->next = &r;
  } else {
    head_ = &r;
  }
  tail_ = &r;
  ++size_;
}

void RangeOrder::release(HeldRange& r) noexcept {
  std::lock_guard lock(mu_);
  if (!r.linked) return;
  if (r.prev != nullptr) {
    r.prev->next = r.next;
  } else {
    head_ = r.next;
  }
  if (r.next != nullptr) {
    r.next->prev = r.prev;
  } else {
    tail_ = r.prev;
  }
  r.prev = r.next = nullptr;
  r.linked = false;
  --size_;
}

bool RangeOrder::may_start(const HeldRange& r) const noexcept {
  std::lock_guard lock(mu_);
  if (!r.linked) return true;
  for (const HeldRange* e = head_; e != nullptr && e != &r; e = e->next) {
    const bool overlap = e->begin < r.end && r.begin < e->end;
    if (overlap && (e->writes || r.writes)) return false;
  }
  return true;
}

}  // namespace keel::vmm::nbd_internal
