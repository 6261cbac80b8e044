// keel-card: a simulated card as its own process, each PCI function served over vfio-user
// (issue 12, first step). Stands up the card (model or sim, free-running) with --vfs VFs that
// split the storage image, and serves the PF on <run-dir>/pf.sock and VF n on
// <run-dir>/vf<n>.sock: one client per function (as the kernel's VFIO hands a VF to one
// process); a second client on a busy socket is turned away. Runs in the foreground until
// SIGINT or SIGTERM, then prints per-function counters and removes its sockets.
//
// Any keel program reaches a function with --card vfio-user:<run-dir>/vf<n>.sock (one VF, as
// a VM's paravisor) or .../pf.sock (the PF and, beside it, every VF).
//
// A VF's doorbells are a page its client maps (sparse mmap + an ioeventfd).
//
// The card's NIC (model only) is served beside it: the NIC PF on nicpf.sock, NIC VF n on
// nicvf<n>.sock (nic_serving.h), its uplink from --uplink.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <keel/regs/keel_regs.h>
#include "app_log.h"
#include "keel/fpga/nic.h"
#include "keel/fpga/vfio_user/function_server.h"
#include "keel/log.h"
#include "keel/stack/stack.h"
#include "keel/unix_listener.h"
#include "nic_serving.h"
#include "served.h"

