// Faults inside the RTL card: DMA error responses in the middle of a command, refused queue
// fetches and completion writes, FLR and VF disable with commands in flight, full queues, bad
// PRPs. The shell's protocol checker watches every test.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "card_fixture.h"
#include "keel/fpga/sim/sim_card.h"
#include "nvme_host.h"

namespace keel::testing {
namespace {

namespace nv = regs::nvme;
namespace vc = regs::vfcfg;
namespace sc = nvme::sc;
using std::chrono::milliseconds;

// Host memory the test maps itself, at an IOVA it picks (so it can take the window away).
class Window {
 public:
  Window(fpga::Function& fn, fpga::Iova iova, std::size_t bytes)
      : fn_(fn), iova_(iova), bytes_(bytes) {
    mem_ = static_cast<std::byte*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    mapped_ = fn_.map_dma(mem_, bytes_, iova_).ok();
  }
  ~Window() {
    unmap();
    munmap(mem_, bytes_);
  }
  void unmap() {
    if (mapped_) (void)fn_.unmap_dma(iova_);
    mapped_ = false;
  }
  bool mapped() const { return mapped_; }
  std::byte* data() const { return mem_; }
  fpga::Iova iova() const { return iova_; }

 private:
  fpga::Function& fn_;
  fpga::Iova iova_;
  std::size_t bytes_;
  std::byte* mem_ = nullptr;
  bool mapped_ = false;
};

class RtlFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    fpga::sim::SimConfig cfg;
    cfg.card.storage_bytes = 16ull << 20;
    cfg.card.max_vfs = 4;
    cfg.card.max_ioq_per_vf = 4;
    auto card = fpga::sim::SimCard::create(cfg);
    ASSERT_TRUE(card.ok()) << to_string(card.error());
    card_ = std::move(card).value();
    ASSERT_TRUE(card_->set_num_vfs(2).ok());
    for (unsigned v = 0; v < 2; ++v) {
      fpga::Function& pf = card_->pf();
      pf.write32(vc::at(v, vc::IOQ), 3);
      pf.write64(vc::at(v, vc::SLICE_BASE), v * 8192);
      pf.write64(vc::at(v, vc::SLICE_LBAS), 8192);
      pf.write32(vc::at(v, vc::CTRL), 1);
      hosts_.push_back(std::make_unique<NvmeHost>(*card_, *card_->vf(v).value()));
      KEEL_ASSERT_OK(hosts_.back()->enable());
      KEEL_ASSERT_OK(hosts_.back()->create_io_pair(1, 64));
    }
  }
  void TearDown() override {
    if (card_) {
      EXPECT_EQ(card_->stats().protocol_errors, 0u) << "the card broke an AXI rule";
    }
  }

  fpga::Function& vf(unsigned v) { return hosts_[v]->fn(); }
  std::uint64_t vf_faults(unsigned v) { return card_->pf().read64(vc::at(v, vc::DMA_FAULTS)); }

  // Creates IO queue pair `qid` of VF `v` in the test's own windows.
  void raw_pair(unsigned v, std::uint16_t qid, const Window& sq, const Window& cq,
                std::uint16_t entries) {
    nvme::Sqe c{};
    c.opc = nvme::admin::kCreateCq;
    c.prp1 = cq.iova();
    c.cdw10 = (std::uint32_t{entries - 1u} << 16) | qid;
    c.cdw11 = 1;
    auto r = hosts_[v]->run(0, c);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(nvme::cqe_status(*r), 0);
    nvme::Sqe s{};
    s.opc = nvme::admin::kCreateSq;
    s.prp1 = sq.iova();
    s.cdw10 = (std::uint32_t{entries - 1u} << 16) | qid;
    s.cdw11 = (std::uint32_t{qid} << 16) | 1u;
    r = hosts_[v]->run(0, s);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(nvme::cqe_status(*r), 0);
  }

  // Verified IO on VF `v`, queue 1.
  void io_works(unsigned v, std::uint64_t lba = 100) {
    auto buf = vf(v).alloc_dma(4096);
    ASSERT_TRUE(buf.ok());
    fill_pattern(buf->data(), 4096, lba, v + 9);
    NvmeHost& h = *hosts_[v];
    auto w = h.run(1, h.rw_cmd(true, lba, 8, buf->iova(), 4096));
    ASSERT_TRUE(w.ok());
    ASSERT_EQ(sc_of(*w), sc::kSuccess);
    std::memset(buf->data(), 0, 4096);
    auto r = h.run(1, h.rw_cmd(false, lba, 8, buf->iova(), 4096));
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(sc_of(*r), sc::kSuccess);
    EXPECT_EQ(check_pattern(buf->data(), 4096, lba, v + 9), -1);
  }

