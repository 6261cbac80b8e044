// The virtio-net paravisor on the model card's NIC, in process and lockstep: guests (a
// virtio-net driver played by the test over guest memory) exchange frames through their VFs
// and the card's switch; the fallback port is a socket the test plays the software switch on;
// failover both ways; malformed chains.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>
#include <utility>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/model/model_card.h"
#include "keel/fpga/nic.h"
#include "keel/vmm/net_paravisor.h"
#include "keel/vmm/split_ring_driver.h"
#include "keel/wire/fallback_port.h"

namespace keel::testing {
namespace {

namespace vmm = keel::vmm;
namespace vnet = virtio::net;
namespace nv = regs::nicvfcfg;
namespace fp = fallback_port;

knic::Mac mac_of(unsigned i) { return {0x02, 0x4b, 0, 0, 0, static_cast<std::uint8_t>(i + 1)}; }

constexpr std::uint64_t kFeatures = 1ull << virtio::feature::kVersion1 | 1ull << vnet::kMrgRxbuf |
                                    1ull << vnet::kMac | 1ull << vnet::kStatus |
                                    1ull << vnet::kMtu | 1ull << virtio::feature::kRingEventIdx;

/// The guest: memory, a receiveq and a transmitq driven as Linux's virtio_net would.
struct NetGuest {
  static constexpr std::uint16_t kQueue = 64;
  static constexpr std::uint32_t kRxBuf = 2048;
  std::unique_ptr<vmm::GuestMemory> mem;
  std::unique_ptr<vmm::SplitRingDriver> rx, tx;
  std::unique_ptr<vmm::NetParavisor> pv;
  UniqueFd port;  // the test's end of the fallback port
  std::uint64_t next_tx = 0x100000;
  unsigned completed = 0;  // TX chains the device gave back

  void make_rings() {
    auto translate = [m = mem.get()](std::uint64_t gpa, std::uint64_t len) {
      return m->translate(gpa, len);
    };
    vmm::SplitRingDriver::Layout r{kQueue, 0x0, 0x1000, 0x2000};
    vmm::SplitRingDriver::Layout t{kQueue, 0x4000, 0x5000, 0x6000};
    rx = std::make_unique<vmm::SplitRingDriver>(translate, r);
    tx = std::make_unique<vmm::SplitRingDriver>(translate, t);
  }
  vmm::Virtqueue::Layout layout(const vmm::SplitRingDriver& d) {
    return {d.layout().size, d.layout().desc, d.layout().avail, d.layout().used, nullptr};
  }
  std::uint64_t rx_buf(std::uint16_t slot) const { return 0x200000 + std::uint64_t{slot} * kRxBuf; }
  void post_rx(unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
      const std::uint16_t slot = rx->next_free();
      vmm::SplitRingDriver::Piece p{rx_buf(slot), kRxBuf, true};
      ASSERT_TRUE(rx->publish(std::span(&p, 1)).ok());
    }
  }
  /// A frame with its header, in one or two descriptors.
  void send(std::span<const std::uint8_t> frame, bool split = false, vnet::Hdr hdr = {}) {
    const std::uint64_t at = next_tx;
    next_tx = 0x100000 + ((next_tx - 0x100000 + 0x3000) % 0xC0000);
    while (tx->pop_used()) ++completed;
    std::memcpy(mem->translate(at, sizeof hdr), &hdr, sizeof hdr);
    std::memcpy(mem->translate(at + 64, frame.size()), frame.data(), frame.size());
    std::vector<vmm::SplitRingDriver::Piece> pieces;
    if (split) {
      pieces.push_back({at, sizeof hdr, false});
      pieces.push_back({at + 64, static_cast<std::uint32_t>(frame.size()), false});
    } else {
      std::memmove(mem->translate(at + sizeof hdr, frame.size()), frame.data(), frame.size());
      pieces.push_back({at, static_cast<std::uint32_t>(sizeof hdr + frame.size()), false});
    }
    ASSERT_TRUE(tx->publish(pieces).ok());
  }
  /// The next received frame (joining its buffers by num_buffers), if one is there.
  std::optional<std::vector<std::uint8_t>> received(std::uint16_t* buffers = nullptr) {
    auto u = rx->pop_used();
    if (!u) return std::nullopt;
    vnet::Hdr hdr;
    std::memcpy(&hdr, mem->translate(rx_buf(static_cast<std::uint16_t>(u->id)), sizeof hdr),
                sizeof hdr);
    std::vector<std::uint8_t> out;
    auto take = [&](const virtio::UsedElem& e, std::size_t skip) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(
          mem->translate(rx_buf(static_cast<std::uint16_t>(e.id)), e.len));
      out.insert(out.end(), p + skip, p + e.len);
    };
    take(*u, sizeof hdr);
    for (unsigned i = 1; i < hdr.num_buffers; ++i) {
      auto more = rx->pop_used();
      if (!more) return std::nullopt;
      take(*more, 0);
    }
    if (buffers != nullptr) *buffers = hdr.num_buffers;
    post_rx(hdr.num_buffers);
    return out;
  }
  /// TX chains given back since the last call.
  unsigned tx_done() {
    while (tx->pop_used()) ++completed;
    return std::exchange(completed, 0u);
  }
};

