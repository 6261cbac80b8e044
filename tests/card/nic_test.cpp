// The NIC half of the card: PF and VF registers, rings, the embedded switch (forwarding,
// flooding, uplink, anti-spoofing, rate limit), MTU, malformed descriptors, FLR and removal.
// Runs on every backend whose card has a NIC (Card::nic()); the others skip with the reason.
#include <sys/socket.h>

#include <cstring>

#include "card_fixture.h"
#include "keel/fpga/nic.h"
#include "nic_rings.h"

namespace keel::testing {
namespace {

namespace np = regs::nicpf;
namespace nv = regs::nicvfcfg;
namespace nr = regs::nic;
namespace nq = regs::nicq;

knic::Mac mac_of(unsigned vf) {
  return {0x02, 0x00, 0x00, 0x00, 0x10, static_cast<std::uint8_t>(vf)};
}

class Nic : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    nic_ = card_->nic();
    if (nic_ == nullptr) {
      GTEST_SKIP() << "backend '" << GetParam() << "' has no NIC yet (Card::nic() is null)";
    }
    ASSERT_TRUE(nic_->set_num_vfs(0).ok());
  }
  fpga::Function& npf() { return nic_->pf(); }
  std::uint64_t counter(unsigned vf, std::uint64_t reg) { return npf().read64(nv::at(vf, reg)); }
  /// PF manager: MAC, rate, port enable. Returns NICVFCFG STATUS.ERR_CODE.
  std::uint32_t try_port(unsigned vf, const knic::Mac& mac, std::uint32_t rate = 0) {
    npf().write32(nv::at(vf, nv::MAC_LO), knic::mac_lo(mac));
    npf().write32(nv::at(vf, nv::MAC_HI), knic::mac_hi(mac));
    npf().write32(nv::at(vf, nv::RATE), rate);
    npf().write32(nv::at(vf, nv::CTRL), nv::CTRL_ENABLE_MASK);
    return static_cast<std::uint32_t>(regs::field_get(
        npf().read32(nv::at(vf, nv::STATUS)), nv::STATUS_ERR_CODE_MASK, nv::STATUS_ERR_CODE_SHIFT));
  }
  /// `n` VFs, each with its port up and queue pair 0 running.
  void up(unsigned n, std::vector<std::unique_ptr<NicRings>>& rings, unsigned log2 = 4) {
    ASSERT_TRUE(nic_->set_num_vfs(n).ok());
    for (unsigned i = 0; i < n; ++i) {
      ASSERT_EQ(try_port(i, mac_of(i)), 0u);
      auto vf = nic_->vf(i);
      ASSERT_TRUE(vf.ok());
      rings.push_back(std::make_unique<NicRings>(**vf, *card_, 0, log2, log2));
      ASSERT_EQ(rings.back()->start() & nq::QSTATUS_ENABLED_MASK, nq::QSTATUS_ENABLED_MASK);
    }
  }
  fpga::NicCard* nic_ = nullptr;
};

TEST_P(Nic, PfIdentityAndNumVfs) {
  EXPECT_EQ(npf().read32(np::ID), regs::NIC_MAGIC);
  const std::uint32_t caps = npf().read32(np::CAPS);
  EXPECT_EQ(regs::field_get(caps, np::CAPS_MAX_VFS_MASK, np::CAPS_MAX_VFS_SHIFT), nic_->max_vfs());
  EXPECT_EQ(regs::field_get(caps, np::CAPS_MAX_QUEUES_MASK, np::CAPS_MAX_QUEUES_SHIFT),
            regs::NIC_MAX_QUEUES);
  npf().write32(np::NUM_VFS, 3);
  EXPECT_EQ(nic_->num_vfs(), 3u);
  EXPECT_TRUE(nic_->vf(2).ok());
  EXPECT_EQ(nic_->vf(3).error().code, Errc::not_found);
  npf().write32(np::NUM_VFS, 2);  // non-zero to another non-zero: refused
  EXPECT_EQ(nic_->num_vfs(), 3u);
  EXPECT_NE(npf().read32(np::STATUS) & np::STATUS_NUM_VFS_ERR_MASK, 0u);
  npf().write32(np::NUM_VFS, nic_->max_vfs() + 1);
  EXPECT_EQ(nic_->num_vfs(), 3u);
  npf().write32(np::NUM_VFS, 0);
  EXPECT_EQ(nic_->num_vfs(), 0u);
  EXPECT_EQ(npf().read32(np::STATUS) & np::STATUS_NUM_VFS_ERR_MASK, 0u);
  // The NVMe half does not see the NIC's VFs, nor the other way round.
  EXPECT_EQ(card_->num_vfs(), 0u);
}

