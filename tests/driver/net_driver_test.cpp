// The NIC VF driver (drivers/net) on the card's NIC: two driver instances on two VFs send each
// other frames through the card's switch. Lockstep card: every wait is bounded by card time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "card_fixture.h"
#include "keel/drivers/net/nic.h"
#include "keel/drivers/net/queue_pair.h"
#include "keel/fpga/nic.h"
#include "keel/wire/knic.h"

namespace keel::testing {
namespace {

namespace net = keel::drivers::net;
namespace vc = regs::nicvfcfg;
using Frame = std::vector<std::uint8_t>;
using namespace std::chrono_literals;

constexpr std::uint16_t kEtherType = 0x88B5;  // IEEE local experimental

knic::Mac mac_of(unsigned vf) { return knic::Mac{0x02, 0x00, 0x00, 0x00, 0x10, std::uint8_t(vf)}; }

/// A frame dst <- src carrying `payload_bytes` bytes of a pattern seeded by `seed`.
Frame make_frame(const knic::Mac& dst, const knic::Mac& src, std::size_t payload_bytes,
                 unsigned seed) {
  Frame f(knic::kEthHeader + payload_bytes);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = kEtherType >> 8;
  f[13] = kEtherType & 0xFF;
  for (std::size_t i = 0; i < payload_bytes; ++i) {
    f[knic::kEthHeader + i] = static_cast<std::uint8_t>(seed * 31 + i * 7 + (i >> 8));
  }
  return f;
}

class NetDriver : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    nic_card_ = card_->nic();
    if (nic_card_ == nullptr) GTEST_SKIP() << "backend '" << GetParam() << "' has no NIC";
    ASSERT_TRUE(nic_card_->set_num_vfs(0).ok());
    KEEL_ASSERT_OK(nic_card_->set_num_vfs(2));
    for (unsigned i = 0; i < 2; ++i) enable_port(i);
  }

  void TearDown() override {
    nics_[0].reset();
    nics_[1].reset();
    CardTest::TearDown();
  }

  /// What the NIC PF manager does: the VF's MAC, and its port in the switch.
  void enable_port(unsigned vf) {
    fpga::Function& p = nic_card_->pf();
    p.write32(vc::at(vf, vc::CTRL), 0);
    p.write32(vc::at(vf, vc::MAC_LO), knic::mac_lo(mac_of(vf)));
    p.write32(vc::at(vf, vc::MAC_HI), knic::mac_hi(mac_of(vf)));
    p.write32(vc::at(vf, vc::CTRL), static_cast<std::uint32_t>(vc::CTRL_ENABLE_MASK));
    const std::uint32_t st = p.read32(vc::at(vf, vc::STATUS));
    ASSERT_NE(st & vc::STATUS_ENABLED_MASK, 0u) << "port " << vf << " refused, status " << st;
  }

  fpga::Function& vf(unsigned i) {
    auto f = nic_card_->vf(i);
    EXPECT_TRUE(f.ok());
    return **f;
  }

  /// Opens the driver on VF `i`; nullptr (and a test failure) if it fails.
  net::Nic* open_nic(unsigned i, net::NicConfig cfg = {}) {
    auto n = net::Nic::open(vf(i), *card_, *card_, cfg);
    EXPECT_TRUE(n.ok()) << to_string(n.error());
    if (!n.ok()) return nullptr;
    nics_[i] = std::move(n).value();
    return nics_[i].get();
  }
  void open_both(net::NicConfig cfg = {}) {
    ASSERT_NE(open_nic(0, cfg), nullptr);
    ASSERT_NE(open_nic(1, cfg), nullptr);
  }
  net::QueuePair& qp(unsigned i) { return nics_[i]->queue(0); }

  /// Frames `rx` receives within `timeout` (card time) until it has `want`.
  std::vector<Frame> receive(net::QueuePair& rx, std::size_t want,
                             std::chrono::nanoseconds timeout = {}) {
    std::vector<Frame> got;
    const std::uint64_t deadline = card_->deadline_after(timeout.count() > 0 ? timeout : wait_);
    while (got.size() < want && card_->now_ns() < deadline) {
      // False only once the timeout has passed (or the device is down).
      if (!rx.wait(net::WaitFor::rx, std::chrono::nanoseconds(deadline - card_->now_ns()))) break;
      rx.poll_rx(64,
                 [&](std::span<const std::uint8_t> f) { got.emplace_back(f.begin(), f.end()); });
    }
    return got;
  }