std::vector<std::uint8_t> frame(const knic::Mac& dst, const knic::Mac& src, std::size_t payload,
                                std::uint8_t seed = 0) {
  std::vector<std::uint8_t> f(14 + payload);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = 0x08;
  for (std::size_t i = 0; i < payload; ++i) f[14 + i] = static_cast<std::uint8_t>(seed + 3 * i);
  return f;
}

class NetParavisor : public ::testing::Test {
 protected:
  void SetUp() override {
    fpga::model::ModelConfig mc;
    mc.card.lockstep = true;
    mc.card.max_vfs = 4;
    mc.card.storage_bytes = 8 << 20;
    auto card = fpga::model::ModelCard::create(mc);
    ASSERT_TRUE(card.ok()) << to_string(card.error());
    card_ = std::move(card).value();
    nic_ = card_->nic();
    ASSERT_NE(nic_, nullptr);
    ASSERT_TRUE(nic_->set_num_vfs(3).ok());
    for (unsigned i = 0; i < 3; ++i) {
      nic_->pf().write32(nv::at(i, nv::MAC_LO), knic::mac_lo(mac_of(i)));
      nic_->pf().write32(nv::at(i, nv::MAC_HI), knic::mac_hi(mac_of(i)));
      nic_->pf().write32(nv::at(i, nv::CTRL), nv::CTRL_ENABLE_MASK);
    }
  }

  /// Guest `i` on NIC VF `i` (or none), with a fallback port the test holds.
  NetGuest& guest(unsigned i, bool with_vf = true, unsigned mtu = 1500, unsigned pairs = 1,
                  bool rx_zero_copy = true, std::uint64_t features = kFeatures) {
    auto g = std::make_unique<NetGuest>();
    auto mem = vmm::GuestMemory::create(8 << 20);
    EXPECT_TRUE(mem.ok());
    g->mem = std::move(mem).value();
    g->make_rings();
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    g->port = UniqueFd(sv[1]);
    vmm::NetParavisorConfig cfg;
    cfg.mac = mac_of(i);
    cfg.mtu = mtu;
    cfg.threads = false;
    cfg.probe_interval = std::chrono::microseconds(50);
    cfg.health_interval = std::chrono::microseconds(20);
    cfg.queue_pairs = pairs;
    cfg.rx_zero_copy = rx_zero_copy;
    cfg.redial_fallback = redial_;
    fpga::Function* vf = with_vf ? *nic_->vf(i) : nullptr;
    auto pv = vmm::NetParavisor::create(vf, *card_, *card_, *g->mem, UniqueFd(sv[0]), cfg);
    EXPECT_TRUE(pv.ok()) << to_string(pv.error());
    g->pv = std::move(pv).value();
    std::uint64_t f = features | (pairs > 1 ? 1ull << vnet::kMq : 0);
    EXPECT_TRUE(g->pv->set_features(f).ok());
    EXPECT_TRUE(g->pv->set_queue(0, g->layout(*g->rx)).ok());
    EXPECT_TRUE(g->pv->set_queue(1, g->layout(*g->tx)).ok());
    EXPECT_TRUE(g->pv->start().ok());
    g->post_rx(32);
    guests_.push_back(std::move(g));
    return *guests_.back();
  }