TEST_P(Nic, PortEnableIsValidated) {
  ASSERT_TRUE(nic_->set_num_vfs(2).ok());
  EXPECT_EQ(try_port(0, {0x01, 0, 0, 0, 0, 1}), 1u);  // multicast
  EXPECT_EQ(try_port(0, {0, 0, 0, 0, 0, 0}), 1u);     // zero
  EXPECT_EQ(try_port(0, mac_of(0)), 0u);
  EXPECT_EQ(try_port(1, mac_of(0)), 2u);  // VF 0 has it
  EXPECT_EQ(try_port(2, mac_of(2)), 5u);  // not present
  // MAC written while enabled: refused, MAC unchanged.
  npf().write32(nv::at(0, nv::MAC_LO), 0x12345678);
  EXPECT_EQ(regs::field_get(npf().read32(nv::at(0, nv::STATUS)), nv::STATUS_ERR_CODE_MASK,
                            nv::STATUS_ERR_CODE_SHIFT),
            6u);
  EXPECT_EQ(npf().read32(nv::at(0, nv::MAC_LO)), knic::mac_lo(mac_of(0)));
  // The VF sees its MAC and its link.
  fpga::Function& vf = **nic_->vf(0);
  EXPECT_EQ(knic::mac_from_regs(vf.read32(nr::MAC_LO), vf.read32(nr::MAC_HI)), mac_of(0));
  EXPECT_NE(vf.read32(nr::STATUS) & nr::STATUS_LINK_MASK, 0u);
  npf().write32(nv::at(0, nv::CTRL), 0);
  EXPECT_EQ(vf.read32(nr::STATUS) & nr::STATUS_LINK_MASK, 0u);
}

TEST_P(Nic, VfRegistersAndQueueValidation) {
  ASSERT_TRUE(nic_->set_num_vfs(1).ok());
  fpga::Function& vf = **nic_->vf(0);
  EXPECT_EQ(vf.read32(nr::ID), regs::NIC_MAGIC);
  EXPECT_EQ(regs::field_get(vf.read32(nr::CAPS), nr::CAPS_MAX_MTU_MASK, nr::CAPS_MAX_MTU_SHIFT),
            regs::NIC_MAX_MTU);
  EXPECT_EQ(vf.read32(nr::MTU), 1500u);
  EXPECT_EQ(vf.read32(nr::STATUS) & nr::STATUS_READY_MASK, 0u);
  vf.write32(nr::MTU, 9001);
  EXPECT_EQ(vf.read32(nr::MTU), 1500u);
  EXPECT_NE(vf.read32(nr::STATUS) & nr::STATUS_MTU_ERR_MASK, 0u);
  vf.write32(nr::MTU, 9000);
  EXPECT_EQ(vf.read32(nr::MTU), 9000u);
  vf.write32(nr::CTRL, nr::CTRL_ENABLE_MASK);
  EXPECT_NE(vf.read32(nr::STATUS) & nr::STATUS_READY_MASK, 0u);

  auto qerr = [&] {
    return regs::field_get(vf.read32(nq::at(0, nq::QSTATUS)), nq::QSTATUS_ERR_CODE_MASK,
                           nq::QSTATUS_ERR_CODE_SHIFT);
  };
  vf.write32(nq::at(0, nq::CFG), 13 | 4 << 4 | static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK));
  EXPECT_EQ(qerr(), 1u);  // ring of 2^13
  vf.write64(nq::at(0, nq::TX_BASE), 0x1000 + 8);
  vf.write32(nq::at(0, nq::CFG), 4 | 4 << 4 | static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK));
  EXPECT_EQ(qerr(), 2u);  // misaligned
  EXPECT_EQ(vf.read32(nq::at(0, nq::QSTATUS)) & nq::QSTATUS_ENABLED_MASK, 0u);

  NicRings rings(vf, *card_, 1);
  EXPECT_EQ(rings.start() & nq::QSTATUS_ENABLED_MASK, nq::QSTATUS_ENABLED_MASK);
  vf.write32(rings.reg(nq::TX_TAIL), 16);  // beyond a 16-entry ring
  EXPECT_EQ(regs::field_get(vf.read32(rings.reg(nq::QSTATUS)), nq::QSTATUS_ERR_CODE_MASK,
                            nq::QSTATUS_ERR_CODE_SHIFT),
            5u);
  EXPECT_EQ(vf.read32(rings.reg(nq::TX_TAIL)), 0u);
  vf.write64(rings.reg(nq::RX_BASE), 0x40);  // while enabled
  EXPECT_EQ(regs::field_get(vf.read32(rings.reg(nq::QSTATUS)), nq::QSTATUS_ERR_CODE_MASK,
                            nq::QSTATUS_ERR_CODE_SHIFT),
            4u);
  EXPECT_NE(vf.read64(rings.reg(nq::RX_BASE)), 0x40u);
}

