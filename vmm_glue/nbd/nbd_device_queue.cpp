// virtio-blk requests of the NBD server to and from the device (nbd_device_queue.h).
#include "nbd_device_queue.h"

#include <cstring>

#include "keel/wire/virtio.h"
#include "nbd_layout.h"
#include "nbd_request.h"

namespace keel::vmm::nbd_internal {

namespace blk = virtio::blk;

void DeviceQueue::init(std::uint64_t wz_gpa, std::uint16_t entries) {
  wz_gpa_ = wz_gpa;
  for (int i = entries; i-- > 0;) free_wz_.push_back(i);
  inflight_.assign(entries, VOp{});
  inflight_valid_.assign(entries, false);
}

bool DeviceQueue::can_submit() const {
  if (pending_.empty()) return false;
  const VOp& op = pending_.front();
  const std::uint64_t segs = op.kind == VKind::flush ? 0
                             : op.kind == VKind::zeroes || op.scratch
                                 ? 1
                                 : chunks_for(op.pos % kChunk + op.bytes);
  return dev_.free_descriptors() >= segs + 2;
}

void DeviceQueue::submit() {
  bool any = false;
  while (!pending_.empty()) {
    VOp& op = pending_.front();
    DataSeg segs[72];
    std::size_t n = 0;
    std::uint32_t type = blk::kIn;
    switch (op.kind) {
      case VKind::read:
      case VKind::write:
        type = op.kind == VKind::read ? blk::kIn : blk::kOut;
        n = buffers_.segments(op.req->buf, op.scratch, op.pos, op.bytes, segs);
        break;
      case VKind::flush: type = blk::kFlush; break;
      case VKind::zeroes: {
        type = blk::kWriteZeroes;
        if (free_wz_.empty()) break;  // cannot happen: a slot per descriptor
        op.wz_slot = free_wz_.back();
        const blk::DiscardWriteZeroes wz{op.sector, op.bytes / kSector, 0};
        const std::uint64_t gpa = wz_gpa_ + std::uint64_t(op.wz_slot) * 16;
        std::memcpy(mem_.translate(gpa, 16), &wz, sizeof wz);
        segs[n++] = {gpa, 16};
        break;
      }
    }
    if (op.kind == VKind::zeroes && op.wz_slot < 0) break;
    if (dev_.free_descriptors() < n + 2) break;
    auto id = dev_.submit(type, op.kind == VKind::zeroes ? 0 : op.sector, {segs, n});
    if (!id.ok()) break;
    if (op.wz_slot >= 0) free_wz_.pop_back();
    inflight_[*id] = op;
    inflight_valid_[*id] = true;
    pending_.pop_front();
    any = true;
  }
  if (any) dev_.kick();
}

unsigned DeviceQueue::reap(OpSink& sink) {
  GuestCompletion done[64];
  unsigned total = 0;
  for (;;) {
    const unsigned n = dev_.reap(done);
    total += n;
    for (unsigned i = 0; i < n; ++i) {
      const std::uint16_t id = done[i].id;
      if (id >= inflight_.size() || !inflight_valid_[id]) continue;
      inflight_valid_[id] = false;
      const VOp op = inflight_[id];
      if (op.wz_slot >= 0) free_wz_.push_back(op.wz_slot);
      bump(counters_.virtio_requests);
      if (done[i].status != blk::kStatusOk) bump(counters_.virtio_errors);
      sink.op_done(op, done[i].status);
    }
    if (n < 64) return total;
  }
}

}  // namespace keel::vmm::nbd_internal