  /// Runs every paravisor and steps the card until `done` or `steps` run out.
  template <typename Done>
  bool run_until(Done&& done, unsigned steps = 2000) {
    for (unsigned i = 0; i < steps; ++i) {
      for (auto& g : guests_) g->pv->run_once();
      if (done()) return true;
      card_->step(1);
    }
    return done();
  }
  /// `n` frames from `from` to `dst`, sent 16 at a time with the card running in between
  /// (and after), while the receiver takes none.
  std::vector<std::vector<std::uint8_t>> burst(NetGuest& from, const knic::Mac& dst, int n) {
    std::vector<std::vector<std::uint8_t>> sent;
    for (int i = 0; i < n; ++i) {
      sent.push_back(frame(dst, mac_of(0), 80, static_cast<std::uint8_t>(i)));
      from.send(sent.back());
      if (i % 16 == 15) run_until([] { return false; }, 50);
    }
    run_until([] { return false; }, 200);
    return sent;
  }
  /// Records the test's end of a fallback port got.
  std::vector<std::vector<std::uint8_t>> port_records(NetGuest& g) {
    std::vector<std::vector<std::uint8_t>> out;
    std::vector<std::uint8_t> buf(fp::kMaxRecord);
    for (;;) {
      const ssize_t r = ::recv(g.port.get(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (r <= 0) break;
      out.emplace_back(buf.begin(), buf.begin() + r);
    }
    return out;
  }

  std::unique_ptr<fpga::model::ModelCard> card_;
  fpga::NicCard* nic_ = nullptr;
  std::function<UniqueFd()> redial_;  // NetParavisorConfig::redial_fallback of new guests
  void frames_received_before_the_loss(bool zero_copy);
  std::vector<std::unique_ptr<NetGuest>> guests_;
};

TEST_F(NetParavisor, OffersVirtioNetFeaturesAndConfig) {
  NetGuest& a = guest(0, true, 9000);
  const std::uint64_t f = a.pv->device_features();
  for (unsigned b :
       {virtio::feature::kVersion1, vnet::kMac, vnet::kStatus, vnet::kMtu, vnet::kMrgRxbuf}) {
    EXPECT_NE(f & (1ull << b), 0u) << "feature " << b;
  }
  EXPECT_EQ(a.pv->num_queues(), 2u);
  const auto bytes = a.pv->config_bytes();
  ASSERT_EQ(bytes.size(), sizeof(vnet::Config));
  vnet::Config c;
  std::memcpy(&c, bytes.data(), sizeof c);
  EXPECT_EQ(std::memcmp(c.mac, mac_of(0).data(), 6), 0);
  EXPECT_EQ(c.status, vnet::kStatusLinkUp);
  EXPECT_EQ(c.mtu, 9000u);
  EXPECT_EQ(a.pv->state(), vmm::PathState::active);
  EXPECT_FALSE(a.pv->set_features(1ull << vnet::kCsum).ok());
  // HELLO went to the switch first.
  auto recs = port_records(a);
  ASSERT_FALSE(recs.empty());
  EXPECT_EQ(recs[0][0], static_cast<std::uint8_t>(fp::RecordType::hello));
}

TEST_F(NetParavisor, GuestsTalkThroughTheirVfs) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1);
  for (int i = 0; i < 100; ++i) {
    const auto ab = frame(mac_of(1), mac_of(0), 60 + i * 13, static_cast<std::uint8_t>(i));
    a.send(ab, i % 2 == 0);
    std::optional<std::vector<std::uint8_t>> got;
    ASSERT_TRUE(run_until([&] { return (got = b.received()).has_value(); })) << "frame " << i;
    EXPECT_EQ(*got, ab) << "frame " << i;
    const auto ba = frame(mac_of(0), mac_of(1), 100, static_cast<std::uint8_t>(i + 1));
    b.send(ba);
    ASSERT_TRUE(run_until([&] { return (got = a.received()).has_value(); })) << "frame " << i;
    EXPECT_EQ(*got, ba);
  }
  ASSERT_TRUE(run_until([&] { return a.tx_done() + b.tx_done() > 0 || true; }));
  const vmm::NetCounters ca = a.pv->net_counters();
  EXPECT_EQ(ca.tx_vf, 100u);
  EXPECT_EQ(ca.rx_vf, 100u);
  // MRG_RXBUF: the card wrote every frame straight into the guest's buffers.
  EXPECT_EQ(ca.rx_zero_copy, 100u);
  EXPECT_EQ(ca.rx_moved, 0u);
  EXPECT_EQ(ca.tx_fallback + ca.rx_fallback, 0u);
  // The card moved them: its counters agree.
  EXPECT_EQ(nic_->pf().read64(nv::at(0, nv::TX_FRAMES)), 100u);
  EXPECT_EQ(nic_->pf().read64(nv::at(1, nv::RX_FRAMES)), 100u);
}

