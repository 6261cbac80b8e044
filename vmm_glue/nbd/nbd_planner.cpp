// From NBD requests to virtio-blk requests, in order (nbd_planner.h).
#include "nbd_planner.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "keel/wire/virtio.h"
#include "nbd_layout.h"

namespace keel::vmm::nbd_internal {

namespace {

/// Sectors one virtio-blk WRITE_ZEROES may carry (the device's max_write_zeroes_sectors).
constexpr std::uint32_t kMaxZeroSectors = 1u << 16;

/// Scratch position of the sector that starts at buffer position `sector_pos`.
std::uint32_t scratch_pos_of(const Req& r, std::uint64_t sector_pos) noexcept {
  return sector_pos == 0 && r.head_edge ? 0 : kSector;
}

}  // namespace

std::uint32_t check_request(const nbd::Request& h, const NbdServerConfig& cfg,
                            std::uint64_t export_bytes) noexcept {
  std::uint16_t allowed = nbd::kCmdFlagFua;  // SEND_FUA: accepted on every command
  switch (h.type) {
    case nbd::kCmdRead:
    case nbd::kCmdWrite:
    case nbd::kCmdFlush: break;
    case nbd::kCmdTrim:
      if (cfg.trim == NbdTrim::off) return nbd::kEinval;
      break;
    case nbd::kCmdWriteZeroes: allowed |= nbd::kCmdFlagNoHole; break;
    default: return nbd::kEinval;  // CACHE, BLOCK_STATUS and unknown commands
  }
  if ((h.flags & ~allowed) != 0) return nbd::kEinval;
  const bool writes =
      h.type == nbd::kCmdWrite || h.type == nbd::kCmdWriteZeroes || h.type == nbd::kCmdTrim;
  if (writes && cfg.read_only) return nbd::kEperm;
  if (h.type == nbd::kCmdFlush) return 0;
  if (h.length == 0) return nbd::kEinval;
  if ((h.type == nbd::kCmdRead || h.type == nbd::kCmdWrite) && h.length > cfg.max_request_bytes) {
    return nbd::kEinval;
  }
  if (h.offset > export_bytes || h.length > export_bytes - h.offset) {
    return h.type == nbd::kCmdWrite || h.type == nbd::kCmdWriteZeroes ? nbd::kEnospc : nbd::kEinval;
  }
  return 0;
}

void Planner::plan(Req& r) {
  const std::uint64_t off = r.h.offset, end = r.h.offset + r.h.length;
  r.a0 = off / kSector * kSector;
  r.a1 = (end + kSector - 1) / kSector * kSector;
  r.shift = static_cast<std::uint32_t>(off - r.a0);
  const bool unaligned = off % kSector != 0 || end % kSector != 0;
  if (r.h.type == nbd::kCmdRead) {
    if (unaligned) bump(counters_.unaligned);
  } else if ((r.h.type == nbd::kCmdWrite || r.h.type == nbd::kCmdWriteZeroes) && unaligned) {
    bump(counters_.unaligned);
    r.rmw = true;
    r.head_edge = off % kSector != 0;
    // The sector holding the end, unless it is the head's sector (already read).
    r.tail_edge = end % kSector != 0 && !(r.head_edge && r.a1 - r.a0 == kSector);
  }
  // Trim in `ignore` mode and flush touch no sectors: they hold no range.
  const bool touches = r.h.type == nbd::kCmdRead || r.h.type == nbd::kCmdWrite ||
                       r.h.type == nbd::kCmdWriteZeroes ||
                       (r.h.type == nbd::kCmdTrim && cfg_.trim == NbdTrim::zero);
  if (touches) {
    r.range.begin = r.a0;
    r.range.end = r.a1;
    r.range.writes = r.h.type != nbd::kCmdRead;
  }
}

std::uint64_t Planner::needed_chunks(const Req& r) noexcept {
  std::uint64_t n = 0;
  if (r.h.type == nbd::kCmdRead || r.h.type == nbd::kCmdWrite) n = chunks_for(r.a1 - r.a0);
  if (r.rmw) ++n;  // scratch for the edge sectors
  return n;
}

// ---- admission ----

void Planner::admit(Req& r) {
  r.deadline_ns = clock_.now() + ns(cfg_.io_timeout);
  order_.hold(r.range);
  if (!order_.may_start(r.range)) {
    bump(counters_.overlap_waits);
    r.queued = true;
    admit_q_.push_back(&r);
    return;
  }
  start(r);
}

void Planner::pump_admissions() {
  if (pumping_) {  // finish() inside start() below: the outer loop goes round again
    pump_again_ = true;
    return;
  }
  pumping_ = true;
  do {
    pump_again_ = false;
    for (std::size_t i = 0; i < admit_q_.size();) {
      Req& r = *admit_q_[i];
      if (!order_.may_start(r.range)) {
        ++i;
        continue;
      }
      admit_q_.erase(admit_q_.begin() + static_cast<std::ptrdiff_t>(i));
      r.queued = false;
      start(r);
    }
  } while (pump_again_);
  pumping_ = false;
}

void Planner::cancel_queued(Req& r) {
  if (r.queued) {
    admit_q_.erase(std::find(admit_q_.begin(), admit_q_.end(), &r));
    r.queued = false;
  }
  order_.release(r.range);
  r.device_done = true;
  r.error = nbd::kEio;
  done_.request_done(r);
}

// ---- device work ----

void Planner::start(Req& r) {
  r.admitted = true;
  ++running_;
  switch (r.h.type) {
    case nbd::kCmdRead: bump(counters_.reads); break;
    case nbd::kCmdWrite: bump(counters_.writes); break;
    case nbd::kCmdFlush: bump(counters_.flushes); break;
    case nbd::kCmdTrim: bump(counters_.trims); break;
    case nbd::kCmdWriteZeroes: bump(counters_.write_zeroes); break;
    default: break;
  }
  if (r.replied) {  // timed out while waiting for its turn
    r.error = nbd::kEio;
    finish(r);
    return;
  }
  if (r.rmw && (r.head_edge || r.tail_edge)) {
    r.stage = Stage::edges;
    if (r.head_edge) push_op(r, VKind::read, true, 0, kSector, r.a0 / kSector);
    if (r.tail_edge) push_op(r, VKind::read, true, kSector, kSector, r.a1 / kSector - 1);
    return;
  }
  r.stage = Stage::main;
  main_ops(r);
  if (r.ops_left == 0) advance(r);
}

void Planner::push_op(Req& r, VKind kind, bool scratch, std::uint32_t pos, std::uint32_t bytes,
                      std::uint64_t sector) {
  VOp op;
  op.req = &r;
  op.kind = kind;
  op.scratch = scratch;
  op.pos = pos;
  op.bytes = bytes;
  op.sector = sector;
  queue_.push(op);
  ++r.ops_left;
}

void Planner::push_data_ops(Req& r, VKind kind, std::uint64_t from, std::uint64_t to) {
  for (std::uint64_t p = from; p < to; p += cfg_.max_virtio_bytes) {
    const auto bytes =
        static_cast<std::uint32_t>(std::min<std::uint64_t>(to - p, cfg_.max_virtio_bytes));
    push_op(r, kind, false, static_cast<std::uint32_t>(p), bytes, (r.a0 + p) / kSector);
  }
}

void Planner::push_zero_ops(Req& r, std::uint64_t from, std::uint64_t to) {  // aligned bytes
  for (std::uint64_t p = from; p < to;) {
    const std::uint64_t bytes =
        std::min<std::uint64_t>(to - p, std::uint64_t{kMaxZeroSectors} * kSector);
    push_op(r, VKind::zeroes, false, 0, static_cast<std::uint32_t>(bytes), p / kSector);
    p += bytes;
  }
}

void Planner::main_ops(Req& r) {
  const std::uint64_t off = r.h.offset, end = r.h.offset + r.h.length;
  switch (r.h.type) {
    case nbd::kCmdRead: push_data_ops(r, VKind::read, 0, r.a1 - r.a0); break;
    case nbd::kCmdWrite:
      if (r.rmw) patch_write(r);
      push_data_ops(r, VKind::write, 0, r.a1 - r.a0);
      break;
    case nbd::kCmdFlush: push_op(r, VKind::flush, false, 0, 0, 0); break;
    case nbd::kCmdTrim:
      if (cfg_.trim == NbdTrim::zero) {
        // Trim is advisory: only whole sectors inside the range are zeroed.
        const std::uint64_t from = (off + kSector - 1) / kSector * kSector;
        const std::uint64_t to = end / kSector * kSector;
        if (from < to) push_zero_ops(r, from, to);
      }
      break;
    case nbd::kCmdWriteZeroes:
      if (!r.rmw) {
        push_zero_ops(r, off, end);
      } else {
        patch_zeroes(r);
        if (r.head_edge) push_op(r, VKind::write, true, 0, kSector, r.a0 / kSector);
        if (r.tail_edge) push_op(r, VKind::write, true, kSector, kSector, r.a1 / kSector - 1);
        const std::uint64_t from = (off + kSector - 1) / kSector * kSector;
        const std::uint64_t to = end / kSector * kSector;
        if (from < to) push_zero_ops(r, from, to);
      }
      break;
    default: break;
  }
}

/// RMW write: the bytes of the edge sectors around the payload come from what was read.
void Planner::patch_write(Req& r) {
  const std::byte* s = buffers_.scratch_host(r.buf);
  if (r.head_edge) buffers_.copy_in(r.buf, 0, s, r.shift);
  const std::uint64_t end_pos = r.shift + std::uint64_t{r.h.length};
  const std::uint64_t total = r.a1 - r.a0;
  if (end_pos < total) {
    const std::uint64_t sector_pos = total - kSector;
    const std::byte* src = s + scratch_pos_of(r, sector_pos) + (end_pos - sector_pos);
    buffers_.copy_in(r.buf, end_pos, src, total - end_pos);
  }
}

/// RMW write-zeroes: zero the covered part of the edge sectors read into the scratch.
void Planner::patch_zeroes(Req& r) {
  std::byte* s = buffers_.scratch_host(r.buf);
  const std::uint64_t off = r.h.offset, end = r.h.offset + r.h.length;
  if (r.head_edge) {
    const std::uint64_t stop = std::min<std::uint64_t>(end, r.a0 + kSector);
    std::memset(s + (off - r.a0), 0, stop - off);
  }
  if (r.tail_edge) {
    const std::uint64_t sector = r.a1 - kSector;
    const std::uint64_t from = std::max(off, sector);
    std::memset(s + kSector + (from - sector), 0, end - from);
  }
}

void Planner::op_done(const VOp& op, std::uint8_t status) {
  Req& r = *op.req;
  if (status != virtio::blk::kStatusOk && r.error == 0) {
    r.error = nbd::kEio;
    notes_.note(std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) +
                " (+" + std::to_string(r.h.length) +
                "): the device completed a virtio-blk request with status " +
                std::to_string(status) + ": replying EIO");
  }
  if (--r.ops_left == 0) advance(r);
}

void Planner::advance(Req& r) {
  for (;;) {
    if (r.error != 0) {
      finish(r);
      return;
    }
    switch (r.stage) {
      case Stage::edges:
        r.stage = Stage::main;
        main_ops(r);
        break;
      case Stage::main:
        if (r.fua && r.h.type != nbd::kCmdRead && r.h.type != nbd::kCmdFlush &&
            !(r.h.type == nbd::kCmdTrim && cfg_.trim == NbdTrim::ignore)) {
          r.stage = Stage::flush;
          push_op(r, VKind::flush, false, 0, 0, 0);
        } else {
          r.stage = Stage::done;
        }
        break;
      case Stage::flush: r.stage = Stage::done; break;
      case Stage::done: finish(r); return;
    }
    if (r.ops_left > 0) return;
  }
}

/// The device is done with the request (or it never needed the device): its range goes, and so
/// do its buffers once its reply is out (RequestDone).
void Planner::finish(Req& r) {
  r.device_done = true;
  --running_;
  order_.release(r.range);
  done_.request_done(r);
  pump_admissions();
}

}  // namespace keel::vmm::nbd_internal
