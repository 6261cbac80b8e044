// libFuzzer target: the paravisor worker's data path from the guest's descriptor chains to what
// it hands the VF and the host service. The input is a virtqueue (descriptor table, available
// ring, headers and payloads) in a guest memory of two adjacent regions, and the limits the
// device runs with. Every chain goes through the virtqueue, the request parser, the split into
// sub-requests and the building of each sub-request's segments into the same fixed arrays the
// worker submits from (a fake VF: NVMe segments; a fake host service: host segments).
//
// Then the same virtqueue goes through the real worker (QueueWorker, via a Paravisor run by the
// caller) on one of two paths the input picks: a VF of the reference model card (lockstep, the
// NVMe driver, the card's IOMMU) or the host storage service (io_uring on the card's image).
// The worker's fixed arrays are under ASan there; after the worker stops, every chain it took
// has exactly one used entry (or was given back to the ring), and no head is completed more often
// than it was made available (checked unless a device-writable buffer covers the rings).
//
// Invariants checked (a violation traps):
// - no sub-request spans more segments than its array holds (kMaxSubSegs), and none is empty;
// - every sub-request starts and ends on a logical block and stays within max_sub_bytes;
// - the sub-requests cover the request's data exactly once, in order, at the right sectors;
// - every segment lies inside one guest memory region;
// - a request whose data pieces are whole blocks is never refused as too fragmented;
// - the parser allocates nothing, honours seg_max, size_max, the per-request byte limit and the
//   block size, and used.len is the data length + 1 for reads.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "keel/fpga/model/model_card.h"
#include "keel/sriov/pf_manager.h"
#include "keel/vmm/blk_request.h"
#include "keel/vmm/blk_split.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/paravisor.h"
#include "keel/vmm/virtqueue.h"

namespace {

using namespace keel;
using namespace keel::vmm;
namespace blk = virtio::blk;

constexpr std::uint16_t kQueue = 256;      // chains as long as seg_max + 2
constexpr std::uint64_t kRegion = 0x8000;  // two adjacent regions of 32 KiB
constexpr std::uint64_t kDesc = 0x1000, kAvail = 0x2000, kUsed = 0x3000, kData = 0x4000;

#define CHECK(c)                \
  do {                          \
    if (!(c)) __builtin_trap(); \
  } while (0)

GuestMemory& memory() {
  static GuestMemory* m = [] {
    auto mem = GuestMemory::empty();
    for (int i = 0; i < 2; ++i) {
      const int fd = memfd_create("worker-fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
      if (fd < 0 || ftruncate(fd, kRegion) != 0) __builtin_trap();
      if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) __builtin_trap();
      if (!mem->add_region(fd, 0, i * kRegion, kRegion, 0x100000 + i * kRegion).ok()) {
        __builtin_trap();
      }
    }
    return mem.release();
  }();
  return *m;
}

constexpr std::uint64_t kDiskBytes = 1 << 20;

// The card, its image, the host service and two paravisors over memory(): one on VF 0, one on
// the host path only. Built once.
struct Stack {
  std::string image;
  std::unique_ptr<keel::fpga::model::ModelCard> card;
  std::unique_ptr<HostStorageService> host;
  std::unique_ptr<Paravisor> on_vf, on_host;
};

template <typename R>
auto must(R r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "worker_fuzz: %s: %s\n", what, r.error().message.c_str());
    std::abort();
  }
  return std::move(r).value();
}

Stack& stack() {
  static Stack* s = [] {
    auto* st = new Stack();
    st->image = "/tmp/keel-worker-fuzz-" + std::to_string(getpid()) + ".img";
    keel::fpga::model::ModelConfig mc;
    mc.card.image_path = st->image;
    mc.card.storage_bytes = kDiskBytes;
    mc.card.lockstep = true;
    mc.card.max_vfs = 1;
    st->card = must(keel::fpga::model::ModelCard::create(mc), "model card");
    auto pm = must(keel::sriov::PfManager::discover(*st->card), "PF");
    keel::sriov::VfResources res;
    res.slice_lbas = kDiskBytes / 512;
    if (!pm.enable_vfs({&res, 1}).ok()) std::abort();
    HostServiceConfig hc;
    hc.image_path = st->image;
    hc.length = kDiskBytes;
    for (const auto& r : memory().regions())
      hc.regions.push_back({r.fd, r.fd_offset, r.gpa, r.bytes});
    hc.io_uring_depth = 8;
    st->host = must(HostStorageService::start(hc), "host service");
    ParavisorConfig pc;
    pc.capacity_sectors = kDiskBytes / 512;
    pc.command_timeout = std::chrono::milliseconds(20);
    pc.admin_timeout = std::chrono::milliseconds(20);
    pc.quiesce_timeout = std::chrono::milliseconds(20);
    auto vf = must(st->card->vf(0), "VF 0");
    st->on_vf = must(Paravisor::create(vf, *st->card, *st->card, memory(), *st->host, pc),
                     "paravisor (VF)");
    st->on_host = must(Paravisor::create(nullptr, *st->card, *st->card, memory(), *st->host, pc),
                       "paravisor (host)");
    for (Paravisor* p : {st->on_vf.get(), st->on_host.get()}) {
      if (!p->set_features(p->device_features()).ok()) std::abort();
    }
    std::atexit([] {
      Stack& me = stack();
      me.on_vf.reset();
      me.on_host.reset();
      me.host.reset();
      me.card.reset();
      unlink(me.image.c_str());
    });
    return st;
  }();
  return *s;
}