TEST_F(NetParavisor, MultiqueueSpreadsFlowsOverQueuePairs) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1, true, 1500, 2);
  EXPECT_NE(b.pv->device_features() & (1ull << vnet::kMq), 0u);
  ASSERT_EQ(b.pv->num_queues(), 4u);
  vnet::Config c;
  const auto cfg = b.pv->config_bytes();
  std::memcpy(&c, cfg.data(), sizeof c);
  EXPECT_EQ(c.max_virtqueue_pairs, 2u);
  // B's second pair: its rings and RX buffers elsewhere in its memory.
  auto translate = [m = b.mem.get()](std::uint64_t gpa, std::uint64_t len) {
    return m->translate(gpa, len);
  };
  vmm::SplitRingDriver rx1(translate, {NetGuest::kQueue, 0x8000, 0x9000, 0xA000});
  vmm::SplitRingDriver tx1(translate, {NetGuest::kQueue, 0xC000, 0xD000, 0xE000});
  ASSERT_TRUE(b.pv->set_queue(2, b.layout(rx1)).ok());
  ASSERT_TRUE(b.pv->set_queue(3, b.layout(tx1)).ok());
  auto rx1_buf = [](std::uint16_t slot) { return 0x300000 + std::uint64_t{slot} * 2048; };
  for (int i = 0; i < 32; ++i) {
    vmm::SplitRingDriver::Piece p{rx1_buf(rx1.next_free()), 2048, true};
    ASSERT_TRUE(rx1.publish(std::span(&p, 1)).ok());
  }
  // 32 flows (IPv4 UDP, source address varies): each lands whole on one of B's pairs.
  std::vector<std::vector<std::uint8_t>> sent, got;
  unsigned on_second = 0;
  for (unsigned flow = 0; flow < 32; ++flow) {
    auto f = frame(mac_of(1), mac_of(0), 40);
    f[14] = 0x45;
    f[23] = 17;
    f[29] = static_cast<std::uint8_t>(flow);
    sent.push_back(f);
    a.send(f);
  }
  ASSERT_TRUE(run_until([&] {
    while (auto f = b.received()) got.push_back(*f);
    while (auto u = rx1.pop_used()) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(
          b.mem->translate(rx1_buf(static_cast<std::uint16_t>(u->id)), u->len));
      got.emplace_back(p + sizeof(vnet::Hdr), p + u->len);
      ++on_second;
    }
    return got.size() == sent.size();
  }));
  std::sort(sent.begin(), sent.end());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, sent);
  EXPECT_GT(on_second, 0u);
  EXPECT_LT(on_second, 32u);
  // B sends on its second transmitq.
  const auto back = frame(mac_of(0), mac_of(1), 99, 5);
  std::memcpy(b.mem->translate(0x3F0000, 12 + back.size()) + 12, back.data(), back.size());
  std::memset(b.mem->translate(0x3F0000, 12), 0, 12);
  vmm::SplitRingDriver::Piece t{0x3F0000, static_cast<std::uint32_t>(12 + back.size()), false};
  ASSERT_TRUE(tx1.publish(std::span(&t, 1)).ok());
  std::optional<std::vector<std::uint8_t>> r;
  ASSERT_TRUE(run_until([&] { return (r = a.received()).has_value(); }));
  EXPECT_EQ(*r, back);
}