  /// Sends `frame` on `tx` and expects `rx` to receive exactly it; the TX completes kOk.
  void exchange(net::QueuePair& tx, net::QueuePair& rx, const Frame& frame) {
    ASSERT_EQ(tx.send(frame), net::NetErrc::ok);
    tx.flush();
    const auto got = receive(rx, 1);
    ASSERT_EQ(got.size(), 1u) << "frame of " << frame.size() << " bytes not received";
    EXPECT_EQ(got[0], frame);
    reap_all(tx);
  }

  /// Reaps TX completions until nothing is in flight (bounded).
  std::vector<net::TxCompletion> reap_all(net::QueuePair& tx) {
    std::vector<net::TxCompletion> out;
    net::TxCompletion c[16];
    const std::uint64_t deadline = card_->deadline_after(wait_);
    while (card_->now_ns() < deadline) {
      const unsigned n = tx.reap(c);
      out.insert(out.end(), c, c + n);
      if (tx.tx_in_flight() == 0 && n == 0) break;
      // A wait that times out is no failure: the bound is the deadline (a loaded machine
      // may keep a free-running card off its CPU for longer than one wait).
      if (n == 0) (void)tx.wait(net::WaitFor::tx, 1ms);
    }
    EXPECT_EQ(tx.tx_in_flight(), 0u) << "TX completions missing";
    return out;
  }

  /// (Re)opens the card and sets up the NIC's VFs again.
  void reopen(const FixtureOptions& o) {
    nics_[0].reset();
    nics_[1].reset();
    open(o);
    ASSERT_FALSE(IsSkipped());
    nic_card_ = card_->nic();
    ASSERT_NE(nic_card_, nullptr);
    KEEL_ASSERT_OK(nic_card_->set_num_vfs(2));
    for (unsigned i = 0; i < 2; ++i) ASSERT_NO_FATAL_FAILURE(enable_port(i));
  }

  fpga::NicCard* nic_card_ = nullptr;
  std::unique_ptr<net::Nic> nics_[2];
  /// Bound of the helpers' waits, card time (lockstep: reached only if something is wrong).
  std::chrono::nanoseconds wait_ = 10ms;
};

TEST_P(NetDriver, OpenAndClose) {
  net::Nic* p = open_nic(0);
  ASSERT_NE(p, nullptr);
  net::Nic& n = *p;
  EXPECT_EQ(n.state(), net::DeviceState::ready);
  EXPECT_TRUE(n.link_up());
  EXPECT_EQ(n.queue_count(), 1u);
  nics_[0].reset();
  // The VF is disabled again, and a second driver opens it.
  EXPECT_EQ(net::Nic::status_of(vf(0)), net::DeviceState::not_ready);
  net::NicConfig cfg;
  cfg.queues = 2;
  net::Nic* again = open_nic(0, cfg);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->state(), net::DeviceState::ready);
  EXPECT_EQ(again->queue_count(), 2u);
}

TEST_P(NetDriver, RefusesBadConfig) {
  net::NicConfig cfg;
  cfg.mtu = 9001;
  auto n = net::Nic::open(vf(0), *card_, *card_, cfg);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Errc::invalid_argument);
  cfg = {};
  cfg.queues = regs::NIC_MAX_QUEUES + 1;
  n = net::Nic::open(vf(0), *card_, *card_, cfg);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Errc::invalid_argument);
}

TEST_P(NetDriver, MacAndMtu) {
  net::NicConfig cfg;
  cfg.mtu = 4000;
  net::Nic* p = open_nic(1, cfg);
  ASSERT_NE(p, nullptr);
  net::Nic& n = *p;
  EXPECT_EQ(n.mac(), mac_of(1));
  EXPECT_EQ(n.mtu(), 4000u);
  EXPECT_EQ(n.max_frame(), 4018u);
  EXPECT_EQ(vf(1).read32(regs::nic::MTU), 4000u);
  // Larger than MTU + 18 is refused by the driver, nothing queued.
  Frame big = make_frame(mac_of(0), mac_of(1), 4005, 1);
  EXPECT_EQ(n.queue(0).send(big), net::NetErrc::too_large);
  Frame runt(10);
  EXPECT_EQ(n.queue(0).send(runt), net::NetErrc::invalid);
  EXPECT_EQ(n.queue(0).tx_in_flight(), 0u);
}