std::uint16_t ring16(const GuestMemory& mem, std::uint64_t gpa) {
  std::uint16_t v;
  std::memcpy(&v, mem.translate(gpa, 2), 2);
  return v;
}

// Whether a device-writable descriptor of the table reaches the rings or the table itself. A
// guest may do that; the device then writes disk data (left there by earlier inputs) over used
// entries and available heads, and the rings no longer record what the worker did. keel offers
// no indirect descriptors, so the table is the only place buffers come from, and the table can
// change only through such a descriptor.
bool device_writes_rings(const GuestMemory& mem) {
  for (std::uint16_t i = 0; i < kQueue; ++i) {
    virtio::Desc d;
    std::memcpy(&d, mem.translate(kDesc + 16u * i, sizeof d), sizeof d);
    if ((d.flags & virtio::kDescWrite) != 0 && d.len > 0 && d.addr < kData &&
        d.addr + d.len > kDesc) {
      return true;
    }
  }
  return false;
}

// Stage 2: the virtqueue (already in memory) through the real worker on `pv`.
void run_worker(Paravisor& pv, keel::fpga::Card& card) {
  GuestMemory& mem = memory();
  const bool rings_clobbered = device_writes_rings(mem);
  if (!pv.set_queue(0, {kQueue, kDesc, kAvail, kUsed}).ok()) return;
  for (unsigned i = 0; i < 4000; ++i) {
    pv.run_once();
    card.step(1);
    if (pv.needs_reset()) break;
    if (ring16(mem, kUsed + 2) == pv.last_avail(0) && ring16(mem, kAvail + 2) == pv.last_avail(0)) {
      break;
    }
  }
  pv.stop();                    // bounded; what is unfinished is given back (last_avail moves back)
  if (rings_clobbered) return;  // the worker ran under ASan; the rings prove nothing
  const std::uint16_t used = ring16(mem, kUsed + 2), taken = pv.last_avail(0);
  CHECK(used <= taken);
  if (!pv.needs_reset()) CHECK(used == taken);  // every chain taken completed, exactly once
  // No head completed more often than the driver made it available.
  unsigned avail_count[kQueue] = {}, used_count[kQueue] = {};
  for (std::uint16_t i = 0; i < taken; ++i) {
    const std::uint16_t h = ring16(mem, kAvail + 4 + 2u * (i % kQueue));
    if (h < kQueue) ++avail_count[h];
  }
  for (std::uint16_t i = 0; i < used; ++i) {
    virtio::UsedElem e;
    std::memcpy(&e, mem.translate(kUsed + 4 + 8u * (i % kQueue), sizeof e), sizeof e);
    CHECK(e.id < kQueue);
    ++used_count[e.id];
    CHECK(used_count[e.id] <= avail_count[e.id]);
  }
}

bool in_one_region(const GuestMemory& mem, std::uint64_t gpa, std::uint32_t len) {
  return len > 0 && mem.translate(gpa, len) != nullptr;
}

// What the worker would hand the fake VF and the fake host service for one sub-request.
struct FakeSinks {
  struct VfSeg {
    std::uint64_t iova;
    std::uint32_t len;
  } vf[kMaxSubSegs];
  struct HostSeg {
    std::uint64_t gpa;
    std::uint32_t bytes;
  } host[kMaxSubSegs];
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  GuestMemory& mem = memory();
  if (size < 4) return 0;
  // Limits from the first four bytes.
  BlkLimits limits;
  limits.capacity_sectors = std::uint64_t{1} << (10 + data[3] % 12);
  limits.seg_max = 1 + data[0] % 130;
  limits.size_max = (data[1] & 1) ? 4096 : 128 * 1024;
  limits.max_request_bytes = 512u << (data[1] >> 1 & 15);  // 512 B .. 16 MiB
  limits.block_bytes = (data[2] & 1) ? 4096 : 512;
  limits.max_pieces = limits.seg_max + 16;
  SplitParams sp;
  sp.max_sub_bytes = (data[2] & 2) ? 8192 : 128 * 1024;
  sp.block_bytes = limits.block_bytes;
  const bool host_path = (data[2] & 4) != 0;  // stage 2 on the host path, else on the VF
  data += 4;
  size -= 4;

