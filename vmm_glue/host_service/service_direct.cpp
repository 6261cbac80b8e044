// O_DIRECT: requests that are not aligned go through the slot's bounce buffer (aligned windows,
// read-modify-write of partial edge blocks), and writes that would race such a
// read-modify-write wait for it. Nothing here touches the page cache.
//
// A window is the aligned image range around the request's next bytes, at most kBounceBytes
// (one block for the edges of a write_zeroes, whose aligned middle is zeroed in place). A read
// reads the window and copies the request's part out. A write reads the partial block at
// either end of the window first (once if one block holds both), copies the request's part in
// (or zeroes it) and writes the whole window back. Between the first read and the write, the
// window is claimed: no other write to it may be in flight, or the read-modify-write would put
// back the old bytes of blocks another write changed (the page cache's page lock did that job
// for buffered IO). Requests that find their blocks claimed wait in `deferred`; each release of
// a claim wakes them to try again.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "service_impl.h"

namespace keel::vmm {
namespace {

/// Copies `n` bytes between the slot's iovecs (from its first one) and `buf`.
void copy_iov(const detail::Slot& s, std::byte* buf, std::uint64_t n, bool to_iov) noexcept {
  for (unsigned i = s.iov_first; n > 0 && i < s.iov_first + s.iov_count; ++i) {
    const std::uint64_t len = std::min<std::uint64_t>(n, s.iov[i].iov_len);
    if (to_iov) {
      std::memcpy(s.iov[i].iov_base, buf, len);
    } else {
      std::memcpy(buf, s.iov[i].iov_base, len);
    }
    buf += len;
    n -= len;
  }
}

}  // namespace

bool HostStorageService::Impl::aligned_rest(const detail::Slot& s) const noexcept {
  std::uint64_t bits = s.position + s.done;
  for (unsigned i = s.iov_first; i < s.iov_first + s.iov_count; ++i) {
    // reinterpret_cast: only to look at the low bits of the address.
    bits |= reinterpret_cast<std::uintptr_t>(s.iov[i].iov_base) | s.iov[i].iov_len;
  }
  return (bits & (dio_align - 1)) == 0;
}

void HostStorageService::Impl::plan(detail::Slot& s) noexcept {
  s.replan = false;
  const std::uint64_t a = dio_align;
  const std::uint64_t at = s.position + s.done;
  const std::uint64_t end = s.position + s.total;
  if (s.op == HostOp::write_zeroes && (a == 0 || (at % a == 0 && end - at >= a))) {
    s.stage = detail::Stage::zero;  // in place: everything (page cache), or the aligned middle
    s.step_bytes = a == 0 ? end - at : (end - at) / a * a;
    s.zero_fill = !zero_range;
    return;
  }
  // Only with O_DIRECT (a != 0): a bounced read/write, or a partial block of a write_zeroes.
  s.window = at / a * a;
  const std::uint64_t limit = s.op == HostOp::write_zeroes ? a : detail::kBounceBytes;
  const std::uint64_t last = std::min((end + a - 1) / a * a, s.window + limit);
  s.window_bytes = last - s.window;
  s.step_bytes = std::min(end, last) - at;
  if (s.op == HostOp::read) {
    s.stage = detail::Stage::transfer;
    return;
  }
  const bool head = at != s.window;
  const bool tail = at + s.step_bytes != last;
  s.tail_edge = tail && !(head && s.window_bytes == a);  // one block holding both is read once
  if (head) {
    s.stage = detail::Stage::read_head;
  } else if (s.tail_edge) {
    s.stage = detail::Stage::read_tail;
  } else {
    s.stage = detail::Stage::transfer;
  }
}

bool HostStorageService::Impl::claim(detail::Slot& s) noexcept {
  // Held already: a resubmission after EAGAIN, or the next stage of a read-modify-write.
  if (s.claimed || s.op == HostOp::read || s.op == HostOp::flush) return true;
  std::uint64_t lo = s.position + s.done;
  std::uint64_t hi = lo;
  switch (s.stage) {
    case detail::Stage::sync: return true;
    case detail::Stage::vectored: hi = s.position + s.total; break;
    case detail::Stage::zero: hi = lo + s.step_bytes; break;
    case detail::Stage::read_head:
    case detail::Stage::read_tail:
    case detail::Stage::transfer:
      lo = s.window;
      hi = s.window + s.window_bytes;
      break;
  }
  const bool rmw = s.stage == detail::Stage::read_head || s.stage == detail::Stage::read_tail;
  // A read-modify-write excludes every write to its window; a plain write excludes only
  // read-modify-writes (two plain writes to the same blocks are the guest's own race).
  if (rmw || rmw_holders > 0) {
    for (const detail::Slot& o : slots) {
      if (&o == &s || !o.claimed || !(rmw || o.rmw)) continue;
      if (o.claim_lo < hi && lo < o.claim_hi) return false;
    }
  }
  s.claimed = true;
  s.claim_lo = lo;
  s.claim_hi = hi;
  s.rmw = rmw;
  if (rmw) ++rmw_holders;
  return true;
}

void HostStorageService::Impl::release(detail::Slot& s) noexcept {
  if (!s.claimed) return;
  s.claimed = false;
  if (s.rmw) --rmw_holders;
  s.rmw = false;
  if (!deferred.empty()) wake_pending = true;
}

void HostStorageService::Impl::wake_deferred() noexcept {
  // Each round either issues (or completes) a deferred slot or defers it again without
  // releasing anything, so this ends.
  while (wake_pending || (stopping && !deferred.empty())) {
    wake_pending = false;
    woken.swap(deferred);  // both have capacity for every slot
    for (const std::uint32_t i : woken) {
      slots[i].waiting = false;
      if (stopping) {
        finish(i, -ECANCELED);  // never reached the kernel: nothing of it was done
      } else {
        issue(i);
      }
    }
    woken.clear();
  }
}

void HostStorageService::Impl::prep_bounce(io_uring_sqe* sqe, detail::Slot& s) noexcept {
  const int fd = image_fd.get();
  const auto a = static_cast<unsigned>(dio_align);
  const auto bytes = static_cast<unsigned>(s.window_bytes);
  switch (s.stage) {
    case detail::Stage::read_head:
      bump(counters.rmw_reads);
      io_uring_prep_read(sqe, fd, s.bounce, a, s.window);
      return;
    case detail::Stage::read_tail:
      bump(counters.rmw_reads);
      io_uring_prep_read(sqe, fd, s.bounce + bytes - a, a, s.window + bytes - a);
      return;
    case detail::Stage::transfer: break;
    case detail::Stage::sync:
    case detail::Stage::vectored:
    case detail::Stage::zero: return;  // not bounced: issue() prepares them itself
  }
  bump(counters.bounced);
  if (s.op == HostOp::read) {
    io_uring_prep_read(sqe, fd, s.bounce, bytes, s.window);
    return;
  }
  // Copied in at every (re)submission: the edges read before stay around it.
  std::byte* part = s.bounce + (s.position + s.done - s.window);
  if (s.op == HostOp::write) {
    copy_iov(s, part, s.step_bytes, false);
  } else {
    std::memset(part, 0, s.step_bytes);
  }
  io_uring_prep_write(sqe, fd, s.bounce, bytes, s.window);
}

void HostStorageService::Impl::edge_done(std::uint32_t index, int res) noexcept {
  detail::Slot& s = slots[index];
  if (res < 0) {
    finish(index, res);
    return;
  }
  // Short only past the end of a regular file, which reads as zeroes.
  const std::uint64_t block = s.stage == detail::Stage::read_head ? 0 : s.window_bytes - dio_align;
  if (static_cast<std::uint64_t>(res) < dio_align) {
    std::memset(s.bounce + block + res, 0, dio_align - static_cast<std::uint64_t>(res));
  }
  if (stopping) {
    finish(index, -ECANCELED);  // nothing written yet
    return;
  }
  const bool tail_next = s.stage == detail::Stage::read_head && s.tail_edge;
  s.stage = tail_next ? detail::Stage::read_tail : detail::Stage::transfer;
  issue(index);  // the claim is still held
}

void HostStorageService::Impl::transfer_done(std::uint32_t index, int res) noexcept {
  detail::Slot& s = slots[index];
  if (res < 0) {
    finish(index, res);
    return;
  }
  const std::uint64_t at = s.position + s.done;
  const std::uint64_t reached = s.window + static_cast<std::uint64_t>(res);
  const std::uint64_t moved = reached > at ? std::min(reached - at, s.step_bytes) : 0;
  if (moved == 0) {
    // A read (or a write of nothing) that ends before the request's bytes: the image ended.
    // A short write of only the bytes in front of them is tried again, a bounded number of times.
    if (s.op == HostOp::read || res == 0 || ++s.retries > detail::kMaxRetries) {
      finish(index, -EIO);
      return;
    }
  }
  if (s.op == HostOp::read) copy_iov(s, s.bounce + (at - s.window), moved, true);
  if (s.op != HostOp::write_zeroes) detail::advance(s, moved);
  s.done += moved;
  if (s.done >= s.total) {
    finish(index, 0);
    return;
  }
  if (stopping) {
    finish(index, -ECANCELED);
    return;
  }
  if (static_cast<std::uint64_t>(res) < s.window_bytes) bump(counters.retries);
  s.replan = true;
  issue(index);
}

}  // namespace keel::vmm