TEST_P(Nic, UnicastBetweenVfsIsByteExactAndCounted) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(3, r);
  const auto frame = make_frame(mac_of(1), mac_of(0), 1000, 3);
  EXPECT_EQ(r[0]->send(frame), 1u);
  auto c = r[0]->tx_cqe();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->status, knic::kOk);
  EXPECT_EQ(c->index, 0u);
  EXPECT_EQ(c->len, frame.size());
  auto got = r[1]->receive();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, knic::kOk);
  EXPECT_EQ(got->bytes, frame);
  EXPECT_EQ(got->cqes.at(0).frame, frame.size());
  EXPECT_FALSE(r[2]->receive(50).has_value());  // unicast: VF 2 sees nothing
  EXPECT_EQ(counter(0, nv::TX_FRAMES), 1u);
  EXPECT_EQ(counter(0, nv::TX_BYTES), frame.size());
  EXPECT_EQ(counter(1, nv::RX_FRAMES), 1u);
  EXPECT_EQ(counter(1, nv::RX_BYTES), frame.size());
  EXPECT_EQ(counter(2, nv::RX_FRAMES), 0u);
}

TEST_P(Nic, RingsWrapAndPhasesFlip) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(2, r, 3);  // 8-entry rings: 40 frames wrap each ring 5 times
  for (unsigned i = 0; i < 40; ++i) {
    const auto frame = make_frame(mac_of(1), mac_of(0), 60 + i, static_cast<std::uint8_t>(i));
    const unsigned segs = r[0]->send(frame, 40);  // two or three descriptors per frame
    for (unsigned k = 0; k < segs; ++k) {
      auto c = r[0]->tx_cqe();
      ASSERT_TRUE(c.has_value()) << "frame " << i;
      EXPECT_EQ(c->status, knic::kOk);
    }
    auto got = r[1]->receive();
    ASSERT_TRUE(got.has_value()) << "frame " << i;
    EXPECT_EQ(got->bytes, frame) << "frame " << i;
  }
  EXPECT_EQ(counter(1, nv::RX_FRAMES), 40u);
}

TEST_P(Nic, BroadcastAndMulticastFlood) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(3, r);
  const auto bcast = make_frame(knic::kBroadcast, mac_of(0), 100);
  r[0]->send(bcast);
  for (unsigned v : {1u, 2u}) {
    auto got = r[v]->receive();
    ASSERT_TRUE(got.has_value()) << "VF " << v;
    EXPECT_EQ(got->bytes, bcast);
  }
  EXPECT_FALSE(r[0]->receive(50).has_value());  // not back to the sender
  const auto mcast = make_frame({0x33, 0x33, 0, 0, 0, 1}, mac_of(2), 80);
  r[2]->send(mcast);
  for (unsigned v : {0u, 1u}) {
    auto got = r[v]->receive();
    ASSERT_TRUE(got.has_value()) << "VF " << v;
    EXPECT_EQ(got->bytes, mcast);
  }
}

