// The host's software switch: a poll loop over the listening socket, the guests' fallback
// ports, the uplink and a stop eventfd, switching with keel::eswitch (rules in soft_switch.h).
#include "keel/vmm/soft_switch.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <span>
#include <thread>

#include "keel/log.h"
#include "keel/unix_listener.h"
#include "keel/wire/fallback_port.h"

namespace keel::vmm {
namespace {

namespace fp = fallback_port;
using eswitch::Drop;
using eswitch::PortCounters;

constexpr log::Logger kLog{"soft-switch"};
constexpr unsigned kUplinkPort = 0;
constexpr std::uint16_t kMinMtu = 68, kMaxMtu = 9000;
constexpr std::size_t kFrameOverhead = 18;  // Ethernet header + one 802.1Q tag

void add(PortCounters& into, const PortCounters& c) noexcept {
  into.rx_frames += c.rx_frames;
  into.rx_bytes += c.rx_bytes;
  into.tx_frames += c.tx_frames;
  into.tx_bytes += c.tx_bytes;
  for (std::size_t i = 0; i < eswitch::kDropCauses; ++i) into.drops[i] += c.drops[i];
}

std::string mac_text(const eswitch::Mac& m) {
  char s[18];
  std::snprintf(s, sizeof s, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return s;
}

std::string port_text(const PortCounters& c) {
  char s[160];
  std::snprintf(s, sizeof s,
                "rx %" PRIu64 " frames %" PRIu64 " bytes, tx %" PRIu64 " frames %" PRIu64
                " bytes, drops",
                c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes);
  std::string out = s;
  bool any = false;
  for (std::size_t i = 1; i < eswitch::kDropCauses; ++i) {
    if (c.drops[i] == 0) continue;
    out += std::string(" ") + eswitch::to_string(static_cast<Drop>(i)) + "=" +
           std::to_string(c.drops[i]);
    any = true;
  }
  return any ? out : out + " none";
}

bool peer_missing(int e) noexcept {
  return e == ENOTCONN || e == ECONNREFUSED || e == ENOENT || e == EDESTADDRREQ;
}

/// One guest's fallback port: a connection and the eswitch port it owns.
struct Conn {
  UniqueFd fd;
  bool hello = false;
  eswitch::Mac mac{};
  std::uint16_t mtu = 0;
  bool on_fallback = false;
  bool dead = false;  ///< A send found the peer gone: closed at the end of the pass.
};

}  // namespace

const char* to_string(SoftSwitchError e) noexcept {
  switch (e) {
    case SoftSwitchError::short_record: return "short_record";
    case SoftSwitchError::bad_type: return "bad_type";
    case SoftSwitchError::bad_length: return "bad_length";
    case SoftSwitchError::frame_before_hello: return "frame_before_hello";
    case SoftSwitchError::second_hello: return "second_hello";
    case SoftSwitchError::bad_mac: return "bad_mac";
    case SoftSwitchError::mac_in_use: return "mac_in_use";
    case SoftSwitchError::bad_mtu: return "bad_mtu";
    case SoftSwitchError::bad_state: return "bad_state";
    case SoftSwitchError::count_: break;
  }
  return "unknown";
}

std::string format_counters(const SoftSwitchCounters& c) {
  std::string out =
      std::string("uplink (") + (c.uplink_up ? "up" : "down") + "): " + port_text(c.uplink) + "\n";
  out += "guest ports: " + port_text(c.guests) + "\n";
  out += "connections: accepted " + std::to_string(c.connections_accepted) + ", refused " +
         std::to_string(c.connections_refused) + ", closed " +
         std::to_string(c.connections_closed) + ", open " + std::to_string(c.ports.size()) +
         "\nprotocol errors:";
  bool any = false;
  for (std::size_t i = 0; i < kSoftSwitchErrors; ++i) {
    if (c.errors[i] == 0) continue;
    out += std::string(" ") + to_string(static_cast<SoftSwitchError>(i)) + "=" +
           std::to_string(c.errors[i]);
    any = true;
  }
  return out + (any ? "\n" : " none\n");
}

struct SoftSwitch::Impl {
  explicit Impl(SoftSwitchConfig c)
      : config(std::move(c)), esw(config.max_ports + 1, kUplinkPort), conns(config.max_ports + 1) {}

