// Admin command set: Identify, queue management, features, log pages, AER, bad commands.
#include <nvme/types.h>

#include <cstring>

#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace sc = nvme::sc;

class Admin : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    enable_vfs(2, 8192, 3);
    vf_ = *card_->vf(1);
    host_ = std::make_unique<NvmeHost>(*card_, *vf_);
    ASSERT_TRUE(host_->enable().ok());
    auto b = vf_->alloc_dma(8192);
    ASSERT_TRUE(b.ok());
    buf_ = std::move(b).value();
  }

  nvme::Cqe admin(nvme::Sqe s) {
    auto r = host_->run(0, s);
    EXPECT_TRUE(r.ok()) << to_string(r.error());
    return r.ok() ? *r : nvme::Cqe{};
  }
  nvme::Cqe identify(std::uint8_t cns, std::uint32_t nsid) {
    nvme::Sqe s{};
    s.opc = nvme::admin::kIdentify;
    s.nsid = nsid;
    s.cdw10 = cns;
    s.prp1 = buf_.iova();
    std::memset(buf_.data(), 0xA5, 4096);
    return admin(s);
  }
  nvme::Cqe create_cq(std::uint16_t qid, std::uint16_t entries, std::uint32_t flags = 1,
                      std::uint16_t iv = 0, fpga::Iova base = 0) {
    nvme::Sqe s{};
    s.opc = nvme::admin::kCreateCq;
    s.prp1 = base != 0 ? base : buf_.iova();
    s.cdw10 = (std::uint32_t{static_cast<std::uint16_t>(entries - 1)} << 16) | qid;
    s.cdw11 = (std::uint32_t{iv} << 16) | flags;
    return admin(s);
  }
  nvme::Cqe create_sq(std::uint16_t qid, std::uint16_t entries, std::uint16_t cqid) {
    nvme::Sqe s{};
    s.opc = nvme::admin::kCreateSq;
    s.prp1 = buf_.iova() + 4096;
    s.cdw10 = (std::uint32_t{static_cast<std::uint16_t>(entries - 1)} << 16) | qid;
    s.cdw11 = (std::uint32_t{cqid} << 16) | 1u;
    return admin(s);
  }
  nvme::Cqe del(std::uint8_t opc, std::uint16_t qid) {
    nvme::Sqe s{};
    s.opc = opc;
    s.cdw10 = qid;
    return admin(s);
  }

  fpga::Function* vf_ = nullptr;
  std::unique_ptr<NvmeHost> host_;
  fpga::DmaBuffer buf_;
};

TEST_P(Admin, IdentifyController) {
  const nvme::Cqe c = identify(nvme::cns::kController, 0);
  ASSERT_EQ(sc_of(c), sc::kSuccess);
  nvme_id_ctrl id;
  std::memcpy(&id, buf_.data(), sizeof id);
  EXPECT_NE(id.vid, 0);
  EXPECT_EQ(id.cntlid, 2) << "VF 1 is controller 2";
  EXPECT_EQ(id.ver, regs::NVME_VS_1_4);
  EXPECT_EQ(id.sqes, 0x66);
  EXPECT_EQ(id.cqes, 0x44);
  EXPECT_EQ(id.nn, 1u);
  EXPECT_GE(id.mdts, 1);
  EXPECT_NE(id.oncs & (1u << 3), 0u) << "Write Zeroes supported";
  EXPECT_NE(std::string(id.mn, sizeof id.mn).find("keel"), std::string::npos);
  EXPECT_EQ(c.sq_id, 0);
  EXPECT_NE(std::string(id.subnqn).find("vf1"), std::string::npos);
}

TEST_P(Admin, IdentifyNamespaceIsTheSlice) {
  ASSERT_EQ(sc_of(identify(nvme::cns::kNamespace, 1)), sc::kSuccess);
  nvme_id_ns ns;
  std::memcpy(&ns, buf_.data(), sizeof ns);
  EXPECT_EQ(ns.nsze, 8192u);
  EXPECT_EQ(ns.ncap, 8192u);
  EXPECT_EQ(ns.nlbaf, 0);
  EXPECT_EQ(ns.flbas & 0xF, 0);
  EXPECT_EQ(ns.lbaf[0].ds, regs::LBA_SHIFT);
}

TEST_P(Admin, ActiveNamespaceList) {
  ASSERT_EQ(sc_of(identify(nvme::cns::kActiveNamespaces, 0)), sc::kSuccess);
  std::uint32_t list[4];
  std::memcpy(list, buf_.data(), sizeof list);
  EXPECT_EQ(list[0], 1u);
  EXPECT_EQ(list[1], 0u);
  ASSERT_EQ(sc_of(identify(nvme::cns::kActiveNamespaces, 1)), sc::kSuccess);
  std::memcpy(list, buf_.data(), sizeof list);
  EXPECT_EQ(list[0], 0u) << "no namespace above NSID 1";
}

