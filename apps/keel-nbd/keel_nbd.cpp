// keel-nbd: one keel guest disk exported over NBD on a unix socket, so that fio's nbd engine
// (or any NBD client) drives keel unchanged:
//
//   keel-nbd --socket /tmp/keel.sock --path vf &
//   fio --name=j --ioengine=nbd --uri='nbd+unix:///?socket=/tmp/keel.sock' --rw=randrw --bs=4k
//
// Stands up a free-running card, one VF whose namespace is the disk, a host storage service on
// the same image, a paravisor (worker threads) on the VF (--path vf) or without one (--path
// fallback: every request takes the host path), and an NBD server playing the guest. Serves
// until SIGINT or SIGTERM, then prints the path transitions, the paravisor and server
// counters, and host-side CPU: paravisor workers + host service thread + its io_uring workers
// (the cost keel_bench_paravisor counts), and the NBD server threads (the "guest") apart.
// --connections N (default 4): N connections served in parallel, each on its own server worker,
// virtqueue and VF queue pair (--queues M < N: spread over M of them); the N+1th is closed at
// once (logged; fio's nbd engine then fails).
#include <signal.h>
#include <sys/resource.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "app_log.h"
#include "keel/process_memory.h"
#include "keel/stack/nbd_disk.h"
#include "keel/vmm/nbd_server.h"