  bool pass(int timeout_ms);
  void accept_all();
  void read_uplink(short revents);
  void read_port(unsigned port, short revents);
  /// Handles one record of `bytes` in buf (truncated: it was longer than the buffer). False
  /// when the connection is to close.
  bool record(unsigned port, std::size_t bytes, bool truncated);
  bool hello(Conn& c, unsigned port, std::size_t body);
  void switch_frame(unsigned in, std::span<const std::uint8_t> frame);
  void to_port(unsigned port, std::span<const std::uint8_t> frame);
  void to_uplink(std::span<const std::uint8_t> frame);
  void uplink_lost(const char* why);
  void close_port(unsigned port, const char* why);
  void fail(unsigned port, SoftSwitchError e);
  void configure(unsigned port);

  SoftSwitchConfig config;
  UnixListener listener;
  UniqueFd stop_fd;
  mutable std::mutex mutex;  ///< Everything below: the loop holds it while it serves fds.
  eswitch::Eswitch esw;
  std::vector<Conn> conns;  ///< By eswitch port; [0] (the uplink) unused.
  bool uplink_up = false;
  bool uplink_socket = false;  ///< The uplink is a socket (not a TAP device).
  PortCounters retired;        ///< Guest ports that are gone.
  std::uint64_t accepted = 0, refused = 0, closed = 0;
  std::array<std::uint64_t, kSoftSwitchErrors> errors{};
  std::vector<std::uint8_t> buf = std::vector<std::uint8_t>(fp::kMaxRecord + 1);

  std::thread thread;
  std::atomic<bool> stopping{false};
};

void SoftSwitch::Impl::configure(unsigned port) {
  const Conn& c = conns[port];
  eswitch::PortConfig pc;
  pc.enabled = c.hello && c.on_fallback;
  pc.mac = c.mac;
  pc.anti_spoof = true;
  pc.max_frame = std::size_t{c.mtu} + kFrameOverhead;
  esw.configure(port, pc);
}

bool SoftSwitch::Impl::pass(int timeout_ms) {
  std::vector<pollfd> p{{stop_fd.get(), POLLIN, 0}, {listener.fd(), POLLIN, 0}};
  const int uplink_fd = uplink_up ? config.uplink.get() : -1;
  p.push_back({uplink_fd, POLLIN, 0});  // a negative fd is ignored by poll
  std::vector<unsigned> ports;
  for (unsigned i = 1; i < conns.size(); ++i) {
    if (!conns[i].fd.valid()) continue;
    p.push_back({conns[i].fd.get(), POLLIN, 0});
    ports.push_back(i);
  }
  const int n = ::poll(p.data(), p.size(), timeout_ms);
  if (n <= 0) return false;  // timeout or EINTR
  std::lock_guard lock(mutex);
  if (p[1].revents != 0) accept_all();
  if (p[2].revents != 0) read_uplink(p[2].revents);
  for (std::size_t i = 0; i < ports.size(); ++i) {
    if (p[3 + i].revents != 0 && conns[ports[i]].fd.valid()) read_port(ports[i], p[3 + i].revents);
  }
  for (unsigned i = 1; i < conns.size(); ++i) {
    if (conns[i].fd.valid() && conns[i].dead) close_port(i, "its peer is gone");
  }
  return (p[1].revents | p[2].revents) != 0 ||
         std::any_of(p.begin() + 3, p.end(), [](const pollfd& f) { return f.revents != 0; });
}

void SoftSwitch::Impl::accept_all() {
  for (unsigned k = 0; k < config.batch; ++k) {
    UniqueFd fd = listener.accept();
    if (!fd.valid()) return;
    unsigned port = 1;
    while (port < conns.size() && conns[port].fd.valid()) ++port;
    if (port == conns.size()) {
      ++refused;
      ++closed;
      kLog.warn("a fallback port was refused: all %u ports are in use", config.max_ports);
      continue;  // fd closes
    }
    ++accepted;
    conns[port] = Conn{};
    conns[port].fd = std::move(fd);
    configure(port);
    kLog.info("fallback port %u connected", port);
  }
}

void SoftSwitch::Impl::uplink_lost(const char* why) {
  kLog.warn("uplink lost (%s): unknown unicast is dropped from now on", why);
  uplink_up = false;
  eswitch::PortConfig pc = esw.config(kUplinkPort);
  pc.enabled = false;
  esw.configure(kUplinkPort, pc);
}

void SoftSwitch::Impl::read_uplink(short revents) {
  for (unsigned k = 0; k < config.batch && uplink_up; ++k) {
    const ssize_t n = ::read(config.uplink.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // Nothing to read, yet hung up: gone (else poll would wake this loop for ever).
        if (k == 0 && (revents & POLLHUP) != 0) uplink_lost("its peer hung up");
        return;
      }
      if (errno == ECONNREFUSED || errno == ECONNRESET) return;  // a datagram peer came or went
      uplink_lost(std::strerror(errno));
      return;
    }
    // 0 with a hang-up is the end of a SEQPACKET uplink; otherwise an empty frame (a runt).
    if (n == 0 && (revents & POLLHUP) != 0) {
      uplink_lost("its peer hung up");
      return;
    }
    // A frame longer than the buffer was cut to kMaxRecord + 1 bytes: still oversize.
    switch_frame(kUplinkPort, std::span(buf.data(), static_cast<std::size_t>(n)));
  }
}

void SoftSwitch::Impl::read_port(unsigned port, short revents) {
  for (unsigned k = 0; k < config.batch; ++k) {
    iovec iov{buf.data(), fp::kMaxRecord};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(conns[port].fd.get(), &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if ((revents & (POLLHUP | POLLERR)) != 0 && k == 0) close_port(port, "it hung up");
        return;
      }
      close_port(port, std::strerror(errno));
      return;
    }
    if (n == 0) {  // end of the connection (an empty record would be a short one anyway)
      close_port(port, "it hung up");
      return;
    }
    if (!record(port, static_cast<std::size_t>(n), (msg.msg_flags & MSG_TRUNC) != 0)) return;
  }
}