TEST_P(NetDriver, FrameBothWays) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 100, 1));
  exchange(qp(1), qp(0), make_frame(mac_of(0), mac_of(1), 1500, 2));
  // A frame in several parts is sent as their concatenation.
  const Frame f = make_frame(mac_of(1), mac_of(0), 300, 3);
  const std::span<const std::uint8_t> all(f);
  const std::span<const std::uint8_t> parts[3] = {all.subspan(0, 14), all.subspan(14, 100),
                                                  all.subspan(114)};
  ASSERT_EQ(qp(0).send(parts), net::NetErrc::ok);
  qp(0).flush();
  const auto got = receive(qp(1), 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], f);
  reap_all(qp(0));
  const auto s0 = nics_[0]->stats();
  EXPECT_EQ(s0.tx_frames, 2u);
  EXPECT_EQ(s0.tx_bytes, 114u + 314u);
  EXPECT_EQ(s0.rx_frames, 1u);
  EXPECT_EQ(s0.rx_bytes, 1514u);
  EXPECT_EQ(nics_[1]->stats().rx_frames, 2u);
}

TEST_P(NetDriver, BatchesWrapTheRings) {
  net::NicConfig cfg;
  cfg.tx_ring_log2 = 4;  // 16 entries: 15 in flight
  cfg.rx_ring_log2 = 4;
  ASSERT_NO_FATAL_FAILURE(open_both(cfg));
  constexpr unsigned kFrames = 200, kBatch = 10;
  std::vector<Frame> sent;
  std::vector<Frame> got;
  unsigned batches = 0;
  while (sent.size() < kFrames) {
    for (unsigned i = 0; i < kBatch && sent.size() < kFrames; ++i) {
      sent.push_back(make_frame(mac_of(1), mac_of(0), 60 + sent.size() % 200,
                                static_cast<unsigned>(sent.size())));
      ASSERT_EQ(qp(0).send(sent.back()), net::NetErrc::ok) << "frame " << sent.size();
    }
    qp(0).flush();
    ++batches;
    auto batch = receive(qp(1), sent.size() - got.size());
    got.insert(got.end(), batch.begin(), batch.end());
    ASSERT_EQ(got.size(), sent.size()) << "batch " << batches;
    reap_all(qp(0));
  }
  EXPECT_EQ(got, sent);
  const auto& s = qp(0).stats();
  EXPECT_EQ(s.tx_frames, kFrames);
  EXPECT_EQ(s.tx_doorbells, batches);  // one TX_TAIL write per batch
  EXPECT_EQ(nics_[1]->stats().rx_frames, kFrames);
  EXPECT_EQ(nics_[1]->stats().rx_errors, 0u);
  EXPECT_EQ(nics_[1]->stats().device_errors, 0u);
  // Full ring: the 16th descriptor is refused until completions are reaped.
  const Frame f = make_frame(mac_of(1), mac_of(0), 60, 0);
  for (unsigned i = 0; i < qp(0).tx_capacity(); ++i) ASSERT_EQ(qp(0).send(f), net::NetErrc::ok);
  EXPECT_EQ(qp(0).send(f), net::NetErrc::full);
  qp(0).flush();
  EXPECT_EQ(receive(qp(1), 15).size(), 15u);
  reap_all(qp(0));
  EXPECT_EQ(qp(0).send(f), net::NetErrc::ok);
}

TEST_P(NetDriver, JumboFrameSpansRxBuffers) {
  net::NicConfig cfg;
  cfg.mtu = 9000;
  cfg.rx_buffer_bytes = 2048;
  ASSERT_NO_FATAL_FAILURE(open_both(cfg));
  const Frame jumbo = make_frame(mac_of(1), mac_of(0), 9000 + 4, 7);  // MTU + 18 bytes
  ASSERT_EQ(jumbo.size(), 9018u);
  exchange(qp(0), qp(1), jumbo);
  // The card spread it over five 2048-byte buffers.
  EXPECT_EQ(vf(1).read32(regs::nicq::at(0, regs::nicq::RX_HEAD)), 5u);
  // And a small one after it, in the buffers that follow.
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 50, 8));
  exchange(qp(1), qp(0), make_frame(mac_of(0), mac_of(1), 5000, 9));
  EXPECT_EQ(nics_[1]->stats().rx_bytes, 9018u + 64u);
  EXPECT_EQ(nics_[1]->stats().rx_errors, 0u);
}