  const std::uint8_t* const input = data;
  const std::size_t input_size = size;
  auto put = [&](std::uint64_t gpa, std::size_t max) {
    const std::size_t n = std::min(size, max);
    // The data area spans both regions: copy a region at a time.
    for (std::size_t off = 0; off < n;) {
      const std::uint64_t run = region_run(mem, gpa + off);
      const std::size_t take = std::min<std::size_t>(n - off, run);
      std::memcpy(mem.translate(gpa + off, take), data + off, take);
      off += take;
    }
    data += n;
    size -= n;
  };
  auto load = [&] {
    data = input;
    size = input_size;
    for (const GuestMemory::Region& r : mem.regions()) std::memset(r.host, 0, r.bytes);
    put(kDesc, virtio::desc_bytes(kQueue));
    put(kAvail, virtio::avail_bytes(kQueue));
    put(kData, 2 * kRegion - kData);
  };
  load();

  Virtqueue vq;
  if (!vq.setup(mem, {kQueue, kDesc, kAvail, kUsed}, true).ok()) return 0;
  std::vector<ChainSeg> chain;
  chain.reserve(kQueue);
  BlkRequest req;
  req.data.reserve(limits.max_pieces);
  const unsigned cap = max_subs_per_request(limits, sp);
  std::vector<SubRequest> subs(cap);
  FakeSinks sinks{};
  DataSeg segs[kMaxSubSegs];
  std::uint16_t head;
  for (unsigned n = 0; n < 64 && vq.pop(&head); ++n) {
    const ChainError ce = vq.read_chain(head, chain);
    const std::size_t reserved = req.data.capacity();
    const ParseOutcome o = parse_blk_request(mem, limits, head, ce, chain, req);
    CHECK(req.data.capacity() == reserved);  // no allocation in the parser
    if (o == ParseOutcome::broken) break;
    for (const DataSeg& d : req.data) CHECK(in_one_region(mem, d.gpa, d.len));
    if (o == ParseOutcome::complete) {
      (void)write_blk_status(mem, req, req.status);
      vq.push_used(head, req.written);
      continue;
    }
    std::uint64_t total = 0;
    bool whole_blocks = true;
    CHECK(req.data.size() <= limits.max_pieces);
    for (const DataSeg& d : req.data) {
      CHECK(d.len <= limits.size_max);
      total += d.len;
      whole_blocks = whole_blocks && d.len % limits.block_bytes == 0;
    }
    if (req.type == blk::kIn || req.type == blk::kOut) {
      CHECK(total == req.sectors * 512);
      CHECK(total <= limits.max_request_bytes);
      CHECK(req.sector % (limits.block_bytes / 512) == 0 && total % limits.block_bytes == 0);
      if (req.type == blk::kIn) CHECK(req.written == total + 1);
    }
    const SplitResult sr = split_blk_request(req, sp, subs);
    if (sr.count == 0) {
      // Refused: only requests with pieces smaller than a block may be refused.
      CHECK(!whole_blocks);
      vq.push_used(head, req.written);
      continue;
    }
    CHECK(sr.count <= cap);
    // Walk the request's data stream alongside the subs: each byte exactly once, in order.
    std::size_t di = 0;
    std::uint64_t doff = 0, stream = 0;
    for (unsigned i = 0; i < sr.count; ++i) {
      const SubRequest& s = subs[i];
      if (s.op == SubOp::flush) {
        CHECK(req.type == blk::kFlush && sr.count == 1);
        continue;
      }
      if (s.op == SubOp::write_zeroes) {
        CHECK(s.bytes > 0 && s.bytes % limits.block_bytes == 0);
        continue;
      }
      CHECK(s.bytes > 0 && s.bytes <= sp.max_sub_bytes && s.bytes % sp.block_bytes == 0);
      CHECK(s.sector * 512 == req.sector * 512 + stream);
      const unsigned k = sub_segments(req, s, segs);
      CHECK(k > 0 && k <= kMaxSubSegs);
      std::uint64_t bytes = 0;
      for (unsigned j = 0; j < k; ++j) {
        CHECK(j < std::size(sinks.vf) && j < std::size(sinks.host));
        sinks.vf[j] = {segs[j].gpa, segs[j].len};  // IOVA = GPA
        sinks.host[j] = {segs[j].gpa, segs[j].len};
        CHECK(in_one_region(mem, segs[j].gpa, segs[j].len));
        // Same bytes as the request's stream at this point.
        while (di < req.data.size() && doff == req.data[di].len) {
          ++di;
          doff = 0;
        }
        CHECK(di < req.data.size());
        CHECK(segs[j].gpa == req.data[di].gpa + doff);
        CHECK(segs[j].len <= req.data[di].len - doff);
        doff += segs[j].len;
        bytes += segs[j].len;
      }
      CHECK(bytes == s.bytes);
      stream += bytes;
    }
    if (req.type == blk::kIn || req.type == blk::kOut) CHECK(stream == total);
    (void)write_blk_status(mem, req, blk::kStatusOk);
    vq.push_used(head, req.written);
    (void)vq.should_notify();
  }
  // Stage 2: the same chains through the real worker, on the path the input picked.
  Stack& st = stack();
  load();
  run_worker(host_path ? *st.on_host : *st.on_vf, *st.card);
  return 0;
}