void SoftSwitch::Impl::fail(unsigned port, SoftSwitchError e) {
  ++errors[static_cast<std::size_t>(e)];
  if (e == SoftSwitchError::bad_mac || e == SoftSwitchError::mac_in_use ||
      e == SoftSwitchError::bad_mtu) {
    ++refused;
  }
  close_port(port, to_string(e));
}

bool SoftSwitch::Impl::record(unsigned port, std::size_t bytes, bool truncated) {
  Conn& c = conns[port];
  if (bytes < sizeof(fp::RecordHeader)) {
    fail(port, SoftSwitchError::short_record);
    return false;
  }
  fp::RecordHeader h;
  std::memcpy(&h, buf.data(), sizeof h);
  const std::size_t body = bytes - sizeof h;
  switch (h.type) {
    case fp::RecordType::hello: return hello(c, port, truncated ? fp::kMaxRecord : body);
    case fp::RecordType::state: {
      if (!c.hello) {
        fail(port, SoftSwitchError::frame_before_hello);
        return false;
      }
      fp::State s;
      if (truncated || body != sizeof s) {
        fail(port, SoftSwitchError::bad_length);
        return false;
      }
      std::memcpy(&s, buf.data() + sizeof h, sizeof s);
      if (s.on_fallback > 1) {
        fail(port, SoftSwitchError::bad_state);
        return false;
      }
      if (c.on_fallback != (s.on_fallback == 1)) {
        kLog.info("fallback port %u (%s): %s", port, mac_text(c.mac).c_str(),
                  s.on_fallback ? "on the fallback" : "on its VF");
      }
      c.on_fallback = s.on_fallback == 1;
      configure(port);
      return true;
    }
    case fp::RecordType::frame:
      if (!c.hello) {
        fail(port, SoftSwitchError::frame_before_hello);
        return false;
      }
      if (truncated) {  // longer than any frame may be: dropped, as the switch drops oversize
        esw.count_drop(port, Drop::oversize);
        return true;
      }
      switch_frame(port, std::span(buf.data() + sizeof h, body));
      return conns[port].fd.valid();
  }
  fail(port, SoftSwitchError::bad_type);
  return false;
}