TEST_P(NetDriver, ZeroCopyReturnsCookies) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  // The caller's memory in VF 0's DMA domain (the paravisor: guest memory at its GPA).
  auto mem = vf(0).alloc_dma(64 << 10);
  KEEL_ASSERT_OK(mem);
  std::vector<Frame> frames;
  for (unsigned i = 0; i < 6; ++i) {
    frames.push_back(make_frame(mac_of(1), mac_of(0), 200 + 100 * i, 20 + i));
    const Frame& f = frames.back();
    // Three segments at scattered places: header, then the payload in two.
    const std::size_t base = i * 8192;
    const std::size_t cut = 14 + 50;
    std::memcpy(mem->data() + base, f.data(), 14);
    std::memcpy(mem->data() + base + 1024, f.data() + 14, cut - 14);
    std::memcpy(mem->data() + base + 4096, f.data() + cut, f.size() - cut);
    const net::TxSegment segs[3] = {
        {mem->iova() + base, 14},
        {mem->iova() + base + 1024, static_cast<std::uint32_t>(cut - 14)},
        {mem->iova() + base + 4096, static_cast<std::uint32_t>(f.size() - cut)}};
    ASSERT_EQ(qp(0).send_zero_copy(segs, 1000 + i), net::NetErrc::ok);
  }
  EXPECT_EQ(qp(0).tx_in_flight(), 18u);
  const net::TxSegment none[1] = {{mem->iova(), 0}};
  EXPECT_EQ(qp(0).send_zero_copy(none, 1), net::NetErrc::invalid);
  qp(0).flush();
  EXPECT_EQ(receive(qp(1), frames.size()), frames);
  const auto done = reap_all(qp(0));
  ASSERT_EQ(done.size(), frames.size());
  for (unsigned i = 0; i < done.size(); ++i) {
    EXPECT_EQ(done[i].cookie, 1000u + i);
    EXPECT_EQ(done[i].status, knic::kOk);
  }
  EXPECT_EQ(qp(0).stats().tx_frames, frames.size());
  EXPECT_EQ(qp(0).stats().tx_doorbells, 1u);
  nics_[0].reset();  // the rings go before the memory their descriptors name
}

/// Caller-buffer completions of `rx` within the helpers' bound, until `want` have come.
std::vector<net::RxCompletion> rx_buffers(fpga::Card& card, net::QueuePair& rx, std::size_t want,
                                          std::chrono::nanoseconds bound) {
  std::vector<net::RxCompletion> got;
  const std::uint64_t deadline = card.deadline_after(bound);
  while (got.size() < want && card.now_ns() < deadline) {
    net::RxCompletion c[8];
    const unsigned n = rx.poll_rx_buffers(c);
    got.insert(got.end(), c, c + n);
    if (n == 0 && !rx.wait(net::WaitFor::rx, std::chrono::nanoseconds(deadline - card.now_ns()))) {
      break;
    }
  }
  return got;
}

