// keel-vhost-net: a vhost-user-net back end on a keel card's NIC VF: one guest's virtio-net
// paravisor (QEMU: -netdev vhost-user,chardev=... + -device virtio-net-pci,netdev=...,mac=MAC).
//
// --card vfio-user:<run dir>/nicvf<N>.sock: the NIC VF N of a running keel-card (one process
// per guest). --card model: a card of this process's own (free-running, NIC VF 0 with --mac
// assigned and its port enabled here; a guest alone on it reaches others only through the
// fallback or the uplink, which this mode does not attach).
//
// --switch SOCKET: the host's software switch (keel-hostd --net-switch), the fallback path.
// Without it the guest has no path while its VF is away (frames are dropped and counted).
//
// The paravisor notices a lost VF by itself (the driver, a health check every 20 ms); SIGUSR1
// announces a removal (as a host's hot-remove notice would), SIGUSR2 a return. SIGINT/SIGTERM
// print the path transitions and counters and exit.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <CLI/CLI.hpp>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include <keel/regs/keel_regs.h>

#include "app_log.h"
#include "keel/fpga/card.h"
#include "keel/fpga/nic.h"
#include "keel/vmm/net_paravisor.h"
#include "keel/vmm/vhost_user.h"

namespace {

namespace vmm = keel::vmm;

int fail(const std::string& what) {
  std::fprintf(stderr, "keel-vhost-net: %s\n", what.c_str());
  return 1;
}

bool parse_mac(const std::string& s, keel::knic::Mac& out) {
  unsigned b[6];
  char tail = 0;
  if (std::sscanf(s.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                  &tail) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(b[i]);
  return true;
}

/// A connection to the software switch, or an invalid fd (logged unless `quiet`) when it is
/// not there.
keel::UniqueFd connect_switch(const std::string& path, bool quiet = false) {
  if (path.empty()) return {};
  keel::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (!fd.valid() || path.size() >= sizeof a.sun_path) return {};
  std::memcpy(a.sun_path, path.c_str(), path.size());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    if (quiet) return {};
    std::fprintf(stderr,
                 "keel-vhost-net: the software switch at %s does not answer (%s): no fallback "
                 "path for this guest until it does (dialled again every 100 ms)\n",
                 path.c_str(), std::strerror(errno));
    return {};
  }
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-vhost-net: a guest's virtio-net device (vhost-user) on a keel NIC VF"};
  std::string socket_path, card_spec = "model", mac_text, switch_path, log_level;
  unsigned mtu = 1500, queues = 1;
  app.add_option("--socket", socket_path, "Unix socket to listen on (QEMU: -chardev socket,path=)")
      ->required();
  app.add_option("--card", card_spec,
                 "model, or vfio-user:<keel-card run dir>/nicvf<N>.sock (a NIC VF of keel-card)");
  app.add_option("--mac", mac_text, "The guest's MAC, as its VF's port has it (aa:bb:cc:dd:ee:ff)")
      ->required();
  app.add_option("--mtu", mtu, "The guest's MTU")->check(CLI::Range(68u, 9000u));
  app.add_option("--queues", queues, "virtqueue pairs")->check(CLI::Range(1u, 4u));
  app.add_option("--switch", switch_path, "The host's software switch (keel-hostd --net-switch)");
  bool rx_copy = false;
  app.add_flag("--rx-copy", rx_copy,
               "Receive into the driver's buffers and copy to the guest, not straight into the "
               "guest's buffers (zero-copy receive needs the guest's VIRTIO_NET_F_MRG_RXBUF)");
  keel::apps::add_log_option(app, log_level);
  CLI11_PARSE(app, argc, argv);
  if (!keel::apps::start_logging("keel-vhost-net", log_level)) return 2;
  keel::knic::Mac mac{};
  if (!parse_mac(mac_text, mac) || keel::knic::is_multicast(mac) || keel::knic::is_zero(mac)) {
    return fail("--mac " + mac_text + " is not a unicast MAC address (aa:bb:cc:dd:ee:ff)");
  }

  sigset_t sigs;
  sigemptyset(&sigs);
  for (int s : {SIGINT, SIGTERM, SIGUSR1, SIGUSR2}) sigaddset(&sigs, s);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  keel::fpga::CardOptions co;
  co.lockstep = false;
  co.max_vfs = 2;
  co.storage_bytes = 8 << 20;
  auto card_r = keel::fpga::open_card(card_spec, co);
  if (!card_r) return fail("card " + card_spec + ": " + to_string(card_r.error()));
  std::unique_ptr<keel::fpga::Card> card = std::move(card_r).value();
  keel::fpga::NicCard* nic = card->nic();
  if (nic == nullptr) return fail("card " + card_spec + " has no NIC");
  if (card_spec == "model") {
    // This process plays the PF manager of its own card: VF 0 gets the guest's MAC.
    namespace nv = keel::regs::nicvfcfg;
    if (auto st = nic->set_num_vfs(1); !st.ok()) return fail(to_string(st.error()));
    nic->pf().write32(nv::at(0, nv::MAC_LO), keel::knic::mac_lo(mac));
    nic->pf().write32(nv::at(0, nv::MAC_HI), keel::knic::mac_hi(mac));
    nic->pf().write32(nv::at(0, nv::CTRL), nv::CTRL_ENABLE_MASK);
  }
  auto vf_r = nic->vf(0);
  if (!vf_r) return fail("NIC VF: " + to_string(vf_r.error()));
  keel::fpga::Function* vf = *vf_r;

  vmm::NetParavisorConfig cfg;
  cfg.mac = mac;
  cfg.mtu = mtu;
  cfg.queue_pairs = queues;
  cfg.threads = true;
  cfg.rx_zero_copy = !rx_copy;
  if (!switch_path.empty()) {
    cfg.redial_fallback = [switch_path] { return connect_switch(switch_path, true); };
  }
  const keel::SteadyClock clock;
  auto factory = [&](vmm::GuestMemory& memory) -> keel::Result<std::unique_ptr<vmm::VhostDevice>> {
    // The server's probe (no memory yet) needs the device's shape only: no VF, no port.
    const bool probe = memory.regions().empty();
    auto pv =
        vmm::NetParavisor::create(probe ? nullptr : vf, clock, *card, memory,
                                  probe ? keel::UniqueFd{} : connect_switch(switch_path), cfg);
    if (!pv) return pv.error();
    return std::unique_ptr<vmm::VhostDevice>(std::move(pv).value());
  };
  vmm::VhostUserBlkConfig sc;
  sc.socket_path = socket_path;
  auto server_r = vmm::VhostUserBlkServer::create_device(sc, factory);
  if (!server_r) return fail(to_string(server_r.error()));
  auto server = std::move(server_r).value();
  if (auto st = server->start(); !st.ok()) return fail(to_string(st.error()));
  std::printf("keel-vhost-net: serving %s on %s (MTU %u, %u queue pair%s)%s\n", socket_path.c_str(),
              card_spec.c_str(), mtu, queues, queues == 1 ? "" : "s",
              switch_path.empty() ? ", no fallback" : "");
  std::fflush(stdout);

  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig == SIGINT || sig == SIGTERM) break;
    // The host's hot-remove / hot-add notices. The server's thread owns the device; the
    // paravisor's failover calls are made for other threads.
    server->stop();
    // Every paravisor the server had (one per memory table), frames counted as requests.
  const vmm::ParavisorCounters pc = server->counters();
  std::printf("counters: frames=%" PRIu64 " vf_frames=%" PRIu64 " fallback_frames=%" PRIu64
              " resent=%" PRIu64 " bad=%" PRIu64 " errors=%" PRIu64 " to_fallback=%" PRIu64
              " to_vf=%" PRIu64 "\n",
              pc.requests, pc.vf_ios, pc.fallback_ios, pc.reissued, pc.bad_requests, pc.errors,
              pc.to_fallback, pc.to_vf);
  if (auto* pv = dynamic_cast<vmm::NetParavisor*>(server->device())) {
      if (sig == SIGUSR1) {
        pv->vf_removed("the host announced the VF's removal");
      } else {
        pv->vf_arrived();
      }
    }
    if (auto st = server->start(); !st.ok()) return fail(to_string(st.error()));
    std::printf("keel-vhost-net: %s\n",
                sig == SIGUSR1 ? "VF removal announced" : "VF return announced");
    std::fflush(stdout);
  }
  std::printf("keel-vhost-net: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server->stop();
  for (const vmm::Transition& t : server->transitions()) {
    std::printf("transition: %s -> %s at %.3f s: %s\n", vmm::to_string(t.from),
                vmm::to_string(t.to), static_cast<double>(t.card_time_ns) / 1e9, t.reason.c_str());
  }
  // Every paravisor the server had (one per memory table), frames counted as requests.
  const vmm::ParavisorCounters pc = server->counters();
  std::printf("counters: frames=%" PRIu64 " vf_frames=%" PRIu64 " fallback_frames=%" PRIu64
              " resent=%" PRIu64 " bad=%" PRIu64 " errors=%" PRIu64 " to_fallback=%" PRIu64
              " to_vf=%" PRIu64 "\n",
              pc.requests, pc.vf_ios, pc.fallback_ios, pc.reissued, pc.bad_requests, pc.errors,
              pc.to_fallback, pc.to_vf);
  if (auto* pv = dynamic_cast<vmm::NetParavisor*>(server->device())) {
    const vmm::NetCounters c = pv->net_counters();
    std::printf("frames: tx %" PRIu64 " on the VF, %" PRIu64 " on the fallback (%" PRIu64
                " re-sent at a failover), rx %" PRIu64 " from the VF, %" PRIu64
                " from the fallback (%" PRIu64 " written in place by the card); dropped: %" PRIu64
                " malformed TX chains, %" PRIu64 " TX without a path, %" PRIu64 " RX, %" PRIu64
                " bad RX chains\n",
                c.tx_vf, c.tx_fallback, c.tx_resent, c.rx_vf, c.rx_fallback, c.rx_zero_copy,
                c.tx_bad, c.tx_dropped, c.rx_dropped, c.rx_bad_chains);
  }
  server.reset();
  card.reset();
  return 0;
}
