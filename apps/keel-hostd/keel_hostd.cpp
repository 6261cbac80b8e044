// keel-hostd: the host storage service (the software fallback path) as a process of its own.
// It serves the disks it is configured with (--disk NAME=IMAGE[:OFFSET[:LENGTH]]) to the
// paravisors that connect to --socket (keel/vmm/remote_host.h): each connection opens one disk
// with the guest RAM its paravisor sends (none for a confidential guest, whose paravisor sends
// only its shared bounce pool), so this process maps exactly that memory and nothing else.
// With --net-switch SOCKET it also runs the host's software switch, the network fallback path
// (keel/vmm/soft_switch.h): paravisors' virtio-net fallback ports connect there, and --uplink
// SPEC (apps/common/uplink.h) joins it to the card's uplink. Either service or both.
// Foreground, logs on stderr (--log-level); SIGINT/SIGTERM end every session and exit.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "app_log.h"
#include "keel/log.h"
#include "keel/unix_listener.h"
#include "keel/vmm/remote_host.h"
#include "keel/vmm/soft_switch.h"
#include "uplink.h"

namespace {

constexpr keel::log::Logger kLog{"keel-hostd"};

int fail(const std::string& what) {
  std::fprintf(stderr, "keel-hostd: %s\n", what.c_str());
  return 1;
}

// "123", "64K", "8M", "2G" -> bytes; false when malformed.
bool parse_size(const std::string& s, std::uint64_t& out) {
  if (s.empty()) return false;
  std::size_t used = 0;
  std::uint64_t v = 0;
  try {
    v = std::stoull(s, &used, 0);
  } catch (const std::exception&) {
    return false;
  }
  const std::string unit = s.substr(used);
  const std::uint64_t mult = unit.empty()                 ? 1
                             : unit == "K" || unit == "k" ? 1ull << 10
                             : unit == "M" || unit == "m" ? 1ull << 20
                             : unit == "G" || unit == "g" ? 1ull << 30
                                                          : 0;
  if (mult == 0 || (v != 0 && v > UINT64_MAX / mult)) return false;
  out = v * mult;
  return true;
}

// NAME=IMAGE[:OFFSET[:LENGTH]]
std::string parse_disk(const std::string& spec, std::map<std::string, keel::vmm::HostDisk>& out) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) return "expected NAME=IMAGE[:OFFSET[:LENGTH]]";
  const std::string name = spec.substr(0, eq);
  if (name.size() >= keel::vmm::remote::kDiskNameBytes) return "disk name too long";
  if (out.count(name) != 0) return "disk '" + name + "' given twice";
  std::vector<std::string> parts;
  std::string rest = spec.substr(eq + 1);
  for (std::size_t at; (at = rest.find(':')) != std::string::npos; rest.erase(0, at + 1)) {
    parts.push_back(rest.substr(0, at));
  }
  parts.push_back(rest);
  if (parts.empty() || parts[0].empty() || parts.size() > 3) {
    return "expected NAME=IMAGE[:OFFSET[:LENGTH]]";
  }
  keel::vmm::HostDisk d;
  d.image_path = parts[0];
  if (parts.size() > 1 && !parse_size(parts[1], d.offset)) return "bad offset '" + parts[1] + "'";
  if (parts.size() > 2 && !parse_size(parts[2], d.length)) return "bad length '" + parts[2] + "'";
  if (::access(d.image_path.c_str(), R_OK | W_OK) != 0) {
    return "image '" + d.image_path + "' is not a readable and writable file";
  }
  out[name] = d;
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-hostd: the host storage service (software fallback) as its own process"};
  std::string socket_path, log_level, switch_path, uplink_spec;
  std::vector<std::string> disk_specs;
  app.add_option("--socket", socket_path, "Unix socket paravisors' storage connects to");
  app.add_option("--disk", disk_specs,
                 "A disk to serve: NAME=IMAGE[:OFFSET[:LENGTH]] (bytes; K, M, G suffixes; "
                 "LENGTH 0 or none: to the end of the image)");
  app.add_option("--net-switch", switch_path,
                 "Run the software switch (network fallback path): unix socket paravisors' "
                 "fallback ports connect to");
  app.add_option(
      "--uplink", uplink_spec,
      std::string("The software switch's uplink to the card: ") + keel::apps::kUplinkSpecHelp);
  keel::apps::add_log_option(app, log_level);
  CLI11_PARSE(app, argc, argv);
  if (!keel::apps::start_logging("keel-hostd", log_level)) return 2;
  if (socket_path.empty() && switch_path.empty())
    return fail("give --socket, --net-switch or both");
  if (socket_path.empty() != disk_specs.empty()) return fail("--socket and --disk go together");
  if (!uplink_spec.empty() && switch_path.empty()) return fail("--uplink needs --net-switch");
  std::map<std::string, keel::vmm::HostDisk> disks;
  for (const std::string& s : disk_specs) {
    if (std::string e = parse_disk(s, disks); !e.empty()) return fail("--disk " + s + ": " + e);
  }

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);  // before any service thread exists
  const int sig_fd = ::signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0) return fail("signalfd failed");

  // The software switch: a thread of its own. A datagram uplink's peer (the card) may start
  // later: the switch dials it when a frame for the uplink finds it unconnected.
  std::unique_ptr<keel::vmm::SoftSwitch> net;
  std::string uplink_local;  // removed at exit
  if (!switch_path.empty()) {
    keel::vmm::SoftSwitchConfig sc;
    sc.socket_path = switch_path;
    if (!uplink_spec.empty()) {
      auto u = keel::apps::open_uplink(uplink_spec);
      if (!u) return fail(to_string(u.error()));
      if (!u->connected) kLog.info("uplink: %s is not there yet", u->peer.c_str());
      sc.uplink = std::move(u->fd);
      sc.uplink_peer = u->peer;
      uplink_local = u->local;
    }
    auto s = keel::vmm::SoftSwitch::create(std::move(sc));
    if (!s) return fail("--net-switch: " + to_string(s.error()));
    net = std::move(*s);
    if (keel::Status st = net->start(); !st.ok()) return fail(to_string(st.error()));
    std::printf("keel-hostd: software switch on %s%s%s\n", switch_path.c_str(),
                uplink_spec.empty() ? "" : ", uplink ", uplink_spec.c_str());
  }

  keel::UnixListener listener;
  if (!socket_path.empty()) {
    keel::UnixListenerConfig lc;
    lc.type = SOCK_SEQPACKET;
    auto l = keel::UnixListener::listen(socket_path, lc);
    if (!l) return fail(to_string(l.error()));
    listener = std::move(*l);
    std::printf("keel-hostd: serving %zu disk(s) on %s\n", disks.size(), socket_path.c_str());
  }
  std::fflush(stdout);

  std::vector<std::unique_ptr<keel::vmm::RemoteHostSession>> sessions;
  std::uint64_t opened = 0, ended = 0;
  for (bool running = true; running;) {
    // A listener not there (-1) is ignored by poll.
    std::vector<pollfd> p{{sig_fd, POLLIN, 0}, {listener.fd(), POLLIN, 0}};
    for (const auto& s : sessions) p.push_back({s->fd(), POLLIN, 0});
    if (::poll(p.data(), p.size(), -1) < 0) continue;  // EINTR
    if (p[0].revents != 0) running = false;
    if (p[1].revents != 0) {
      keel::UniqueFd fd = listener.accept();
      if (fd.valid()) {
        sessions.push_back(std::make_unique<keel::vmm::RemoteHostSession>(
            std::move(fd), disks, keel::vmm::HostServiceConfig{}));
        ++opened;
        kLog.info("paravisor connected (%zu session(s))", sessions.size());
      }
    }
    // Sessions whose peer is gone end: their services stop and unmap what they were sent.
    for (std::size_t i = 2, k = 0; i < p.size(); ++i) {
      if (p[i].revents == 0) {
        ++k;
        continue;
      }
      if (sessions[k]->handle()) {
        ++k;
        continue;
      }
      kLog.info("paravisor of '%s' gone: its session ends", sessions[k]->disk().c_str());
      sessions.erase(sessions.begin() + static_cast<std::ptrdiff_t>(k));
      ++ended;
    }
  }
  std::printf("keel-hostd: shutting down: sessions=%llu ended=%llu open=%zu\n",
              static_cast<unsigned long long>(opened), static_cast<unsigned long long>(ended),
              sessions.size());
  sessions.clear();
  if (net) {
    net->stop();
    const std::string text = keel::vmm::format_counters(net->counters());
    std::printf("keel-hostd: software switch:\n%s", text.c_str());
    net.reset();
    if (!uplink_local.empty()) ::unlink(uplink_local.c_str());
  }
  std::fflush(stdout);
  return 0;
}
