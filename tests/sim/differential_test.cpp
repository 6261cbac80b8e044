// The differential test: one seeded random stream of admin and IO commands, good and bad, on
// several VFs at once, driven into the reference model and the Verilated RTL card. Every
// completion (status, DW0, SQ head, SQ id, CID), every byte a command returns, the storage and
// the counters must be identical.
//
// What the comparison allows for: nothing, except the Identify Controller model number (each
// implementation names itself). Completion order is compared per SQ (every SQ has its own CQ
// here), which is where both cards promise an order.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "card_fixture.h"
#include "keel/fpga/card.h"
#include "keel/fpga/sim/sim_card.h"
#include "nvme_host.h"

namespace keel::testing {
namespace {

namespace vc = regs::vfcfg;
namespace sc = nvme::sc;

constexpr unsigned kVfs = 3;
constexpr unsigned kIoq = 2;                              // IO queue pairs per VF in use
constexpr std::uint64_t kSliceLbas = 4096;                // 2 MiB per VF
constexpr std::uint64_t kRegionLbas = kSliceLbas / kIoq;  // each SQ works in its own region
constexpr std::size_t kChunk = 136 * 1024;                // data area of one command
constexpr unsigned kChunks = 8;                           // commands of one VF in flight at most
constexpr fpga::Iova kUnmapped = 0x4000'0000;             // no window there on either card

// One side of the comparison: a card, a host per VF, data memory per VF.
struct Side {
  std::unique_ptr<fpga::Card> card;
  std::vector<std::unique_ptr<NvmeHost>> hosts;
  std::vector<fpga::DmaBuffer> data;
  std::vector<fpga::DmaBuffer> spare;  // memory for queues the stream creates itself
};

// `stall_percent` > 0: the simulated card's shell adds seeded random back-pressure.
Side make_side(const std::string& backend, unsigned stall_percent = 0, std::uint64_t seed = 1) {
  Side s;
  fpga::CardOptions o;
  o.storage_bytes = 16ull << 20;
  o.max_vfs = 4;
  o.max_ioq_per_vf = 4;
  o.lockstep = true;
  if (backend == "sim" && stall_percent != 0) {
    fpga::sim::SimConfig cfg;
    cfg.card = o;
    cfg.stall_percent = stall_percent;
    cfg.stall_seed = seed;
    auto card = fpga::sim::SimCard::create(cfg);
    EXPECT_TRUE(card.ok()) << to_string(card.error());
    if (!card.ok()) return s;
    s.card = std::move(card).value();
  } else {
    auto card = fpga::open_card(backend, o);
    EXPECT_TRUE(card.ok()) << backend << ": " << to_string(card.error());
    if (!card.ok()) return s;
    s.card = std::move(card).value();
  }
  EXPECT_TRUE(s.card->set_num_vfs(kVfs).ok());
  fpga::Function& pf = s.card->pf();
  for (unsigned v = 0; v < kVfs; ++v) {
    pf.write32(vc::at(v, vc::IOQ), 3);
    pf.write32(vc::at(v, vc::QOS), v + 1);
    pf.write64(vc::at(v, vc::SLICE_BASE), v * kSliceLbas);
    pf.write64(vc::at(v, vc::SLICE_LBAS), kSliceLbas);
    pf.write32(vc::at(v, vc::CTRL), 1);
    EXPECT_EQ(pf.read32(vc::at(v, vc::CTRL)) & 1u, 1u) << backend << " VF " << v;
    auto vf = s.card->vf(v);
    EXPECT_TRUE(vf.ok());
    s.hosts.push_back(std::make_unique<NvmeHost>(*s.card, **vf));
    const Status st = s.hosts.back()->enable(32);
    EXPECT_TRUE(st.ok()) << backend << ": " << (st.ok() ? "" : to_string(st.error()));
    for (std::uint16_t q = 1; q <= kIoq; ++q) {
      EXPECT_TRUE(s.hosts.back()->create_io_pair(q, 32).ok()) << backend;
    }
    auto d = (*vf)->alloc_dma(std::size_t{kChunks} * kChunk);
    auto sp = (*vf)->alloc_dma(2 * 4096);
    EXPECT_TRUE(d.ok() && sp.ok());
    s.data.push_back(std::move(d).value());
    s.spare.push_back(std::move(sp).value());
  }
  return s;
}

// A command of the stream, as both sides submit it.
struct Cmd {
  unsigned vf = 0;
  std::uint16_t qid = 0;
  nvme::Sqe sqe{};
  bool completes = true;       // Asynchronous Event Requests do not
  std::size_t data_off = 0;    // in the VF's data memory
  std::size_t data_bytes = 0;  // bytes a successful command returns there (reads)
  std::uint64_t fill = 0;      // writes: seed of the data (0: none)
  bool identify_ctrl = false;  // the model-number bytes differ by design
};

class Stream {
 public:
  explicit Stream(std::uint64_t seed) : rng_(seed) {}