TEST_F(NetParavisor, JumboFramesSpanMergedRxBuffers) {
  NetGuest& a = guest(0, true, 9000);
  NetGuest& b = guest(1, true, 9000);
  const auto big = frame(mac_of(1), mac_of(0), 9000 + 4, 7);
  a.send(big, true);
  std::optional<std::vector<std::uint8_t>> got;
  std::uint16_t buffers = 0;
  ASSERT_TRUE(run_until([&] { return (got = b.received(&buffers)).has_value(); }));
  EXPECT_EQ(*got, big);
  // Zero-copy receive: the card fills each buffer from offset 12, so the later buffers' bytes
  // move to their start (no header there); one buffer more than a copy would take.
  EXPECT_EQ(buffers, (big.size() + NetGuest::kRxBuf - 12 - 1) / (NetGuest::kRxBuf - 12));
  EXPECT_EQ(b.pv->net_counters().rx_zero_copy, 1u);
  EXPECT_EQ(b.pv->net_counters().rx_moved, 1u);
  // Copied (rx_zero_copy off): the buffers are filled to the brim.
  NetGuest& c = guest(2, true, 9000, 1, /*rx_zero_copy=*/false);
  const auto to_c = frame(mac_of(2), mac_of(0), 9000 + 4, 8);
  a.send(to_c, true);
  ASSERT_TRUE(run_until([&] { return (got = c.received(&buffers)).has_value(); }));
  EXPECT_EQ(*got, to_c);
  EXPECT_EQ(buffers, (12 + to_c.size() + NetGuest::kRxBuf - 1) / NetGuest::kRxBuf);
  EXPECT_EQ(c.pv->net_counters().rx_zero_copy, 0u);
  EXPECT_EQ(c.pv->net_counters().rx_vf, 1u);
}

TEST_F(NetParavisor, WithoutMergedRxBuffersFramesAreCopied) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1, true, 1500, 1, true, kFeatures & ~(1ull << vnet::kMrgRxbuf));
  for (int i = 0; i < 40; ++i) {
    const auto f = frame(mac_of(1), mac_of(0), 1400, static_cast<std::uint8_t>(i));
    a.send(f);
    std::optional<std::vector<std::uint8_t>> got;
    ASSERT_TRUE(run_until([&] { return (got = b.received()).has_value(); })) << "frame " << i;
    EXPECT_EQ(*got, f);
  }
  EXPECT_EQ(b.pv->net_counters().rx_vf, 40u);
  EXPECT_EQ(b.pv->net_counters().rx_zero_copy, 0u);
}

TEST_F(NetParavisor, StopHandsBackRxBuffersOnTheVf) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1);
  ASSERT_TRUE(run_until([] { return false; }, 5) || true);
  // B's 32 buffers are on its VF's RX ring. A stop (the front end pausing the device) takes
  // them back from the card: the avail ring gets them all again, none used.
  b.pv->stop();
  EXPECT_EQ(b.pv->last_avail(0), 0u);
  EXPECT_FALSE(b.rx->pop_used().has_value());
  const auto lost = frame(mac_of(1), mac_of(0), 100, 1);
  a.send(lost);
  // Only A runs (B is stopped).
  for (int i = 0; i < 500 && nic_->pf().read64(nv::at(1, nv::DROP_QUEUE_OFF)) == 0; ++i) {
    a.pv->run_once();
    card_->step(1);
  }
  EXPECT_EQ(nic_->pf().read64(nv::at(1, nv::DROP_QUEUE_OFF)), 1u)
      << "the card took a frame into a stopped queue";
  EXPECT_FALSE(b.rx->pop_used().has_value());
  // Running again, the queue pair is rebuilt and the same buffers take frames in place.
  const auto f = frame(mac_of(1), mac_of(0), 100, 2);
  a.send(f);
  std::optional<std::vector<std::uint8_t>> got;
  ASSERT_TRUE(run_until([&] { return (got = b.received()).has_value(); }));
  EXPECT_EQ(*got, f);
  EXPECT_EQ(b.pv->net_counters().rx_zero_copy, 1u);
  EXPECT_EQ(b.pv->state(), vmm::PathState::active);
}

TEST_F(NetParavisor, BroadcastReachesEveryOtherGuest) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1);
  NetGuest& c = guest(2);
  const auto bc = frame(knic::kBroadcast, mac_of(0), 42);
  a.send(bc);
  std::optional<std::vector<std::uint8_t>> gb, gc;
  ASSERT_TRUE(run_until([&] {
    if (!gb) gb = b.received();
    if (!gc) gc = c.received();
    return gb.has_value() && gc.has_value();
  }));
  EXPECT_EQ(*gb, bc);
  EXPECT_EQ(*gc, bc);
  EXPECT_FALSE(a.received().has_value());
}

