// libFuzzer target: the virtio-net paravisor (NetParavisor, net_worker.cpp) serving a guest that
// posts garbage. The input is a few configuration bytes and a script of commands a hostile guest
// and a hostile switch run between rounds of the device (run_once, one lockstep card step):
// descriptors written anywhere in its tables (loops, indirect, out-of-range next, writable TX
// buffers, readable RX buffers, buffers partly or wholly outside guest memory, huge lengths),
// avail entries and avail indices of any value, buffer bytes and frame templates (virtio-net
// headers with GSO types and checksum flags, Ethernet headers for the peers, broadcast, any
// MAC), records of any type and length arriving on the fallback port (the test holds the
// switch's end of the SEQPACKET pair), the VF surprise-removed, announced removed and restored.
// The fuzzed guest's paravisor sits on NIC VF 0 of the model card or on the fallback only
// (configuration bit). Two well-behaved guests on VFs 1 and 2 run beside it throughout.
//
// Invariants checked (a violation traps):
// - every used entry names a head below the queue size that the device took from the avail ring,
//   and no head is used more often than it was taken (unless a device-writable RX buffer covers
//   the rings, or the ring wrapped within one round: then the rings prove nothing);
// - TX used lengths are 0; RX used lengths never exceed the chain's capacity;
// - after stop(), every chain taken has been given back (used idx == last_avail) unless the
//   device asked for a reset;
// - TX counters add up: every TX chain given back is exactly one of tx_vf, tx_fallback, tx_bad,
//   tx_dropped (while no failover happened);
// - every record on the fallback port is a well-formed HELLO, STATE or FRAME (frame 14..MTU+18
//   bytes), and the FRAME records are exactly tx_fallback + tx_resent;
// - the peers receive only well-formed frames (14..1518 bytes, for their MAC or a group
//   address, from a MAC of the card's guests), no more from the fuzzed guest than the card
//   counted on VF 0, which is no more than the paravisor sent on it; and after each input they
//   still exchange frames with each other, unaltered, and never need a reset.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "fuzz_input.h"
#include "keel/fpga/model/model_card.h"
#include "keel/fpga/nic.h"
#include "keel/log.h"
#include "keel/vmm/net_paravisor.h"
#include "keel/vmm/split_ring_driver.h"
#include "keel/wire/fallback_port.h"

namespace {

using namespace keel;
using namespace keel::vmm;
using keel::fuzz::FuzzInput;
namespace vnet = virtio::net;
namespace nv = regs::nicvfcfg;
namespace fp = fallback_port;

#define CHECK(c)                                                                    \
  do {                                                                              \
    if (!(c)) {                                                                     \
      std::fprintf(stderr, "net_fuzz: check failed (line %d): %s\n", __LINE__, #c); \
      __builtin_trap();                                                             \
    }                                                                               \
  } while (0)

template <typename R>
auto must(R r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "net_fuzz: %s: %s\n", what, r.error().message.c_str());
    std::abort();
  }
  return std::move(r).value();
}

knic::Mac mac_of(unsigned i) { return {0x02, 0x4b, 0, 0, 0, static_cast<std::uint8_t>(i + 1)}; }

constexpr std::uint64_t kBaseFeatures = 1ull << virtio::feature::kVersion1 | 1ull << vnet::kMac |
                                        1ull << vnet::kStatus | 1ull << vnet::kMtu;
constexpr std::size_t kHdr = sizeof(vnet::Hdr);

// ---- the well-behaved guests (VFs 1 and 2), as Linux's virtio_net drives its rings ----

struct Peer {
  static constexpr std::uint16_t kQueue = 64;
  static constexpr std::uint32_t kRxBuf = 2048;
  unsigned index = 0;
  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<SplitRingDriver> rx, tx;
  std::unique_ptr<NetParavisor> pv;
  UniqueFd port;
  std::uint64_t next_tx = 0x100000;

