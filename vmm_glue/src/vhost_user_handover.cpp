// Servicing: a live vhost-user session handed from one process to the next. The state goes as
// the vhost-user messages that re-create it, so the new server checks it exactly as it checks
// a front end; the connection itself never closes, so the front end notices nothing.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "keel/fd_passing.h"
#include "vhost_user_impl.h"

namespace keel::vmm {

namespace vu = vhost_user;
using vu::Request;

namespace {

constexpr char kMagic[8] = {'K', 'E', 'E', 'L', 'V', 'U', 'S', 'S'};
constexpr std::uint32_t kVersion = 1;
// A session is a handful of messages per ring: far below this.
constexpr std::uint32_t kMaxMessages = 16 + 8 * (vu::kVringIndexMask + 1);

std::string errno_text() { return std::strerror(errno); }

Result<UniqueFd> dup_fd(int fd) {
  UniqueFd d(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!d.valid()) return make_error(Errc::io_error, "dup: " + errno_text());
  return d;
}

}  // namespace

Result<VhostUserSession> VhostUserBlkServer::take_session(
    const std::function<void(Paravisor&)>& last_look) {
  stop();
  Impl& m = *impl_;
  if (!m.conn_fd.valid()) {
    return make_error(Errc::unavailable, "no front end is connected: nothing to hand over");
  }
  // Requests in flight complete; every running ring's base is recorded; the VF queue pairs
  // stay for last_look (they go with the paravisor unless it saves them).
  m.pause(true);
  if (auto* pv = dynamic_cast<Paravisor*>(m.pv.get()); last_look && pv != nullptr) last_look(*pv);
  VhostUserSession s;
  auto listener = dup_fd(m.listener.fd());
  if (!listener) return listener.error();
  auto connection = dup_fd(m.conn_fd.get());
  if (!connection) return connection.error();
  s.listener = std::move(listener).value();
  s.connection = std::move(connection).value();
  Status failed;
  auto add = [&](Request r, const void* payload, std::size_t bytes, std::vector<int> fds = {}) {
    VhostUserSession::Message msg;
    msg.hdr =
        vu::Header{static_cast<std::uint32_t>(r), vu::kVersion, static_cast<std::uint32_t>(bytes)};
    const auto* p = static_cast<const std::byte*>(payload);
    msg.payload.assign(p, p + bytes);
    for (int fd : fds) {
      auto d = dup_fd(fd);
      if (!d) {
        failed = d.error();
        return;
      }
      msg.fds.push_back(std::move(d).value());
    }
    s.messages.push_back(std::move(msg));
  };
  auto add_u64 = [&](Request r, std::uint64_t v, std::vector<int> fds = {}) {
    add(r, &v, sizeof v, std::move(fds));
  };
  // In the order QEMU's vhost-user-blk sends them at a start.
  if (m.owner) add(Request::set_owner, nullptr, 0);
  if (m.features_set) add_u64(Request::set_features, m.acked_features);
  const bool protocol =
      (m.acked_features & (std::uint64_t{1} << vu::kFeatureProtocolFeatures)) != 0;
  if (protocol) add_u64(Request::set_protocol_features, m.protocol_features);
  if (m.inflight != nullptr) {
    const vu::Inflight d = m.inflight->description();
    add(Request::set_inflight_fd, &d, sizeof d, {m.inflight->fd()});
  }
  if (m.memory != nullptr) {
    vu::MemoryTable t{};
    std::vector<int> fds;
    for (const GuestMemory::Region& r : m.memory->regions()) {
      t.regions[t.nregions++] = vu::MemoryRegion{r.gpa, r.bytes, r.user_addr, r.fd_offset};
      fds.push_back(r.fd);
    }
    add(Request::set_mem_table, &t,
        offsetof(vu::MemoryTable, regions) + t.nregions * sizeof t.regions[0], fds);
  }
  for (std::uint32_t q = 0; q < m.rings.size(); ++q) {
    const detail::Ring& r = m.rings[q];
    if (r.num != 0) {
      const vu::VringState n{q, r.num};
      add(Request::set_vring_num, &n, sizeof n);
    }
    const vu::VringState b{q, r.base};
    add(Request::set_vring_base, &b, sizeof b);
    if (r.has_addr) {
      const vu::VringAddr a{q, 0, r.desc_user, r.used_user, r.avail_user, 0};
      add(Request::set_vring_addr, &a, sizeof a);
    }
    if (r.call.valid()) add_u64(Request::set_vring_call, q, {r.call.get()});
    if (r.err.valid()) add_u64(Request::set_vring_err, q, {r.err.get()});
    if (r.started) {
      if (r.kick.valid()) {
        add_u64(Request::set_vring_kick, q, {r.kick.get()});
      } else {
        add_u64(Request::set_vring_kick, q | vu::kVringNoFd);
      }
    }
    if (protocol) {
      const vu::VringState e{q, r.enabled ? 1u : 0u};
      add(Request::set_vring_enable, &e, sizeof e);
    }
  }
  if (!failed.ok()) return failed.error();
  m.retire_paravisor();  // its counters stay in this server's report
  m.handed_over = true;
  kVhostLog.info("%s: the front end's session goes to another process (%zu messages)",
                 m.config.socket_path.c_str(), s.messages.size());
  return s;
}

Result<std::unique_ptr<VhostUserBlkServer>> VhostUserBlkServer::adopt(
    const VhostUserBlkConfig& config, ParavisorFactory factory, VhostUserSession session) {
  return adopt_device(config, device_factory(std::move(factory)), std::move(session));
}

Result<std::unique_ptr<VhostUserBlkServer>> VhostUserBlkServer::adopt_device(
    const VhostUserBlkConfig& config, DeviceFactory factory, VhostUserSession session) {
  if (!factory) return make_error(Errc::invalid_argument, "vhost-user server without a factory");
  if (!session.listener.valid() || !session.connection.valid()) {
    return make_error(Errc::invalid_argument, "the session has no listening socket or connection");
  }
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->factory = std::move(factory);
  if (Status st = impl->probe_device(); !st.ok()) return st.error();
  impl->listener = UnixListener::adopt(std::move(session.listener), config.socket_path);
  // Refused: the socket path and the connection are not this server's to end (the process
  // that handed them over may take them back).
  auto refuse = [&impl](Error e) {
    impl->handed_over = true;
    impl->listener.release();
    impl->conn_fd.reset();
    impl->reset_connection_state();
    return e;
  };
  impl->reset_connection_state();
  impl->conn_fd = std::move(session.connection);
  impl->connected.store(true);
  {
    std::lock_guard lock(impl->mu);
    ++impl->stats.connections;
  }
  std::size_t i = 0;
  for (VhostUserSession::Message& msg : session.messages) {
    auto m = std::make_unique<detail::Message>();
    m->hdr = msg.hdr;
    const std::string name = vu::request_name(msg.hdr.request);
    if (msg.payload.size() != msg.hdr.size || msg.payload.size() > m->payload.size() ||
        (msg.hdr.flags & vu::kFlagNeedReply) != 0) {
      return refuse(make_error(Errc::invalid_argument, "session message " + std::to_string(i) +
                                                           " (" + name + ") is malformed"));
    }
    if (!msg.payload.empty())
      std::memcpy(m->payload.data(), msg.payload.data(), msg.payload.size());
    m->fds = std::move(msg.fds);
    // Only what sets state: nothing in a session asks for a reply.
    switch (static_cast<Request>(msg.hdr.request)) {
      case Request::set_owner:
      case Request::set_features:
      case Request::set_protocol_features:
      case Request::set_inflight_fd:
      case Request::set_mem_table:
      case Request::set_vring_num:
      case Request::set_vring_base:
      case Request::set_vring_addr:
      case Request::set_vring_call:
      case Request::set_vring_err:
      case Request::set_vring_kick:
      case Request::set_vring_enable: break;
      default:
        return refuse(make_error(Errc::invalid_argument, "session message " + std::to_string(i) +
                                                             " (" + name + ") does not set state"));
    }
    if (Status st = impl->dispatch(*m); !st.ok() || impl->close_requested) {
      return refuse(
          make_error(Errc::invalid_argument,
                     "session message " + std::to_string(i) + " (" + name + ") refused: " +
                         (st.ok() ? std::string("the connection broke") : st.error().message)));
    }
    ++i;
  }
  kVhostLog.info("%s: took over the front end's session from another process (%zu messages)",
                 config.socket_path.c_str(), i);
  return std::unique_ptr<VhostUserBlkServer>(new VhostUserBlkServer(std::move(impl)));
}

Status send_session(int channel, const VhostUserSession& s) {
  std::vector<std::byte> head(sizeof kMagic + 8);
  std::memcpy(head.data(), kMagic, sizeof kMagic);
  const std::uint32_t n = static_cast<std::uint32_t>(s.messages.size());
  std::memcpy(head.data() + 8, &kVersion, 4);
  std::memcpy(head.data() + 12, &n, 4);
  const int fds[2] = {s.listener.get(), s.connection.get()};
  auto send_record = [&](std::span<const std::byte> bytes, std::span<const int> f) -> Status {
    for (;;) {
      const long k = send_once_with_fds(channel, bytes, f);
      if (k == static_cast<long>(bytes.size())) return {};
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && errno == EAGAIN) {
        pollfd p{channel, POLLOUT, 0};
        (void)::poll(&p, 1, 1000);
        continue;
      }
      if (k < 0 && (errno == EPIPE || errno == ECONNRESET)) {
        return make_error(Errc::gone, "the new process closed the hand-over socket");
      }
      return make_error(Errc::io_error, "sending the session: " +
                                            (k < 0 ? errno_text() : std::string("short send")));
    }
  };
  if (Status st = send_record(head, fds); !st.ok()) return st;
  for (const VhostUserSession::Message& m : s.messages) {
    std::vector<std::byte> rec(sizeof m.hdr + m.payload.size());
    std::memcpy(rec.data(), &m.hdr, sizeof m.hdr);
    if (!m.payload.empty())
      std::memcpy(rec.data() + sizeof m.hdr, m.payload.data(), m.payload.size());
    std::vector<int> f;
    for (const UniqueFd& fd : m.fds) f.push_back(fd.get());
    if (Status st = send_record(rec, f); !st.ok()) return st;
  }
  return {};
}

