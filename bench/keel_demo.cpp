// keel-demo: the README's main job until keel-perf exists. Enables VFs on a card, gives each a
// storage slice, brings up each VF's NVMe controller and does verified IO on all of them at
// once, one thread per VF, then prints what the card's counters saw.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/card.h"
#include "nvme_host.h"

namespace {

using keel::testing::NvmeHost;
namespace vc = keel::regs::vfcfg;

struct VfResult {
  std::string error;
  std::uint64_t ios = 0;
  double seconds = 0;
};

// Writes every 4 KiB block of the slice in random order at queue depth 16, then reads and
// verifies each one.
VfResult exercise(NvmeHost& h, unsigned vf, std::uint64_t lbas) {
  VfResult out;
  constexpr std::uint32_t kBlock = 4096, kNlb = kBlock / 512, kDepth = 16;
  auto buf = h.fn().alloc_dma(kDepth * kBlock);
  if (!buf) return {keel::to_string(buf.error())};
  std::vector<std::uint64_t> order(lbas / kNlb);
  for (std::uint64_t i = 0; i < order.size(); ++i) order[i] = i * kNlb;
  std::mt19937_64 rng(vf);
  const auto t0 = std::chrono::steady_clock::now();
  for (bool write : {true, false}) {
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<std::uint64_t> slot_lba(kDepth);
    std::vector<int> cid_slot(65536, -1);
    std::vector<unsigned> free_slots;
    for (unsigned s = 0; s < kDepth; ++s) free_slots.push_back(s);
    std::size_t next = 0, done = 0;
    while (done < order.size()) {
      while (next < order.size() && !free_slots.empty()) {
        const unsigned s = free_slots.back();
        free_slots.pop_back();
        std::byte* mem = buf->data() + std::size_t{s} * kBlock;
        if (write) keel::testing::fill_pattern(mem, kBlock, order[next], 1000 + vf);
        const auto cid = h.queue(
            1, h.rw_cmd(write, order[next], kNlb, buf->iova() + std::uint64_t{s} * kBlock, kBlock));
        cid_slot[cid] = static_cast<int>(s);
        slot_lba[s] = order[next++];
      }
      h.ring(1);
      auto c = h.reap(1, std::chrono::seconds(5));
      if (!c) return {keel::to_string(c.error())};
      if (keel::nvme::status_base(keel::nvme::cqe_status(*c)) != 0) {
        return {"command failed with NVMe status " + std::to_string(keel::nvme::cqe_status(*c))};
      }
      const int s = cid_slot[c->cid];
      if (s < 0) return {"completion for an unknown command " + std::to_string(c->cid)};
      if (!write &&
          keel::testing::check_pattern(buf->data() + std::size_t(s) * kBlock, kBlock,
                                       slot_lba[static_cast<unsigned>(s)], 1000 + vf) != -1) {
        return {"data mismatch at LBA " + std::to_string(slot_lba[static_cast<unsigned>(s)])};
      }
      free_slots.push_back(static_cast<unsigned>(s));
      ++done;
      ++out.ios;
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-demo: enable VFs on a card and do verified IO on each"};
  std::string card_spec = "model";
  unsigned vfs = 4;
  unsigned mib = 8;
  app.add_option("--card", card_spec, "card: model, sim, vfio:<BDF>, xrt:<N>")
      ->capture_default_str();
  app.add_option("--vfs", vfs, "VFs to enable")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--mib", mib, "MiB of storage per VF (all written and verified)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  keel::fpga::CardOptions opts;
  opts.lockstep = false;
  opts.max_vfs = std::max(vfs, 8u);
  opts.storage_bytes = std::uint64_t{mib} * vfs << 20;
  auto card = keel::fpga::open_card(card_spec, opts);
  if (!card) {
    std::fprintf(stderr, "keel-demo: cannot open card '%s': %s\n", card_spec.c_str(),
                 keel::to_string(card.error()).c_str());
    return 1;
  }
  keel::fpga::Card& c = **card;
  const std::uint64_t lbas = std::uint64_t{mib} << 11;
  if (vfs > c.max_vfs()) {
    std::fprintf(stderr, "keel-demo: the card has %u VFs, asked for %u\n", c.max_vfs(), vfs);
    return 1;
  }
  if (auto st = c.set_num_vfs(0); !st.ok() || !(st = c.set_num_vfs(vfs)).ok()) {
    std::fprintf(stderr, "keel-demo: enabling %u VFs: %s\n", vfs,
                 keel::to_string(st.error()).c_str());
    return 1;
  }
  std::printf("%s\n", c.describe().c_str());
  std::vector<std::unique_ptr<NvmeHost>> hosts;
  for (unsigned v = 0; v < vfs; ++v) {
    keel::fpga::Function& pf = c.pf();
    pf.write32(vc::at(v, vc::IOQ), 1);
    pf.write64(vc::at(v, vc::SLICE_BASE), v * lbas);
    pf.write64(vc::at(v, vc::SLICE_LBAS), lbas);
    pf.write32(vc::at(v, vc::CTRL), 1);
    const auto err = keel::regs::field_get(pf.read32(vc::at(v, vc::STATUS)),
                                           vc::STATUS_ERR_CODE_MASK, vc::STATUS_ERR_CODE_SHIFT);
    if (err != 0) {
      std::fprintf(stderr, "keel-demo: the card refused VF %u's resources (VFCFG error %u)\n", v,
                   static_cast<unsigned>(err));
      return 1;
    }
    auto fn = c.vf(v);
    if (!fn) {
      std::fprintf(stderr, "keel-demo: %s\n", keel::to_string(fn.error()).c_str());
      return 1;
    }
    auto h = std::make_unique<NvmeHost>(c, **fn);
    keel::Status st = h->enable();
    if (st.ok()) st = h->create_io_pair(1, 64);
    if (!st.ok()) {
      std::fprintf(stderr, "keel-demo: VF %u bring-up: %s\n", v,
                   keel::to_string(st.error()).c_str());
      return 1;
    }
    hosts.push_back(std::move(h));
  }
  std::vector<VfResult> results(vfs);
  std::vector<std::thread> threads;
  for (unsigned v = 0; v < vfs; ++v) {
    threads.emplace_back([&, v] { results[v] = exercise(*hosts[v], v, lbas); });
  }
  for (auto& t : threads) t.join();
  int failed = 0;
  std::printf("%-4s %10s %12s %10s %12s  %s\n", "VF", "IOs", "bytes", "IOPS", "card cmds",
              "result");
  for (unsigned v = 0; v < vfs; ++v) {
    const VfResult& r = results[v];
    const std::uint64_t cmds = c.pf().read64(vc::at(v, vc::CMDS));
    const std::uint64_t bytes = c.pf().read64(vc::at(v, vc::BYTES));
    if (!r.error.empty()) ++failed;
    std::printf("%-4u %10llu %12llu %10.0f %12llu  %s\n", v, static_cast<unsigned long long>(r.ios),
                static_cast<unsigned long long>(bytes),
                r.seconds > 0 ? static_cast<double>(r.ios) / r.seconds : 0.0,
                static_cast<unsigned long long>(cmds),
                r.error.empty() ? "verified" : r.error.c_str());
  }
  std::printf("card: %llu commands, %llu bytes, %llu DMA faults\n",
              static_cast<unsigned long long>(c.pf().read64(keel::regs::pf::CMDS)),
              static_cast<unsigned long long>(c.pf().read64(keel::regs::pf::BYTES)),
              static_cast<unsigned long long>(c.pf().read64(keel::regs::pf::DMA_FAULTS)));
  hosts.clear();
  if (failed != 0) {
    std::fprintf(stderr, "keel-demo: %d VF(s) failed\n", failed);
    return 1;
  }
  std::printf("keel-demo: %u VFs, every block written and verified\n", vfs);
  return 0;
}