  std::unique_ptr<fpga::sim::SimCard> card_;
  std::vector<std::unique_ptr<NvmeHost>> hosts_;
};

// A window vanishes while the data moves: the remaining bursts get error responses, the
// command ends in Data Transfer Error (no DNR: a retry may work), each refused burst counts.
TEST_F(RtlFaults, DmaErrorResponsesMidRead) {
  Window data(vf(0), 0x2000'0000, 128 * 1024);
  ASSERT_TRUE(data.mapped());
  NvmeHost& h = *hosts_[0];
  const auto before = card_->stats();
  const std::uint64_t faults_before = vf_faults(0);
  h.submit(1, h.rw_cmd(false, 0, 256, data.iova(), 128 * 1024));
  // Clock until the first data beats reached host memory, then take the window away.
  for (int i = 0; i < 100000 && card_->stats().host_data_bytes == before.host_data_bytes; ++i) {
    card_->run_cycles(1);
  }
  ASSERT_GT(card_->stats().host_data_bytes, before.host_data_bytes);
  data.unmap();
  auto c = h.reap(1, milliseconds(10));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(nvme::cqe_status(*c), sc::kDataTransferError) << "no DNR: the host may retry";
  EXPECT_GT(vf_faults(0), faults_before);
  EXPECT_EQ(vf_faults(0), card_->iommu().faults(1)) << "card and shell count alike";
  io_works(0);
  io_works(1);
}

TEST_F(RtlFaults, DmaErrorResponsesMidWrite) {
  Window data(vf(0), 0x2000'0000, 128 * 1024);
  NvmeHost& h = *hosts_[0];
  const auto before = card_->stats();
  h.submit(1, h.rw_cmd(true, 512, 256, data.iova(), 128 * 1024));
  for (int i = 0; i < 100000 && card_->stats().host_read_beats < before.host_read_beats + 4; ++i) {
    card_->run_cycles(1);
  }
  data.unmap();
  auto c = h.reap(1, milliseconds(10));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(nvme::cqe_status(*c), sc::kDataTransferError);
  EXPECT_EQ(vf_faults(0), card_->iommu().faults(1));
  io_works(0);
}

// The controller cannot fetch its own SQ: controller fatal status, until a reset.
TEST_F(RtlFaults, RefusedSqFetchIsFatal) {
  Window sq(vf(0), 0x3000'0000, 4096);
  Window cq(vf(0), 0x3001'0000, 4096);
  raw_pair(0, 2, sq, cq, 16);
  sq.unmap();
  const std::uint64_t faults_before = vf_faults(0);
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2, 1);
  EXPECT_TRUE(fpga::poll_until(*card_, milliseconds(1),
                               [&] { return (vf(0).read32(nv::CSTS) & nv::CSTS_CFS_MASK) != 0; }));
  EXPECT_EQ(vf_faults(0), faults_before + 1);
  io_works(1);
  KEEL_ASSERT_OK(hosts_[0]->enable());
  KEEL_ASSERT_OK(hosts_[0]->create_io_pair(1, 64));
  io_works(0);
}

// The controller cannot post to its own CQ: controller fatal status, until a reset.
TEST_F(RtlFaults, RefusedCompletionWriteIsFatal) {
  Window sq(vf(0), 0x3000'0000, 4096);
  Window cq(vf(0), 0x3001'0000, 4096);
  raw_pair(0, 2, sq, cq, 16);
  cq.unmap();
  nvme::Sqe s{};
  s.opc = nvme::io::kFlush;
  s.nsid = 1;
  s.cid = 77;
  std::memcpy(sq.data(), &s, sizeof s);
  const std::uint64_t faults_before = vf_faults(0);
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2, 1);
  EXPECT_TRUE(fpga::poll_until(*card_, milliseconds(1),
                               [&] { return (vf(0).read32(nv::CSTS) & nv::CSTS_CFS_MASK) != 0; }));
  EXPECT_EQ(vf_faults(0), faults_before + 1);
  KEEL_ASSERT_OK(hosts_[0]->enable());
  KEEL_ASSERT_OK(hosts_[0]->create_io_pair(1, 64));
  io_works(0);
}

// FLR with 32 commands in flight on VF 0: none completes afterwards, no DMA of VF 0 reaches
// host memory once the FLR is done, VF 1 keeps its verified IO going, VF 0 works again.
TEST_F(RtlFaults, FlrWithQueueFullOfCommands) {
  NvmeHost& h = *hosts_[0];
  auto buf = vf(0).alloc_dma(32 * 4096);
  ASSERT_TRUE(buf.ok());
  for (unsigned i = 0; i < 32; ++i) {
    h.queue(1, h.rw_cmd(i % 2 == 0, i * 8, 8, buf->iova() + i * 4096, 4096));
  }
  h.ring(1);
  card_->run_cycles(600);  // some are done, some in flight, most still queued
  KEEL_ASSERT_OK(vf(0).flr());
  std::vector<std::byte> snapshot(buf->data(), buf->data() + 32 * 4096);
  card_->run_cycles(20000);
  EXPECT_TRUE(std::memcmp(snapshot.data(), buf->data(), snapshot.size()) == 0)
      << "VF 0 wrote host memory after its FLR completed";
  EXPECT_EQ(vf(0).read32(nv::CSTS), 0u);
  io_works(1);
  KEEL_ASSERT_OK(h.enable());
  KEEL_ASSERT_OK(h.create_io_pair(1, 64));
  io_works(0);
}

// A CQ holds size - 1 entries: with no head updates the SQ stops, and resumes as the host
// consumes; every completion arrives in order with the right SQ head.
TEST_F(RtlFaults, FullCompletionQueueHoldsTheSubmissionQueue) {
  Window sq(vf(0), 0x3000'0000, 4096);
  Window cq(vf(0), 0x3001'0000, 4096);
  raw_pair(0, 2, sq, cq, 4);  // CQ and SQ of 4 entries
  for (unsigned i = 0; i < 3; ++i) {
    nvme::Sqe s{};
    s.opc = nvme::io::kFlush;
    s.nsid = 1;
    s.cid = static_cast<std::uint16_t>(100 + i);
    std::memcpy(sq.data() + i * 64, &s, sizeof s);
  }
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2, 3);  // SQ holds 3 of 4: full
  card_->run_cycles(5000);
  auto cqe = [&](unsigned i) {
    nvme::Cqe c;
    std::memcpy(&c, cq.data() + i * 16, 16);
    return c;
  };
  for (unsigned i = 0; i < 3; ++i) {
    EXPECT_EQ(cqe(i).cid, 100 + i);
    EXPECT_EQ(cqe(i).sq_head, (i + 1) % 4);
    EXPECT_TRUE(nvme::cqe_phase(cqe(i)));
  }
  // The CQ is full (3 of 4). Three more commands wait until the host frees CQ slots.
  for (unsigned i = 3; i < 6; ++i) {
    nvme::Sqe s{};
    s.opc = nvme::io::kFlush;
    s.nsid = 1;
    s.cid = static_cast<std::uint16_t>(100 + i);
    std::memcpy(sq.data() + (i % 4) * 64, &s, sizeof s);
  }
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2, 6 % 4);
  card_->run_cycles(5000);
  EXPECT_EQ(cqe(3).cid, 0u) << "nothing posted into a full CQ";
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2 + 4, 2);  // host consumed two
  card_->run_cycles(5000);
  EXPECT_EQ(cqe(3).cid, 103u);
  EXPECT_EQ(cqe(0).cid, 104u) << "wrapped";
  EXPECT_FALSE(nvme::cqe_phase(cqe(0))) << "phase flips on wrap";
  EXPECT_EQ(cqe(1).cid, 101u) << "the last one waits for the next head update";
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2 + 4, 3);
  card_->run_cycles(5000);
  EXPECT_EQ(cqe(1).cid, 105u);
  io_works(0);
}

// A tail doorbell beyond the SQ size is ignored until the host writes a valid one.
TEST_F(RtlFaults, InvalidTailDoorbellIsIgnored) {
  Window sq(vf(0), 0x3000'0000, 4096);
  Window cq(vf(0), 0x3001'0000, 4096);
  raw_pair(0, 2, sq, cq, 8);
  nvme::Sqe s{};
  s.opc = nvme::io::kFlush;
  s.nsid = 1;
  s.cid = 5;
  std::memcpy(sq.data(), &s, sizeof s);
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2, 9);  // >= size
  card_->run_cycles(5000);
  nvme::Cqe c;
  std::memcpy(&c, cq.data(), 16);
  EXPECT_FALSE(nvme::cqe_phase(c)) << "nothing was fetched";
  vf(0).write32(regs::NVME_DOORBELL_BASE + 8 * 2, 1);
  card_->run_cycles(5000);
  std::memcpy(&c, cq.data(), 16);
  EXPECT_TRUE(nvme::cqe_phase(c));
  EXPECT_EQ(c.cid, 5u);
  io_works(0);
}

// Every kind of bad PRP, with the status the reference model gives it.
TEST_F(RtlFaults, BadPrps) {
  NvmeHost& h = *hosts_[0];
  auto buf = vf(0).alloc_dma(64 * 1024);
  auto list = vf(0).alloc_dma(4096);
  ASSERT_TRUE(buf.ok() && list.ok());
  auto status_of = [&](nvme::Sqe s) {
    auto c = h.run(1, s);
    EXPECT_TRUE(c.ok());
    return c.ok() ? nvme::cqe_status(*c) : nvme::StatusCode{0xFFFF};
  };
  const auto prp_bad = static_cast<nvme::StatusCode>(sc::kPrpOffsetInvalid | nvme::kDnr);
  nvme::Sqe s = h.rw_cmd(false, 0, 8, buf->iova(), 4096);
  s.prp1 += 2;  // not dword aligned
  EXPECT_EQ(status_of(s), prp_bad);
  s = h.rw_cmd(false, 0, 16, buf->iova(), 8192);
  s.prp2 += 512;  // second page not page aligned
  EXPECT_EQ(status_of(s), prp_bad);
  // A list with a misaligned entry.
  auto* entries = reinterpret_cast<std::uint64_t*>(list->data());
  s = h.rw_cmd(false, 0, 24, buf->iova(), 4096);
  s.prp2 = list->iova();
  entries[0] = buf->iova() + 4096;
  entries[1] = buf->iova() + 8192 + 64;
  EXPECT_EQ(status_of(s), prp_bad);
  // A list pointer that is not qword aligned.
  s.prp2 = list->iova() + 4;
  EXPECT_EQ(status_of(s), prp_bad);
  // A chain pointer that is not qword aligned (2-slot list at the end of the page).
  entries[510] = buf->iova() + 4096;
  entries[511] = list->iova() + 3;
  s.prp2 = list->iova() + 4096 - 16;
  EXPECT_EQ(status_of(s), prp_bad);
  // A list in unmapped memory: refused translation, counted.
  const std::uint64_t faults_before = vf_faults(0);
  s.prp2 = 0x5000'0000;
  EXPECT_EQ(status_of(s), sc::kDataTransferError);
  EXPECT_EQ(vf_faults(0), faults_before + 1);
  io_works(0);
}

// The PF disables VF 0 while it has IO in flight: its controller is reset, nothing more of its
// IO completes, VF 1 is untouched; with resources back, VF 0 works again.
TEST_F(RtlFaults, VfDisabledMidIo) {
  NvmeHost& h = *hosts_[0];
  auto buf = vf(0).alloc_dma(16 * 4096);
  ASSERT_TRUE(buf.ok());
  for (unsigned i = 0; i < 16; ++i)
    h.queue(1, h.rw_cmd(false, i * 8, 8, buf->iova() + i * 4096, 4096));
  h.ring(1);
  card_->run_cycles(400);
  card_->pf().write32(vc::at(0, vc::CTRL), 0);
  EXPECT_EQ(card_->pf().read32(vc::at(0, vc::CTRL)) & 1u, 0u);
  EXPECT_EQ(vf(0).read32(nv::CSTS), 0u) << "the controller was reset with its resources";
  std::vector<std::byte> snapshot(buf->data(), buf->data() + 16 * 4096);
  card_->run_cycles(20000);
  EXPECT_TRUE(std::memcmp(snapshot.data(), buf->data(), snapshot.size()) == 0);
  io_works(1);
  card_->pf().write32(vc::at(0, vc::CTRL), 1);
  ASSERT_EQ(card_->pf().read32(vc::at(0, vc::CTRL)) & 1u, 1u);
  KEEL_ASSERT_OK(h.enable());
  KEEL_ASSERT_OK(h.create_io_pair(1, 64));
  io_works(0);
}

// Surprise removal with IO in flight, then restore.
TEST_F(RtlFaults, SurpriseRemovalMidIo) {
  NvmeHost& h = *hosts_[0];
  auto buf = vf(0).alloc_dma(16 * 4096);
  ASSERT_TRUE(buf.ok());
  for (unsigned i = 0; i < 16; ++i)
    h.queue(1, h.rw_cmd(true, i * 8, 8, buf->iova() + i * 4096, 4096));
  h.ring(1);
  card_->run_cycles(300);
  KEEL_ASSERT_OK(card_->faults()->surprise_remove(0));
  EXPECT_EQ(vf(0).read32(nv::CSTS), 0xFFFFFFFFu);
  io_works(1);
  KEEL_ASSERT_OK(card_->faults()->restore(0));
  KEEL_ASSERT_OK(h.enable());
  KEEL_ASSERT_OK(h.create_io_pair(1, 64));
  io_works(0);
}

}  // namespace
}  // namespace keel::testing
