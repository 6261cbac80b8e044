// keel-vhost-blk: a vhost-user-blk back end on a keel card. Stands up a card (model or sim,
// free-running), one VF with the guest's disk as its namespace, a host storage service on the
// same image (the fallback path), and a VhostUserBlkServer on a unix socket; serves one front
// end at a time (QEMU's vhost-user-blk-pci) until SIGINT or SIGTERM, then prints the path
// transitions and counters.
//
// The disk is bytes [0, N MiB) of the image. With --vf-index I > 0 the card also gives VFs
// 0..I-1 a 1 MiB slice each after the disk (the card needs every enabled VF to own a slice).
//
// --card vfio-user:<run dir>/vf<N>.sock: the card is a running keel-card and this process is
// one guest's paravisor on its VF N (one process per guest, as OpenHCL per VM); the host path
// serves bytes [--offset-mib, + --size-mib) of keel-card's --image.
//
// SIGHUP upgrades it in place (servicing): the binary at this program's path is started again
// and given the front end's vhost-user session (the connection, its memory table, rings,
// eventfds and inflight record) over a socket pair; this process releases the card and exits
// once the new one serves. QEMU keeps its connection and notices a pause only.
//
// With a card over vfio-user (keel-card's VF) the VF stays up across the upgrade (NVMe
// keepalive): the VF driver's memory lives in a DMA arena (a memfd in the VF's domain at a fixed
// IOVA), the old process saves the driver's state (Paravisor::save) and hands over the arena and
// its vfio-user connection instead of closing it, and the new process takes the controller and
// its queue pairs over as they run, never resetting the VF. If any of that fails, the new process
// resets the VF and brings it up (the full path, which loses nothing either).
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <poll.h>

#include "app_log.h"
#include "keel/drivers/nvme/saved_state.h"
#include "keel/fd_passing.h"
#include "keel/fpga/dma_arena.h"
#include "keel/process_memory.h"
#include "keel/stack/stack.h"
#include "keel/vmm/remote_host.h"
#include "keel/vmm/vhost_user.h"
#include "keel/vtpm/vtpm_server.h"

namespace {

namespace vmm = keel::vmm;
constexpr std::uint64_t kMiB = 1ull << 20;

int fail(const std::string& what) {
  std::fprintf(stderr, "keel-vhost-blk: %s\n", what.c_str());
  return 1;
}

// The environment variable that hands a new process its end of the upgrade's socket pair.
constexpr const char* kHandoverEnv = "KEEL_VHOST_BLK_HANDOVER_FD";
// The upgrade's one-byte records after the session: the old process let the card go; the new
// one serves.
constexpr char kReleased = 'R', kServing = 'S';
// Before kReleased, with a card kept alive: 'K', the arena's IOVA and size, the driver's saved
// state, and two fds: the arena's memfd and the card connection.
constexpr char kKept = 'K';
// Before kReleased, with a vTPM: 'T', the TPM's locality (u8), buffer size (u32), whether it
// runs (u8), which sockets follow (u8: 1 control connection, 2 data channel), and the fds: the
// listener, then those (its volatile state is in the sealed state file).
constexpr char kVtpm = 'T';
// Where a vfio-user VF's DMA arena sits: clear of guest RAM (IOVA = GPA, refused at and above
// it) and of the driver's other buffers (from 2^52), inside a 48-bit IOMMU.
constexpr keel::fpga::Iova kArenaIova = keel::fpga::Iova{1} << 47;
// Per queue: its SQ, CQ and PRP lists at the largest virtqueue (2049 entries), its bounce
// pool (4 MiB); plus the admin queue.
std::size_t arena_bytes(unsigned queues) { return std::size_t{queues} * (16u << 20) + (1u << 20); }

// What the old process hands over to keep the VF running.
struct KeptCard {
  keel::UniqueFd memfd, connection;
  std::uint64_t base = 0, bytes = 0;
  std::vector<std::byte> state;
};

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// One record of `want`, within `timeout`; false on anything else.
bool wait_record(int fd, char want, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char c = 0;
    const ssize_t k = ::recv(fd, &c, 1, 0);
    if (k < 0 && errno == EINTR) continue;
    return k == 1 && c == want;
  }
  return false;
}