Result<VhostUserSession> recv_session(int channel, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<std::byte> buf(sizeof(vu::Header) + vu::kMaxPayload + 1);
  auto recv_record = [&](std::vector<UniqueFd>& fds) -> Result<std::size_t> {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return make_error(Errc::timeout, "no session within the timeout");
      pollfd p{channel, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      auto r = recv_with_fds(channel, buf, fds, vu::kMaxFds);
      if (!r) return r.error();
      if (r->again) continue;
      if (r->closed) return make_error(Errc::gone, "the old process closed the hand-over socket");
      if (r->fds_truncated || r->bytes == buf.size()) {
        return make_error(Errc::invalid_argument,
                          "a session record too large or with too many fds");
      }
      return r->bytes;
    }
  };
  VhostUserSession s;
  std::vector<UniqueFd> fds;
  auto head = recv_record(fds);
  if (!head) return head.error();
  std::uint32_t version = 0, n = 0;
  if (*head != sizeof kMagic + 8 || std::memcmp(buf.data(), kMagic, sizeof kMagic) != 0 ||
      fds.size() != 2) {
    return make_error(Errc::invalid_argument, "not a vhost-user session (bad first record)");
  }
  std::memcpy(&version, buf.data() + 8, 4);
  std::memcpy(&n, buf.data() + 12, 4);
  if (version != kVersion) {
    return make_error(Errc::invalid_argument, "session version " + std::to_string(version) +
                                                  ", this server reads " +
                                                  std::to_string(kVersion));
  }
  if (n > kMaxMessages) return make_error(Errc::invalid_argument, "too many session messages");
  s.listener = std::move(fds[0]);
  s.connection = std::move(fds[1]);
  for (std::uint32_t i = 0; i < n; ++i) {
    VhostUserSession::Message m;
    auto got = recv_record(m.fds);
    if (!got) return got.error();
    if (*got < sizeof m.hdr)
      return make_error(Errc::invalid_argument, "a session record cut short");
    std::memcpy(&m.hdr, buf.data(), sizeof m.hdr);
    if (m.hdr.size != *got - sizeof m.hdr) {
      return make_error(Errc::invalid_argument, "a session record's size does not match");
    }
    m.payload.assign(buf.begin() + sizeof m.hdr, buf.begin() + static_cast<long>(*got));
    s.messages.push_back(std::move(m));
  }
  return s;
}

}  // namespace keel::vmm