namespace {

namespace vu = keel::vfio_user;
constexpr keel::log::Logger kLog{"keel-card"};
constexpr std::uint64_t kMiB = 1ull << 20;

int fail(const std::string& what) {
  std::fprintf(stderr, "keel-card: %s\n", what.c_str());
  return 1;
}

using keel::card_app::drop_client;
using keel::card_app::print_counters;
using keel::card_app::Served;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-card: a simulated keel card serving its PF and VFs over vfio-user"};
  std::string card_spec = "model", image, run_dir = "/run/keel/keel0", log_level;
  std::uint64_t size_mib = 64;
  unsigned vfs = 1, queues = 2, nic_vfs = 0;
  std::string uplink;
  app.add_option("--card", card_spec, "Card backend")->check(CLI::IsMember({"model", "sim"}));
  app.add_option("--image", image, "Storage image (created if missing; default: in memory)");
  app.add_option("--size-mib", size_mib, "Storage size in MiB (split evenly between the VFs)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 20));
  app.add_option("--vfs", vfs,
                 "VFs to enable at start (0: none; keelctl --card vfio-user:<run dir>/pf.sock "
                 "vf enable N later)")
      ->check(CLI::Range(0u, 8u));
  app.add_option("--queues", queues, "IO queue pairs per VF")->check(CLI::Range(1u, 8u));
  app.add_option("--run-dir", run_dir,
                 "Where the sockets go: pf.sock, vf<N>.sock, nicpf.sock, nicvf<N>.sock");
  app.add_option("--nic-vfs", nic_vfs,
                 "NIC VFs to enable at start, each with MAC 02:4b:45:45:4c:<N> and its switch "
                 "port enabled (0: none)")
      ->check(CLI::Range(0u, 64u));
  app.add_option("--uplink", uplink,
                 "The NIC switch's uplink: dgram:LOCAL_PATH,REMOTE_PATH (a unix datagram socket "
                 "bound to LOCAL_PATH, its peer at REMOTE_PATH dialled until it is there), "
                 "seqpacket:PATH or tap:IFNAME");
  keel::apps::add_log_option(app, log_level);
  CLI11_PARSE(app, argc, argv);
  if (!keel::apps::start_logging("keel-card", log_level)) return 2;

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);  // before the card's thread exists
  const int sig_fd = ::signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0) return fail("signalfd failed");

  keel::stack::StackConfig sc;
  sc.card = card_spec;
  sc.card_options.image_path = image;
  sc.card_options.storage_bytes = size_mib * kMiB;
  sc.card_options.lockstep = false;  // like silicon: the card works on its own thread
  if (vfs > 0) {
    const std::uint64_t slice = size_mib * kMiB / 512 / vfs;
    sc.vfs.resources.resize(vfs);
    for (unsigned i = 0; i < vfs; ++i) {
      sc.vfs.resources[i].queues = queues;
      sc.vfs.resources[i].slice_base = i * slice;
      sc.vfs.resources[i].slice_lbas = slice;
    }
  }
  auto stack_r = keel::stack::Stack::open(sc);
  if (!stack_r) return fail("standing the card up: " + to_string(stack_r.error()));
  std::unique_ptr<keel::stack::Stack> stack = std::move(stack_r).value();
  keel::fpga::Card& card = stack->card();

  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return fail("--run-dir " + run_dir + ": " + ec.message());

  // The NIC half, when the card has one.
  std::uint64_t generation = 0;  // bumped when the VF sockets change
  std::unique_ptr<keel::card_app::NicServing> nic;
  if (card.nic() != nullptr) {
    keel::card_app::NicOptions no;
    no.run_dir = run_dir;
    no.vfs = nic_vfs;
    no.uplink = uplink;
    auto n = keel::card_app::NicServing::start(*card.nic(), no, generation);
    if (!n) return fail("the NIC: " + to_string(n.error()));
    nic = std::move(n).value();
  } else if (nic_vfs > 0 || !uplink.empty()) {
    return fail("--nic-vfs/--uplink: the " + card_spec + " card has no NIC");
  }

  // served[0] is the PF; served[n + 1] VF n, for the VFs the card has now.
  std::vector<std::unique_ptr<Served>> served;
  auto serve = [&](keel::fpga::Function& fn, const std::string& name,
                   vu::FunctionServerConfig fc) -> keel::Status {
    auto s = keel::card_app::serve_function(fn, run_dir, name, std::move(fc));
    if (!s) return s.error();
    served.push_back(std::move(s).value());
    return {};
  };
  auto serve_vfs = [&]() -> keel::Status {
    for (unsigned i = 0; i < card.num_vfs(); ++i) {
      auto vf = card.vf(i);
      if (!vf) return vf.error();
      // A VF's NVMe doorbells (the rest of BAR0 from NVME_DOORBELL_BASE) are a page its
      // client maps: a doorbell is a store and an eventfd write, not a message.
      vu::FunctionServerConfig fc;
      if ((*vf)->bar_size() > keel::regs::NVME_DOORBELL_BASE) {
        fc.doorbell_offset = keel::regs::NVME_DOORBELL_BASE;
        fc.doorbell_bytes = (*vf)->bar_size() - keel::regs::NVME_DOORBELL_BASE;
        // An SQ tail and a CQ head per queue pair (admin included; CAP.DSTRD = 0), one
        // MSI-X vector per queue pair: the slots that can ring.
        fc.doorbell_slots = 2 * (*vf)->num_vectors();
      }
      if (auto st = serve(**vf, "vf" + std::to_string(i), fc); !st.ok()) return st;
    }
    return {};
  };
  // The VFs' sockets follow the card's VFs: VFs that go lose their client (reset) and their
  // socket first; the new ones get sockets. NumVFs changes through the PF's configuration
  // space (set_num_vfs below) or its NUM_VFS register (a REGION_WRITE: checked after every
  // PF message).
  std::uint32_t removed = 0;  // VFs pulled from the bus (bit n: VF n)
  auto drop_vf_sockets = [&] {
    for (std::size_t i = served.size(); i-- > 1;) {
      drop_client(*served[i], "its VF is removed");
      print_counters(*served[i]);
      served.pop_back();
    }
    ++generation;
    removed = 0;  // the VFs that go take their state with them
  };
  auto follow_num_vfs = [&]() -> keel::Status {
    // A read of the PF orders after its earlier (posted) writes, as on PCIe: a NUM_VFS write
    // has taken effect on the card (the RTL's takes cycles) before the count is looked at.
    (void)card.pf().read32(keel::regs::pf::NUM_VFS);
    if (served.size() - 1 == card.num_vfs()) return {};
    drop_vf_sockets();
    kLog.info("NumVFs = %u", card.num_vfs());
    return serve_vfs();
  };
  vu::FunctionServerConfig pf_config;
  pf_config.max_vfs = card.max_vfs();
  pf_config.num_vfs = [&card] { return card.num_vfs(); };
  pf_config.set_num_vfs = [&](unsigned n) -> keel::Status {
    if (n == card.num_vfs()) return card.set_num_vfs(n);
    // A change the card will take: the VFs' clients go first (their functions stop, then
    // their memory is unmapped). One it refuses (busy, too many) it refuses itself, and says
    // so in the PF's STATUS as for a write of NUM_VFS.
    const bool takes = n <= card.max_vfs() && (n == 0 || card.num_vfs() == 0);
    if (takes) drop_vf_sockets();
    const keel::Status st = card.set_num_vfs(n);
    const keel::Status follow = follow_num_vfs();
    return st.ok() ? follow : st;
  };
  // The removed-VF bitmap: a host pulling VFs from their guests (and putting them back).
  pf_config.removed_vfs = [&removed] { return removed; };
  // VF `vf` off the bus (pull) or back: the card's fault, the bitmap, and the request IRQ of
  // the VF's client (a VF the card does not have is refused by the injector).
  auto pull_vf = [&](unsigned vf, bool pull) -> keel::Status {
    keel::fpga::FaultInjector& fi = *card.faults();
    if (keel::Status st = pull ? fi.surprise_remove(vf) : fi.restore(vf); !st.ok()) return st;
    if (vf < 32) removed = pull ? removed | 1u << vf : removed & ~(1u << vf);
    if (vf + 1 < served.size()) served[vf + 1]->server->set_unplugged(pull);
    kLog.info("VF %u %s", vf, pull ? "pulled from the bus" : "back on the bus");
    return {};
  };
  if (card.faults() != nullptr) {
    pf_config.set_removed_vfs = [&](std::uint32_t mask) -> keel::Status {
      const std::uint32_t changed = mask ^ removed;
      for (unsigned i = 0; i < 32; ++i) {
        const std::uint32_t bit = std::uint32_t{1} << i;
        if ((changed & bit) == 0) continue;
        if (i >= card.num_vfs()) {
          return keel::make_error(keel::Errc::not_found, "no VF " + std::to_string(i));
        }
        if (keel::Status st = pull_vf(i, (mask & bit) != 0); !st.ok()) return st;
      }
      return {};
    };
  }
  // Its fault injector, for tests run against a card in another process.
  if (card.faults() != nullptr) {
    pf_config.inject_fault = [&](const vu::FaultRecord& f) -> keel::Status {
      keel::fpga::FaultInjector& fi = *card.faults();
      const unsigned vf = f.vf;
      const auto ns = std::chrono::nanoseconds(static_cast<std::int64_t>(f.arg));
      keel::Status st = keel::make_error(keel::Errc::invalid_argument, "unknown fault");
      switch (f.op) {
        case vu::FaultOp::drop_completions: st = fi.drop_completions(vf, f.count); break;
        case vu::FaultOp::delay_completions: st = fi.delay_completions(vf, f.count, ns); break;
        case vu::FaultOp::delay_ready: st = fi.delay_ready(vf, ns); break;
        case vu::FaultOp::raise_fatal: st = fi.raise_fatal(vf); break;
        case vu::FaultOp::refuse_dma: st = fi.refuse_dma(vf, f.count != 0); break;
        case vu::FaultOp::surprise_remove:
        case vu::FaultOp::restore: st = pull_vf(vf, f.op == vu::FaultOp::surprise_remove); break;
        case vu::FaultOp::corrupt_completions:
          if (f.arg > static_cast<std::uint64_t>(keel::fpga::CqeFault::bad_sq_head)) break;
          st = fi.corrupt_completions(vf, static_cast<keel::fpga::CqeFault>(f.arg), f.count);
          break;
        case vu::FaultOp::swallow_aborts: st = fi.swallow_aborts(vf, f.count); break;
      }
      if (st.ok()) kLog.info("fault %u injected on VF %u", static_cast<unsigned>(f.op), vf);
      return st;
    };
  }
  if (auto st = serve(card.pf(), "pf", pf_config); !st.ok()) return fail(to_string(st.error()));
  if (auto st = serve_vfs(); !st.ok()) return fail(to_string(st.error()));
  std::printf("keel-card: %s card, %" PRIu64
              " MiB, %u VFs, %u NIC VFs, serving on %s (pf.sock, "
              "vf<N>.sock%s)\n",
              card_spec.c_str(), size_mib, card.num_vfs(), nic ? card.nic()->num_vfs() : 0,
              run_dir.c_str(), nic ? ", nicpf.sock, nicvf<N>.sock" : "");
  std::fflush(stdout);

  // One loop: signals, listeners, clients and the functions' interrupts.
  for (bool running = true; running;) {
    std::vector<pollfd> p;
    // (function, 0 listener / 1 client / 2 irq / 3 doorbell kick)
    std::vector<std::pair<std::size_t, int>> who;
    // Every served function: the NVMe PF and VFs, then the NIC's.
    std::vector<Served*> all;
    for (const auto& s : served) all.push_back(s.get());
    if (nic) nic->collect(all);
    p.push_back({sig_fd, POLLIN, 0});
    who.push_back({0, -1});
    for (std::size_t i = 0; i < all.size(); ++i) {
      p.push_back({all[i]->listener.fd(), POLLIN, 0});
      who.push_back({i, 0});
      if (!all[i]->client) continue;
      p.push_back({all[i]->client->fd(), POLLIN, 0});
      who.push_back({i, 1});
      for (int fd : all[i]->server->interrupt_fds()) {
        if (fd < 0) continue;
        p.push_back({fd, POLLIN, 0});
        who.push_back({i, 2});
      }
      if (const int db = all[i]->server->doorbell_fd(); db >= 0) {
        p.push_back({db, POLLIN, 0});
        who.push_back({i, 3});
      }
    }
    const int polled = ::poll(p.data(), p.size(), nic ? nic->poll_timeout_ms() : -1);
    if (nic) nic->tick();
    if (polled <= 0) continue;  // EINTR, or the uplink's tick
    const std::uint64_t polled_generation = generation;
    for (std::size_t k = 0; k < p.size() && generation == polled_generation; ++k) {
      if (p[k].revents == 0) continue;
      if (k == 0) {
        running = false;
        continue;
      }
      Served& s = *all[who[k].first];
      if (who[k].second == 0) {
        keel::UniqueFd fd = s.listener.accept();
        if (!fd.valid()) continue;
        // A client that closed its end but whose EOF this loop has not read yet is gone: the
        // next process may have the function (as a device file closed and opened again).
        if (s.client) {
          char b;
          if (::recv(s.client->fd(), &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
            drop_client(s, "the vfio-user peer closed");
          }
        }
        if (s.client) {
          ++s.turned_away;  // one process per function; closing tells the peer at once
          kLog.warn("%s: turned a second client away", s.name.c_str());
          continue;
        }
        s.client = std::make_unique<vu::Channel>(std::move(fd));
        ++s.connections;
        kLog.info("%s: client connected", s.name.c_str());
      } else if (who[k].second == 1 && s.client) {
        // Every message already there (a burst of posted writes), not one per wakeup.
        for (int n = 0; n < 32 && s.client && generation == polled_generation; ++n) {
          if (n > 0) {
            pollfd more{s.client->fd(), POLLIN, 0};
            if (::poll(&more, 1, 0) <= 0) break;
          }
          auto m = s.client->receive(std::chrono::milliseconds(1000));
          if (!m) {
            drop_client(s, m.error().message.c_str());
            break;
          }
          if (auto st = s.server->handle(*s.client, *m); !st.ok()) {
            drop_client(s, st.error().message.c_str());
          }
          if (who[k].first == 0) {  // the PF's NUM_VFS register may have changed the VFs
            if (auto st = follow_num_vfs(); !st.ok()) {
              kLog.error("serving the new VFs: %s", st.error().message.c_str());
            }
          } else if (nic && nic->is_pf(&s)) {  // the same for the NIC's NUM_VFS
            nic->follow_num_vfs();
          }
        }
      } else if (who[k].second == 2) {
        s.server->forward_interrupts();
      } else if (who[k].second == 3) {
        s.server->apply_doorbells();
      }
    }
  }

  std::printf("keel-card: shutting down\n");
  for (const auto& s : served) print_counters(*s);
  if (nic) nic->print_counters();
  return 0;
}