TEST_P(NetDriver, CallerRxBuffersTakeFramesInPlace) {
  ASSERT_NE(open_nic(0), nullptr);
  net::NicConfig cfg;
  cfg.caller_rx_buffers = true;  // from the start: nothing posted
  ASSERT_NE(open_nic(1, cfg), nullptr);
  KEEL_ASSERT_OK(qp(1).use_caller_rx_buffers(true));  // already: no rebuild
  EXPECT_TRUE(qp(1).caller_rx_buffers());
  EXPECT_EQ(qp(1).rx_posted(), 0u);
  // No buffer posted: the card has nowhere to put a frame and drops it.
  ASSERT_EQ(qp(0).send(make_frame(mac_of(1), mac_of(0), 100, 1)), net::NetErrc::ok);
  qp(0).flush();
  reap_all(qp(0));
  EXPECT_TRUE(rx_buffers(*card_, qp(1), 1, 100us).empty());
  EXPECT_EQ(nic_card_->pf().read64(vc::at(1, vc::DROP_RX_NO_BUF)), 1u);

  // The caller's memory (the paravisor: guest RX buffers), in buffers of an odd size.
  auto mem = vf(1).alloc_dma(64 << 10);
  KEEL_ASSERT_OK(mem);
  constexpr std::uint32_t kBuf = 700;
  const net::RxBuffer bad[2] = {{mem->iova(), 0, 1}, {mem->iova(), 65536, 2}};
  EXPECT_EQ(qp(1).post_rx(bad[0]), net::NetErrc::invalid);
  EXPECT_EQ(qp(1).post_rx(bad[1]), net::NetErrc::invalid);
  EXPECT_EQ(qp(0).post_rx({mem->iova(), kBuf, 1}), net::NetErrc::invalid) << "driver buffers";
  for (unsigned i = 0; i < 8; ++i) {
    ASSERT_EQ(qp(1).post_rx({mem->iova() + i * 4096, kBuf, 500 + i}), net::NetErrc::ok);
  }
  EXPECT_EQ(qp(1).rx_posted(), 8u);
  qp(1).flush();
  // A short frame in one buffer, then a 1500-byte one across three.
  const Frame small = make_frame(mac_of(1), mac_of(0), 50, 2);
  const Frame big = make_frame(mac_of(1), mac_of(0), 1500 - 14, 3);
  for (const Frame* f : {&small, &big}) ASSERT_EQ(qp(0).send(*f), net::NetErrc::ok);
  qp(0).flush();
  const auto got = rx_buffers(*card_, qp(1), 4, wait_);
  ASSERT_EQ(got.size(), 4u);
  for (unsigned i = 0; i < 4; ++i) {
    EXPECT_EQ(got[i].cookie, 500u + i);
    EXPECT_EQ(got[i].status, knic::kOk);
    EXPECT_EQ(got[i].frame, i == 0 ? small.size() : big.size());
    EXPECT_EQ(got[i].more, i == 1 || i == 2);
  }
  EXPECT_EQ(got[0].len, small.size());
  EXPECT_EQ(got[1].len, kBuf);
  EXPECT_EQ(got[2].len, kBuf);
  EXPECT_EQ(got[3].len, big.size() - 2 * kBuf);
  EXPECT_EQ(Frame(reinterpret_cast<std::uint8_t*>(mem->data()),
                  reinterpret_cast<std::uint8_t*>(mem->data()) + small.size()),
            small);
  Frame joined;
  for (unsigned i = 1; i < 4; ++i) {
    const auto* b = reinterpret_cast<std::uint8_t*>(mem->data()) + i * 4096;
    joined.insert(joined.end(), b, b + got[i].len);
  }
  EXPECT_EQ(joined, big);
  EXPECT_EQ(qp(1).rx_posted(), 4u);
  EXPECT_EQ(qp(1).stats().rx_frames, 2u);
  EXPECT_EQ(qp(1).stats().rx_bytes, small.size() + big.size());
  EXPECT_EQ(qp(1).stats().rx_errors, 0u);
  EXPECT_EQ(qp(1).stats().device_errors, 0u);

  // Back to driver buffers: the four still posted are handed back, the mode works as before.
  KEEL_ASSERT_OK(qp(1).use_caller_rx_buffers(false));
  const auto back = rx_buffers(*card_, qp(1), 4, 100us);
  ASSERT_EQ(back.size(), 4u);
  for (unsigned i = 0; i < 4; ++i) {
    EXPECT_EQ(back[i].cookie, 504u + i);
    EXPECT_EQ(back[i].status, knic::kFlushed);
  }
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 300, 4));
  nics_[1].reset();  // the rings go before the memory their descriptors name
}