bool SoftSwitch::Impl::hello(Conn& c, unsigned port, std::size_t body) {
  fp::Hello hi;
  if (body != sizeof hi) {
    fail(port, SoftSwitchError::bad_length);
    return false;
  }
  if (c.hello) {
    fail(port, SoftSwitchError::second_hello);
    return false;
  }
  std::memcpy(&hi, buf.data() + sizeof(fp::RecordHeader), sizeof hi);
  eswitch::Mac mac;
  std::memcpy(mac.data(), hi.mac, mac.size());
  if (knic::is_multicast(mac) || knic::is_zero(mac)) {
    fail(port, SoftSwitchError::bad_mac);
    return false;
  }
  if (hi.mtu < kMinMtu || hi.mtu > kMaxMtu) {
    fail(port, SoftSwitchError::bad_mtu);
    return false;
  }
  for (unsigned i = 1; i < conns.size(); ++i) {
    if (i != port && conns[i].fd.valid() && conns[i].hello && conns[i].mac == mac) {
      // A paravisor that rebuilt its device dials again before this loop has read the old
      // connection's end: an old port that has hung up gives its MAC to the new one.
      pollfd p{conns[i].fd.get(), POLLRDHUP, 0};
      if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        close_port(i, "it hung up (its MAC is taken over by a new port)");
        continue;
      }
      fail(port, SoftSwitchError::mac_in_use);
      return false;
    }
  }
  c.hello = true;
  c.mac = mac;
  c.mtu = hi.mtu;
  c.on_fallback = false;  // until its first STATE (fallback_port.h)
  configure(port);
  kLog.info("fallback port %u: guest %s, MTU %u", port, mac_text(mac).c_str(), hi.mtu);
  return true;
}

void SoftSwitch::Impl::switch_frame(unsigned in, std::span<const std::uint8_t> frame) {
  // A guest port off the fallback is out of the MAC table but may still send (during a move
  // both paths carry traffic): it is in the table for the length of this one route() only.
  const bool lift = in != kUplinkPort && !esw.config(in).enabled;
  if (lift) {
    eswitch::PortConfig pc = esw.config(in);
    pc.enabled = true;
    esw.configure(in, pc);
  }
  const eswitch::Route r = esw.route(in, frame);
  if (lift) configure(in);
  if (r.drop != Drop::none) return;
  for (unsigned p = 0; p < conns.size(); ++p) {
    if (!r.to.test(p)) continue;
    if (p == kUplinkPort) {
      to_uplink(frame);
    } else {
      to_port(p, frame);
    }
  }
}