bool send_record(int fd, char c) { return ::send(fd, &c, 1, MSG_NOSIGNAL) == 1; }

bool send_kept(int fd, const KeptCard& k) {
  std::vector<std::byte> rec(17);
  rec[0] = static_cast<std::byte>(kKept);
  std::memcpy(rec.data() + 1, &k.base, 8);
  std::memcpy(rec.data() + 9, &k.bytes, 8);
  rec.insert(rec.end(), k.state.begin(), k.state.end());
  const int fds[2] = {k.memfd.get(), k.connection.get()};
  const std::span<const std::byte> part(rec);
  return keel::send_with_fds(fd, {&part, 1}, fds).ok();
}

bool send_vtpm(int fd, keel::vtpm::VtpmHandover& h) {
  std::vector<std::byte> rec(8);
  rec[0] = static_cast<std::byte>(kVtpm);
  rec[1] = static_cast<std::byte>(h.locality);
  std::memcpy(rec.data() + 2, &h.buffer_size, 4);
  rec[6] = static_cast<std::byte>(h.running ? 1 : 0);
  rec[7] = static_cast<std::byte>((h.ctrl.valid() ? 1 : 0) | (h.data.valid() ? 2 : 0));
  std::vector<int> fds = {h.listener.get()};
  if (h.ctrl.valid()) fds.push_back(h.ctrl.get());
  if (h.data.valid()) fds.push_back(h.data.get());
  const std::span<const std::byte> part(rec);
  return keel::send_with_fds(fd, {&part, 1}, fds).ok();
}

// A kVtpm record (its bytes and fds) as a VtpmHandover; nullopt when malformed.
std::optional<keel::vtpm::VtpmHandover> parse_vtpm(std::span<const std::byte> rec,
                                                   std::vector<keel::UniqueFd>& fds) {
  if (rec.size() != 8 || fds.empty()) return std::nullopt;
  keel::vtpm::VtpmHandover h;
  h.locality = static_cast<std::uint8_t>(rec[1]);
  std::memcpy(&h.buffer_size, rec.data() + 2, 4);
  h.running = rec[6] != std::byte{0};
  const auto which = static_cast<unsigned>(rec[7]);
  const std::size_t want = 1 + (which & 1) + ((which >> 1) & 1);
  if (which > 3 || fds.size() != want) return std::nullopt;
  std::size_t i = 0;
  h.listener = std::move(fds[i++]);
  if (which & 1) h.ctrl = std::move(fds[i++]);
  if (which & 2) h.data = std::move(fds[i++]);
  return h;
}

// The old process's last records: kReleased, after a KeptCard if it kept the card alive and a
// vTPM record (into `vtpm`) if it served one. Nullopt (and `released` false) on anything else
// within `timeout`.
std::optional<KeptCard> wait_release(int fd, std::chrono::seconds timeout, bool& released,
                                     std::optional<keel::vtpm::VtpmHandover>& vtpm) {
  released = false;
  std::optional<KeptCard> kept;
  std::vector<std::byte> buf(4u << 20);
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    std::vector<keel::UniqueFd> fds;
    auto r = keel::recv_with_fds(fd, buf, fds, 4);
    if (!r || r->closed) return std::nullopt;
    if (r->again) continue;
    if (r->bytes == 1 && buf[0] == static_cast<std::byte>(kReleased)) {
      released = true;
      return kept;
    }
    if (r->bytes >= 1 && buf[0] == static_cast<std::byte>(kVtpm)) {
      vtpm = parse_vtpm(std::span(buf).first(r->bytes), fds);
      if (!vtpm) return std::nullopt;
      continue;
    }
    if (r->bytes < 17 || buf[0] != static_cast<std::byte>(kKept) || fds.size() != 2) {
      return std::nullopt;
    }
    KeptCard k;
    std::memcpy(&k.base, buf.data() + 1, 8);
    std::memcpy(&k.bytes, buf.data() + 9, 8);
    k.state.assign(buf.begin() + 17, buf.begin() + static_cast<std::ptrdiff_t>(r->bytes));
    k.memfd = std::move(fds[0]);
    k.connection = std::move(fds[1]);
    kept = std::move(k);
  }
  return std::nullopt;
}