TEST_P(NetDriver, CallerRxBuffersComeBackOnDisableAndRecover) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  KEEL_ASSERT_OK(qp(1).use_caller_rx_buffers(true));
  auto mem = vf(1).alloc_dma(32 << 10);
  KEEL_ASSERT_OK(mem);
  auto post = [&](unsigned n, std::uint64_t first) {
    for (unsigned i = 0; i < n; ++i) {
      ASSERT_EQ(qp(1).post_rx({mem->iova() + i * 2048, 2048, first + i}), net::NetErrc::ok);
    }
    qp(1).flush();
  };
  ASSERT_NO_FATAL_FAILURE(post(6, 9));
  // A frame the card has written but nobody has polled yet when the queue pair stops comes
  // back with its completion; every other posted buffer comes back flushed, exactly once.
  const Frame early = make_frame(mac_of(1), mac_of(0), 90, 7);
  ASSERT_EQ(qp(0).send(early), net::NetErrc::ok);
  qp(0).flush();
  ASSERT_TRUE(qp(1).wait(net::WaitFor::rx, wait_));
  qp(1).disable();
  EXPECT_EQ(qp(1).post_rx({mem->iova(), 2048, 99}), net::NetErrc::down);
  EXPECT_EQ(qp(1).send(make_frame(mac_of(0), mac_of(1), 60, 1)), net::NetErrc::down);
  ASSERT_EQ(qp(0).send(make_frame(mac_of(1), mac_of(0), 60, 2)), net::NetErrc::ok);
  qp(0).flush();
  reap_all(qp(0));
  auto back = rx_buffers(*card_, qp(1), 7, 100us);
  ASSERT_EQ(back.size(), 6u) << "the card filled a buffer of a stopped queue";
  EXPECT_EQ(back[0].cookie, 9u);
  EXPECT_EQ(back[0].status, knic::kOk);
  EXPECT_EQ(back[0].len, early.size());
  for (unsigned i = 1; i < 6; ++i) {
    EXPECT_EQ(back[i].cookie, 9u + i);
    EXPECT_EQ(back[i].status, knic::kFlushed);
    EXPECT_EQ(back[i].len, 0u);
  }
  // Rebuilt in the same mode, it takes buffers again.
  KEEL_ASSERT_OK(qp(1).use_caller_rx_buffers(true));
  ASSERT_NO_FATAL_FAILURE(post(3, 20));
  const Frame f = make_frame(mac_of(1), mac_of(0), 100, 3);
  ASSERT_EQ(qp(0).send(f), net::NetErrc::ok);
  qp(0).flush();
  auto got = rx_buffers(*card_, qp(1), 1, wait_);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].cookie, 20u);
  EXPECT_EQ(got[0].len, f.size());
  // An FLR and recover(): the two still posted come back; the mode stays.
  KEEL_ASSERT_OK(vf(1).flr());
  EXPECT_EQ(nics_[1]->state(), net::DeviceState::not_ready);
  KEEL_ASSERT_OK(nics_[1]->recover());
  EXPECT_TRUE(qp(1).caller_rx_buffers());
  back = rx_buffers(*card_, qp(1), 3, 100us);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].cookie, 21u);
  EXPECT_EQ(back[1].cookie, 22u);
  EXPECT_EQ(back[1].status, knic::kFlushed);
  ASSERT_NO_FATAL_FAILURE(post(1, 30));
  ASSERT_EQ(qp(0).send(f), net::NetErrc::ok);
  qp(0).flush();
  got = rx_buffers(*card_, qp(1), 1, wait_);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].cookie, 30u);
  EXPECT_EQ(Frame(reinterpret_cast<std::uint8_t*>(mem->data()),
                  reinterpret_cast<std::uint8_t*>(mem->data()) + f.size()),
            f);
  nics_[1].reset();
}

TEST_P(NetDriver, InterruptModeWait) {
  if (vf(0).num_vectors() < 2) GTEST_SKIP() << "the NIC VF has no MSI-X vectors";
  net::NicConfig cfg;
  cfg.interrupts = true;
  ASSERT_NO_FATAL_FAILURE(open_both(cfg));
  // Nothing to receive: the wait ends at its timeout (card time).
  EXPECT_FALSE(qp(1).wait(net::WaitFor::rx, 200us));
  EXPECT_EQ(nics_[1]->state(), net::DeviceState::ready);
  const Frame f = make_frame(mac_of(1), mac_of(0), 400, 5);
  ASSERT_EQ(qp(0).send(f), net::NetErrc::ok);
  // A caller that busy-polls masks the vectors; wait() arms the one it sleeps on.
  qp(0).arm_interrupts(false);
  qp(1).arm_interrupts(false);
  // The waits end on the interrupt, well before their timeout (card time).
  const std::uint64_t t0 = card_->now_ns();
  EXPECT_TRUE(qp(0).wait(net::WaitFor::tx, 10ms));  // flushes, sleeps on vector 0
  EXPECT_TRUE(qp(1).wait(net::WaitFor::rx, 10ms));  // vector 1
  EXPECT_LT(card_->now_ns() - t0, std::uint64_t{5'000'000});
  std::vector<Frame> got;
  qp(1).poll_rx(8, [&](std::span<const std::uint8_t> s) { got.emplace_back(s.begin(), s.end()); });
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], f);
  EXPECT_EQ(qp(0).reap(), 0u);
  EXPECT_EQ(qp(0).tx_in_flight(), 0u);
  // The other way, the sender waiting on both of its vectors.
  ASSERT_EQ(qp(1).send(make_frame(mac_of(0), mac_of(1), 64, 6)), net::NetErrc::ok);
  EXPECT_TRUE(qp(1).wait(net::WaitFor::any, 10ms));
  EXPECT_EQ(receive(qp(0), 1).size(), 1u);
  reap_all(qp(1));
  exchange(qp(1), qp(0), make_frame(mac_of(0), mac_of(1), 64, 6));
}

TEST_P(NetDriver, PolledModeWait) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  EXPECT_FALSE(qp(1).wait(net::WaitFor::rx, 200us));
  EXPECT_FALSE(qp(0).wait(net::WaitFor::any, 200us));
  const Frame f = make_frame(mac_of(1), mac_of(0), 400, 5);
  ASSERT_EQ(qp(0).send(f), net::NetErrc::ok);
  qp(0).flush();
  EXPECT_TRUE(qp(1).wait(net::WaitFor::rx, 10ms));
  EXPECT_TRUE(qp(0).wait(net::WaitFor::tx, 10ms));
  unsigned n = qp(1).poll_rx(8, [&](std::span<const std::uint8_t> s) {
    EXPECT_TRUE(std::equal(s.begin(), s.end(), f.begin(), f.end()));
  });
  EXPECT_EQ(n, 1u);
}