TEST_P(Admin, IdentifyErrors) {
  nvme::Cqe c = identify(0x55, 0);
  EXPECT_EQ(sc_of(c), sc::kInvalidField);
  EXPECT_NE(nvme::cqe_status(c) & nvme::kDnr, 0) << "not retryable";
  EXPECT_EQ(sc_of(identify(nvme::cns::kNamespace, 2)), sc::kInvalidNamespace);
  EXPECT_EQ(sc_of(identify(nvme::cns::kNamespace, 0)), sc::kInvalidNamespace);
  EXPECT_EQ(sc_of(identify(nvme::cns::kActiveNamespaces, 0xFFFFFFFF)), sc::kInvalidNamespace);
}

TEST_P(Admin, CreateAndDeleteQueues) {
  EXPECT_EQ(sc_of(create_cq(1, 16)), sc::kSuccess);
  EXPECT_EQ(sc_of(create_sq(1, 16, 1)), sc::kSuccess);
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteCq, 1)), sc::kInvalidQueueDeletion)
      << "a CQ with an SQ attached cannot go";
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteSq, 1)), sc::kSuccess);
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteCq, 1)), sc::kSuccess);
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteSq, 1)), sc::kInvalidQueueId) << "already deleted";
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteCq, 1)), sc::kInvalidQueueId);
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteSq, 0)), sc::kInvalidQueueId) << "admin SQ";
  EXPECT_EQ(sc_of(del(nvme::admin::kDeleteCq, 0)), sc::kInvalidQueueId) << "admin CQ";
}

TEST_P(Admin, CreateQueueErrors) {
  EXPECT_EQ(sc_of(create_cq(0, 16)), sc::kInvalidQueueId);
  EXPECT_EQ(sc_of(create_cq(4, 16)), sc::kInvalidQueueId) << "VF has 3 queue pairs";
  EXPECT_EQ(sc_of(create_cq(1, 1)), sc::kInvalidQueueSize);
  EXPECT_EQ(sc_of(create_cq(1, 0)), sc::kInvalidQueueSize) << "65536 entries > MQES";
  EXPECT_EQ(sc_of(create_cq(1, 16, 0)), sc::kInvalidField) << "PC=0 with CAP.CQR";
  EXPECT_EQ(sc_of(create_cq(1, 16, 3, 200)), sc::kInvalidInterruptVector);
  EXPECT_EQ(sc_of(create_cq(1, 16, 1, 0, buf_.iova() + 8)), sc::kPrpOffsetInvalid);
  EXPECT_EQ(sc_of(create_sq(1, 16, 1)), sc::kCqInvalid) << "CQ 1 does not exist";
  EXPECT_EQ(sc_of(create_sq(1, 16, 0)), sc::kCqInvalid) << "the admin CQ is not for IO";
  ASSERT_EQ(sc_of(create_cq(1, 16)), sc::kSuccess);
  EXPECT_EQ(sc_of(create_cq(1, 16)), sc::kInvalidQueueId) << "duplicate";
  EXPECT_EQ(sc_of(create_sq(4, 16, 1)), sc::kInvalidQueueId);
  EXPECT_EQ(sc_of(create_sq(1, 1, 1)), sc::kInvalidQueueSize);
  ASSERT_EQ(sc_of(create_sq(1, 16, 1)), sc::kSuccess);
  EXPECT_EQ(sc_of(create_sq(1, 16, 1)), sc::kInvalidQueueId) << "duplicate";
  // Two SQs may share one CQ.
  EXPECT_EQ(sc_of(create_sq(2, 16, 1)), sc::kSuccess);
}