TEST_P(Nic, UplinkTakesUnknownUnicastAndBringsFramesIn) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd peer(sv[1]);
  KEEL_ASSERT_OK(nic_->attach_uplink(UniqueFd(sv[0])));
  EXPECT_NE(npf().read32(np::STATUS) & np::STATUS_UPLINK_UP_MASK, 0u);
  std::vector<std::unique_ptr<NicRings>> r;
  up(2, r);
  const knic::Mac outside{0x02, 0xAA, 0, 0, 0, 9};
  const auto out = make_frame(outside, mac_of(0), 300, 5);
  r[0]->send(out);
  ASSERT_TRUE(r[0]->tx_cqe().has_value());
  std::vector<std::uint8_t> buf(10000);
  const ssize_t n = ::recv(peer.get(), buf.data(), buf.size(), MSG_DONTWAIT);
  ASSERT_EQ(n, static_cast<ssize_t>(out.size()));
  buf.resize(static_cast<std::size_t>(n));
  EXPECT_EQ(buf, out);
  EXPECT_FALSE(r[1]->receive(20).has_value());
  EXPECT_EQ(npf().read64(np::UPLINK_TX_FRAMES), 1u);

  // In from the uplink: to VF 1's MAC, to a MAC nobody has (dropped), and a runt (dropped).
  const auto in = make_frame(mac_of(1), outside, 500, 9);
  ASSERT_EQ(::send(peer.get(), in.data(), in.size(), 0), static_cast<ssize_t>(in.size()));
  auto got = r[1]->receive(100000);  // the uplink's reader thread hands it over
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->bytes, in);
  const auto lost = make_frame({0x02, 0xBB, 0, 0, 0, 1}, outside, 64);
  ASSERT_EQ(::send(peer.get(), lost.data(), lost.size(), 0), static_cast<ssize_t>(lost.size()));
  const std::uint8_t runt[6] = {1, 2, 3, 4, 5, 6};
  ASSERT_EQ(::send(peer.get(), runt, sizeof runt, 0), 6);
  for (unsigned i = 0; i < 100000 && npf().read64(np::UPLINK_DROPS) < 2; ++i) card_->advance();
  EXPECT_EQ(npf().read64(np::UPLINK_DROPS), 2u);
  EXPECT_EQ(npf().read64(np::UPLINK_RX_FRAMES), 3u);
  EXPECT_FALSE(r[0]->receive(20).has_value());
}

TEST_P(Nic, SpoofedSourceIsDroppedAndCounted) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(2, r);
  r[0]->send(make_frame(mac_of(1), {0x02, 0, 0, 0, 0x66, 0x66}, 100));
  auto c = r[0]->tx_cqe();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->status, knic::kSpoofed);
  EXPECT_FALSE(r[1]->receive(50).has_value());
  EXPECT_EQ(counter(0, nv::DROP_SPOOF), 1u);
  EXPECT_EQ(counter(0, nv::TX_FRAMES), 0u);
  // VF 1 impersonating VF 0 is refused as well; then an honest frame still goes through.
  r[1]->send(make_frame(mac_of(0), mac_of(0), 100));
  EXPECT_EQ(r[1]->tx_cqe()->status, knic::kSpoofed);
  const auto ok = make_frame(mac_of(1), mac_of(0), 100);
  r[0]->send(ok);
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOk);
  EXPECT_EQ(r[1]->receive()->bytes, ok);
}