  std::uint64_t next() { return rng_(); }
  unsigned below(unsigned n) { return static_cast<unsigned>(rng_() % n); }
  bool chance(unsigned percent) { return below(100) < percent; }

  // An IO command for (vf, qid) using data chunk `chunk`. PRPs are filled in per side.
  Cmd io(unsigned vf, std::uint16_t qid, unsigned chunk, unsigned* prp_mode) {
    Cmd c;
    c.vf = vf;
    c.qid = qid;
    nvme::Sqe& s = c.sqe;
    s.nsid = 1;
    const unsigned kind = below(100);
    const std::uint64_t region = (qid - 1u) * kRegionLbas;
    std::uint32_t nlb = 1 + below(chance(15) ? 256 : 32);
    if (chance(2)) nlb = 257 + below(100);  // past MDTS
    std::uint64_t slba = region + below(static_cast<unsigned>(kRegionLbas - 256));
    if (chance(4)) slba = kSliceLbas - nlb / 2;  // runs off the slice
    if (chance(1)) slba = ~std::uint64_t{0} - 3;
    const std::size_t off = chance(50) ? 0 : std::size_t{below(1024)} * 4;
    c.data_off = std::size_t{chunk} * kChunk + off;
    *prp_mode = 0;
    if (kind < 40) {
      s.opc = nvme::io::kWrite;
      c.fill = next() | 1;
    } else if (kind < 82) {
      s.opc = nvme::io::kRead;
    } else if (kind < 88) {
      s.opc = nvme::io::kWriteZeroes;
    } else if (kind < 92) {
      s.opc = nvme::io::kFlush;
      s.nsid = chance(50) ? 1 : (chance(50) ? 0xFFFFFFFFu : 7);
      return c;
    } else if (kind < 94) {
      s.opc = static_cast<std::uint8_t>(0x80 + below(0x40));  // unknown opcode
    } else if (kind < 96) {
      s.opc = nvme::io::kRead;
      s.nsid = 2;
    } else if (kind < 98) {
      s.opc = nvme::io::kWrite;
      s.flags = 1;  // fused
    } else {
      s.opc = nvme::io::kRead;
      *prp_mode = 1 + below(4);  // broken PRPs, below
    }
    s.cdw10 = static_cast<std::uint32_t>(slba);
    s.cdw11 = static_cast<std::uint32_t>(slba >> 32);
    s.cdw12 = nlb - 1;
    if (*prp_mode == 0 && chance(4)) *prp_mode = 5;   // unmapped data
    if (*prp_mode == 0 && chance(20)) *prp_mode = 6;  // chained PRP lists
    // Data area of reads and writes (a command past MDTS fails before any PRP is looked at).
    c.data_bytes = 0;
    if (s.opc == nvme::io::kWrite || s.opc == nvme::io::kRead) {
      c.data_bytes = std::size_t{std::min<std::uint32_t>(nlb, 256)} * 512;
    }
    return c;
  }