void SoftSwitch::Impl::to_port(unsigned port, std::span<const std::uint8_t> frame) {
  Conn& c = conns[port];
  fp::RecordHeader h{fp::RecordType::frame, {}};
  iovec iov[2] = {{&h, sizeof h}, {const_cast<std::uint8_t*>(frame.data()), frame.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  ssize_t n;
  do {
    n = ::sendmsg(c.fd.get(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof h + frame.size())) return;
  const int e = n < 0 ? errno : EMSGSIZE;
  esw.egress_failed(port, frame.size(), Drop::no_buffer);
  if (e != EAGAIN && e != EWOULDBLOCK && e != ENOBUFS) c.dead = true;
}

void SoftSwitch::Impl::to_uplink(std::span<const std::uint8_t> frame) {
  const int fd = config.uplink.get();
  ssize_t n;
  for (bool dialled = false;;) {
    do {
      // A socket's peer gone must not raise SIGPIPE; a TAP device is no socket.
      n = uplink_socket ? ::send(fd, frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                        : ::write(fd, frame.data(), frame.size());
    } while (n < 0 && errno == EINTR);
    if (n >= 0 || dialled || config.uplink_peer.empty() || !peer_missing(errno)) break;
    // A datagram peer not there yet, or a new socket at its path: connect again, once.
    dialled = true;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, config.uplink_peer.c_str(), config.uplink_peer.size() + 1);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) break;
    kLog.info("uplink: connected to %s", config.uplink_peer.c_str());
  }
  if (n != static_cast<ssize_t>(frame.size())) {
    esw.egress_failed(kUplinkPort, frame.size(), Drop::no_buffer);
  }
}

void SoftSwitch::Impl::close_port(unsigned port, const char* why) {
  Conn& c = conns[port];
  if (c.hello) {
    kLog.info("fallback port %u (%s) closed: %s", port, mac_text(c.mac).c_str(), why);
  } else {
    kLog.info("fallback port %u closed: %s", port, why);
  }
  add(retired, esw.counters(port));
  esw.clear_counters(port);
  esw.configure(port, eswitch::PortConfig{});  // disabled: the MAC is free
  c = Conn{};
  ++closed;
}

// ---------------------------------------------------------------- SoftSwitch

SoftSwitch::SoftSwitch(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

SoftSwitch::~SoftSwitch() { stop(); }

Result<std::unique_ptr<SoftSwitch>> SoftSwitch::create(SoftSwitchConfig config) {
  if (config.max_ports < 1 || config.max_ports >= eswitch::kMaxPorts) {
    return make_error(Errc::invalid_argument, "soft switch: max_ports must be 1.." +
                                                  std::to_string(eswitch::kMaxPorts - 1));
  }
  if (config.uplink_peer.size() >= sizeof(sockaddr_un::sun_path)) {
    return make_error(Errc::invalid_argument,
                      "soft switch: uplink peer path '" + config.uplink_peer + "' too long");
  }
  if (config.batch == 0) config.batch = 1;
  auto impl = std::make_unique<Impl>(std::move(config));
  UnixListenerConfig lc;
  lc.type = SOCK_SEQPACKET;
  auto l = UnixListener::listen(impl->config.socket_path, lc);
  if (!l) return l.error();
  impl->listener = std::move(*l);
  impl->stop_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->stop_fd.valid()) {
    return make_error(Errc::io_error, std::string("soft switch: eventfd: ") + std::strerror(errno));
  }
  if (impl->config.uplink.valid()) {
    const int fd = impl->config.uplink.get();
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      return make_error(Errc::io_error,
                        std::string("soft switch: uplink O_NONBLOCK: ") + std::strerror(errno));
    }
    struct stat st {};
    impl->uplink_socket = ::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
    eswitch::PortConfig pc;
    pc.enabled = true;
    pc.anti_spoof = false;
    pc.max_frame = fp::kMaxFrame;
    impl->esw.configure(kUplinkPort, pc);
    impl->uplink_up = true;
  }
  return std::unique_ptr<SoftSwitch>(new SoftSwitch(std::move(impl)));
}

Status SoftSwitch::start() {
  if (impl_->thread.joinable()) return make_error(Errc::busy, "soft switch: already running");
  impl_->stopping.store(false);
  try {
    impl_->thread = std::thread([impl = impl_.get()] {
      while (!impl->stopping.load(std::memory_order_acquire)) impl->pass(-1);
    });
  } catch (const std::system_error& e) {
    return make_error(Errc::io_error, std::string("soft switch: thread: ") + e.what());
  }
  return {};
}

void SoftSwitch::stop() noexcept {
  if (!impl_ || !impl_->thread.joinable()) return;
  impl_->stopping.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t w = ::write(impl_->stop_fd.get(), &one, sizeof one);
  impl_->thread.join();
  std::uint64_t v = 0;
  [[maybe_unused]] const ssize_t r = ::read(impl_->stop_fd.get(), &v, sizeof v);
}

bool SoftSwitch::run_once(int timeout_ms) {
  if (impl_->thread.joinable()) return false;
  return impl_->pass(timeout_ms);
}

SoftSwitchCounters SoftSwitch::counters() const {
  std::lock_guard lock(impl_->mutex);
  SoftSwitchCounters c;
  c.uplink = impl_->esw.counters(kUplinkPort);
  c.guests = impl_->retired;
  c.connections_accepted = impl_->accepted;
  c.connections_refused = impl_->refused;
  c.connections_closed = impl_->closed;
  c.errors = impl_->errors;
  c.uplink_up = impl_->uplink_up;
  for (unsigned i = 1; i < impl_->conns.size(); ++i) {
    const Conn& k = impl_->conns[i];
    if (!k.fd.valid()) continue;
    const PortCounters& pc = impl_->esw.counters(i);
    add(c.guests, pc);
    c.ports.push_back({i, k.hello, k.mac, k.mtu, k.on_fallback, pc});
  }
  return c;
}

const std::string& SoftSwitch::socket_path() const noexcept { return impl_->config.socket_path; }

}  // namespace keel::vmm
