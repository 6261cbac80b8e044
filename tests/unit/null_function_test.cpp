// The null function (fpga::NullFunction): an NVMe controller good enough for the driver, with
// completions written inside the doorbell write.
#include "keel/fpga/null_function.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <span>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "keel/clock.h"
#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"

namespace {

namespace drv = keel::drivers::nvme;
namespace wire = keel::nvme;
namespace nv = keel::regs::nvme;
using keel::fpga::NullFunction;
using keel::fpga::NullFunctionConfig;

std::unique_ptr<drv::Controller> open(NullFunction& fn, std::uint16_t io_queues = 0) {
  drv::ControllerConfig cc;
  cc.io_queues = io_queues;
  auto c = drv::Controller::open(fn, keel::steady_clock(), fn, cc);
  EXPECT_TRUE(c.ok()) << (c.ok() ? "" : keel::to_string(c.error()));
  return c.ok() ? std::move(c).value() : nullptr;
}

TEST(NullFunction, BringUpThroughTheDriver) {
  NullFunctionConfig cfg;
  cfg.blocks = 4096;
  cfg.io_queues = 3;
  cfg.mdts = 4;
  NullFunction fn(cfg);
  EXPECT_EQ(fn.num_vectors(), 0u);
  EXPECT_EQ(drv::Controller::status_of(fn), drv::DeviceState::not_ready);
  auto ctrl = open(fn);
  ASSERT_NE(ctrl, nullptr);
  EXPECT_EQ(ctrl->status(), drv::DeviceState::ready);
  EXPECT_EQ(ctrl->block_count(), 4096u);
  EXPECT_EQ(ctrl->block_bytes(), 512u);
  EXPECT_EQ(ctrl->max_transfer_bytes(), 4096u << 4);
  EXPECT_EQ(ctrl->io_queue_count(), 3u);
  EXPECT_EQ(ctrl->max_queue_entries(), 4096u);
  EXPECT_EQ(ctrl->identify().nn, 1u);
  EXPECT_EQ(fn.read32(nv::VS), keel::regs::NVME_VS_1_4);
  // Three queue pairs, no fourth.
  std::vector<std::unique_ptr<drv::QueuePair>> qps;
  for (int i = 0; i < 3; ++i) {
    auto qp = ctrl->create_queue_pair({.entries = 16});
    ASSERT_TRUE(qp.ok()) << keel::to_string(qp.error());
    qps.push_back(std::move(qp).value());
  }
  auto extra = ctrl->create_queue_pair({.entries = 16});
  ASSERT_FALSE(extra.ok());
  EXPECT_EQ(extra.error().code, keel::Errc::busy);
  // No vectors: an interrupt-driven queue pair is refused.
  qps.pop_back();
  auto irq = ctrl->create_queue_pair({.entries = 16, .interrupts = true});
  EXPECT_FALSE(irq.ok());
  qps.clear();
  // A controller reset brings it up again.
  ASSERT_TRUE(ctrl->reset().ok());
  EXPECT_EQ(ctrl->status(), drv::DeviceState::ready);
  // FLR: not ready until the driver brings it up.
  ASSERT_TRUE(fn.flr().ok());
  EXPECT_EQ(ctrl->status(), drv::DeviceState::not_ready);
  ASSERT_TRUE(ctrl->reset().ok());
  EXPECT_EQ(ctrl->status(), drv::DeviceState::ready);
}

TEST(NullFunction, IoCommandsCompleteInTheDoorbellWrite) {
  NullFunctionConfig cfg;
  cfg.blocks = 1024;
  cfg.measure_device_time = true;
  NullFunction fn(cfg);
  auto ctrl = open(fn);
  ASSERT_NE(ctrl, nullptr);
  auto q = ctrl->create_queue_pair({.entries = 8});
  ASSERT_TRUE(q.ok());
  auto qp = std::move(q).value();
  auto buf = fn.alloc_dma(8192);
  ASSERT_TRUE(buf.ok());
  const drv::Segment seg{buf->iova(), 4096};
  const drv::Segment two[] = {{buf->iova() + 512, 3584}, {buf->iova() + 4096, 4096}};
  ASSERT_TRUE(qp->read(0, 8, {&seg, 1}, 1).ok());
  ASSERT_TRUE(qp->write(1016, 8, {&seg, 1}, 2).ok());
  ASSERT_TRUE(qp->read(7, 15, two, 3).ok());
  ASSERT_TRUE(qp->flush(4).ok());
  ASSERT_TRUE(qp->write_zeroes(100, 100, 5).ok());
  drv::Completion done[8];
  EXPECT_EQ(qp->poll(done), 0u);  // nothing before the doorbell
  qp->commit();
  ASSERT_EQ(qp->poll(done), 5u);  // all of it, at once
  for (unsigned i = 0; i < 5; ++i) {
    EXPECT_EQ(done[i].tag, i + 1);
    EXPECT_TRUE(done[i].status.ok()) << drv::to_string(done[i].status);
  }
  EXPECT_EQ(qp->outstanding(), 0u);
  EXPECT_EQ(qp->stats().device_errors, 0u);
  const NullFunction::Stats s = fn.stats();
  EXPECT_EQ(s.sq_doorbells, 1u);
  EXPECT_EQ(s.io_commands, 5u);
  EXPECT_EQ(s.io_errors, 0u);
  EXPECT_EQ(s.bad_doorbells, 0u);
  EXPECT_GT(fn.device_ns(), 0.0);
}

// Many rounds through a small queue: the CQ wraps (phase flips) many times, and with the
// driver's lazy CQ head doorbell (reaping one at a time, it reports the head every other
// completion) and entries = depth + 1 the device must hold completions back until the head
// moves.
TEST(NullFunction, DriverRunsThroughWrapsAndAFullCq) {
  NullFunction fn;
  auto ctrl = open(fn);
  ASSERT_NE(ctrl, nullptr);
  constexpr unsigned kDepth = 7;
  auto q = ctrl->create_queue_pair({.entries = kDepth + 1});
  ASSERT_TRUE(q.ok());
  auto qp = std::move(q).value();
  auto buf = fn.alloc_dma(4096);
  ASSERT_TRUE(buf.ok());
  const drv::Segment seg{buf->iova(), 4096};
  drv::Completion done[16];
  std::uint64_t submitted = 0, completed = 0;
  for (unsigned i = 0; i < kDepth; ++i) ASSERT_TRUE(qp->read(i, 8, {&seg, 1}, submitted++).ok());
  qp->commit();
  for (int round = 0; round < 1000; ++round) {
    const unsigned n = qp->poll(std::span(done, round % 3 == 0 ? 16 : 1));
    for (unsigned i = 0; i < n; ++i) {
      ASSERT_TRUE(done[i].status.ok());
      ASSERT_TRUE(qp->read(i, 8, {&seg, 1}, submitted++).ok());
    }
    completed += n;
    qp->commit();
  }
  EXPECT_GT(completed, 1000u);
  EXPECT_EQ(qp->stats().device_errors, 0u);
  EXPECT_GT(fn.stats().cq_full, 0u);  // completions were held back, not overwritten
  while (qp->outstanding() > 0) completed += qp->wait(done, std::chrono::seconds(1));
  EXPECT_EQ(completed, submitted);
}

// Raw queues, built by hand through admin commands, to look at every completion entry.
class RawQueue : public ::testing::Test {
 protected:
  static constexpr std::uint16_t kQid = 2;
  static constexpr std::uint16_t kSqEntries = 8;
  static constexpr std::uint16_t kCqEntries = 4;