TEST_P(Nic, RateLimitHoldsFramesInTheRing) {
  ASSERT_TRUE(nic_->set_num_vfs(2).ok());
  // VF 0: 100 Mbit/s, 4 KiB bucket. 1514-byte frames: 2 fit the bucket, then one per 121 us.
  const std::uint32_t rate = 100 | 4u << nv::RATE_BURST_KB_SHIFT;
  ASSERT_EQ(try_port(0, mac_of(0), rate), 0u);
  ASSERT_EQ(try_port(1, mac_of(1)), 0u);
  NicRings tx(**nic_->vf(0), *card_, 0, 4, 4), rx(**nic_->vf(1), *card_, 0, 4, 4);
  tx.start();
  rx.start();
  const auto frame = make_frame(mac_of(1), mac_of(0), 1500);
  const std::uint64_t t0 = card_->now_ns();
  for (int i = 0; i < 10; ++i) tx.queue_frame(frame);
  tx.tx_doorbell();
  for (int i = 0; i < 10; ++i) {
    auto c = tx.tx_cqe(1'000'000);
    ASSERT_TRUE(c.has_value()) << "frame " << i;
    EXPECT_EQ(c->status, knic::kOk);
    ASSERT_TRUE(rx.receive().has_value());
  }
  const double elapsed_ns = static_cast<double>(card_->now_ns() - t0);
  // 10 frames minus the 4 KiB burst at 100 Mbit/s: at least 0.88 ms of card time, and the
  // limiter does not hold frames much longer than it must.
  const double need_ns = (10.0 * 1514 - 4096) * 8 / 100e6 * 1e9;
  EXPECT_GE(elapsed_ns, need_ns);
  EXPECT_LE(elapsed_ns, need_ns * 1.2 + 20'000);
  EXPECT_GE(counter(0, nv::TX_THROTTLED), 1u);
}

TEST_P(Nic, MtuBoundsFramesBothWays) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(3, r);
  fpga::Function& vf0 = r[0]->vf();
  vf0.write32(nr::MTU, 9000);
  r[1]->vf().write32(nr::MTU, 9000);
  const auto jumbo = make_frame(mac_of(1), mac_of(0), 9000 + 4);  // MTU + 18 bytes
  r[0]->send(jumbo);
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOk);
  auto got = r[1]->receive();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->bytes, jumbo);
  ASSERT_EQ(got->cqes.size(), 5u);  // 2048-byte buffers
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ((got->cqes[i].flags & knic::kCqeMore) != 0, i < 4);
    EXPECT_EQ(got->cqes[i].frame, jumbo.size());
  }
  // One byte more: oversize at the sender.
  r[0]->send(make_frame(mac_of(1), mac_of(0), 9000 + 5));
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOversize);
  EXPECT_EQ(counter(0, nv::DROP_OVERSIZE), 1u);
  // VF 2 keeps MTU 1500: a jumbo for it is dropped at its port, counted there.
  r[0]->send(make_frame(mac_of(2), mac_of(0), 3000));
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOk);
  EXPECT_FALSE(r[2]->receive(50).has_value());
  EXPECT_EQ(counter(2, nv::DROP_OVERSIZE), 1u);
}

TEST_P(Nic, MalformedDescriptorsAreDroppedWithACause) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(2, r, 6);
  NicRings& t = *r[0];
  // Zero length.
  t.queue_desc({t.tx_buffer_iova(0), 0, 0, 0});
  t.tx_doorbell();
  EXPECT_EQ(t.tx_cqe()->status, knic::kBadDesc);
  // Shorter than an Ethernet header.
  t.send(std::vector<std::uint8_t>(10, 0xEE));
  EXPECT_EQ(t.tx_cqe()->status, knic::kBadDesc);
  // A chain longer than NIC_MAX_SEGS: every descriptor of it comes back bad.
  const auto frame = make_frame(mac_of(1), mac_of(0), 40 * 20);
  const unsigned segs = t.send(frame, 20);
  ASSERT_GT(segs, regs::NIC_MAX_SEGS);
  for (unsigned i = 0; i < regs::NIC_MAX_SEGS; ++i) {
    auto c = t.tx_cqe();
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->status, knic::kBadDesc);
  }
  for (unsigned i = regs::NIC_MAX_SEGS; i < segs; ++i) ASSERT_TRUE(t.tx_cqe().has_value());
  // A buffer outside the VF's DMA windows.
  t.queue_desc({0x7000'0000'0000ull, 100, 0, 0});
  t.tx_doorbell();
  EXPECT_EQ(t.tx_cqe()->status, knic::kDmaFault);
  EXPECT_EQ(counter(0, nv::DROP_DMA_FAULT), 1u);
  EXPECT_GE(counter(0, nv::DROP_BAD_DESC), 3u);
  EXPECT_FALSE(r[1]->receive(50).has_value());
  // Nothing else was affected: a good frame still goes through.
  const auto ok = make_frame(mac_of(1), mac_of(0), 200);
  t.send(ok);
  EXPECT_EQ(t.tx_cqe()->status, knic::kOk);
  EXPECT_EQ(r[1]->receive()->bytes, ok);
  EXPECT_EQ(r[0]->vf().read32(nr::STATUS) & nr::STATUS_FATAL_MASK, 0u);
}

