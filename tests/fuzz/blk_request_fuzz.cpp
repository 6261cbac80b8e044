// libFuzzer target: arbitrary virtqueue contents (descriptor table, available ring, request
// headers and payloads) through the device side of the virtqueue and the virtio-blk request
// parser. Nothing may crash, read or write outside guest memory (ASan watches), or loop.
#include <cstdint>
#include <cstring>
#include <vector>

#include "keel/vmm/blk_request.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/virtqueue.h"

namespace {

constexpr std::uint16_t kQueue = 16;
constexpr std::uint64_t kDesc = 0x1000, kAvail = 0x2000, kUsed = 0x3000, kData = 0x4000;

keel::vmm::GuestMemory& memory() {
  static auto* m = keel::vmm::GuestMemory::create(1 << 16).value().release();  // 2 MiB
  return *m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  using namespace keel::vmm;
  GuestMemory& mem = memory();
  std::byte* ram = mem.translate(0, 0x10000);
  std::memset(ram, 0, 0x10000);
  // Input layout: descriptor table, then avail ring, then the data area; the rest zero.
  const std::size_t table = std::min<std::size_t>(size, virtio::desc_bytes(kQueue));
  std::memcpy(ram + kDesc, data, table);
  data += table;
  size -= table;
  const std::size_t avail = std::min<std::size_t>(size, virtio::avail_bytes(kQueue));
  std::memcpy(ram + kAvail, data, avail);
  data += avail;
  size -= avail;
  std::memcpy(ram + kData, data, std::min<std::size_t>(size, 0xC000));

  Virtqueue vq;
  if (!vq.setup(mem, {kQueue, kDesc, kAvail, kUsed}, true).ok()) return 0;
  std::vector<ChainSeg> chain;
  chain.reserve(kQueue);
  BlkRequest req;
  req.data.reserve(kQueue + 2);
  BlkLimits limits;
  limits.capacity_sectors = 1 << 20;
  std::uint16_t head;
  for (unsigned n = 0; n < 2u * kQueue && vq.pop(&head); ++n) {
    const ChainError ce = vq.read_chain(head, chain);
    const ParseOutcome o = parse_blk_request(mem, limits, head, ce, chain, req);
    if (o == ParseOutcome::broken) break;
    if (o == ParseOutcome::complete) (void)write_blk_status(mem, req, req.status);
    for (const DataSeg& d : req.data) {
      if (mem.translate(d.gpa, d.len) == nullptr)
        __builtin_trap();  // parser let a bad buffer through
    }
    vq.push_used(head, req.written);
    (void)vq.should_notify();
  }
  return 0;
}