TEST_F(NetParavisor, FailoverToTheSwitchAndBack) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1);
  (void)port_records(a);
  ASSERT_TRUE(nic_->surprise_remove(0).ok());
  // A receiving guest notices too (health check); its frames now go to the port.
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::fallback; }));
  auto recs = port_records(a);
  ASSERT_FALSE(recs.empty());
  EXPECT_EQ(recs[0][0], static_cast<std::uint8_t>(fp::RecordType::state));
  EXPECT_EQ(recs[0][4], 1);  // on_fallback
  const auto ab = frame(mac_of(1), mac_of(0), 300, 1);
  a.send(ab);
  ASSERT_TRUE(run_until([&] {
    recs = port_records(a);
    return !recs.empty();
  }));
  ASSERT_EQ(recs[0][0], static_cast<std::uint8_t>(fp::RecordType::frame));
  EXPECT_EQ(std::vector<std::uint8_t>(recs[0].begin() + 4, recs[0].end()), ab);
  // The switch delivers frames for the guest on the port.
  const auto ba = frame(mac_of(0), mac_of(1), 200, 2);
  std::vector<std::uint8_t> rec(4 + ba.size());
  rec[0] = static_cast<std::uint8_t>(fp::RecordType::frame);
  std::memcpy(rec.data() + 4, ba.data(), ba.size());
  ASSERT_EQ(::send(a.port.get(), rec.data(), rec.size(), 0), static_cast<ssize_t>(rec.size()));
  std::optional<std::vector<std::uint8_t>> got;
  ASSERT_TRUE(run_until([&] { return (got = a.received()).has_value(); }));
  EXPECT_EQ(*got, ba);  // in a buffer that was on the VF's ring: taken back at the loss
  EXPECT_EQ(a.pv->net_counters().rx_fallback, 1u);
  // The VF comes back: STATE on_fallback 0, and traffic is on the VF again.
  ASSERT_TRUE(nic_->restore(0).ok());
  a.pv->vf_arrived();
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::active; }));
  recs = port_records(a);
  ASSERT_FALSE(recs.empty());
  EXPECT_EQ(recs.back()[0], static_cast<std::uint8_t>(fp::RecordType::state));
  EXPECT_EQ(recs.back()[4], 0);
  const auto again = frame(mac_of(1), mac_of(0), 500, 3);
  a.send(again);
  ASSERT_TRUE(run_until([&] { return (got = b.received()).has_value(); }));
  EXPECT_EQ(*got, again);
  // And A receives in place again.
  const auto back = frame(mac_of(0), mac_of(1), 600, 4);
  b.send(back);
  ASSERT_TRUE(run_until([&] { return (got = a.received()).has_value(); }));
  EXPECT_EQ(*got, back);
  EXPECT_EQ(a.pv->net_counters().rx_zero_copy, 1u);
  const vmm::ParavisorCounters pc = a.pv->counters();
  EXPECT_EQ(pc.to_fallback, 1u);
  EXPECT_EQ(pc.to_vf, 1u);
}

TEST_F(NetParavisor, FramesOnTheVfRingAtALossAreResent) {
  NetGuest& a = guest(0);
  guest(1);
  (void)port_records(a);
  // Frames posted and handed to the VF, but the card never runs before the VF goes.
  for (int i = 0; i < 5; ++i)
    a.send(frame(mac_of(1), mac_of(0), 100, static_cast<std::uint8_t>(i)));
  a.pv->run_once();
  ASSERT_TRUE(nic_->surprise_remove(0).ok());
  a.pv->vf_removed("host announced removal");
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::fallback; }));
  unsigned frames = 0;
  for (const auto& r : port_records(a))
    frames += r[0] == static_cast<std::uint8_t>(fp::RecordType::frame);
  EXPECT_EQ(frames, 5u);
  EXPECT_EQ(a.pv->net_counters().tx_resent, 5u);
  EXPECT_EQ(a.tx_done(), 5u);
}

TEST_F(NetParavisor, AnnouncedRemovalWaitsUntilTheVfHasGone) {
  NetGuest& a = guest(0);
  guest(1);
  // The host announces the removal before doing it: the guest moves to the fallback and stays
  // there while the VF still answers (probes every 50 us of card time).
  a.pv->vf_removed("host announced removal");
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::fallback; }));
  EXPECT_FALSE(run_until([&] { return a.pv->state() != vmm::PathState::fallback; }, 500))
      << "a VF announced as leaving was taken back";
  // Removed, then restored: a real return, taken without a host notice.
  ASSERT_TRUE(nic_->surprise_remove(0).ok());
  ASSERT_FALSE(run_until([&] { return a.pv->state() != vmm::PathState::fallback; }, 50));
  ASSERT_TRUE(nic_->restore(0).ok());
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::active; }));
  // Announced and then called off (vf_arrived): back at once.
  a.pv->vf_removed("host announced removal");
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::fallback; }));
  a.pv->vf_arrived();
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::active; }));
}