TEST_P(Nic, DryRxRingDropsAndRecovers) {
  ASSERT_TRUE(nic_->set_num_vfs(2).ok());
  ASSERT_EQ(try_port(0, mac_of(0)), 0u);
  ASSERT_EQ(try_port(1, mac_of(1)), 0u);
  NicRings tx(**nic_->vf(0), *card_), rx(**nic_->vf(1), *card_);
  tx.start();
  rx.start(false, false, /*post_rx=*/false);
  tx.send(make_frame(mac_of(1), mac_of(0), 100));
  EXPECT_EQ(tx.tx_cqe()->status, knic::kOk);  // the sender is not held up
  EXPECT_EQ(counter(1, nv::DROP_RX_NO_BUF), 1u);
  // A zero-length buffer is handed back as bad and the frame dropped.
  rx.post_rx(1, 0);
  tx.send(make_frame(mac_of(1), mac_of(0), 100));
  EXPECT_EQ(tx.tx_cqe()->status, knic::kOk);
  auto bad = rx.drain_rx(10);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(bad[0].status, knic::kBadDesc);
  rx.post_rx(4);
  const auto ok = make_frame(mac_of(1), mac_of(0), 100, 1);
  tx.send(ok);
  EXPECT_EQ(rx.receive()->bytes, ok);
}

TEST_P(Nic, RingOutsideTheWindowStopsOnlyThatVf) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(3, r);
  fpga::Function& vf = r[2]->vf();
  NicRings bad(vf, *card_, 1);
  bad.start();
  vf.write32(bad.reg(nq::CFG), 0);
  vf.write64(bad.reg(nq::TX_BASE), 0x7000'0000'0000ull);
  vf.write32(bad.reg(nq::CFG), 4 | 4 << 4 | static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK));
  vf.write32(bad.reg(nq::TX_TAIL), 1);
  for (int i = 0; i < 10; ++i) card_->advance();
  EXPECT_NE(vf.read32(nr::STATUS) & nr::STATUS_FATAL_MASK, 0u);
  EXPECT_EQ(regs::field_get(vf.read32(bad.reg(nq::QSTATUS)), nq::QSTATUS_ERR_CODE_MASK,
                            nq::QSTATUS_ERR_CODE_SHIFT),
            3u);
  const auto ok = make_frame(mac_of(1), mac_of(0), 64);
  r[0]->send(ok);
  EXPECT_EQ(r[1]->receive()->bytes, ok);
  vf.write32(nr::CTRL, 0);  // the driver's way out
  EXPECT_EQ(vf.read32(nr::STATUS) & nr::STATUS_FATAL_MASK, 0u);
}

TEST_P(Nic, CompletionInterruptsFollowCfg) {
  ASSERT_TRUE(nic_->set_num_vfs(2).ok());
  ASSERT_EQ(try_port(0, mac_of(0)), 0u);
  ASSERT_EQ(try_port(1, mac_of(1)), 0u);
  NicRings tx(**nic_->vf(0), *card_, 1), rx(**nic_->vf(1), *card_, 0);
  tx.start(true, false);
  rx.start(false, true);
  tx.send(make_frame(mac_of(1), mac_of(0), 64));
  auto n = tx.vf().wait_interrupt(2, std::chrono::milliseconds(10));  // queue 1 TX: vector 2
  KEEL_ASSERT_OK(n);
  auto m = rx.vf().wait_interrupt(1, std::chrono::milliseconds(10));  // queue 0 RX: vector 1
  KEEL_ASSERT_OK(m);
  ASSERT_TRUE(rx.receive().has_value());
  ASSERT_TRUE(tx.tx_cqe().has_value());
  // TX_IRQ off on the receiving VF: no TX vector fires there.
  rx.send(make_frame(mac_of(0), mac_of(1), 64));
  ASSERT_TRUE(rx.tx_cqe().has_value());
  EXPECT_EQ(rx.vf().wait_interrupt(0, std::chrono::microseconds(50)).error().code, Errc::timeout);
}