TEST_P(Admin, NumberOfQueuesFeature) {
  nvme::Sqe get{};
  get.opc = nvme::admin::kGetFeatures;
  get.cdw10 = nvme::feature::kNumberOfQueues;
  nvme::Cqe c = admin(get);
  ASSERT_EQ(sc_of(c), sc::kSuccess);
  EXPECT_EQ(c.dw0, (2u << 16) | 2u) << "3 granted, 0-based";

  nvme::Sqe set{};
  set.opc = nvme::admin::kSetFeatures;
  set.cdw10 = nvme::feature::kNumberOfQueues;
  set.cdw11 = (0u << 16) | 1u;  // 2 SQs, 1 CQ
  c = admin(set);
  ASSERT_EQ(sc_of(c), sc::kSuccess);
  EXPECT_EQ(c.dw0, (0u << 16) | 1u);
  EXPECT_EQ(sc_of(create_cq(2, 16)), sc::kInvalidQueueId) << "only 1 CQ allocated now";

  set.cdw11 = (10u << 16) | 10u;  // more than granted: allocation is capped
  c = admin(set);
  ASSERT_EQ(sc_of(c), sc::kSuccess);
  EXPECT_EQ(c.dw0, (2u << 16) | 2u);

  set.cdw11 = 0xFFFF;
  EXPECT_EQ(sc_of(admin(set)), sc::kInvalidField);

  ASSERT_EQ(sc_of(create_cq(1, 16)), sc::kSuccess);
  set.cdw11 = 0;
  EXPECT_EQ(sc_of(admin(set)), sc::kCommandSequenceError) << "queues already exist";

  get.cdw10 = 0x42;  // unsupported feature
  EXPECT_EQ(sc_of(admin(get)), sc::kInvalidField);
}

TEST_P(Admin, LogPages) {
  nvme::Sqe s{};
  s.opc = nvme::admin::kGetLogPage;
  s.nsid = 0xFFFFFFFF;
  s.prp1 = buf_.iova();
  s.cdw10 = nvme::log_page::kSmart | ((512 / 4 - 1) << 16);
  ASSERT_EQ(sc_of(admin(s)), sc::kSuccess);
  nvme_smart_log smart;
  std::memcpy(&smart, buf_.data(), sizeof smart);
  EXPECT_EQ(smart.avail_spare, 100);
  s.cdw10 = nvme::log_page::kFirmwareSlot | ((512 / 4 - 1) << 16);
  ASSERT_EQ(sc_of(admin(s)), sc::kSuccess);
  s.cdw10 = 0x7F | ((512 / 4 - 1) << 16);
  EXPECT_EQ(sc_of(admin(s)), sc::kInvalidLogPage);
  s.cdw10 = nvme::log_page::kSmart | ((512 / 4 - 1) << 16);
  s.cdw12 = 4096;  // offset past the log
  EXPECT_EQ(sc_of(admin(s)), sc::kInvalidField);
}

TEST_P(Admin, AsyncEventRequestsAreHeldUpToTheLimit) {
  nvme::Sqe s{};
  s.opc = nvme::admin::kAsyncEventRequest;
  for (int i = 0; i < 4; ++i) host_->submit(0, s);
  // Held: nothing completes.
  nvme::Cqe c{};
  EXPECT_FALSE(host_->reap(0, std::chrono::microseconds(200)).ok());
  // The fifth exceeds the limit (Identify AERL + 1).
  c = admin(s);
  EXPECT_EQ(sc_of(c), sc::kAsyncEventLimitExceeded);
}

TEST_P(Admin, AbortOfACompletedCommandIsNotAborted) {
  nvme::Sqe s{};
  s.opc = nvme::admin::kAbort;
  s.cdw10 = (1234u << 16) | 0u;
  const nvme::Cqe c = admin(s);
  EXPECT_EQ(sc_of(c), sc::kSuccess);
  EXPECT_EQ(c.dw0 & 1u, 1u);
}

TEST_P(Admin, UnknownOpcodeAndFusedCommands) {
  nvme::Sqe s{};
  s.opc = 0x7E;
  EXPECT_EQ(sc_of(admin(s)), sc::kInvalidOpcode);
  s.opc = nvme::admin::kIdentify;
  s.cdw10 = nvme::cns::kController;
  s.prp1 = buf_.iova();
  s.flags = 0x40;  // PSDT: SGL
  EXPECT_EQ(sc_of(admin(s)), sc::kInvalidField);
  s.flags = 0;
  EXPECT_EQ(sc_of(admin(s)), sc::kSuccess) << "the controller keeps serving";
}

TEST_P(Admin, CompletionsCarrySqHeadAndPhaseWraps) {
  // 32-entry admin queue: 80 commands wrap the CQ (and the phase tag) twice.
  for (int i = 0; i < 80; ++i) {
    nvme::Sqe s{};
    s.opc = nvme::admin::kGetFeatures;
    s.cdw10 = nvme::feature::kNumberOfQueues;
    const nvme::Cqe c = admin(s);
    ASSERT_EQ(sc_of(c), sc::kSuccess) << i;
    EXPECT_EQ(c.sq_head, (i + 1) % 32) << i;
  }
}

KEEL_INSTANTIATE_CARD_SUITE(Admin);

}  // namespace
}  // namespace keel::testing