  void SetUp() override {
    ctrl_ = open(fn_, 2);
    ASSERT_NE(ctrl_, nullptr);
    auto sq = fn_.alloc_dma(4096);
    auto cq = fn_.alloc_dma(4096);
    ASSERT_TRUE(sq.ok() && cq.ok());
    sq_ = std::move(sq).value();
    cq_ = std::move(cq).value();
    wire::Sqe c{};
    c.opc = wire::admin::kCreateCq;
    c.prp1 = cq_.iova();
    c.cdw10 = (std::uint32_t{kCqEntries - 1} << 16) | kQid;
    c.cdw11 = 1;
    auto r = ctrl_->admin(c);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(wire::cqe_status(*r), 0);
    wire::Sqe s{};
    s.opc = wire::admin::kCreateSq;
    s.prp1 = sq_.iova();
    s.cdw10 = (std::uint32_t{kSqEntries - 1} << 16) | kQid;
    s.cdw11 = (std::uint32_t{kQid} << 16) | 1;
    r = ctrl_->admin(s);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(wire::cqe_status(*r), 0);
  }
  void TearDown() override {
    if (ctrl_ == nullptr) return;
    wire::Sqe d{};
    d.opc = wire::admin::kDeleteSq;
    d.cdw10 = kQid;
    (void)ctrl_->admin(d);
    d.opc = wire::admin::kDeleteCq;
    (void)ctrl_->admin(d);
  }

  void submit(std::uint8_t opc, std::uint16_t cid, std::uint64_t lba = 0) {
    wire::Sqe e{};
    e.opc = opc;
    e.cid = cid;
    e.nsid = 1;
    e.prp1 = sq_.iova();  // any address: no data moves
    e.cdw10 = static_cast<std::uint32_t>(lba);
    e.cdw11 = static_cast<std::uint32_t>(lba >> 32);
    e.cdw12 = 7;
    std::memcpy(sq_.data() + std::size_t{tail_} * wire::kSqeBytes, &e, sizeof e);
    tail_ = static_cast<std::uint16_t>((tail_ + 1) % kSqEntries);
  }
  void ring() {
    fn_.write32(keel::regs::NVME_DOORBELL_BASE + keel::regs::NVME_DOORBELL_STRIDE * kQid, tail_);
  }
  void cq_head(std::uint16_t head) {
    fn_.write32(keel::regs::NVME_DOORBELL_BASE + keel::regs::NVME_DOORBELL_STRIDE * kQid + 4, head);
  }
  wire::Cqe cqe(unsigned i) {
    wire::Cqe c;
    std::memcpy(&c, cq_.data() + std::size_t{i} * wire::kCqeBytes, sizeof c);
    return c;
  }