TEST_F(NetParavisor, FallbackPortIsDialledAgainAfterTheSwitchCloses) {
  bool switch_up = false;
  UniqueFd new_end;  // the test's end of the port dialled again
  unsigned dials = 0;
  redial_ = [&]() -> UniqueFd {
    ++dials;
    if (!switch_up) return {};
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return {};
    new_end = UniqueFd(sv[1]);
    return UniqueFd(sv[0]);
  };
  NetGuest& a = guest(0);
  guest(1);
  (void)port_records(a);
  EXPECT_EQ(dials, 0u);
  // The switch goes away (keel-hostd restarts): the port reads end-of-file.
  a.port.reset();
  ASSERT_TRUE(run_until([&] { return dials > 0; }, 5000)) << "the closed port was not noticed";
  // Dialled every probe interval until the switch answers; then HELLO and STATE (on the VF).
  switch_up = true;
  ASSERT_TRUE(run_until([&] { return new_end.valid(); }));
  a.port = std::move(new_end);
  std::vector<std::vector<std::uint8_t>> recs;
  ASSERT_TRUE(run_until([&] { return (recs = port_records(a)).size() >= 2; }));
  EXPECT_EQ(recs[0][0], static_cast<std::uint8_t>(fp::RecordType::hello));
  EXPECT_EQ(std::memcmp(recs[0].data() + 4, mac_of(0).data(), 6), 0);
  EXPECT_EQ(recs[1][0], static_cast<std::uint8_t>(fp::RecordType::state));
  EXPECT_EQ(recs[1][4], 0);  // on the VF
  // The new port carries the guest's traffic when the VF goes.
  ASSERT_TRUE(nic_->surprise_remove(0).ok());
  ASSERT_TRUE(run_until([&] { return a.pv->state() == vmm::PathState::fallback; }));
  const auto f = frame(mac_of(1), mac_of(0), 120, 9);
  a.send(f);
  std::vector<std::uint8_t> got;
  ASSERT_TRUE(run_until([&] {
    for (auto& r : port_records(a)) {
      if (r[0] == static_cast<std::uint8_t>(fp::RecordType::frame))
        got.assign(r.begin() + 4, r.end());
    }
    return !got.empty();
  }));
  EXPECT_EQ(got, f);
}

// Frames the card put in B's buffers (only A and the card run) before B's VF went are delivered
// after the failover, in place or copied.
void NetParavisor::frames_received_before_the_loss(bool zero_copy) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1, true, 1500, 1, zero_copy);
  run_until([] { return false; }, 20);  // B's buffers on its VF
  std::vector<std::vector<std::uint8_t>> sent;
  for (int i = 0; i < 3; ++i) {
    sent.push_back(frame(mac_of(1), mac_of(0), 200, static_cast<std::uint8_t>(40 + i)));
    a.send(sent.back());
  }
  for (int i = 0; i < 500 && nic_->pf().read64(nv::at(1, nv::RX_FRAMES)) < 3; ++i) {
    a.pv->run_once();
    card_->step(1);
  }
  ASSERT_EQ(nic_->pf().read64(nv::at(1, nv::RX_FRAMES)), 3u);
  EXPECT_FALSE(b.rx->pop_used().has_value());
  ASSERT_TRUE(nic_->surprise_remove(1).ok());
  std::vector<std::vector<std::uint8_t>> got;
  ASSERT_TRUE(run_until([&] {
    while (auto f = b.received()) got.push_back(*f);
    return got.size() == 3 && b.pv->state() == vmm::PathState::fallback;
  })) << got.size()
      << " frames";
  EXPECT_EQ(got, sent);
}

TEST_F(NetParavisor, FramesInGuestBuffersAtALossAreDelivered) {
  frames_received_before_the_loss(true);
}

TEST_F(NetParavisor, FramesInDriverBuffersAtALossAreDelivered) {
  frames_received_before_the_loss(false);
}

TEST_F(NetParavisor, GuestWithoutVfUsesTheSwitch) {
  NetGuest& a = guest(0, /*with_vf=*/false);
  EXPECT_EQ(a.pv->state(), vmm::PathState::absent);
  auto recs = port_records(a);
  ASSERT_EQ(recs.size(), 2u);  // HELLO, STATE on_fallback 1
  EXPECT_EQ(recs[1][4], 1);
  a.send(frame(mac_of(1), mac_of(0), 64));
  ASSERT_TRUE(run_until([&] { return !(recs = port_records(a)).empty(); }));
  EXPECT_EQ(a.pv->net_counters().tx_fallback, 1u);
}

