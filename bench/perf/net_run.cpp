#include "net_run.h"

#include <dirent.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/nic.h"
#include "keel/thread_cpu.h"
#include "net_guest.h"

namespace keel::perf {

namespace {

namespace nv = regs::nicvfcfg;
using namespace std::chrono_literals;

struct CardDrop {
  const char* name;
  std::uint64_t reg;
};
constexpr std::array<CardDrop, 7> kCardDrops = {{{"spoof", nv::DROP_SPOOF},
                                                 {"bad_desc", nv::DROP_BAD_DESC},
                                                 {"oversize", nv::DROP_OVERSIZE},
                                                 {"dma_fault", nv::DROP_DMA_FAULT},
                                                 {"rx_no_buf", nv::DROP_RX_NO_BUF},
                                                 {"queue_off", nv::DROP_QUEUE_OFF},
                                                 {"no_route", nv::DROP_NO_ROUTE}}};

knic::Mac mac_of(unsigned i) { return {0x02, 0x4b, 0x50, 0, 0, static_cast<std::uint8_t>(i + 1)}; }

std::set<int> task_ids() {
  std::set<int> out;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') out.insert(std::atoi(e->d_name));
    }
    ::closedir(d);
  }
  return out;
}

// What the guest threads and the main thread share during a phase.
struct Shared {
  std::atomic<bool> stop_a{false}, stop_b{false};
  std::atomic<std::uint64_t> sent{0}, received{0}, written_off{0}, bad{0};
  std::atomic<bool> a_waiting{false};  // A sleeps for window credit: B writes `credit`
  UniqueFd credit{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
};

void signal(int fd) {
  const std::uint64_t one = 1;
  (void)!::write(fd, &one, sizeof one);
}

std::uint64_t seq_of(std::span<const std::uint8_t> f) {
  std::uint64_t q = 0;
  if (f.size() >= knic::kEthHeader + sizeof q) std::memcpy(&q, f.data() + knic::kEthHeader, 8);
  return q;
}

// Guest A's vCPU in the stream: frames to B as long as the window allows, in batches of up to
// 32 per kick. A window stalled for 50 ms gives its frames up as lost, so a drop cannot stop
// the stream.
void stream_sender(NetGuest& a, const knic::Mac& dst, std::uint32_t bs, unsigned window,
                   Shared& s) {
  std::uint64_t sent = 0, off = 0, last_recv = 0;
  auto last_progress = Clock::now();
  while (!s.stop_a.load(std::memory_order_relaxed)) {
    a.reap_tx();
    const std::uint64_t recv = s.received.load(std::memory_order_acquire);
    const auto now = Clock::now();
    if (recv != last_recv) {
      last_recv = recv;
      last_progress = now;
    }
    const std::uint64_t inflight = sent - std::min(sent, recv + off);
    unsigned n = 0;
    while (inflight + n < window && n < 32 && a.send(dst, bs, sent + n)) ++n;
    if (n > 0) {
      sent += n;
      s.sent.store(sent, std::memory_order_release);
      a.kick_tx();
      continue;
    }
    if (inflight >= window && now - last_progress > 50ms) {
      off = sent - std::min(sent, recv);
      s.written_off.store(off, std::memory_order_relaxed);
      last_progress = now;
      continue;
    }
    s.a_waiting.store(true, std::memory_order_seq_cst);
    if (s.received.load(std::memory_order_seq_cst) == recv) {
      a.wait(/*tx=*/inflight < window, s.credit.get(), 5);
    }
    s.a_waiting.store(false, std::memory_order_relaxed);
  }
}

// Guest B's vCPU in the stream: takes frames, posts the buffers again, tells A its count.
void stream_receiver(NetGuest& b, std::uint32_t bs, Shared& s) {
  std::uint64_t recv = 0;
  while (!s.stop_b.load(std::memory_order_relaxed)) {
    std::uint64_t bad = 0;
    const unsigned n = b.poll_rx([&](std::span<const std::uint8_t> f) { bad += f.size() != bs; });
    if (n > 0) {
      recv += n;
      if (bad != 0) s.bad.fetch_add(bad, std::memory_order_relaxed);
      s.received.store(recv, std::memory_order_seq_cst);
      if (s.a_waiting.load(std::memory_order_seq_cst)) signal(s.credit.get());
      continue;
    }
    b.wait(false, -1, 5);
  }
}

// Guest A's vCPU in ping-pong: one frame out, sleep until B's answer, again.
void ping(NetGuest& a, const knic::Mac& dst, std::uint32_t bs, Clock::time_point deadline,
          NetLatency& lat) {
  std::uint64_t seq = 0;
  while (Clock::now() < deadline) {
    a.reap_tx();
    ++seq;
    const auto t0 = Clock::now();
    if (!a.send(dst, bs, seq)) continue;
    a.kick_tx();
    bool got = false;
    for (;;) {
      a.poll_rx([&](std::span<const std::uint8_t> f) { got = got || seq_of(f) == seq; });
      if (got) break;
      if (Clock::now() - t0 > 100ms) break;
      a.wait(false, -1, 5);
    }
    if (!got) {
      ++lat.timeouts;
      continue;
    }
    lat.rtt.add(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()));
  }
}