  NullFunction fn_;
  std::unique_ptr<drv::Controller> ctrl_;
  keel::fpga::DmaBuffer sq_, cq_;
  std::uint16_t tail_ = 0;
};

TEST_F(RawQueue, FullCqHoldsCompletionsBackAndPhaseFlipsOnWrap) {
  for (std::uint16_t cid = 10; cid < 15; ++cid) submit(wire::io::kRead, cid);
  ring();
  // A 4-entry CQ holds 3: the other two commands stay unfetched.
  for (unsigned i = 0; i < 3; ++i) {
    const wire::Cqe c = cqe(i);
    EXPECT_EQ(c.cid, 10 + i);
    EXPECT_TRUE(wire::cqe_phase(c));
    EXPECT_EQ(wire::cqe_status(c), 0);
    EXPECT_EQ(c.sq_id, kQid);
    EXPECT_EQ(c.sq_head, i + 1);
  }
  EXPECT_FALSE(wire::cqe_phase(cqe(3)));  // not written
  EXPECT_EQ(fn_.stats().cq_full, 1u);
  // The host consumed two: room for two more, the second one wrapping to entry 0, phase 0.
  cq_head(2);
  EXPECT_EQ(cqe(3).cid, 13);
  EXPECT_TRUE(wire::cqe_phase(cqe(3)));
  EXPECT_EQ(cqe(0).cid, 14);
  EXPECT_FALSE(wire::cqe_phase(cqe(0)));
  EXPECT_EQ(cqe(0).sq_head, 5);
  EXPECT_EQ(cqe(2).cid, 12);  // not overwritten: the host has not consumed it
  // A head beyond what the device wrote is refused.
  const auto bad = fn_.stats().bad_doorbells;
  cq_head(2);  // no move: fine
  EXPECT_EQ(fn_.stats().bad_doorbells, bad);
  cq_head(3);
  cq_head(2);  // would pass the tail (at 1)
  EXPECT_EQ(fn_.stats().bad_doorbells, bad + 1);
}

TEST_F(RawQueue, BadCommandsGetErrorStatus) {
  submit(0x7F, 1);                                               // no such IO opcode
  submit(wire::io::kRead, 2, std::uint64_t{1} << 40);            // beyond the namespace
  submit(wire::io::kWrite, 3, NullFunctionConfig{}.blocks - 4);  // crosses its end
  ring();
  EXPECT_EQ(wire::status_base(wire::cqe_status(cqe(0))), wire::sc::kInvalidOpcode);
  EXPECT_EQ(wire::status_base(wire::cqe_status(cqe(1))), wire::sc::kLbaOutOfRange);
  EXPECT_EQ(wire::status_base(wire::cqe_status(cqe(2))), wire::sc::kLbaOutOfRange);
  EXPECT_EQ(fn_.stats().io_errors, 3u);
  // An admin opcode the null function does not implement.
  wire::Sqe log{};
  log.opc = wire::admin::kGetLogPage;
  auto r = ctrl_->admin(log);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(wire::status_base(wire::cqe_status(*r)), wire::sc::kInvalidOpcode);
  // A CQ still in use by an SQ cannot be deleted.
  wire::Sqe d{};
  d.opc = wire::admin::kDeleteCq;
  d.cdw10 = kQid;
  r = ctrl_->admin(d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(wire::status_base(wire::cqe_status(*r)), wire::sc::kInvalidQueueDeletion);
}

TEST(NullFunction, UnmappingALiveQueueIsFatal) {
  NullFunction fn;
  auto ctrl = open(fn);
  ASSERT_NE(ctrl, nullptr);
  alignas(4096) static std::byte mem[4096];
  ASSERT_TRUE(fn.map_dma(mem, sizeof mem, 0x100000).ok());
  wire::Sqe c{};
  c.opc = wire::admin::kCreateCq;
  c.prp1 = 0x100000;
  c.cdw10 = (std::uint32_t{15} << 16) | 1;
  c.cdw11 = 1;
  auto r = ctrl->admin(c);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(wire::cqe_status(*r), 0);
  ASSERT_TRUE(fn.unmap_dma(0x100000).ok());
  EXPECT_EQ(ctrl->status(), drv::DeviceState::fatal);
  ASSERT_TRUE(ctrl->reset().ok());  // CC.EN = 0 clears it
  EXPECT_EQ(ctrl->status(), drv::DeviceState::ready);
}

}  // namespace