TEST_F(NetParavisor, MalformedChainsAreDroppedAndCounted) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1);
  const auto ok = frame(mac_of(1), mac_of(0), 64);
  vnet::Hdr gso{};
  gso.gso_type = 1;  // TSO: not offered
  a.send(ok, false, gso);
  vnet::Hdr csum{};
  csum.flags = vnet::kHdrNeedsCsum;  // not offered
  a.send(ok, false, csum);
  // Too short for a header and an Ethernet header.
  vmm::SplitRingDriver::Piece tiny{0x100000, 8, false};
  ASSERT_TRUE(a.tx->publish(std::span(&tiny, 1)).ok());
  // A device-writable buffer in a TX chain.
  vmm::SplitRingDriver::Piece w{0x100000, 100, true};
  ASSERT_TRUE(a.tx->publish(std::span(&w, 1)).ok());
  // Larger than the MTU allows.
  a.send(frame(mac_of(1), mac_of(0), 1600));
  ASSERT_TRUE(run_until([&] { return a.pv->net_counters().tx_bad == 5; }));
  EXPECT_EQ(a.tx_done(), 5u);  // every chain given back
  EXPECT_FALSE(a.pv->needs_reset());
  // The queue still works.
  a.send(ok);
  std::optional<std::vector<std::uint8_t>> got;
  ASSERT_TRUE(run_until([&] { return (got = b.received()).has_value(); }));
  EXPECT_EQ(*got, ok);
  // A descriptor loop breaks the ring: DEVICE_NEEDS_RESET, nothing else.
  virtio::Desc loop[2] = {{0x100000, 64, virtio::kDescNext, 61},
                          {0x100000, 64, virtio::kDescNext, 60}};
  a.tx->write_raw(loop, 60);
  a.tx->publish_head(60);
  ASSERT_TRUE(run_until([&] { return a.pv->needs_reset(); }));
  // A spoofed source leaves the paravisor (it is the card's to refuse) and is counted there.
  b.send(frame(mac_of(0), mac_of(2), 64));
  ASSERT_TRUE(run_until([&] { return nic_->pf().read64(nv::at(1, nv::DROP_SPOOF)) == 1; }));
}

TEST_F(NetParavisor, ZeroCopyReceiveDropsWhatFindsNoGuestBuffer) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1);
  // B's 32 buffers are on the VF's ring; 16 frames more find none: the card drops them and
  // counts why, as a NIC does when its driver falls behind (the guest's TCP retransmits).
  std::vector<std::vector<std::uint8_t>> sent = burst(a, mac_of(1), 48);
  EXPECT_EQ(nic_->pf().read64(nv::at(1, nv::DROP_RX_NO_BUF)), 16u);
  std::vector<std::vector<std::uint8_t>> got;
  while (auto f = b.received()) got.push_back(*f);
  sent.resize(32);
  EXPECT_EQ(got, sent);
  // Buffers posted again (received() does): frames flow.
  const auto more = frame(mac_of(1), mac_of(0), 80, 99);
  a.send(more);
  std::optional<std::vector<std::uint8_t>> next;
  ASSERT_TRUE(run_until([&] { return (next = b.received()).has_value(); }));
  EXPECT_EQ(*next, more);
  EXPECT_EQ(b.pv->net_counters().rx_zero_copy, 33u);
}

TEST_F(NetParavisor, CopiedFramesWaitForRxBuffers) {
  NetGuest& a = guest(0);
  NetGuest& b = guest(1, true, 1500, 1, /*rx_zero_copy=*/false);
  // Copy mode: B's 32 buffers, then 16 frames more: held until B posts buffers, none lost.
  std::vector<std::vector<std::uint8_t>> sent = burst(a, mac_of(1), 48);
  std::vector<std::vector<std::uint8_t>> got;
  ASSERT_TRUE(run_until([&] {
    while (auto f = b.received()) got.push_back(*f);  // reposts, so the rest can come
    return got.size() == sent.size();
  }));
  EXPECT_EQ(got, sent);
  EXPECT_EQ(b.pv->net_counters().rx_dropped, 0u);
}

}  // namespace
}  // namespace keel::testing