namespace {

namespace vmm = keel::vmm;
namespace stack = keel::stack;

int fail(const std::string& what) {
  std::fprintf(stderr, "keel-nbd: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-nbd: export a keel guest disk over NBD (unix socket)"};
  std::string socket_path, card = "model", image, path = "vf", trim = "zero", stats_json;
  std::string export_name = "keel";
  std::uint64_t size_mib = 64;
  unsigned queue_depth = 64;
  unsigned connections = 4;
  unsigned queues = 0;
  bool read_only = false;
  app.add_option("--socket", socket_path, "Unix socket to listen on")->required();
  app.add_option("--card", card,
                 "Card backend (model, sim, vfio:<BDF>, xrt:<N>; one function: vfio:<VF BDF>, "
                 "vfio-user:<keel-card run dir>/vf<N>.sock)");
  app.add_option("--image", image,
                 "Disk image (created if missing; default: a temporary image in /dev/shm). On a "
                 "card of one function: the storage its namespace lives on, for the host path "
                 "(the PF's namespace, or keel-card's image)");
  app.add_option("--size-mib", size_mib, "Disk size in MiB")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 20));
  app.add_option("--path", path, "vf: the accelerated path; fallback: the host path only")
      ->check(CLI::IsMember({"vf", "fallback"}));
  app.add_option("--queue-depth", queue_depth, "NBD requests in flight per connection")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--connections", connections,
                 "NBD connections served at once, in parallel: the paravisor gets as many queues "
                 "(and VF queue pairs), the server as many worker threads. A connection past the "
                 "limit is closed at once, with a log line")
      ->check(CLI::Range(1u, 64u));
  app.add_option("--queues", queues,
                 "Server workers and paravisor queues the connections are spread over (default: "
                 "--connections, one each)")
      ->check(CLI::Range(1u, 64u));
  app.add_option("--export-name", export_name, "Export name (the default export '' works too)");
  app.add_option("--trim", trim, "NBD_CMD_TRIM: zero (write zeroes), ignore, off")
      ->check(CLI::IsMember({"zero", "ignore", "off"}));
  app.add_flag("--read-only", read_only, "Refuse writes (EPERM)");
  app.add_option("--stats-json", stats_json, "Write the exit report as JSON to this file");
  std::string log_level;
  keel::apps::add_log_option(app, log_level);
  CLI11_PARSE(app, argc, argv);
  if (!keel::apps::start_logging("keel-nbd", log_level)) return 2;

  // Signals are taken by sigwait below; block them before any thread exists.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  stack::NbdDiskOptions o;
  o.card = card;
  o.image = image;
  o.size_bytes = size_mib << 20;
  o.vf_path = path == "vf";
  o.server.socket_path = socket_path;
  o.server.export_name = export_name;
  o.server.queue_depth = queue_depth;
  o.server.queues = queues == 0 ? connections : std::min(queues, connections);
  o.server.max_connections = connections;
  o.server.read_only = read_only;
  o.server.trim = trim == "zero"     ? vmm::NbdTrim::zero
                  : trim == "ignore" ? vmm::NbdTrim::ignore
                                     : vmm::NbdTrim::off;
  auto disk_r = stack::NbdDisk::create(o);
  if (!disk_r) return fail(keel::to_string(disk_r.error()));
  std::unique_ptr<stack::NbdDisk> disk = std::move(disk_r).value();
  std::printf("keel-nbd: serving %s (%" PRIu64
              " MiB) on the %s card, path %s, on %s (export '%s'), up to %u connections on %u "
              "queue(s)\n",
              disk->image().c_str(), size_mib, card.c_str(), path.c_str(), socket_path.c_str(),
              export_name.c_str(), connections,
              static_cast<unsigned>(disk->paravisor().config_space().num_queues));
  std::printf("keel-nbd: fio --ioengine=nbd --uri='nbd+unix:///%s?socket=%s'\n",
              export_name.c_str(), socket_path.c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  std::printf("keel-nbd: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  const std::uint64_t server_cpu_before_stop = disk->server().thread_cpu_ns();
  disk->stop();
  const std::uint64_t host_cpu = disk->host_cpu_ns();
  const std::uint64_t server_cpu = std::max(disk->server().thread_cpu_ns(), server_cpu_before_stop);

  std::printf("path transitions:\n");
  for (const vmm::Transition& t : disk->paravisor().transitions()) {
    std::printf("  %12.3f ms  %-8s -> %-8s  %s\n", static_cast<double>(t.card_time_ns) / 1e6,
                vmm::to_string(t.from), vmm::to_string(t.to), t.reason.c_str());
  }
  const vmm::ParavisorCounters c = disk->paravisor().counters();
  std::printf("paravisor: requests=%" PRIu64 " vf_ios=%" PRIu64 " fallback_ios=%" PRIu64
              " reissued=%" PRIu64 " bounced=%" PRIu64 " errors=%" PRIu64 " bad_requests=%" PRIu64
              " notifications=%" PRIu64 " to_fallback=%" PRIu64 " to_vf=%" PRIu64 "\n",
              c.requests, c.vf_ios, c.fallback_ios, c.reissued, c.bounced, c.errors, c.bad_requests,
              c.notifications, c.to_fallback, c.to_vf);
  const vmm::NbdServerStats s = disk->server().stats();
  std::printf("nbd: connections=%" PRIu64 " requests=%" PRIu64 " reads=%" PRIu64 " writes=%" PRIu64
              " flushes=%" PRIu64 " trims=%" PRIu64 " write_zeroes=%" PRIu64 " bytes_read=%" PRIu64
              " bytes_written=%" PRIu64 " error_replies=%" PRIu64 " protocol_errors=%" PRIu64
              " unaligned=%" PRIu64 " device_timeouts=%" PRIu64 " virtio_requests=%" PRIu64 "\n",
              s.connections, s.requests, s.reads, s.writes, s.flushes, s.trims, s.write_zeroes,
              s.bytes_read, s.bytes_written, s.error_replies, s.protocol_errors, s.unaligned,
              s.device_timeouts, s.virtio_requests);
  const double per_io = static_cast<double>(std::max<std::uint64_t>(c.requests, 1));
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "host cpu: %.3f ms (paravisor workers + host service + io_uring workers), "
      "%.0f ns per virtio request\n",
      static_cast<double>(host_cpu) / 1e6, static_cast<double>(host_cpu) / per_io);
  std::printf("nbd server threads cpu: %.3f ms, %.0f ns per virtio request\n",
              static_cast<double>(server_cpu) / 1e6, static_cast<double>(server_cpu) / per_io);
  std::printf("peak rss: %.1f MiB\n", static_cast<double>(ru.ru_maxrss) / 1024.0);
  // Its own memory: everything resident but the disk image (card storage and host path map
  // it). Its virtio rings and buffers are its own: it is the guest here.
  std::vector<keel::FileId> not_own;
  if (auto id = keel::file_id(disk->image()); id) not_own.push_back(*id);
  const auto own = keel::own_resident_bytes(not_own);
  const std::uint64_t own_kib = own ? *own / 1024 : 0;
  if (own) {
    std::printf("memory: %.1f MiB resident of its own (the disk image left out)\n",
                static_cast<double>(*own) / (1 << 20));
  }
  if (!disk->server().last_error().empty()) {
    std::printf("nbd last error: %s\n", disk->server().last_error().c_str());
  }
  if (!stats_json.empty()) {
    std::ofstream j(stats_json);
    j << "{\n"
      << "  \"path\": \"" << path << "\",\n"
      << "  \"card\": \"" << card << "\",\n"
      << "  \"virtio_requests\": " << c.requests << ",\n"
      << "  \"vf_ios\": " << c.vf_ios << ",\n"
      << "  \"fallback_ios\": " << c.fallback_ios << ",\n"
      << "  \"paravisor_errors\": " << c.errors << ",\n"
      << "  \"to_fallback\": " << c.to_fallback << ",\n"
      << "  \"nbd_requests\": " << s.requests << ",\n"
      << "  \"nbd_error_replies\": " << s.error_replies << ",\n"
      << "  \"nbd_protocol_errors\": " << s.protocol_errors << ",\n"
      << "  \"host_cpu_ns\": " << host_cpu << ",\n"
      << "  \"server_cpu_ns\": " << server_cpu << ",\n"
      << "  \"peak_rss_kib\": " << ru.ru_maxrss << ",\n"
      << "  \"own_rss_kib\": " << own_kib << "\n"
      << "}\n";
    if (!j) return fail("writing " + stats_json);
  }
  disk.reset();
  return 0;
}