 private:
  std::mt19937_64 rng_;
};

// Sets the PRPs of `c` on one side (same host calls on both sides, so the same IOVAs).
void fill_prps(Side& side, Cmd& c, unsigned mode, std::uint64_t list_slots_seed) {
  NvmeHost& h = *side.hosts[c.vf];
  const std::size_t bytes =
      c.data_bytes != 0 ? c.data_bytes : std::size_t{c.sqe.cdw12 % 65536 + 1} * 512;
  const fpga::Iova iova = side.data[c.vf].iova() + c.data_off;
  const unsigned slots = mode == 6 ? 2 + static_cast<unsigned>(list_slots_seed % 6) : 0;
  (void)h.set_prps(c.sqe, mode == 5 ? kUnmapped + (c.data_off % 4096) : iova,
                   std::min<std::size_t>(bytes, 128 * 1024), slots);
  switch (mode) {
    case 1: c.sqe.prp1 |= 2; break;  // not dword aligned
    case 2:
      if (c.sqe.prp2 != 0) c.sqe.prp2 += 8;
      break;  // list/page misaligned
    case 3:
      if (c.sqe.prp2 != 0) c.sqe.prp2 = kUnmapped;
      break;  // unmapped list or page
    case 4: c.sqe.prp2 |= 4; break;
    default: break;
  }
}

struct Completed {
  unsigned vf;
  std::uint16_t qid;
  nvme::Cqe cqe;
};

// Submits a batch on one side and reaps every completion. Writes get their data first.
std::vector<Completed> run_batch(Side& side, std::vector<Cmd>& cmds) {
  std::vector<Completed> out;
  std::vector<std::vector<unsigned>> expect(kVfs, std::vector<unsigned>(kIoq + 1, 0));
  for (Cmd& c : cmds) {
    NvmeHost& h = *side.hosts[c.vf];
    if (c.fill != 0) {
      std::mt19937_64 fill(c.fill);
      std::byte* p = side.data[c.vf].data() + c.data_off;
      for (std::size_t i = 0; i < c.data_bytes; i += 8) {
        const std::uint64_t v = fill();
        std::memcpy(p + i, &v, std::min<std::size_t>(8, c.data_bytes - i));
      }
    } else if (c.data_bytes != 0) {
      std::memset(side.data[c.vf].data() + c.data_off, 0xA5, c.data_bytes);
    }
    h.queue(c.qid, c.sqe);
    if (c.completes) ++expect[c.vf][c.qid];
  }
  for (unsigned v = 0; v < kVfs; ++v) {
    for (std::uint16_t q = 0; q <= kIoq; ++q) {
      bool used = false;
      for (const Cmd& c : cmds) used = used || (c.vf == v && c.qid == q);
      if (used) side.hosts[v]->ring(q);
    }
  }
  for (unsigned v = 0; v < kVfs; ++v) {
    for (std::uint16_t q = 0; q <= kIoq; ++q) {
      for (unsigned n = 0; n < expect[v][q]; ++n) {
        auto c = side.hosts[v]->reap(q, std::chrono::milliseconds(50));
        EXPECT_TRUE(c.ok()) << side.card->backend() << " VF " << v << " queue " << q
                            << ": completion " << n << " of " << expect[v][q] << " missing";
        if (!c.ok()) return out;
        out.push_back(Completed{v, q, *c});
      }
    }
  }
  return out;
}

std::string describe(const Completed& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "VF %u q %u: cid %u sq_id %u sq_head %u status 0x%x dw0 0x%x",
                c.vf, c.qid, c.cqe.cid, c.cqe.sq_id, c.cqe.sq_head, nvme::cqe_status(c.cqe),
                c.cqe.dw0);
  return buf;
}

// (seed, shell back-pressure in percent)
class Differential : public ::testing::TestWithParam<std::tuple<std::uint64_t, unsigned>> {};

TEST_P(Differential, RandomStreamMatchesTheModel) {
  const auto [seed, stall] = GetParam();
  Side model = make_side("model");
  Side sim = make_side("sim", stall, seed);
  ASSERT_TRUE(model.card && sim.card);
  ASSERT_EQ(model.hosts.size(), kVfs);
  ASSERT_EQ(sim.hosts.size(), kVfs);
  ASSERT_EQ(model.data[0].iova(), sim.data[0].iova()) << "both sides must see the same IOVAs";

  Stream stream(seed);
  constexpr unsigned kBatches = 300;
  unsigned aers = 0;
  std::map<nvme::StatusCode, unsigned> statuses;  // what the stream exercised
  std::size_t compared_bytes = 0;
  for (unsigned b = 0; b < kBatches; ++b) {
    std::vector<Cmd> cmds;
    std::vector<unsigned> modes;
    std::vector<std::uint64_t> slots;
    const bool admin_batch = stream.chance(15);
    if (admin_batch) {
      Cmd c;
      c.vf = stream.below(kVfs);
      c.qid = 0;
      nvme::Sqe& s = c.sqe;
      c.data_off = std::size_t{stream.below(1024)} * 4;
      const unsigned what = stream.below(9);
      unsigned mode = 0;
      switch (what) {
        case 0: {  // Identify
          s.opc = nvme::admin::kIdentify;
          const unsigned cns = stream.below(4);
          s.cdw10 = cns == 3 ? 0x10 : cns;
          const std::uint32_t nsids[] = {0, 1, 2, 0xFFFFFFFEu, 0xFFFFFFFFu};
          s.nsid = nsids[stream.below(5)];
          c.data_bytes = 4096;
          c.identify_ctrl = cns == 1;
          break;
        }
        case 1: {  // Get Log Page
          s.opc = nvme::admin::kGetLogPage;
          const unsigned lids[] = {1, 2, 3, 0xC0};
          s.cdw10 = lids[stream.below(4)];
          const std::uint32_t numd = stream.chance(80) ? stream.below(256) : stream.below(40000);
          s.cdw10 |= (numd & 0xFFFF) << 16;
          s.cdw11 = numd >> 16;
          s.cdw12 = stream.chance(70) ? 0 : stream.below(600) & ~(stream.chance(80) ? 3u : 0u);
          c.data_bytes = std::min<std::size_t>((std::size_t{numd} + 1) * 4, 128 * 1024);
          break;
        }
        case 2:  // Get / Set Features
          s.opc = stream.chance(50) ? nvme::admin::kGetFeatures : nvme::admin::kSetFeatures;
          s.cdw10 = stream.chance(80) ? 7 : 3;
          s.cdw11 = static_cast<std::uint32_t>(stream.next());
          break;
        case 3:  // Abort of something that is not outstanding
          s.opc = nvme::admin::kAbort;
          s.cdw10 = (static_cast<std::uint32_t>(stream.below(65536)) << 16) | stream.below(3);
          break;
        case 4:  // Asynchronous Event Request: four are held, the fifth fails
          s.opc = nvme::admin::kAsyncEventRequest;
          c.vf = 0;
          c.completes = ++aers > 4;
          break;
        case 5: {  // Create I/O CQ, good and bad
          s.opc = nvme::admin::kCreateCq;
          const std::uint32_t qid = stream.chance(70) ? 3 : stream.below(6);
          const std::uint32_t size = stream.chance(80) ? 15 : (stream.chance(50) ? 0 : 5000);
          s.cdw10 = (size << 16) | qid;
          s.cdw11 = (stream.chance(90) ? 1u : 0u) | (stream.chance(30) ? 2u : 0u) |
                    (stream.below(8) << 16);
          s.prp1 = stream.chance(90) ? 1 : 0;  // replaced per side (spare page) unless 0
          break;
        }
        case 6: {  // Create I/O SQ, good and bad
          s.opc = nvme::admin::kCreateSq;
          const std::uint32_t qid = stream.chance(70) ? 3 : stream.below(6);
          s.cdw10 = (15u << 16) | qid;
          s.cdw11 = (stream.chance(80) ? 3u : stream.below(6)) << 16 | 1u;
          s.prp1 = stream.chance(90) ? 2 : 0;
          break;
        }
        case 7: {  // Delete I/O SQ 3 (or a bad one; SQs 1 and 2 carry the IO stream)
          s.opc = nvme::admin::kDeleteSq;
          const std::uint32_t bad[] = {0, 4, 5, 0xFFFF};
          s.cdw10 = stream.chance(80) ? 3 : bad[stream.below(4)];
          break;
        }
        default:  // Delete I/O CQ 3 (or a bad one)
          s.opc = nvme::admin::kDeleteCq;
          s.cdw10 = stream.chance(80) ? 3 : stream.below(6);
          break;
      }
      cmds.push_back(c);
      modes.push_back(mode);
      slots.push_back(0);
    } else {
      const unsigned n = 1 + stream.below(6);
      std::vector<unsigned> chunk_of_vf(kVfs, 0);
      for (unsigned i = 0; i < n; ++i) {
        const unsigned vf = stream.below(kVfs);
        const std::uint16_t q = static_cast<std::uint16_t>(1 + stream.below(kIoq));
        unsigned mode = 0;
        cmds.push_back(stream.io(vf, q, chunk_of_vf[vf]++, &mode));
        modes.push_back(mode);
        slots.push_back(stream.next());
      }
    }

    // Same commands, each side's PRPs and queue memory.
    std::vector<Cmd> mcmds = cmds;
    std::vector<Cmd> scmds = cmds;
    for (std::size_t i = 0; i < cmds.size(); ++i) {
      for (auto [side, list] : {std::pair{&model, &mcmds}, std::pair{&sim, &scmds}}) {
        Cmd& c = (*list)[i];
        const auto opc = c.sqe.opc;
        if (c.qid != 0 && opc != nvme::io::kFlush && c.sqe.opc < 0x80) {
          fill_prps(*side, c, modes[i], slots[i]);
        } else if (c.qid == 0 &&
                   (opc == nvme::admin::kIdentify || opc == nvme::admin::kGetLogPage)) {
          (void)side->hosts[c.vf]->set_prps(c.sqe, side->data[c.vf].iova() + c.data_off,
                                            c.data_bytes);
        } else if (c.qid == 0 && (opc == nvme::admin::kCreateCq || opc == nvme::admin::kCreateSq) &&
                   c.sqe.prp1 != 0) {
          c.sqe.prp1 = side->spare[c.vf].iova() + (opc == nvme::admin::kCreateCq ? 0 : 4096);
        }
      }
    }

    const auto mres = run_batch(model, mcmds);
    const auto sres = run_batch(sim, scmds);
    ASSERT_FALSE(HasFailure()) << "batch " << b;
    ASSERT_EQ(mres.size(), sres.size()) << "batch " << b;
    for (std::size_t i = 0; i < mres.size(); ++i) {
      const Completed& m = mres[i];
      const Completed& s = sres[i];
      const bool same = m.vf == s.vf && m.qid == s.qid && m.cqe.cid == s.cqe.cid &&
                        m.cqe.sq_id == s.cqe.sq_id && m.cqe.sq_head == s.cqe.sq_head &&
                        nvme::cqe_status(m.cqe) == nvme::cqe_status(s.cqe) &&
                        m.cqe.dw0 == s.cqe.dw0;
      ASSERT_TRUE(same) << "batch " << b << " completion " << i << "\n  model: " << describe(m)
                        << "\n  sim:   " << describe(s);
      ++statuses[nvme::cqe_status(m.cqe)];
    }
    // Data the commands returned.
    for (std::size_t i = 0; i < cmds.size(); ++i) {
      const Cmd& c = mcmds[i];
      const bool reads = (c.qid != 0 && c.sqe.opc == nvme::io::kRead) ||
                         (c.qid == 0 && (c.sqe.opc == nvme::admin::kIdentify ||
                                         c.sqe.opc == nvme::admin::kGetLogPage));
      if (!reads || c.data_bytes == 0) continue;
      const std::byte* mp = model.data[c.vf].data() + c.data_off;
      const std::byte* sp = sim.data[c.vf].data() + c.data_off;
      const std::size_t bytes = std::min<std::size_t>(c.data_bytes, kChunk - c.data_off % kChunk);
      compared_bytes += bytes;
      for (std::size_t k = 0; k < bytes; ++k) {
        if (c.identify_ctrl && k >= 24 && k < 64) continue;  // model number
        if (mp[k] != sp[k]) {
          FAIL() << "batch " << b << " command " << i << " (opcode 0x" << std::hex
                 << unsigned{c.sqe.opc} << std::dec << " on VF " << c.vf << " queue " << c.qid
                 << "): returned data differ at byte " << k;
        }
      }
    }
  }

  // The stream must have exercised successes and a spread of failures.
  std::string seen;
  for (const auto& [code, n] : statuses) {
    char item[32];
    std::snprintf(item, sizeof item, " 0x%x:%u", code, n);
    seen += item;
  }
  std::printf("statuses (code:count):%s; %zu returned bytes compared\n", seen.c_str(),
              compared_bytes);
  EXPECT_GE(statuses.size(), 8u) << "statuses seen:" << seen;
  EXPECT_GT(statuses[sc::kSuccess], 200u);

  // The storage: every VF's whole slice, read back on both cards.
  for (unsigned v = 0; v < kVfs; ++v) {
    for (std::uint64_t lba = 0; lba < kSliceLbas; lba += 256) {
      std::vector<std::vector<std::byte>> got;
      for (Side* side : {&model, &sim}) {
        NvmeHost& h = *side->hosts[v];
        auto c = h.run(1, h.rw_cmd(false, lba, 256, side->data[v].iova(), 128 * 1024));
        ASSERT_TRUE(c.ok());
        ASSERT_EQ(nvme::cqe_status(*c), 0);
        got.emplace_back(side->data[v].data(), side->data[v].data() + 128 * 1024);
      }
      ASSERT_TRUE(got[0] == got[1])
          << "storage of VF " << v << " differs in LBAs " << lba << ".." << lba + 255;
    }
  }

  // The counters.
  for (unsigned v = 0; v < kVfs; ++v) {
    for (std::uint64_t reg :
         {vc::CMDS, vc::BYTES, vc::BUSY_CYCLES, vc::DMA_FAULTS, vc::CMD_ERRORS}) {
      EXPECT_EQ(model.card->pf().read64(vc::at(v, reg)), sim.card->pf().read64(vc::at(v, reg)))
          << "VFCFG register 0x" << std::hex << reg << " of VF " << std::dec << v;
    }
  }
  for (std::uint64_t reg : {regs::pf::CMDS, regs::pf::BYTES, regs::pf::DMA_FAULTS}) {
    EXPECT_EQ(model.card->pf().read64(reg), sim.card->pf().read64(reg))
        << "PF register 0x" << std::hex << reg;
  }
  // The shared IOMMU model counted the same refusals on both.
  auto& msim = dynamic_cast<fpga::sim::SimCard&>(*sim.card);
  for (unsigned v = 0; v < kVfs; ++v) {
    EXPECT_EQ(msim.iommu().faults(v + 1), sim.card->pf().read64(vc::at(v, vc::DMA_FAULTS)))
        << "shell and card disagree on VF " << v << "'s DMA faults";
  }
  EXPECT_EQ(msim.stats().protocol_errors, 0u) << "the card broke an AXI rule";
}

INSTANTIATE_TEST_SUITE_P(Seeds, Differential,
                         ::testing::Combine(::testing::Values(1u, 2u, 3u, 4u, 5u, 6u),
                                            ::testing::Values(0u)));
// The same streams with the shell stalling a quarter of all handshakes.
INSTANTIATE_TEST_SUITE_P(Stalled, Differential,
                         ::testing::Combine(::testing::Values(11u, 12u, 13u),
                                            ::testing::Values(25u)));

}  // namespace
}  // namespace keel::testing