void print_report(const vmm::VhostUserBlkServer& server) {
  std::printf("path transitions:\n");
  for (const vmm::Transition& t : server.transitions()) {
    std::printf("  %12.3f ms  %-8s -> %-8s  %s\n", static_cast<double>(t.card_time_ns) / 1e6,
                vmm::to_string(t.from), vmm::to_string(t.to), t.reason.c_str());
  }
  const vmm::ParavisorCounters c = server.counters();
  std::printf("counters: requests=%" PRIu64 " vf_ios=%" PRIu64 " fallback_ios=%" PRIu64
              " reissued=%" PRIu64 " bounced=%" PRIu64 " errors=%" PRIu64 " bad_requests=%" PRIu64
              " notifications=%" PRIu64 " to_fallback=%" PRIu64 " to_vf=%" PRIu64
              " kept_queue_pairs=%" PRIu64 "\n",
              c.requests, c.vf_ios, c.fallback_ios, c.reissued, c.bounced, c.errors, c.bad_requests,
              c.notifications, c.to_fallback, c.to_vf, c.kept_queue_pairs);
  const auto s = server.stats();
  std::printf("vhost-user: connections=%" PRIu64 " turned_away=%" PRIu64 " disconnects=%" PRIu64
              " messages=%" PRIu64 " failed_requests=%" PRIu64 " protocol_errors=%" PRIu64
              " paravisors=%" PRIu64 " ring_errors=%" PRIu64 "\n",
              s.connections, s.turned_away, s.disconnects, s.messages, s.failed_requests,
              s.protocol_errors, s.paravisors, s.ring_errors);
  if (!server.last_error().empty()) std::printf("last error: %s\n", server.last_error().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-vhost-blk: serve a keel VF as a vhost-user-blk device"};
  std::string socket_path, card_spec = "model", image;
  std::uint64_t size_mib = 0;
  unsigned queues = 1, vf_index = 0;
  app.add_option("--socket", socket_path, "Unix socket to listen on (QEMU: -chardev socket,path=)")
      ->required();
  app.add_option("--card", card_spec,
                 "Card: model or sim (in this process), vfio-user:<socket> (one VF of a "
                 "running keel-card: its vf<N>.sock), or vfio:<BDF> (a VF bound to vfio-pci: "
                 "an SR-IOV SSD's, or a keel board's whose PF is the host's)")
      ->check([](const std::string& v) -> std::string {
        if (v == "model" || v == "sim" || v.rfind("vfio-user:", 0) == 0 ||
            v.rfind("vfio:", 0) == 0) {
          return {};
        }
        return "expected model, sim, vfio-user:<socket> or vfio:<BDF>, got '" + v + "'";
      });
  app.add_option("--image", image,
                 "Disk image backing the card's storage (created if missing); with vfio-user or "
                 "vfio, the storage the VF's namespace lives on (keel-card's image, the PF's "
                 "namespace), which the host path uses")
      ->required();
  std::uint64_t offset_mib = 0;
  app.add_option(
      "--offset-mib", offset_mib,
      "vfio-user or vfio: where the VF's slice starts in the image (keel-card gives VF n "
      "n * size / vfs)");
  app.add_option("--size-mib", size_mib, "Guest disk size in MiB")
      ->required()
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 20));
  app.add_option("--queues", queues, "Virtqueues (= VF IO queue pairs)")->check(CLI::Range(1u, 8u));
  app.add_option("--vf-index", vf_index, "Which VF serves the guest")->check(CLI::Range(0u, 7u));
  bool no_vf = false;
  app.add_flag("--no-vf", no_vf, "serve the guest on the software fallback path only");
  std::string host_socket, host_disk;
  auto* host_opt = app.add_option("--host-service", host_socket,
                                  "Reach the host path in keel-hostd at this socket instead of "
                                  "running it in this process");
  app.add_option("--disk", host_disk, "With --host-service: the keel-hostd disk of this guest")
      ->needs(host_opt);
  host_opt->needs("--disk");
  bool confidential = false;
  app.add_flag("--confidential", confidential,
               "The guest's RAM is private: the host path sees only a shared bounce pool (with "
               "--host-service, keel-hostd never gets a guest-RAM fd)");
  // The guest's TPM, hosted here (docs/vtpm.md): QEMU's -tpmdev emulator connects to it.
  keel::vtpm::VtpmServerConfig vtpm_config;
  auto* vtpm_opt = app.add_option("--vtpm-ctrl", vtpm_config.ctrl_path,
                                  "Serve the guest a TPM 2.0 on this control socket (QEMU: "
                                  "-chardev socket,path=... -tpmdev emulator -device tpm-crb)");
  app.add_option("--vtpm-state", vtpm_config.state.path,
                 "With --vtpm-ctrl: the TPM's state file (AES-256-GCM sealed)")
      ->needs(vtpm_opt);
  app.add_option("--vtpm-key", vtpm_config.state.key_path,
                 "With --vtpm-ctrl: the state's key file (32 bytes raw or 64 hex digits, mode "
                 "0600); the host service never reads it")
      ->needs(vtpm_opt);
  app.add_option("--vtpm-guest", vtpm_config.state.guest,
                 "With --vtpm-ctrl: the guest's name the state is bound to")
      ->needs(vtpm_opt);
  vtpm_opt->needs("--vtpm-state")->needs("--vtpm-key")->needs("--vtpm-guest");
  std::string log_level;
  keel::apps::add_log_option(app, log_level);
  app.footer(
      "Signals: SIGUSR1 surprise-removes the VF (failover to the host path), SIGUSR2 restores "
      "it (traffic returns to the VF); SIGHUP upgrades: the binary at this program's path takes "
      "the front end over without QEMU reconnecting; SIGINT/SIGTERM print the path transitions "
      "and counters and exit.");
  CLI11_PARSE(app, argc, argv);
  if (!keel::apps::start_logging("keel-vhost-blk", log_level)) return 2;

  // Signals are taken by sigwait below; block them before any thread exists.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGUSR1);
  sigaddset(&sigs, SIGUSR2);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  // The path the next binary is started from at an upgrade (whatever file is there then).
  std::error_code path_ec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", path_ec).string();

  // A new process of an upgrade: the old one sends the session, then lets the card go.
  int handover_fd = -1;
  std::optional<vmm::VhostUserSession> session;
  std::optional<KeptCard> kept_card;  // the card the old process kept running for this one
  std::optional<keel::vtpm::VtpmHandover> kept_vtpm;  // the vTPM the old process served
  Clock::time_point released_at{};                    // when the old process let the card go
  if (const char* env = std::getenv(kHandoverEnv); env != nullptr) {
    handover_fd = std::atoi(env);
    ::unsetenv(kHandoverEnv);
    (void)::fcntl(handover_fd, F_SETFD, FD_CLOEXEC);
    auto got = vmm::recv_session(handover_fd, std::chrono::seconds(30));
    if (!got) return fail("upgrade: receiving the session: " + to_string(got.error()));
    session = std::move(got).value();
    bool released = false;
    kept_card = wait_release(handover_fd, std::chrono::seconds(30), released, kept_vtpm);
    if (!released) return fail("upgrade: the old process did not let the card go");
    released_at = Clock::now();
  }

  // The guest's TPM: taken over from the old process at an upgrade (same client, same
  // channels, its volatile state resumed), else started on its state file.
  std::unique_ptr<keel::vtpm::VtpmServer> vtpm;
  if (!vtpm_config.ctrl_path.empty()) {
    auto v = kept_vtpm ? keel::vtpm::VtpmServer::adopt(vtpm_config, std::move(*kept_vtpm))
                       : keel::vtpm::VtpmServer::create(vtpm_config);
    if (!v) return fail("vTPM: " + to_string(v.error()));
    vtpm = std::move(v).value();
    if (auto st = vtpm->start(); !st.ok()) return fail("vTPM: " + to_string(st.error()));
  }

  keel::stack::StackConfig sc;
  sc.card = card_spec;
  sc.card_options.image_path = image;
  sc.card_options.storage_bytes = (size_mib + vf_index) * kMiB;
  sc.card_options.lockstep = false;  // like silicon: the card works on its own thread
  if (kept_card) sc.card_options.adopt_connection = kept_card->connection.get();
  const std::uint64_t disk_lbas = size_mib * kMiB / 512;
  std::vector<keel::sriov::VfResources>& res = sc.vfs.resources;
  res.resize(vf_index + 1);
  for (unsigned i = 0; i < vf_index; ++i) {
    res[i].slice_base = disk_lbas + i * (kMiB / 512);
    res[i].slice_lbas = kMiB / 512;
  }
  res[vf_index].queues = queues;
  res[vf_index].slice_lbas = disk_lbas;
  auto stack_r = keel::stack::Stack::open_card(sc);
  if (!stack_r) return fail("opening the " + card_spec + " card: " + to_string(stack_r.error()));
  const double card_open_ms = handover_fd >= 0 ? ms_since(released_at) : 0;
  std::unique_ptr<keel::stack::Stack> stack = std::move(stack_r).value();
  keel::fpga::Card* card = &stack->card();
  // A card of one function (a VF of keel-card's, or a VF handed to this process through VFIO):
  // its PF and VFs are set up elsewhere; this process holds VF 0, its slice at --offset-mib.
  const bool remote = !card->owns_pf();
  if (remote) {
    vf_index = 0;
  } else if (vf_index >= card->max_vfs()) {
    return fail("--vf-index " + std::to_string(vf_index) + ": the card has " +
                std::to_string(card->max_vfs()) + " VFs");
  }
  if (!remote) {
    if (auto st = stack->discover_pf(); !st.ok()) {
      return fail("PF manager: " + to_string(st.error()));
    }
    if (auto st = stack->enable_vfs(); !st.ok()) {
      return fail("enabling VFs (is the image smaller than --size-mib + --vf-index MiB?): " +
                  to_string(st.error()));
    }
  }
  auto vf = stack->vf(vf_index);
  if (!vf) return fail("VF " + std::to_string(vf_index) + ": " + to_string(vf.error()));

  // NVMe keepalive (a VF over vfio-user): the VF driver's memory in an arena the next process
  // adopts; the state the previous process saved, if it kept the VF running for this one.
  std::unique_ptr<keel::fpga::DmaArena> arena;
  std::optional<keel::drivers::nvme::SavedDriver> saved;
  if (kept_card) {
    keel::fpga::DmaArena::Handover h;
    h.memfd = std::move(kept_card->memfd);
    h.base = kept_card->base;
    h.bytes = kept_card->bytes;
    auto a = keel::fpga::DmaArena::adopt(**vf, std::move(h));
    auto s = keel::drivers::nvme::decode(kept_card->state);
    if (!a) {
      std::printf(
          "keel-vhost-blk: upgrade: the DMA arena cannot be adopted (%s): the VF is reset\n",
          to_string(a.error()).c_str());
    } else {
      arena = std::move(a).value();
      if (s) {
        saved = std::move(s).value();
      } else {
        std::printf(
            "keel-vhost-blk: upgrade: the saved VF state is refused (%s): the VF is reset\n",
            to_string(s.error()).c_str());
      }
    }
    kept_card.reset();
  } else if (card->backend() == "vfio-user") {
    auto a = keel::fpga::DmaArena::create(**vf, arena_bytes(queues), kArenaIova);
    if (a) {
      arena = std::move(a).value();
    } else {
      std::printf("keel-vhost-blk: no DMA arena (%s): an upgrade will reset the VF\n",
                  to_string(a.error()).c_str());
    }
  }

  // What this process only maps and does not count as its own memory: the guest's RAM (the
  // memory tables' files) and the card's storage image.
  std::vector<keel::FileId> not_own;
  if (auto id = keel::file_id(image); id) not_own.push_back(*id);

  // Re-created by the server for every memory table the front end sends.
  std::unique_ptr<vmm::HostStorage> host;
  auto factory = [&](vmm::GuestMemory& mem) -> keel::Result<std::unique_ptr<vmm::Paravisor>> {
    host.reset();  // the paravisor that used it is gone
    for (const auto& r : mem.regions()) {
      if (auto id = keel::file_id(r.fd); id) not_own.push_back(*id);
    }
    if (!host_socket.empty()) {
      // The host path in keel-hostd: it gets this guest's RAM only if it is not confidential.
      std::vector<vmm::HostMemoryRegion> ram;
      if (!confidential) {
        for (const auto& r : mem.regions()) ram.push_back({r.fd, r.fd_offset, r.gpa, r.bytes});
      }
      auto h = vmm::RemoteHostStorage::connect(host_socket, host_disk, ram);
      if (!h) return h.error();
      if ((*h)->disk_bytes() < size_mib * kMiB) {
        return keel::make_error(keel::Errc::invalid_argument,
                                "keel-hostd's disk '" + host_disk + "' is smaller than --size-mib");
      }
      host = std::move(h).value();
    } else {
      keel::stack::DiskSpec disk;
      disk.base_offset = remote ? offset_mib * kMiB : 0;
      disk.length = size_mib * kMiB;
      disk.ram =
          confidential ? keel::stack::GuestRamView::none : keel::stack::GuestRamView::regions;
      auto h = stack->start_host_service(stack->host_config(mem, disk));
      if (!h) return h.error();
      host = std::move(h).value();
    }
    vmm::ParavisorConfig pc;
    pc.arena = arena.get();
    if (saved && mem.regions().empty()) {
      // The server's probe, before the front end's memory table: the device as the kept VF
      // has it, without touching the VF (the next paravisor takes it over running).
      pc.capacity_sectors = saved->controller.id_ns.nsze * saved->controller.block_bytes / 512;
      pc.block_bytes = saved->controller.block_bytes;
      pc.confidential = confidential;
      pc.queues = queues;
      pc.threads = true;
      return stack->create_paravisor(nullptr, mem, *host, pc);
    }
    pc.restore = saved ? &*saved : nullptr;
    pc.confidential = confidential;
    pc.queues = queues;
    pc.threads = true;  // the server runs on its own thread and never drives the data path
    pc.capacity_sectors = disk_lbas;
    // A guest under TCG on a loaded host can leave commands waiting a long time: a longer
    // bound than the default keeps a slow host from looking like a lost VF.
    pc.command_timeout = std::chrono::seconds(5);
    auto pv = stack->create_paravisor(no_vf ? nullptr : *vf, mem, *host, pc);
    saved.reset();  // taken over or not, once
    return pv;
  };
  vmm::VhostUserBlkConfig vc;
  vc.socket_path = socket_path;
  auto server_r = session ? vmm::VhostUserBlkServer::adopt(vc, factory, std::move(*session))
                          : vmm::VhostUserBlkServer::create(vc, factory);
  session.reset();
  if (!server_r) return fail("vhost-user server: " + to_string(server_r.error()));
  std::unique_ptr<vmm::VhostUserBlkServer> server = std::move(server_r).value();
  if (auto st = server->start(); !st.ok()) return fail(to_string(st.error()));
  if (handover_fd >= 0) {
    (void)send_record(handover_fd, kServing);
    ::close(handover_fd);
    // Where the pause goes in this process, from the old one letting the card go.
    std::printf(
        "keel-vhost-blk: upgrade: took over the front end's session: card open after "
        "%.2f ms, serving after %.2f ms (VF bring-up and host path included)\n",
        card_open_ms, ms_since(released_at));
  }
  std::printf("keel-vhost-blk: serving %s (%" PRIu64
              " MiB, %u queue%s) from VF %u of the %s card "
              "on %s\n",
              image.c_str(), size_mib, queues, queues == 1 ? "" : "s", vf_index, card_spec.c_str(),
              socket_path.c_str());
  std::fflush(stdout);

  // SIGHUP: hands the session to a new process of the binary at `self`. True when it serves
  // (this process then exits); false when this one goes on serving.
  auto upgrade = [&]() -> bool {
    const auto t0 = Clock::now();
    if (!server->connected()) {
      std::printf("keel-vhost-blk: SIGHUP: no front end connected: restart to upgrade\n");
      return false;
    }
    int sp[2];
    if (self.empty() || ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
      std::printf("keel-vhost-blk: SIGHUP: cannot start the new process\n");
      return false;
    }
    // Everything the child needs is made before fork(): between fork and exec it may only
    // make system calls (other threads may hold the allocator's lock).
    const std::string handover = std::string(kHandoverEnv) + "=" + std::to_string(sp[1]);
    std::vector<char*> envp;
    for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
    envp.push_back(const_cast<char*>(handover.c_str()));
    envp.push_back(nullptr);
    const pid_t child = ::fork();
    if (child == 0) {
      (void)::fcntl(sp[1], F_SETFD, 0);  // the new process's end survives exec
      ::execve(self.c_str(), argv, envp.data());
      ::_exit(127);
    }
    ::close(sp[1]);
    keel::UniqueFd channel(sp[0]);
    if (child < 0) return false;
    // Requests in flight complete first; then the VF driver's state is saved, the VF left
    // running, if it lives in an arena the new process can adopt.
    std::optional<keel::drivers::nvme::SavedDriver> to_keep;
    std::string not_kept = "no DMA arena";
    auto taken = server->take_session([&](vmm::Paravisor& pv) {
      if (arena == nullptr) return;
      auto s = pv.save();
      if (s) {
        to_keep = std::move(s).value();
      } else {
        not_kept = to_string(s.error());
      }
    });
    if (!taken) {
      std::printf("keel-vhost-blk: SIGHUP: %s\n", to_string(taken.error()).c_str());
      ::kill(child, SIGKILL);
      (void)::waitpid(child, nullptr, 0);
      (void)server->start();
      return false;
    }
    const double paused_ms = ms_since(t0);
    if (auto st = vmm::send_session(channel.get(), *taken); !st.ok()) {
      // The new process is gone: this one takes its session back and goes on.
      std::printf("keel-vhost-blk: upgrade failed (%s): serving on\n",
                  to_string(st.error()).c_str());
      ::kill(child, SIGKILL);
      (void)::waitpid(child, nullptr, 0);
      print_report(*server);
      server.reset();
      auto back = vmm::VhostUserBlkServer::adopt(vc, factory, std::move(taken).value());
      if (!back) {
        std::printf("keel-vhost-blk: taking the session back failed: %s\n",
                    to_string(back.error()).c_str());
        std::exit(1);
      }
      server = std::move(back).value();
      (void)server->start();
      return false;
    }
    taken = vmm::VhostUserSession{};
    // The card goes before the new process opens it (a VF over vfio-user or VFIO has one
    // user at a time); kept running, it goes with the arena and the connection.
    print_report(*server);
    server.reset();
    host.reset();
    std::optional<KeptCard> keep;
    if (to_keep) {
      auto h = arena->hand_over();
      const keel::fpga::Iova window = arena->base();
      auto conn = h ? (*vf)->hand_over({&window, 1}) : keel::Result<keel::UniqueFd>(h.error());
      if (h && conn) {
        keep.emplace();
        keep->memfd = std::move(h->memfd);
        keep->connection = std::move(conn).value();
        keep->base = h->base;
        keep->bytes = h->bytes;
        keep->state = keel::drivers::nvme::encode(*to_keep);
      } else {
        not_kept = to_string(h ? conn.error() : h.error());
      }
    }
    arena.reset();
    stack.reset();
    const double released_ms = ms_since(t0);
    if (keep && !send_kept(channel.get(), *keep)) {
      keep.reset();
      not_kept = "sending it to the new process failed";
    }
    std::printf("keel-vhost-blk: upgrade: VF %s\n",
                keep ? "kept running (NVMe keepalive): its state, arena and connection handed over"
                     : ("not kept (" + not_kept + "): the new process resets it").c_str());
    if (vtpm) {
      // The TPM goes last: its client (QEMU's TPM thread) only waits meanwhile.
      auto h = vtpm->hand_over();
      vtpm.reset();
      if (!h) {
        std::printf(
            "keel-vhost-blk: upgrade: vTPM not handed over (%s): QEMU's TPM channels close "
            "and the guest's TPM fails until QEMU starts again (its state is safe in the "
            "file)\n",
            to_string(h.error()).c_str());
      } else if (!send_vtpm(channel.get(), *h)) {
        std::printf("keel-vhost-blk: upgrade: sending the vTPM failed\n");
      } else {
        std::printf("keel-vhost-blk: upgrade: vTPM handed over (TPM %s)\n",
                    h->running ? "running" : "stopped");
      }
    }
    (void)send_record(channel.get(), kReleased);
    const bool serving = wait_record(channel.get(), kServing, std::chrono::seconds(60));
    std::printf(
        "keel-vhost-blk: upgrade: session taken after %.2f ms (requests drained), card "
        "released after %.2f ms, %s pid %d after %.2f ms\n",
        paused_ms, released_ms, serving ? "served by" : "NOT served by", static_cast<int>(child),
        ms_since(t0));
    std::fflush(stdout);
    return true;
  };

  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig == SIGINT || sig == SIGTERM) break;
    if (sig == SIGHUP) {
      if (upgrade()) return 0;
      std::fflush(stdout);
      continue;
    }
    keel::fpga::FaultInjector* fi = card->faults();
    if (fi == nullptr) {
      std::printf("keel-vhost-blk: this card cannot remove or restore VFs\n");
      continue;
    }
    if (sig == SIGUSR1) {
      const auto st = fi->surprise_remove(vf_index);
      std::printf("keel-vhost-blk: SIGUSR1: VF %u surprise-removed%s\n", vf_index,
                  st.ok() ? "" : (": " + to_string(st.error())).c_str());
    } else {
      const auto st = fi->restore(vf_index);
      std::printf("keel-vhost-blk: SIGUSR2: VF %u restored%s\n", vf_index,
                  st.ok() ? "" : (": " + to_string(st.error())).c_str());
    }
    std::fflush(stdout);
  }
  std::printf("keel-vhost-blk: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server->stop();
  print_report(*server);
  if (vtpm) {
    vtpm->stop();
    const auto& c = vtpm->vtpm().counters();
    std::printf("vtpm: %" PRIu64 " control messages (%" PRIu64 " refused), %" PRIu64
                " TPM commands (%" PRIu64 " of a bad size, %" PRIu64 " in failure mode)%s\n",
                c.ctrl_messages.load(), c.ctrl_refused.load(), c.tpm_commands.load(),
                c.bad_command_size.load(), c.failure_mode.load(),
                vtpm->vtpm().in_failure_mode() ? ", state REFUSED" : "");
    vtpm.reset();
  }
  if (auto own = keel::own_resident_bytes(not_own); own) {
    std::printf(
        "memory: %.1f MiB resident of its own (guest RAM and the card's storage left "
        "out), %u queue%s, %s card\n",
        static_cast<double>(*own) / (1 << 20), queues, queues == 1 ? "" : "s",
        remote ? "a remote" : "an in-process");
  }
  server.reset();  // drops the front end; the paravisor stops before the host service goes
  host.reset();
  arena.reset();  // its window goes before the card
  stack.reset();
  return 0;
}