  std::uint64_t rx_buf(std::uint16_t slot) const { return 0x200000 + std::uint64_t{slot} * kRxBuf; }
  void post_rx(unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
      const std::uint16_t slot = rx->next_free();
      SplitRingDriver::Piece p{rx_buf(slot), kRxBuf, true};
      if (!rx->publish(std::span(&p, 1)).ok()) std::abort();
    }
  }
  /// False: no free descriptor (the device has not given earlier frames back yet).
  bool send(std::span<const std::uint8_t> frame) {
    while (tx->pop_used()) {
    }
    if (tx->free_descriptors() == 0) return false;
    const std::uint64_t at = next_tx;
    next_tx = 0x100000 + ((next_tx - 0x100000 + 0x3000) % 0xC0000);
    const vnet::Hdr hdr{};
    std::memcpy(mem->translate(at, kHdr), &hdr, kHdr);
    std::memcpy(mem->translate(at + kHdr, frame.size()), frame.data(), frame.size());
    SplitRingDriver::Piece p{at, static_cast<std::uint32_t>(kHdr + frame.size()), false};
    CHECK(tx->publish(std::span(&p, 1)).ok());
    return true;
  }
  /// The next frame received (its buffer reposted), after checking what the device wrote.
  std::optional<std::vector<std::uint8_t>> received() {
    auto u = rx->pop_used();
    if (!u) return std::nullopt;
    CHECK(u->id < kQueue);
    CHECK(u->len >= kHdr + knic::kEthHeader && u->len <= kRxBuf);
    const auto* p = reinterpret_cast<const std::uint8_t*>(
        mem->translate(rx_buf(static_cast<std::uint16_t>(u->id)), u->len));
    vnet::Hdr hdr;
    std::memcpy(&hdr, p, kHdr);
    CHECK(hdr.num_buffers == 1 && hdr.gso_type == vnet::kGsoNone && hdr.flags == 0);
    post_rx(1);
    return std::vector<std::uint8_t>(p + kHdr, p + u->len);
  }
};

struct World {
  std::unique_ptr<fpga::model::ModelCard> card;
  fpga::NicCard* nic = nullptr;
  Peer peers[2];
  std::unique_ptr<GuestMemory> mem;  // the fuzzed guest's
};

constexpr std::uint64_t kMem = 2 << 20;  // the fuzzed guest's RAM, GPA 0..2 MiB
// Its rings lie in [0, kRings): receiveq at 0x0, transmitq at 0x4000; buffers above.
constexpr std::uint64_t kRings = 0x8000, kData = 0x8000;
constexpr std::uint64_t kDescAt[2] = {0x0, 0x4000}, kAvailAt[2] = {0x1000, 0x5000},
                        kUsedAt[2] = {0x2000, 0x6000};