// Guest B's vCPU in ping-pong: each frame goes back to its sender as it came.
void pong(NetGuest& b, const knic::Mac& to, Shared& s) {
  while (!s.stop_b.load(std::memory_order_relaxed)) {
    const unsigned n = b.poll_rx([&](std::span<const std::uint8_t> f) {
      b.reap_tx();
      (void)b.send(to, static_cast<std::uint32_t>(f.size()), seq_of(f));
    });
    if (n > 0) {
      b.kick_tx();
      continue;
    }
    b.wait(false, -1, 5);
  }
}

}  // namespace

Result<std::unique_ptr<NetBench>> NetBench::open(const NetConfig& config) {
  std::unique_ptr<NetBench> b(new NetBench());
  fpga::model::ModelConfig mc;
  mc.card.lockstep = false;  // free running: the card's thread is its silicon
  mc.card.max_vfs = 2;
  mc.card.storage_bytes = 8u << 20;
  auto card = fpga::model::ModelCard::create(mc);
  if (!card) return card.error();
  b->card_ = std::move(card).value();
  fpga::NicCard* nic = b->card_->nic();
  if (nic == nullptr) return make_error(Errc::invalid_argument, "the model card has no NIC");
  if (Status st = nic->set_num_vfs(2); !st.ok()) return st.error();
  // The PF manager's part: each VF's port gets its guest's MAC and joins the switch.
  for (unsigned i = 0; i < 2; ++i) {
    nic->pf().write32(nv::at(i, nv::MAC_LO), knic::mac_lo(mac_of(i)));
    nic->pf().write32(nv::at(i, nv::MAC_HI), knic::mac_hi(mac_of(i)));
    nic->pf().write32(nv::at(i, nv::CTRL), nv::CTRL_ENABLE_MASK);
  }
  char dir[] = "/tmp/keel-perf-net.XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    return make_error(Errc::io_error, std::string("mkdtemp: ") + std::strerror(errno));
  }
  b->switch_dir_ = dir;
  vmm::SoftSwitchConfig sc;
  sc.socket_path = b->switch_dir_ + "/switch.sock";
  auto sw = vmm::SoftSwitch::create(std::move(sc));
  if (!sw) return sw.error();
  b->switch_ = std::move(sw).value();
  // The switch's thread is the one start() adds: its CPU time is the fallback's host cost.
  const std::set<int> before = task_ids();
  if (Status st = b->switch_->start(); !st.ok()) return st.error();
  for (int tid : task_ids()) {
    if (before.count(tid) == 0) b->switch_tid_ = tid;
  }
  const int card_tid = b->card_->thread_id();
  if (config.card_rt && card_tid >= 0) {
    sched_param sp{};
    sp.sched_priority = 1;
    b->card_rt_ = ::sched_setscheduler(card_tid, SCHED_FIFO, &sp) == 0
                      ? "SCHED_FIFO 1"
                      : std::string("not real-time: ") + std::strerror(errno);
  }
  return b;
}

NetBench::~NetBench() {
  switch_.reset();
  card_.reset();
  if (!switch_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(switch_dir_, ec);
  }
}

