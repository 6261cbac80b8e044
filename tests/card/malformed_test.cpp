// Seeded random garbage on the admin and IO queues: every command gets a completion with some
// status, nothing outside the VF's memory and slice changes, and the card keeps serving.
#include <cstring>
#include <random>

#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace sc = nvme::sc;

class Malformed : public CardTest {};

TEST_P(Malformed, RandomCommandsAllCompleteAndTheCardKeepsServing) {
  enable_vfs(2, 4096);
  auto h = ready_host(0, 64);
  auto other = ready_host(1, 64);
  ASSERT_NE(h, nullptr);
  auto b = h->fn().alloc_dma(64 * 1024);
  auto ob = other->fn().alloc_dma(4096);
  ASSERT_TRUE(b.ok() && ob.ok());
  // The other VF's data must survive whatever VF 0 is sent.
  fill_pattern(ob->data(), 4096, 0, 42);
  ASSERT_EQ(sc_of(*other->run(1, other->rw_cmd(true, 0, 8, ob->iova(), 4096))), sc::kSuccess);

  std::mt19937_64 rng(20261126);
  const std::uint8_t admin_ops[] = {0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08,
                                    0x09, 0x0A, 0x0D, 0x10, 0x7F, 0xC0, 0xFF};
  const std::uint8_t io_ops[] = {0x00, 0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x11, 0x80, 0xFF};
  int statuses[8] = {};
  for (int i = 0; i < 600; ++i) {
    const bool on_admin = rng() % 4 == 0;
    nvme::Sqe s{};
    auto* raw = reinterpret_cast<std::uint64_t*>(&s);  // the SQE as 8 random qwords
    for (int k = 0; k < 8; ++k) raw[k] = rng();
    s.opc = on_admin ? admin_ops[rng() % sizeof admin_ops] : io_ops[rng() % sizeof io_ops];
    if (rng() % 2 == 0) s.flags = 0;
    if (rng() % 2 == 0) s.nsid = 1;
    if (rng() % 2 == 0) s.cdw12 &= 0xFF;  // plausible lengths
    if (rng() % 2 == 0) s.cdw11 = 0;
    if (rng() % 3 == 0) {
      s.prp1 = b->iova() + (rng() % 16) * 4096;
      s.prp2 = b->iova() + (rng() % 16) * 4096;
    }
    // Never delete or re-create queue pair 1, nor create queue 2 on garbage memory that the
    // test would then have to own; everything else goes.
    if (on_admin && (s.opc == nvme::admin::kDeleteSq || s.opc == nvme::admin::kDeleteCq)) {
      s.cdw10 = (s.cdw10 & ~0xFFFFu) | 7u;
    }
    if (on_admin && (s.opc == nvme::admin::kCreateSq || s.opc == nvme::admin::kCreateCq)) {
      s.prp1 = b->iova();
    }
    if (on_admin && s.opc == 0x0C) s.opc = 0x0D;  // AERs would be held, by design
    auto c = h->run(on_admin ? 0 : 1, s, std::chrono::milliseconds(50));
    ASSERT_TRUE(c.ok()) << "command " << i << " opc " << int{s.opc} << ": " << to_string(c.error());
    ++statuses[nvme::status_sct(nvme::cqe_status(*c))];
  }
  EXPECT_GT(statuses[0], 0);
  EXPECT_GT(statuses[1], 0) << "some command-specific errors were provoked";

  // Still serving, with verified data, on both VFs.
  fill_pattern(b->data(), 4096, 9, 1);
  ASSERT_EQ(sc_of(*h->run(1, h->rw_cmd(true, 9, 8, b->iova(), 4096))), sc::kSuccess);
  std::memset(b->data(), 0, 4096);
  ASSERT_EQ(sc_of(*h->run(1, h->rw_cmd(false, 9, 8, b->iova(), 4096))), sc::kSuccess);
  EXPECT_EQ(check_pattern(b->data(), 4096, 9, 1), -1);
  std::memset(ob->data(), 0, 4096);
  ASSERT_EQ(sc_of(*other->run(1, other->rw_cmd(false, 0, 8, ob->iova(), 4096))), sc::kSuccess);
  EXPECT_EQ(check_pattern(ob->data(), 4096, 0, 42), -1);
}

TEST_P(Malformed, BadDoorbellValuesAreIgnored) {
  enable_vfs(1, 4096);
  auto h = ready_host(0, 16);
  // A tail beyond the queue is ignored rather than executing stale entries.
  h->fn().write32(regs::NVME_DOORBELL_BASE + regs::NVME_DOORBELL_STRIDE, 500);
  EXPECT_FALSE(h->reap(1, std::chrono::microseconds(500)).ok());
  h->fn().write32(regs::NVME_DOORBELL_BASE + regs::NVME_DOORBELL_STRIDE, 0);
  auto b = h->fn().alloc_dma(4096);
  ASSERT_TRUE(b.ok());
  auto c = h->run(1, h->rw_cmd(false, 0, 8, b->iova(), 4096));
  ASSERT_TRUE(c.ok()) << to_string(c.error());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
}

KEEL_INSTANTIATE_CARD_SUITE(Malformed);

}  // namespace
}  // namespace keel::testing