World& world() {
  static World* w = [] {
    log::set_level(log::Level::error);
    auto* st = new World();
    fpga::model::ModelConfig mc;
    mc.card.lockstep = true;
    mc.card.max_vfs = 4;
    mc.card.storage_bytes = 1 << 20;
    st->card = must(fpga::model::ModelCard::create(mc), "model card");
    st->nic = st->card->nic();
    if (st->nic == nullptr || !st->nic->set_num_vfs(3).ok()) std::abort();
    for (unsigned i = 0; i < 3; ++i) {
      st->nic->pf().write32(nv::at(i, nv::MAC_LO), knic::mac_lo(mac_of(i)));
      st->nic->pf().write32(nv::at(i, nv::MAC_HI), knic::mac_hi(mac_of(i)));
      st->nic->pf().write32(nv::at(i, nv::CTRL), nv::CTRL_ENABLE_MASK);
    }
    for (unsigned i = 0; i < 2; ++i) {
      Peer& p = st->peers[i];
      p.index = i + 1;
      p.mem = must(GuestMemory::create(4 << 20), "peer memory");
      auto translate = [m = p.mem.get()](std::uint64_t gpa, std::uint64_t len) {
        return m->translate(gpa, len);
      };
      p.rx = std::make_unique<SplitRingDriver>(
          translate, SplitRingDriver::Layout{Peer::kQueue, 0x0, 0x1000, 0x2000});
      p.tx = std::make_unique<SplitRingDriver>(
          translate, SplitRingDriver::Layout{Peer::kQueue, 0x4000, 0x5000, 0x6000});
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
      p.port = UniqueFd(sv[1]);
      NetParavisorConfig cfg;
      cfg.mac = mac_of(p.index);
      cfg.threads = false;
      cfg.probe_interval = std::chrono::microseconds(50);
      cfg.health_interval = std::chrono::microseconds(20);
      p.pv = must(NetParavisor::create(*st->nic->vf(p.index), *st->card, *st->card, *p.mem,
                                       UniqueFd(sv[0]), cfg),
                  "peer paravisor");
      const std::uint64_t f =
          kBaseFeatures | 1ull << vnet::kMrgRxbuf | 1ull << virtio::feature::kRingEventIdx;
      if (!p.pv->set_features(f).ok()) std::abort();
      const auto lay = [](const SplitRingDriver& d) {
        return Virtqueue::Layout{d.layout().size, d.layout().desc, d.layout().avail,
                                 d.layout().used, nullptr};
      };
      if (!p.pv->set_queue(0, lay(*p.rx)).ok() || !p.pv->set_queue(1, lay(*p.tx)).ok()) {
        std::abort();
      }
      p.post_rx(32);
      if (p.pv->state() != PathState::active) std::abort();
    }
    st->mem = must(GuestMemory::create(kMem), "guest memory");
    return st;
  }();
  return *w;
}

std::vector<std::uint8_t> peer_frame(unsigned from, unsigned to, std::size_t payload,
                                     std::uint8_t seed) {
  std::vector<std::uint8_t> f(knic::kEthHeader + payload);
  std::memcpy(f.data(), mac_of(to).data(), 6);
  std::memcpy(f.data() + 6, mac_of(from).data(), 6);
  f[12] = 0x08;
  for (std::size_t i = 0; i < payload; ++i) f[14 + i] = static_cast<std::uint8_t>(seed + 7 * i);
  return f;
}

std::uint64_t card_counter(World& w, unsigned vf, std::uint64_t reg) {
  return w.nic->pf().read64(nv::at(vf, reg));
}

// ---- the fuzzed guest ----

struct Fuzzed {
  Fuzzed(World& world, GuestMemory& memory) : w(world), mem(memory) {}
  World& w;
  GuestMemory& mem;
  std::unique_ptr<NetParavisor> pv;
  UniqueFd port;  // the switch's end
  bool port_open = true;
  unsigned mtu = 1500;
  std::uint16_t size[2] = {};
  std::uint16_t avail_idx[2] = {};  // what the driver last published
  // Accounting of the rings.
  std::uint16_t seen_avail[2] = {}, seen_used[2] = {};
  std::vector<std::uint32_t> taken[2], used[2];
  std::vector<std::uint64_t> capacity[2];  // RX: largest capacity a taken chain had
  bool unverifiable[2] = {};
  bool clobbered = false;  // a device-writable RX buffer covers the rings
  std::uint64_t used_total[2] = {};
  // The fallback port, as the switch saw it.
  std::uint64_t port_frames = 0;
  // What the peers got from this guest.
  std::uint64_t peer_frames_from_us[2] = {};