Result<NetPathResult> NetBench::run(const NetConfig& c, bool vf_path, std::uint32_t bs) {
  NetPathResult r;
  r.path = vf_path ? "vf" : "fallback";
  r.bs = bs;
  fpga::NicCard& nic = *card_->nic();
  std::unique_ptr<NetGuest> g[2];
  for (unsigned i = 0; i < 2; ++i) {
    auto vf = nic.vf(i);
    if (!vf) return vf.error();
    auto guest = NetGuest::create(mac_of(i), vf_path ? *vf : nullptr, *card_,
                                  switch_->socket_path(), c.rx_copy);
    if (!guest) return guest.error();
    g[i] = std::move(guest).value();
    if (vf_path && g[i]->paravisor().state() != vmm::PathState::active) {
      return make_error(Errc::device_error, "NIC VF " + std::to_string(i) + " did not come up");
    }
  }
  // Both ports known to the switch (on the fallback: in its MAC table) before any frame.
  for (int t = 0;; ++t) {
    const vmm::SoftSwitchCounters k = switch_->counters();
    const auto ready = std::count_if(k.ports.begin(), k.ports.end(), [&](const auto& p) {
      return p.hello && p.on_fallback == !vf_path;
    });
    if (ready == 2) break;
    if (t == 2000) return make_error(Errc::timeout, "the switch did not take both ports");
    std::this_thread::sleep_for(1ms);
  }
  // Each receiver ready before the stream: a frame each way until it arrives. (With zero-copy
  // receive a paravisor's first pass posts its guest's RX buffers on the VF; a frame before
  // that is dropped by the card, which would count as lost.)
  for (unsigned dir = 0; dir < 2; ++dir) {
    NetGuest& from = *g[dir];
    NetGuest& to = *g[1 - dir];
    bool arrived = false;
    for (int t = 0; !arrived; ++t) {
      if (t == 200) return make_error(Errc::timeout, "no frame went through before the stream");
      if (from.send(mac_of(1 - dir), bs, 0)) from.kick_tx();
      for (int w = 0; w < 10 && !arrived; ++w) {
        arrived = to.poll_rx([](std::span<const std::uint8_t>) {}) > 0;
        if (!arrived) std::this_thread::sleep_for(1ms);
      }
      from.reap_tx();
    }
    while (to.poll_rx([](std::span<const std::uint8_t>) {}) > 0) {
    }
  }
  const int card_tid = card_->thread_id();
  const clockid_t switch_clock =
      switch_tid_ >= 0 ? thread_cpu_clock_of_tid(switch_tid_) : CLOCK_THREAD_CPUTIME_ID;
  // The card's drop counters of both VFs' ports, by counter (kCardDrops' order).
  auto card_drops = [&] {
    std::array<std::uint64_t, kCardDrops.size()> n{};
    for (unsigned i = 0; i < 2; ++i) {
      for (std::size_t k = 0; k < kCardDrops.size(); ++k) {
        n[k] += nic.pf().read64(nv::at(i, kCardDrops[k].reg));
      }
    }
    return n;
  };
  auto switch_drops = [&] {
    const vmm::SoftSwitchCounters k = switch_->counters();
    std::uint64_t n = 0;
    for (std::size_t d = 1; d < eswitch::kDropCauses; ++d)
      n += k.uplink.drops[d] + k.guests.drops[d];
    return n;
  };
  auto pv_drops = [&] {
    std::uint64_t n = 0;
    for (auto& x : g) {
      const vmm::NetCounters k = x->paravisor().net_counters();
      n += k.tx_dropped + k.rx_dropped + k.tx_vf_errors + k.tx_bad + k.rx_bad_chains;
    }
    return n;
  };
  // Thread CPU of a phase: the paravisors' workers and the switch (host), the guests' threads.
  auto cpu_now = [&](std::thread* guests, int n_guests) {
    NetCpu n;
    for (auto& x : g) n.paravisors_ns += x->paravisor().worker_cpu_ns();
    if (switch_tid_ >= 0) n.switch_ns = clock_ns(switch_clock);
    for (int i = 0; i < n_guests; ++i) n.guests_ns += thread_cpu_ns(guests[i].native_handle());
    return n;
  };
  auto diff = [](const NetCpu& a, const NetCpu& b) {
    return NetCpu{b.paravisors_ns - a.paravisors_ns, b.switch_ns - a.switch_ns,
                  b.guests_ns - a.guests_ns};
  };

  {  // ---- the stream: A -> B
    Shared s;
    const auto card0 = card_drops();
    const std::uint64_t sw0 = switch_drops(), pv0 = pv_drops();
    std::thread th[2] = {std::thread([&] { stream_sender(*g[0], mac_of(1), bs, c.window, s); }),
                         std::thread([&] { stream_receiver(*g[1], bs, s); })};
    std::this_thread::sleep_for(c.ramp);
    const NetCpu cpu0 = cpu_now(th, 2);
    const SchedStat k0 = card_tid >= 0 ? thread_schedstat(card_tid) : SchedStat{};
    const std::uint64_t recv0 = s.received.load();
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(c.runtime);
    const std::uint64_t recv1 = s.received.load();
    const auto t1 = Clock::now();
    const NetCpu cpu1 = cpu_now(th, 2);
    const SchedStat k1 = card_tid >= 0 ? thread_schedstat(card_tid) : SchedStat{};
    s.stop_a.store(true);
    th[0].join();
    // Drain: what is still in flight arrives, or is lost.
    std::uint64_t last = s.received.load();
    for (auto quiet = Clock::now(); Clock::now() - quiet < 200ms;) {
      if (s.received.load() >= s.sent.load()) break;
      std::this_thread::sleep_for(1ms);
      if (const std::uint64_t now = s.received.load(); now != last) {
        last = now;
        quiet = Clock::now();
      }
    }
    s.stop_b.store(true);
    th[1].join();
    NetStream& st = r.stream;
    st.seconds = std::chrono::duration<double>(t1 - t0).count();
    st.frames = recv1 - recv0;
    st.sent = s.sent.load();
    st.received = s.received.load();
    st.written_off = s.written_off.load();
    st.bad_frames = s.bad.load() + g[1]->bad_frames();
    st.cpu = diff(cpu0, cpu1);
    st.card_run_ns = k1.run_ns - k0.run_ns;
    st.card_wait_ns = k1.wait_ns - k0.wait_ns;
    const auto card1 = card_drops();
    for (std::size_t k = 0; k < kCardDrops.size(); ++k) {
      if (card1[k] != card0[k])
        st.card_drop_causes.emplace_back(kCardDrops[k].name, card1[k] - card0[k]);
      st.card_drops += card1[k] - card0[k];
    }
    st.switch_drops = switch_drops() - sw0;
    st.paravisor_drops = pv_drops() - pv0;
  }
  {  // ---- ping-pong: A -> B -> A, one frame in flight
    Shared s;
    NetLatency& lat = r.latency;
    std::atomic<bool> go{false};
    Clock::time_point deadline{};
    std::uint64_t a_cpu = 0;  // A's thread measures itself: it ends before the phase is read
    std::thread th[2] = {std::thread([&] {
                           while (!go.load()) std::this_thread::yield();
                           const std::uint64_t c0 = this_thread_cpu_ns();
                           ping(*g[0], mac_of(1), bs, deadline, lat);
                           a_cpu = this_thread_cpu_ns() - c0;
                         }),
                         std::thread([&] { pong(*g[1], mac_of(0), s); })};
    const NetCpu cpu0 = cpu_now(&th[1], 1);
    const auto t0 = Clock::now();
    deadline = t0 + c.lat_runtime;
    go.store(true);
    th[0].join();
    const auto t1 = Clock::now();
    const NetCpu cpu1 = cpu_now(&th[1], 1);
    s.stop_b.store(true);
    th[1].join();
    lat.seconds = std::chrono::duration<double>(t1 - t0).count();
    lat.cpu = diff(cpu0, cpu1);
    lat.cpu.guests_ns += a_cpu;
  }
  for (auto& x : g) x.reset();
  // The switch closes their ports before the next guests say HELLO with the same MACs.
  for (int t = 0; t < 2000 && !switch_->counters().ports.empty(); ++t) {
    std::this_thread::sleep_for(1ms);
  }
  return r;
}

}  // namespace keel::perf
