// The NIC's differential test: one seeded random stream of NIC operations - good frames between
// VFs (one or more descriptors), broadcast and multicast, unknown unicast (to the uplink), spoofed
// sources, oversize and runt frames, zero-length and over-long descriptor chains, buffers outside
// the DMA windows, and frames coming in from the uplink - driven into the reference model's NIC
// and the Verilated RTL's (keel_nic). Every TX completion, every RX completion and the bytes it
// delivered, every frame out of the uplink and every counter (per VF and uplink) must be equal.
//
// What the comparison leaves out: interrupts (the model signals once per service pass, the RTL
// once per scan round) and the rate limiter (card time runs differently on the two cards; the
// card suite checks it on each).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/card.h"
#include "keel/fpga/nic.h"
#include "keel/unique_fd.h"
#include "nic_rings.h"

namespace keel::testing {
namespace {

namespace np = regs::nicpf;
namespace nv = regs::nicvfcfg;
namespace nr = regs::nic;

constexpr unsigned kVfs = 3;
constexpr unsigned kOps = 300;
const knic::Mac kOutside{0x02, 0xAA, 0, 0, 0, 9};

knic::Mac mac_of(unsigned vf) {
  return {0x02, 0x00, 0x00, 0x00, 0x20, static_cast<std::uint8_t>(vf)};
}

struct Side {
  std::string name;
  std::unique_ptr<fpga::Card> card;
  fpga::NicCard* nic = nullptr;
  std::vector<std::unique_ptr<NicRings>> rings;
  UniqueFd peer;  // the far end of the uplink
};

void make_side(Side& s, const std::string& backend) {
  s.name = backend;
  fpga::CardOptions o;
  o.storage_bytes = 8ull << 20;
  o.max_vfs = 4;
  o.max_ioq_per_vf = 2;
  o.lockstep = true;
  auto card = fpga::open_card(backend, o);
  ASSERT_TRUE(card.ok()) << backend << ": " << to_string(card.error());
  s.card = std::move(card).value();
  s.nic = s.card->nic();
  ASSERT_NE(s.nic, nullptr) << backend;
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
  s.peer = UniqueFd(sv[1]);
  ASSERT_TRUE(s.nic->attach_uplink(UniqueFd(sv[0])).ok());
  ASSERT_TRUE(s.nic->set_num_vfs(kVfs).ok());
  fpga::Function& pf = s.nic->pf();
  for (unsigned v = 0; v < kVfs; ++v) {
    pf.write32(nv::at(v, nv::MAC_LO), knic::mac_lo(mac_of(v)));
    pf.write32(nv::at(v, nv::MAC_HI), knic::mac_hi(mac_of(v)));
    pf.write32(nv::at(v, nv::CTRL), nv::CTRL_ENABLE_MASK);
    ASSERT_EQ(pf.read32(nv::at(v, nv::STATUS)) & nv::STATUS_ENABLED_MASK, nv::STATUS_ENABLED_MASK);
    fpga::Function& vf = **s.nic->vf(v);
    s.rings.push_back(std::make_unique<NicRings>(vf, *s.card, 0, 6, 4));
    s.rings.back()->start();
    vf.write32(nr::MTU, v == 2 ? 1500 : 9000);  // VF 2 keeps a small MTU
  }
}

/// What one operation produced on one side, flattened for comparison.
struct Outcome {
  std::vector<knic::Cqe> tx;
  std::vector<std::vector<knic::Cqe>> rx_cqes;
  std::vector<std::vector<std::uint8_t>> rx_bytes;
  std::vector<std::vector<std::uint8_t>> uplink;
};

std::string describe(const knic::Cqe& c) {
  return "len " + std::to_string(c.len) + " frame " + std::to_string(c.frame) + " index " +
         std::to_string(c.index) + " status " + std::to_string(c.status) + " flags " +
         std::to_string(c.flags);
}

void expect_same(const knic::Cqe& a, const knic::Cqe& b, const std::string& what) {
  EXPECT_TRUE(a.len == b.len && a.frame == b.frame && a.index == b.index && a.status == b.status &&
              a.flags == b.flags)
      << what << ": model " << describe(a) << ", sim " << describe(b);
}

/// One random operation, the same on both sides (the generator is copied per side).
struct Op {
  enum Kind {
    unicast,
    flood,
    unknown,
    spoof,
    oversize,
    runt,
    zero,
    long_chain,
    dma_fault,
    inbound
  };
  Kind kind;
  unsigned from, to;
  std::size_t payload;
  std::size_t split;
  std::uint8_t seed;
  bool multicast;
};

Op random_op(std::mt19937_64& rng) {
  Op op{};
  const unsigned r = static_cast<unsigned>(rng() % 100);
  op.kind = r < 35   ? Op::unicast
            : r < 45 ? Op::flood
            : r < 53 ? Op::unknown
            : r < 60 ? Op::spoof
            : r < 67 ? Op::oversize
            : r < 72 ? Op::runt
            : r < 77 ? Op::zero
            : r < 80 ? Op::long_chain
            : r < 86 ? Op::dma_fault
                     : Op::inbound;
  op.from = static_cast<unsigned>(rng() % kVfs);
  op.to = static_cast<unsigned>(rng() % kVfs);
  op.payload = rng() % 4 == 0 ? 1400 + rng() % 3000 : rng() % 1500;
  op.split = rng() % 3 == 0 ? 1 + rng() % 700 : 0;
  if (op.split != 0) op.split = std::max(op.split, (op.payload + 14) / 40 + 1);  // <= 40 descs
  op.seed = static_cast<std::uint8_t>(rng());
  op.multicast = rng() % 2 == 0;
  return op;
}

Outcome run_op(Side& s, const Op& op) {
  Outcome out;
  NicRings& t = *s.rings[op.from];
  unsigned descs = 0;
  switch (op.kind) {
    case Op::unicast:
      descs = t.send(make_frame(mac_of(op.to), mac_of(op.from), op.payload, op.seed), op.split);
      break;
    case Op::flood: {
      const knic::Mac dst = op.multicast ? knic::Mac{0x33, 0x33, 0, 0, 0, 1} : knic::kBroadcast;
      descs = t.send(make_frame(dst, mac_of(op.from), op.payload, op.seed), op.split);
      break;
    }
    case Op::unknown:
      descs = t.send(make_frame(kOutside, mac_of(op.from), op.payload, op.seed), op.split);
      break;
    case Op::spoof:
      descs = t.send(make_frame(mac_of(op.to), {0x02, 0, 0, 0, 0x66, 0x66}, op.payload, op.seed));
      break;
    case Op::oversize:
      descs = t.send(make_frame(mac_of(op.to), mac_of(op.from), 9000 + 5 + op.payload % 8));
      break;
    case Op::runt: descs = t.send(std::vector<std::uint8_t>(1 + op.payload % 13, 0xEE)); break;
    case Op::zero:
      t.queue_desc({t.tx_buffer_iova(0), 0, 0, 0});
      t.tx_doorbell();
      descs = 1;
      break;
    case Op::long_chain:
      descs = t.send(make_frame(mac_of(op.to), mac_of(op.from), 40 * 20), 20);
      break;
    case Op::dma_fault:
      t.queue_desc({0x7000'0000'0000ull, static_cast<std::uint16_t>(14 + op.payload), 0, 0});
      t.tx_doorbell();
      descs = 1;
      break;
    case Op::inbound: {
      const knic::Mac dst = op.payload % 3 == 0 ? knic::Mac{0x02, 0xBB, 0, 0, 0, 1} : mac_of(op.to);
      const auto f = make_frame(dst, kOutside, op.payload, op.seed);
      const std::uint64_t before = s.nic->pf().read64(np::UPLINK_RX_FRAMES);
      EXPECT_EQ(::send(s.peer.get(), f.data(), f.size(), 0), static_cast<ssize_t>(f.size()));
      for (unsigned i = 0; i < 100000 && s.nic->pf().read64(np::UPLINK_RX_FRAMES) == before; ++i) {
        s.card->advance();
      }
      for (int i = 0; i < 20; ++i) s.card->advance();
      break;
    }
  }
  for (unsigned i = 0; i < descs; ++i) {
    auto c = t.tx_cqe(20000);
    EXPECT_TRUE(c.has_value()) << s.name << ": TX completion " << i << " of " << descs;
    if (!c) break;
    out.tx.push_back(*c);
  }
  for (unsigned v = 0; v < kVfs; ++v) {
    while (auto f = s.rings[v]->receive(v == 0 ? 4 : 0)) {
      out.rx_cqes.push_back(f->cqes);
      out.rx_bytes.push_back(f->bytes);
    }
  }
  std::vector<std::uint8_t> buf(65536);
  for (;;) {
    const ssize_t n = ::recv(s.peer.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) break;
    out.uplink.emplace_back(buf.begin(), buf.begin() + n);
  }
  return out;
}

class NicDifferential : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(NicDifferential, RandomFrameStreamMatchesTheModel) {
  Side m, s;
  make_side(m, "model");
  make_side(s, "sim");
  ASSERT_FALSE(HasFatalFailure());
  std::mt19937_64 rng(GetParam());
  for (unsigned i = 0; i < kOps; ++i) {
    const Op op = random_op(rng);
    const std::string what = "op " + std::to_string(i) + " (kind " + std::to_string(op.kind) +
                             ", VF " + std::to_string(op.from) + ")";
    const Outcome a = run_op(m, op);
    const Outcome b = run_op(s, op);
    ASSERT_EQ(a.tx.size(), b.tx.size()) << what;
    for (std::size_t k = 0; k < a.tx.size(); ++k) expect_same(a.tx[k], b.tx[k], what + " TX");
    ASSERT_EQ(a.rx_cqes.size(), b.rx_cqes.size()) << what << ": RX frames";
    for (std::size_t k = 0; k < a.rx_cqes.size(); ++k) {
      ASSERT_EQ(a.rx_cqes[k].size(), b.rx_cqes[k].size()) << what << ": RX buffers";
      for (std::size_t j = 0; j < a.rx_cqes[k].size(); ++j) {
        expect_same(a.rx_cqes[k][j], b.rx_cqes[k][j], what + " RX");
      }
      EXPECT_EQ(a.rx_bytes[k], b.rx_bytes[k]) << what << ": RX bytes";
    }
    EXPECT_EQ(a.uplink, b.uplink) << what << ": frames out of the uplink";
    if (HasFailure()) break;
  }
  for (unsigned v = 0; v < kVfs; ++v) {
    for (std::uint64_t reg = nv::TX_FRAMES; reg <= nv::DROP_NO_ROUTE; reg += 8) {
      EXPECT_EQ(m.nic->pf().read64(nv::at(v, reg)), s.nic->pf().read64(nv::at(v, reg)))
          << "VF " << v << " counter at 0x" << std::hex << reg;
    }
  }
  for (std::uint64_t reg = np::UPLINK_TX_FRAMES; reg <= np::UPLINK_TX_DROPS; reg += 8) {
    EXPECT_EQ(m.nic->pf().read64(reg), s.nic->pf().read64(reg))
        << "uplink counter at 0x" << std::hex << reg;
  }
  EXPECT_GT(s.nic->pf().read64(nv::at(1, nv::RX_FRAMES)), 0u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, NicDifferential, ::testing::Values(20261207u, 1u, 77u));

}  // namespace
}  // namespace keel::testing