TEST_P(Nic, FlrAndSurpriseRemoval) {
  std::vector<std::unique_ptr<NicRings>> r;
  up(2, r);
  fpga::Function& vf1 = r[1]->vf();
  KEEL_ASSERT_OK(vf1.flr());
  EXPECT_EQ(vf1.read32(nq::at(0, nq::QSTATUS)), 0u);
  EXPECT_EQ(vf1.read32(nr::CTRL), 0u);
  EXPECT_EQ(knic::mac_from_regs(vf1.read32(nr::MAC_LO), vf1.read32(nr::MAC_HI)), mac_of(1));
  // Frames for a VF whose queues are down are dropped and counted; the sender goes on.
  r[0]->send(make_frame(mac_of(1), mac_of(0), 64));
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOk);
  EXPECT_EQ(counter(1, nv::DROP_QUEUE_OFF), 1u);
  NicRings again(vf1, *card_);
  again.start();
  const auto f1 = make_frame(mac_of(1), mac_of(0), 64, 1);
  r[0]->send(f1);
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOk);
  EXPECT_EQ(again.receive()->bytes, f1);

  KEEL_ASSERT_OK(nic_->surprise_remove(1));
  EXPECT_EQ(vf1.read32(nr::ID), 0xFFFFFFFFu);
  EXPECT_EQ(vf1.flr().error().code, Errc::gone);
  EXPECT_EQ(vf1.wait_interrupt(1, std::chrono::microseconds(10)).error().code, Errc::gone);
  EXPECT_EQ(npf().read32(nv::at(1, nv::STATUS)) & nv::STATUS_PRESENT_MASK, 0u);
  // Its MAC has left the switch: with no uplink to take it, the frame goes nowhere.
  r[0]->send(make_frame(mac_of(1), mac_of(0), 64));
  EXPECT_EQ(r[0]->tx_cqe()->status, knic::kOk);
  EXPECT_EQ(counter(0, nv::DROP_NO_ROUTE), 1u);
  npf().write32(nv::at(1, nv::CTRL), 0);
  EXPECT_EQ(try_port(1, mac_of(1)), 5u);  // a removed VF's port cannot be enabled
  KEEL_ASSERT_OK(nic_->restore(1));
  EXPECT_EQ(try_port(1, mac_of(1)), 0u);
  EXPECT_EQ(vf1.read32(nr::ID), regs::NIC_MAGIC);
  NicRings back(vf1, *card_);
  back.start();
  const auto f2 = make_frame(mac_of(1), mac_of(0), 64, 2);
  r[0]->send(f2);
  EXPECT_EQ(back.receive()->bytes, f2);
}

TEST_P(Nic, FlowsSpreadOverRxQueues) {
  ASSERT_TRUE(nic_->set_num_vfs(2).ok());
  ASSERT_EQ(try_port(0, mac_of(0)), 0u);
  ASSERT_EQ(try_port(1, mac_of(1)), 0u);
  NicRings tx(**nic_->vf(0), *card_);
  tx.start();
  std::vector<std::unique_ptr<NicRings>> qs;
  for (unsigned q = 0; q < regs::NIC_MAX_QUEUES; ++q) {
    qs.push_back(std::make_unique<NicRings>(**nic_->vf(1), *card_, q));
    qs.back()->start();
  }
  std::vector<unsigned> per_queue(regs::NIC_MAX_QUEUES);
  for (unsigned flow = 0; flow < 32; ++flow) {
    auto f = make_frame(mac_of(1), mac_of(0), 40);
    f[14] = 0x45;                             // IPv4, IHL 5
    f[23] = 17;                               // UDP
    f[29] = static_cast<std::uint8_t>(flow);  // source address
    int first = -1;
    for (int rep = 0; rep < 2; ++rep) {  // a flow always lands on the same queue
      tx.send(f);
      ASSERT_TRUE(tx.tx_cqe().has_value());
      int where = -1;
      for (unsigned q = 0; q < qs.size(); ++q) {
        if (auto got = qs[q]->receive(0)) {
          EXPECT_EQ(got->bytes, f);
          where = static_cast<int>(q);
        }
      }
      ASSERT_GE(where, 0);
      if (rep == 0) first = where;
      EXPECT_EQ(where, first) << "flow " << flow;
      ++per_queue[static_cast<unsigned>(where)];
    }
  }
  unsigned used = 0;
  for (unsigned n : per_queue) used += n > 0 ? 1 : 0;
  EXPECT_GE(used, 3u);
}

KEEL_INSTANTIATE_CARD_SUITE(Nic);

}  // namespace
}  // namespace keel::testing
