// Requests in the service's hands: validation and GPA translation, io_uring operations, short
// IO continuation, and completion posting.
#include <fcntl.h>
#include <linux/falloc.h>

#include <algorithm>
#include <cerrno>

#include "service_impl.h"

namespace keel::vmm {
namespace {

constexpr std::uint64_t kCancelTag = ~std::uint64_t{0} - 1;  // user_data of cancel operations

}  // namespace

std::byte* HostStorageService::Impl::translate(std::uint64_t gpa,
                                               std::uint64_t bytes) const noexcept {
  for (const auto& r : regions) {
    if (gpa < r.gpa) continue;
    const std::uint64_t off = gpa - r.gpa;
    if (off < r.bytes && bytes <= r.bytes - off) return r.host + off;
  }
  return nullptr;
}

void HostStorageService::Impl::take(detail::ServiceChannel& ch,
                                    const detail::RingSqe& entry) noexcept {
  ++ch.held;
  const std::uint32_t index = free_slots.back();
  free_slots.pop_back();
  detail::Slot& s = slots[index];
  s.channel = &ch;
  s.tag = entry.tag;
  s.busy = true;
  s.cancel_sent = false;
  s.zero_fill = false;
  s.replan = false;
  s.waiting = false;
  s.claimed = false;
  s.rmw = false;
  s.retries = 0;
  s.done = 0;
  s.total = 0;
  s.iov_first = 0;
  s.iov_count = 0;
  if (const int err = prepare(s, entry); err != 0) {
    finish(index, err);
    return;
  }
  issue(index);
}

int HostStorageService::Impl::prepare(detail::Slot& s, const detail::RingSqe& e) noexcept {
  if (e.op > static_cast<std::uint8_t>(HostOp::write_zeroes)) return -EINVAL;
  s.op = static_cast<HostOp>(e.op);
  auto outside_slice = [this](std::uint64_t offset, std::uint64_t bytes) {
    return offset > length || bytes > length - offset;
  };
  switch (s.op) {
    case HostOp::flush: s.stage = detail::Stage::sync; return e.segment_count == 0 ? 0 : -EINVAL;
    case HostOp::write_zeroes:
      if (e.segment_count != 0 || e.zero_bytes == 0) return -EINVAL;
      if (outside_slice(e.offset, e.zero_bytes)) return -EINVAL;
      s.total = e.zero_bytes;
      s.position = base_offset + e.offset;
      s.replan = true;
      return 0;
    case HostOp::read:
    case HostOp::write: {
      const std::uint32_t n = e.segment_count;
      if (n == 0 || n > detail::kMaxSegments) return -EINVAL;
      std::uint64_t total = 0;
      for (std::uint32_t i = 0; i < n; ++i) {
        if (e.segments[i].bytes == 0) return -EINVAL;
        total += e.segments[i].bytes;
      }
      if (outside_slice(e.offset, total)) return -EINVAL;
      for (std::uint32_t i = 0; i < n; ++i) {
        std::byte* host = translate(e.segments[i].gpa, e.segments[i].bytes);
        if (host == nullptr) return -EFAULT;
        s.iov[i] = iovec{host, e.segments[i].bytes};
      }
      s.iov_count = n;
      s.total = total;
      s.position = base_offset + e.offset;
      s.stage = detail::Stage::vectored;
      // O_DIRECT and not aligned: through the slot's bounce buffer, never the page cache.
      s.replan = dio_align != 0 && !aligned_rest(s);
      return 0;
    }
  }
  return -EINVAL;
}

void HostStorageService::Impl::issue(std::uint32_t index) noexcept {
  detail::Slot& s = slots[index];
  if (s.replan) plan(s);
  if (dio_align != 0 && !claim(s)) {
    s.waiting = true;
    deferred.push_back(index);  // capacity reserved for every slot: no allocation
    bump(counters.overlap_waits);
    return;
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  if (sqe == nullptr) {
    submit_prepared();
    sqe = io_uring_get_sqe(&ring);
  }
  if (sqe == nullptr) {
    finish(index, -EBUSY);
    return;
  }
  const int fd = image_fd.get();
  const std::uint64_t at = s.position + s.done;
  switch (s.stage) {
    case detail::Stage::sync: io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); break;
    case detail::Stage::vectored:
      if (s.op == HostOp::read) {
        io_uring_prep_readv(sqe, fd, &s.iov[s.iov_first], s.iov_count, at);
      } else {
        io_uring_prep_writev(sqe, fd, &s.iov[s.iov_first], s.iov_count, at);
      }
      break;
    case detail::Stage::zero: prep_zero(sqe, s); break;
    case detail::Stage::read_head:
    case detail::Stage::read_tail:
    case detail::Stage::transfer: prep_bounce(sqe, s); break;
  }
  io_uring_sqe_set_data64(sqe, index);
  ++prepared;
}

void HostStorageService::Impl::prep_zero(io_uring_sqe* sqe, detail::Slot& s) noexcept {
  const int fd = image_fd.get();
  const std::uint64_t at = s.position + s.done;
  if (!s.zero_fill) {
    io_uring_prep_fallocate(sqe, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, at, s.step_bytes);
    return;
  }
  // Chunks of the zero mapping: page aligned, and of aligned lengths when the step is (O_DIRECT).
  s.iov_first = 0;
  s.iov_count = 0;
  for (std::uint64_t left = s.step_bytes; left > 0 && s.iov_count < detail::kMaxSegments;) {
    const std::uint64_t len = std::min(left, detail::kZeroChunk);
    // const_cast: iovec has no const variant; a write only reads from the zero mapping.
    s.iov[s.iov_count++] = iovec{const_cast<std::byte*>(zeros), len};
    left -= len;
  }
  io_uring_prep_writev(sqe, fd, s.iov, s.iov_count, at);
}

void HostStorageService::Impl::submit_prepared() noexcept {
  if (prepared == 0) return;
  const int ret = io_uring_submit(&ring);
  if (ret > 0) bump(counters.io_uring_submits);
  // What the kernel did not take stays in the SQ and goes with the next submit.
  prepared = io_uring_sq_ready(&ring);
}

bool HostStorageService::Impl::reap() noexcept {
  bool any = false;
  for (;;) {
    if (wake_pending) {  // a claim was released: the requests waiting for it try again
      wake_deferred();
      any = true;
    }
    io_uring_cqe* cqes[32];
    const unsigned n = io_uring_peek_batch_cqe(&ring, cqes, 32);
    if (n == 0) return any;
    // Copied out first: on_complete() may prepare new SQEs and submit them.
    std::uint64_t data[32];
    int res[32];
    for (unsigned i = 0; i < n; ++i) {
      data[i] = io_uring_cqe_get_data64(cqes[i]);
      res[i] = cqes[i]->res;
    }
    io_uring_cq_advance(&ring, n);
    for (unsigned i = 0; i < n; ++i) on_complete(data[i], res[i]);
    any = true;
  }
}

void HostStorageService::Impl::on_complete(std::uint64_t user_data, int res) noexcept {
  if (user_data >= slots.size()) return;  // a cancel or liburing's own timeout
  const auto index = static_cast<std::uint32_t>(user_data);
  detail::Slot& s = slots[index];
  if (!s.busy) return;
  if (res == -EAGAIN || res == -EINTR) {
    if (!stopping && s.retries < detail::kMaxRetries) {
      ++s.retries;
      bump(counters.retries);
      issue(index);  // the same operation again; a claim stays held
      return;
    }
    finish(index, stopping ? -ECANCELED : res);
    return;
  }
  // A write step's claim on its blocks ends with it, except from the reads of a
  // read-modify-write to its write.
  if (s.stage != detail::Stage::read_head && s.stage != detail::Stage::read_tail) release(s);
  switch (s.stage) {
    case detail::Stage::sync: finish(index, std::min(res, 0)); return;
    case detail::Stage::vectored: vectored_done(index, res); return;
    case detail::Stage::zero: zero_done(index, res); return;
    case detail::Stage::read_head:
    case detail::Stage::read_tail: edge_done(index, res); return;
    case detail::Stage::transfer: transfer_done(index, res); return;
  }
}

void HostStorageService::Impl::vectored_done(std::uint32_t index, int res) noexcept {
  detail::Slot& s = slots[index];
  if (res < 0) {
    finish(index, res);
    return;
  }
  if (res == 0) {  // the image ended under the request
    finish(index, -EIO);
    return;
  }
  s.done += static_cast<std::uint64_t>(res);
  if (s.done >= s.total) {
    finish(index, 0);
    return;
  }
  if (stopping) {
    finish(index, -ECANCELED);
    return;
  }
  bump(counters.retries);
  detail::advance(s, static_cast<std::uint64_t>(res));
  // O_DIRECT: a short transfer may leave the rest unaligned; it then goes through the bounce
  // buffer.
  s.replan = dio_align != 0 && !aligned_rest(s);
  issue(index);
}

void HostStorageService::Impl::zero_done(std::uint32_t index, int res) noexcept {
  detail::Slot& s = slots[index];
  if (!s.zero_fill) {
    if (res == -EOPNOTSUPP && !stopping) {  // this file system has no ZERO_RANGE: write zeroes
      zero_range = false;
      s.zero_fill = true;
      issue(index);
      return;
    }
    if (res < 0) {
      finish(index, res);
      return;
    }
    s.done += s.step_bytes;
  } else {
    if (res <= 0) {
      finish(index, res < 0 ? res : -EIO);
      return;
    }
    s.done += static_cast<std::uint64_t>(res);
    const std::uint64_t asked = std::min(s.step_bytes, detail::kMaxSegments * detail::kZeroChunk);
    if (static_cast<std::uint64_t>(res) < asked) bump(counters.retries);
  }
  if (s.done >= s.total) {
    finish(index, 0);
    return;
  }
  if (stopping) {
    finish(index, -ECANCELED);
    return;
  }
  s.replan = true;
  issue(index);
}

void HostStorageService::Impl::finish(std::uint32_t index, int result) noexcept {
  detail::Slot& s = slots[index];
  release(s);
  bump(counters.requests);
  if (stopping && result == -ECANCELED) bump(counters.cancelled_at_stop);
  if (result == 0) {
    bump(counters.bytes, s.total);
  } else {
    bump(counters.errors);
  }
  post(*s.channel, s.tag, result);
  s.busy = false;
  s.channel = nullptr;
  free_slots.push_back(index);
}

void HostStorageService::Impl::post(detail::ServiceChannel& ch, std::uint64_t tag,
                                    int result) noexcept {
  detail::RingCqe& e = ch.cq[ch.cq_tail & ch.mask];
  e.tag = tag;
  e.result = result;
  e.reserved = 0;
  ++ch.cq_tail;
  --ch.held;
  ch.dirty = true;
}

bool HostStorageService::Impl::cancel_in_flight() noexcept {
  bool all = true;
  for (std::uint32_t i = 0; i < slots.size(); ++i) {
    if (!slots[i].busy || slots[i].cancel_sent || slots[i].waiting) continue;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe == nullptr) {
      submit_prepared();
      sqe = io_uring_get_sqe(&ring);
    }
    if (sqe == nullptr) {  // the rest on the next call
      all = false;
      break;
    }
    io_uring_prep_cancel64(sqe, i, 0);
    io_uring_sqe_set_data64(sqe, kCancelTag);
    slots[i].cancel_sent = true;
    ++prepared;
  }
  submit_prepared();
  return all;
}

}  // namespace keel::vmm