TEST_P(NetDriver, SpoofedSourceIsDropped) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  const Frame spoofed = make_frame(mac_of(1), knic::Mac{0x02, 0, 0, 0, 0x66, 0x66}, 100, 1);
  ASSERT_EQ(qp(0).send(spoofed), net::NetErrc::ok);
  qp(0).flush();
  reap_all(qp(0));
  EXPECT_EQ(qp(0).stats().tx_errors[knic::kSpoofed], 1u);
  EXPECT_EQ(qp(0).stats().tx_frames, 0u);
  // Zero-copy: the status comes back with the cookie.
  auto mem = vf(0).alloc_dma(4096);
  KEEL_ASSERT_OK(mem);
  std::memcpy(mem->data(), spoofed.data(), spoofed.size());
  const net::TxSegment seg[1] = {{mem->iova(), static_cast<std::uint32_t>(spoofed.size())}};
  ASSERT_EQ(qp(0).send_zero_copy(seg, 77), net::NetErrc::ok);
  qp(0).flush();
  const auto done = reap_all(qp(0));
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].cookie, 77u);
  EXPECT_EQ(done[0].status, knic::kSpoofed);
  EXPECT_EQ(qp(0).stats().tx_errors[knic::kSpoofed], 2u);
  EXPECT_FALSE(qp(1).wait(net::WaitFor::rx, 100us)) << "a spoofed frame was delivered";
  EXPECT_EQ(nic_card_->pf().read64(vc::at(0, vc::DROP_SPOOF)), 2u);
  // The queue still works.
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 100, 2));
  nics_[0].reset();
}

TEST_P(NetDriver, FlrThenRecover) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 100, 1));
  // A zero-copy frame on the ring when the FLR hits (published, the card not yet stepped).
  auto mem = vf(0).alloc_dma(4096);
  KEEL_ASSERT_OK(mem);
  const Frame f = make_frame(mac_of(1), mac_of(0), 100, 2);
  std::memcpy(mem->data(), f.data(), f.size());
  const net::TxSegment seg[1] = {{mem->iova(), static_cast<std::uint32_t>(f.size())}};
  ASSERT_EQ(qp(0).send_zero_copy(seg, 42), net::NetErrc::ok);
  qp(0).flush();
  KEEL_ASSERT_OK(vf(0).flr());
  EXPECT_EQ(nics_[0]->state(), net::DeviceState::not_ready);
  EXPECT_EQ(qp(0).send(f), net::NetErrc::down);
  EXPECT_EQ(vf(0).read32(regs::nic::MTU), 1500u);
  KEEL_ASSERT_OK(nics_[0]->recover());
  EXPECT_EQ(nics_[0]->state(), net::DeviceState::ready);
  EXPECT_EQ(nics_[0]->mac(), mac_of(0));
  // The frame the FLR caught comes back failed, exactly once, so its owner can resend it.
  const auto c = reap_all(qp(0));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].cookie, 42u);
  EXPECT_EQ(c[0].status, knic::kFlushed);
  EXPECT_TRUE(receive(qp(1), 1, 100us).empty()) << "the card sent a frame the FLR flushed";
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 700, 3));
  exchange(qp(1), qp(0), make_frame(mac_of(0), mac_of(1), 700, 4));
  // reset(): the driver's own FLR.
  KEEL_ASSERT_OK(nics_[1]->reset());
  exchange(qp(1), qp(0), make_frame(mac_of(0), mac_of(1), 80, 5));
  nics_[0].reset();
}