  template <typename T>
  T load(std::uint64_t gpa) const {
    T v;
    std::memcpy(&v, mem.translate(gpa, sizeof v), sizeof v);
    return v;
  }
  template <typename T>
  void store(std::uint64_t gpa, const T& v) {
    std::memcpy(mem.translate(gpa, sizeof v), &v, sizeof v);
  }
  std::uint16_t ring16(std::uint64_t gpa) const {
    return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(mem.translate(gpa, 2)))
        .load(std::memory_order_acquire);
  }
  void set_avail_idx(unsigned q, std::uint16_t v) {
    avail_idx[q] = v;
    std::atomic_ref<std::uint16_t>(
        *reinterpret_cast<std::uint16_t*>(mem.translate(kAvailAt[q] + 2, 2)))
        .store(v, std::memory_order_release);
  }
  void publish(unsigned q, std::uint16_t head) {
    store<std::uint16_t>(kAvailAt[q] + 4 + 2u * (avail_idx[q] % size[q]), head);
    set_avail_idx(q, static_cast<std::uint16_t>(avail_idx[q] + 1));
  }

  /// The capacity of the chain at `head` as the device would walk it now; flags `clobbered`
  /// when one of its device-writable buffers reaches the rings.
  std::uint64_t chain_capacity(unsigned q, std::uint16_t head) {
    std::uint64_t cap = 0;
    std::uint16_t i = head;
    for (unsigned n = 0; n < size[q] && i < size[q]; ++n) {
      const auto d = load<virtio::Desc>(kDescAt[q] + 16u * i);
      cap += d.len;
      if ((d.flags & virtio::kDescWrite) != 0 && d.len > 0 && d.addr < kRings) clobbered = true;
      if ((d.flags & virtio::kDescNext) == 0) break;
      i = d.next;
    }
    return cap;
  }

  /// After a round: what the device took from the avail rings and what it used.
  void account() {
    for (unsigned q = 0; q < 2; ++q) {
      const std::uint16_t la = pv->last_avail(q);
      const auto ahead = static_cast<std::int16_t>(la - seen_avail[q]);
      if (ahead < 0) {
        seen_avail[q] = la;  // given back (unpop): taken again later, counted again then
      } else {
        for (std::uint16_t p = seen_avail[q]; p != la; ++p) {
          const auto h = load<std::uint16_t>(kAvailAt[q] + 4 + 2u * (p % size[q]));
          if (h >= size[q]) continue;  // refused by the device (bad index): never used
          ++taken[q][h];
          if (q == 0) capacity[q][h] = std::max(capacity[q][h], chain_capacity(q, h));
        }
        seen_avail[q] = la;
      }
    }
    for (unsigned q = 0; q < 2; ++q) {
      const std::uint16_t ui = ring16(kUsedAt[q] + 2);
      const auto n = static_cast<std::uint16_t>(ui - seen_used[q]);
      used_total[q] += n;
      if (n > size[q]) unverifiable[q] = true;  // wrapped within a round: entries lost
      if (!unverifiable[q] && !clobbered) {
        for (std::uint16_t p = seen_used[q]; p != ui; ++p) {
          const auto e = load<virtio::UsedElem>(kUsedAt[q] + 4 + 8u * (p % size[q]));
          CHECK(e.id < size[q]);
          ++used[q][e.id];
          CHECK(used[q][e.id] <= taken[q][e.id]);
          if (q == 1) CHECK(e.len == 0);
          if (q == 0) CHECK(e.len <= capacity[q][e.id]);
        }
      }
      seen_used[q] = ui;
    }
  }

  void drain_port() {
    if (!port_open) return;
    std::vector<std::uint8_t> buf(fp::kMaxRecord + 64);
    for (;;) {
      const ssize_t r = ::recv(port.get(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (r <= 0) break;
      const auto n = static_cast<std::size_t>(r);
      CHECK(n >= sizeof(fp::RecordHeader));
      CHECK(buf[1] == 0 && buf[2] == 0 && buf[3] == 0);
      switch (static_cast<fp::RecordType>(buf[0])) {
        case fp::RecordType::hello: {
          CHECK(n == sizeof(fp::RecordHeader) + sizeof(fp::Hello));
          fp::Hello h;
          std::memcpy(&h, buf.data() + 4, sizeof h);
          CHECK(std::memcmp(h.mac, mac_of(0).data(), 6) == 0 && h.mtu == mtu);
          break;
        }
        case fp::RecordType::state:
          CHECK(n == sizeof(fp::RecordHeader) + sizeof(fp::State));
          CHECK(buf[4] <= 1);
          break;
        case fp::RecordType::frame:
          CHECK(n - 4 >= knic::kEthHeader && n - 4 <= mtu + 18u);
          ++port_frames;
          break;
        default: CHECK(false);
      }
    }
  }

  void drain_peers() {
    for (unsigned i = 0; i < 2; ++i) {
      Peer& p = w.peers[i];
      while (auto f = p.received()) check_peer_frame(p, *f);
    }
  }
  void check_peer_frame(const Peer& p, const std::vector<std::uint8_t>& f) {
    CHECK(f.size() >= knic::kEthHeader && f.size() <= 1500u + 18u);
    knic::Mac dst, src;
    std::memcpy(dst.data(), f.data(), 6);
    std::memcpy(src.data(), f.data() + 6, 6);
    CHECK(dst == mac_of(p.index) || knic::is_multicast(dst));
    CHECK(src == mac_of(0) || src == mac_of(1) || src == mac_of(2));
    CHECK(src != mac_of(p.index));
    if (src == mac_of(0)) ++peer_frames_from_us[p.index - 1];
  }

  void round_peers_only() {
    for (Peer& p : w.peers) p.pv->run_once();
    w.card->step(1);
    drain_peers();
  }
  void round() {
    // A device-writable RX buffer over the rings lets the device's writes rewrite the avail
    // ring too (entries it took read back as something else): the ring checks stop there.
    for (unsigned i = 0; i < size[0] && !clobbered; ++i) {
      const auto d = load<virtio::Desc>(kDescAt[0] + 16u * i);
      if ((d.flags & virtio::kDescWrite) != 0 && d.len > 0 && d.addr < kRings) clobbered = true;
    }
    pv->run_once();
    for (Peer& p : w.peers) p.pv->run_once();
    w.card->step(1);
    account();
    drain_port();
    drain_peers();
  }
};

std::uint64_t pick_addr(FuzzInput& in, unsigned mode) {
  switch (mode & 3) {
    case 0: return kData + (std::uint64_t{in.u16()} << 4);  // buffers
    case 1: return in.u16() % kRings;                       // the rings themselves
    case 2: return kMem - in.u16();                         // across the end of RAM
    default: return in.u64();                               // anywhere
  }
}

std::uint32_t pick_len(FuzzInput& in, unsigned mode) {
  switch (mode & 3) {
    case 0: return in.u8();
    case 1: return in.u16();
    case 2: return in.u32();
    default: return static_cast<std::uint32_t>(kHdr + knic::kEthHeader + in.u8() * 8u);
  }
}

/// Writes `n` bytes at `gpa` (clipped to guest RAM above the rings).
void put(Fuzzed& g, std::uint64_t gpa, const std::uint8_t* src, std::size_t n) {
  if (gpa < kData || gpa >= kMem) return;
  n = std::min<std::size_t>(n, kMem - gpa);
  std::memcpy(g.mem.translate(gpa, n), src, n);
}

knic::Mac pick_mac(FuzzInput& in, unsigned sel) {
  switch (sel % 6) {
    case 0: return mac_of(0);
    case 1: return mac_of(1);
    case 2: return mac_of(2);
    case 3: return knic::kBroadcast;
    case 4: return {0x01, 0x00, 0x5e, 0, 0, 1};
    default: {
      knic::Mac m;
      in.bytes(m.data(), 6);
      return m;
    }
  }
}

/// A virtio-net header and Ethernet frame (`payload` bytes of pattern after the MACs).
std::vector<std::uint8_t> frame_template(FuzzInput& in, bool with_hdr) {
  const std::uint8_t sel = in.u8();
  const knic::Mac dst = pick_mac(in, sel & 7);
  const knic::Mac src = pick_mac(in, (sel >> 3) & 7);
  const std::size_t payload = in.u16() % 9100;
  std::vector<std::uint8_t> out;
  if (with_hdr) {
    vnet::Hdr h{};
    switch (sel >> 6) {
      case 1: h.gso_type = in.u8(); break;
      case 2: h.flags = in.u8(); break;
      case 3: in.bytes(reinterpret_cast<std::uint8_t*>(&h), sizeof h); break;
      default: break;
    }
    out.resize(kHdr);
    std::memcpy(out.data(), &h, kHdr);
  }
  const std::size_t at = out.size();
  out.resize(at + knic::kEthHeader - 2 + payload);
  std::memcpy(out.data() + at, dst.data(), 6);
  std::memcpy(out.data() + at + 6, src.data(), 6);
  for (std::size_t i = 0; i < payload; ++i) {
    out[at + 12 + i] = static_cast<std::uint8_t>(i == 0 ? 0x08 : 31 * i);
  }
  return out;
}

constexpr unsigned kMaxCommands = 200;
constexpr unsigned kMaxRounds = 300;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  FuzzInput in(data, size);
  const std::uint8_t cfg = in.u8();
  const bool on_vf = (cfg & 1) != 0;
  const bool mrg = (cfg & 2) != 0;
  const bool event_idx = (cfg & 4) != 0;
  static constexpr unsigned kMtus[4] = {1500, 68, 9000, 576};
  const unsigned mtu = kMtus[(cfg >> 3) & 3];
  const bool no_port = (cfg & 0x20) != 0;

  std::memset(w.mem->regions()[0].host, 0, kMem);
  Fuzzed g{w, *w.mem};
  g.mtu = mtu;
  for (unsigned q = 0; q < 2; ++q) {
    g.size[q] = static_cast<std::uint16_t>(1u << (in.u8() % 9));
    g.taken[q].assign(g.size[q], 0);
    g.used[q].assign(g.size[q], 0);
    g.capacity[q].assign(g.size[q], 0);
  }
  const std::uint64_t tx_frames0 = card_counter(w, 0, nv::TX_FRAMES);

  UniqueFd device_end;
  if (!no_port) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
    device_end = UniqueFd(sv[0]);
    g.port = UniqueFd(sv[1]);
  } else {
    g.port_open = false;
  }
  NetParavisorConfig pc;
  pc.mac = mac_of(0);
  pc.mtu = mtu;
  pc.threads = false;
  pc.probe_interval = std::chrono::microseconds(50);
  pc.health_interval = std::chrono::microseconds(20);
  pc.tx_ring_log2 = 4;  // a small VF ring: full rings and give-backs
  pc.rx_backlog = 16;
  fpga::Function* vf = on_vf ? *w.nic->vf(0) : nullptr;
  g.pv = must(NetParavisor::create(vf, *w.card, *w.card, g.mem, std::move(device_end), pc),
              "fuzzed paravisor");
  std::uint64_t features = kBaseFeatures;
  if (mrg) features |= 1ull << vnet::kMrgRxbuf;
  if (event_idx) features |= 1ull << virtio::feature::kRingEventIdx;
  CHECK(g.pv->set_features(features).ok());
  for (unsigned q = 0; q < 2; ++q) {
    CHECK(g.pv->set_queue(q, {g.size[q], kDescAt[q], kAvailAt[q], kUsedAt[q], nullptr}).ok());
  }
  g.drain_port();

  bool removed = false;
  unsigned rounds = 0;
  for (unsigned c = 0; c < kMaxCommands && !in.empty() && rounds < kMaxRounds; ++c) {
    const std::uint8_t op = in.u8();
    const unsigned q = (op >> 7) & 1;  // 0: receiveq, 1: transmitq
    switch (op & 15) {
      case 0: {  // one raw descriptor
        const std::uint16_t i = in.u8() % g.size[q];
        const std::uint8_t modes = in.u8();
        virtio::Desc d{};
        d.addr = pick_addr(in, modes);
        d.len = pick_len(in, modes >> 2);
        d.flags = in.u8() & 7;
        d.next = (modes & 0x10) ? in.u16() : in.u8() % g.size[q];
        g.store(kDescAt[q] + 16u * i, d);
        break;
      }
      case 1:  // an avail entry (any head)
        g.publish(q, (op & 0x40) ? in.u16() : in.u8() % g.size[q]);
        break;
      case 2: {  // a well-formed chain: 1-3 buffers of the right direction
        const std::uint16_t head = in.u8() % g.size[q];
        const unsigned k = 1 + in.u8() % 3;
        const std::uint64_t at = kData + (std::uint64_t{in.u16()} << 4);
        const std::uint32_t len = in.u16() % 0x4000 + 1;
        std::uint16_t i = head;
        for (unsigned j = 0; j < k; ++j) {
          const std::uint32_t piece = j + 1 < k ? len / k : len - (k - 1) * (len / k);
          virtio::Desc d{};
          d.addr = at + j * (len / k);
          d.len = piece;
          d.flags = static_cast<std::uint16_t>((q == 0 ? virtio::kDescWrite : 0) |
                                               (j + 1 < k ? virtio::kDescNext : 0));
          d.next = static_cast<std::uint16_t>((i + 1) % g.size[q]);
          g.store(kDescAt[q] + 16u * i, d);
          i = d.next;
        }
        g.publish(q, head);
        break;
      }
      case 3: {  // raw bytes into the buffers
        const std::uint64_t at = kData + (std::uint64_t{in.u16()} << 4);
        const std::string b = in.bytes(in.u8());
        put(g, at, reinterpret_cast<const std::uint8_t*>(b.data()), b.size());
        break;
      }
      case 4: {  // a header + frame in the buffers
        const std::uint64_t at = kData + (std::uint64_t{in.u16()} << 4);
        const auto f = frame_template(in, true);
        put(g, at, f.data(), f.size());
        break;
      }
      case 5: {  // a record from the switch
        const std::uint8_t sel = in.u8();
        std::vector<std::uint8_t> rec(sizeof(fp::RecordHeader));
        rec[0] = (sel & 1) ? static_cast<std::uint8_t>(fp::RecordType::frame) : in.u8();
        if (sel & 2) {
          const auto f = frame_template(in, false);
          rec.insert(rec.end(), f.begin(), f.end());
        } else {
          const std::string b = in.bytes(in.u16() % (fp::kMaxRecord + 64));
          rec.insert(rec.end(), b.begin(), b.end());
        }
        if (g.port_open) {
          (void)!::send(g.port.get(), rec.data(), rec.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        break;
      }
      case 6: {  // rounds of the device
        const unsigned n = 1 + in.u8() % 16;
        for (unsigned i = 0; i < n && rounds < kMaxRounds; ++i, ++rounds) g.round();
        break;
      }
      case 7:  // the VF disappears (and maybe the host says so)
        if (on_vf && !removed) {
          CHECK(w.nic->surprise_remove(0).ok());
          removed = true;
        }
        if (op & 0x40) g.pv->vf_removed("fuzz: host announced removal");
        break;
      case 8:  // the VF comes back (and maybe the host says so)
        if (removed) {
          CHECK(w.nic->restore(0).ok());
          removed = false;
        }
        if (op & 0x40) g.pv->vf_arrived();
        break;
      case 9:  // avail idx, flags, used_event of any value
        g.set_avail_idx(q, in.u16());
        g.store<std::uint16_t>(kAvailAt[q], in.u16());
        g.store<std::uint16_t>(kAvailAt[q] + 4 + 2u * g.size[q], in.u16());
        break;
      case 10:  // the switch goes away
        if (g.port_open) {
          g.drain_port();
          g.port.reset();
          g.port_open = false;
        }
        break;
      case 11: {  // a peer sends the fuzzed guest a frame
        Peer& p = w.peers[op >> 7];
        (void)p.send(peer_frame(p.index, 0, in.u16() % 1501, in.u8()));
        break;
      }
      default: {  // one round
        g.round();
        ++rounds;
        break;
      }
    }
  }
  // Settle: a removed VF is noticed (health check), in-flight frames complete.
  for (unsigned i = 0; i < 64; ++i) g.round();
  const bool failed_over = g.pv->counters().to_fallback > 0;
  g.pv->stop();
  g.account();
  g.drain_port();
  if (!g.pv->needs_reset() && !g.clobbered) {
    for (unsigned q = 0; q < 2; ++q) CHECK(g.seen_used[q] == g.pv->last_avail(q));
  }
  const NetCounters nc = g.pv->net_counters();
  if (!failed_over && !g.clobbered) {
    CHECK(g.used_total[1] == nc.tx_vf + nc.tx_fallback + nc.tx_bad + nc.tx_dropped);
  }
  if (g.port_open) CHECK(g.port_frames == nc.tx_fallback + nc.tx_resent);
  if (!on_vf) CHECK(nc.tx_vf == 0 && nc.rx_vf == 0);
  if (std::getenv("NET_FUZZ_VERBOSE") != nullptr) {  // what an input did (seed checks)
    std::fprintf(stderr,
                 "net_fuzz: rounds %u tx_vf %llu tx_fallback %llu tx_resent %llu tx_bad %llu "
                 "tx_dropped %llu rx_vf %llu rx_fallback %llu rx_dropped %llu rx_bad_chains %llu "
                 "reset %d to_fallback %llu\n",
                 rounds, (unsigned long long)nc.tx_vf, (unsigned long long)nc.tx_fallback,
                 (unsigned long long)nc.tx_resent, (unsigned long long)nc.tx_bad,
                 (unsigned long long)nc.tx_dropped, (unsigned long long)nc.rx_vf,
                 (unsigned long long)nc.rx_fallback, (unsigned long long)nc.rx_dropped,
                 (unsigned long long)nc.rx_bad_chains, g.pv->needs_reset(),
                 (unsigned long long)g.pv->counters().to_fallback);
  }
  g.pv.reset();
  if (removed) CHECK(w.nic->restore(0).ok());

  // The peers: drain what is still in flight, then they talk to each other as before.
  for (unsigned i = 0; i < 32; ++i) g.round_peers_only();
  const std::uint64_t tx_frames = card_counter(w, 0, nv::TX_FRAMES) - tx_frames0;
  CHECK(tx_frames <= nc.tx_vf);
  for (unsigned i = 0; i < 2; ++i) CHECK(g.peer_frames_from_us[i] <= tx_frames);
  for (unsigned k = 0; k < 2; ++k) {
    const auto ab = peer_frame(1, 2, 60 + 200 * k, static_cast<std::uint8_t>(k));
    const auto ba = peer_frame(2, 1, 1500 - 100 * k, static_cast<std::uint8_t>(k + 9));
    CHECK(w.peers[0].send(ab));
    CHECK(w.peers[1].send(ba));
    bool got_ab = false, got_ba = false;
    for (unsigned i = 0; i < 500 && !(got_ab && got_ba); ++i) {
      for (Peer& p : w.peers) p.pv->run_once();
      w.card->step(1);
      while (auto f = w.peers[1].received()) {
        g.check_peer_frame(w.peers[1], *f);
        if (*f == ab) got_ab = true;
      }
      while (auto f = w.peers[0].received()) {
        g.check_peer_frame(w.peers[0], *f);
        if (*f == ba) got_ba = true;
      }
    }
    CHECK(got_ab && got_ba);
  }
  for (Peer& p : w.peers) {
    CHECK(!p.pv->needs_reset() && p.pv->state() == PathState::active);
    CHECK(p.pv->net_counters().tx_bad == 0);
  }
  return 0;
}