TEST_P(NetDriver, SurpriseRemovalThenRestore) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 100, 1));
  KEEL_ASSERT_OK(nic_card_->surprise_remove(0));
  // A caller that only polls notices it too.
  for (unsigned i = 0; i < 2048; ++i) {
    qp(0).poll_rx(8, [](std::span<const std::uint8_t>) {});
  }
  const Frame f = make_frame(mac_of(1), mac_of(0), 100, 2);
  EXPECT_EQ(qp(0).send(f), net::NetErrc::gone);
  EXPECT_EQ(nics_[0]->state(), net::DeviceState::gone);
  EXPECT_FALSE(qp(0).wait(200us));  // bounded
  const Status st = nics_[0]->recover();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::gone);
  // The other VF is unaffected; frames to the removed one go nowhere.
  ASSERT_EQ(qp(1).send(make_frame(mac_of(0), mac_of(1), 100, 3)), net::NetErrc::ok);
  reap_all(qp(1));
  KEEL_ASSERT_OK(nic_card_->restore(0));
  EXPECT_NE(nics_[0]->state(), net::DeviceState::ready);
  EXPECT_EQ(qp(0).send(f), net::NetErrc::down);
  KEEL_ASSERT_OK(nics_[0]->recover());
  EXPECT_EQ(nics_[0]->state(), net::DeviceState::ready);
  exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 1000, 4));
  exchange(qp(1), qp(0), make_frame(mac_of(0), mac_of(1), 1000, 5));
}

TEST_P(NetDriver, SeveralQueuePairs) {
  net::NicConfig cfg;
  cfg.queues = 2;
  cfg.interrupts = vf(0).num_vectors() >= 4;
  ASSERT_NO_FATAL_FAILURE(open_both(cfg));
  // Frames from both of VF 0's queues; VF 1 receives each on one of its queues.
  std::vector<Frame> sent;
  for (unsigned q = 0; q < 2; ++q) {
    for (unsigned i = 0; i < 5; ++i) {
      sent.push_back(make_frame(mac_of(1), mac_of(0), 100 + i, 10 * q + i));
      ASSERT_EQ(nics_[0]->queue(q).send(sent.back()), net::NetErrc::ok);
    }
    nics_[0]->queue(q).flush();
  }
  std::vector<Frame> got;
  const std::uint64_t deadline = card_->deadline_after(10ms);
  while (got.size() < sent.size() && card_->now_ns() < deadline) {
    for (unsigned q = 0; q < 2; ++q) {
      (void)nics_[1]->queue(q).wait(net::WaitFor::rx, 50us);
      nics_[1]->queue(q).poll_rx(
          16, [&](std::span<const std::uint8_t> f) { got.emplace_back(f.begin(), f.end()); });
    }
  }
  std::sort(got.begin(), got.end());
  std::sort(sent.begin(), sent.end());
  EXPECT_EQ(got, sent);
  reap_all(nics_[0]->queue(0));
  reap_all(nics_[0]->queue(1));
  EXPECT_EQ(nics_[0]->stats().tx_frames, 10u);
  EXPECT_EQ(nics_[1]->stats().rx_frames, 10u);
}

// The same driver on a free-running card (the card's own thread moves frames): traffic both
// ways in both modes, FLR and recovery. Waits are bounded by the card's (real) clock.
TEST_P(NetDriver, FreeRunningCard) {
  FixtureOptions o;
  o.lockstep = false;
  ASSERT_NO_FATAL_FAILURE(reopen(o));
  wait_ = 5s;
  for (const bool irq : {false, true}) {
    if (irq && vf(0).num_vectors() < 2) continue;
    net::NicConfig cfg;
    cfg.interrupts = irq;
    cfg.tx_ring_log2 = 5;
    cfg.rx_ring_log2 = 5;
    cfg.enable_timeout = 1s;
    ASSERT_NO_FATAL_FAILURE(open_both(cfg));
    for (unsigned i = 0; i < 100; ++i) {
      ASSERT_NO_FATAL_FAILURE(exchange(qp(i % 2), qp(1 - i % 2),
                                       make_frame(mac_of(1 - i % 2), mac_of(i % 2), 60 + i, i)));
    }
    KEEL_ASSERT_OK(nics_[0]->reset());
    ASSERT_NO_FATAL_FAILURE(exchange(qp(0), qp(1), make_frame(mac_of(1), mac_of(0), 1400, 1)));
    EXPECT_EQ(nics_[0]->stats().tx_frames, 51u);
    EXPECT_EQ(nics_[1]->stats().rx_errors, 0u);
    nics_[0].reset();
    nics_[1].reset();
  }
}

TEST_P(NetDriver, BroadcastFloods) {
  ASSERT_NO_FATAL_FAILURE(open_both());
  const Frame b = make_frame(knic::kBroadcast, mac_of(1), 64, 9);
  ASSERT_EQ(qp(1).send(b), net::NetErrc::ok);
  qp(1).flush();
  const auto got = receive(qp(0), 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], b);
  reap_all(qp(1));
}

KEEL_INSTANTIATE_CARD_SUITE(NetDriver);

}  // namespace
}  // namespace keel::testing
