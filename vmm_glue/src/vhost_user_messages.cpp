// The vhost-user server's requests: validation, dispatch, and how a failed request is reported
// (non-zero ack with need_reply, empty GET_CONFIG reply, otherwise closing the connection).
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "vhost_user_impl.h"

namespace keel::vmm {

namespace vu = vhost_user;
using vu::Request;

namespace {

constexpr std::uint64_t kProtocolFeaturesBit = std::uint64_t{1} << vu::kFeatureProtocolFeatures;

bool has_natural_reply(std::uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::get_features:
    case Request::get_protocol_features:
    case Request::get_vring_base:
    case Request::get_queue_num:
    case Request::get_config:
    case Request::get_inflight_fd: return true;
    default: return false;  // every other request, known or not
  }
}

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

template <typename T>
T payload_as(const detail::Message& m) {
  T v;
  std::memcpy(&v, m.payload.data(), sizeof v);
  return v;
}

Status expect_size(const detail::Message& m, std::size_t bytes) {
  if (m.hdr.size == bytes) return {};
  return make_error(Errc::invalid_argument, "payload of " + std::to_string(m.hdr.size) +
                                                " bytes; this request takes " +
                                                std::to_string(bytes));
}

Status check_ring(std::uint32_t index, unsigned queues) {
  if (index < queues) return {};
  return make_error(Errc::out_of_range, "ring index " + std::to_string(index) +
                                            " out of range (the device has " +
                                            std::to_string(queues) + " queues)");
}

// Config header of GET_CONFIG / SET_CONFIG, checked against the payload size.
Result<vu::ConfigHeader> config_header(const detail::Message& m) {
  if (m.hdr.size < sizeof(vu::ConfigHeader)) {
    return make_error(Errc::invalid_argument, "payload of " + std::to_string(m.hdr.size) +
                                                  " bytes, shorter than the config header");
  }
  const auto h = payload_as<vu::ConfigHeader>(m);
  if (h.size > vu::kMaxConfigBytes || h.offset > vu::kMaxConfigBytes - h.size) {
    return make_error(Errc::out_of_range, "config access at offset " + std::to_string(h.offset) +
                                              " of " + std::to_string(h.size) +
                                              " bytes goes past the 256-byte config space");
  }
  if (m.hdr.size != sizeof(vu::ConfigHeader) + h.size) {
    return make_error(Errc::invalid_argument,
                      "payload of " + std::to_string(m.hdr.size) + " bytes for a " +
                          std::to_string(h.size) + "-byte config access (expected " +
                          std::to_string(sizeof(vu::ConfigHeader) + h.size) + ")");
  }
  return h;
}

// /proc/self/fd/N of an eventfd.
constexpr std::string_view kEventfdLink = "anon_inode:[eventfd]";

// What /proc says an fd is ("anon_inode:[eventfd]", "pipe:[1234]", "/dev/null"), or "".
std::string fd_kind(int fd) {
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  char buf[256];
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  if (n <= 0) return {};
  return std::string(buf, static_cast<std::size_t>(n));
}

// A kick, call or err fd must be an eventfd: only an eventfd's read and write are bounded (8
// bytes, and never block once O_NONBLOCK is set). A pipe, a socket or a file could block the
// worker or the server for good (a full pipe after 8,192 notifications). The fd is set
// O_NONBLOCK here. That flag lives on the open file description, which the front end shares:
// its own descriptor of the eventfd becomes non-blocking too (QEMU creates its eventfds
// non-blocking already, so nothing changes for it). Errors: invalid_argument (not an eventfd),
// io_error (fcntl).
Status accept_eventfd(int fd) {
  const std::string kind = fd_kind(fd);
  if (kind != kEventfdLink) {
    return make_error(
        Errc::invalid_argument,
        "its file descriptor is not an eventfd (it is " +
            (kind.empty() ? std::string("unknown: /proc/self/fd unreadable") : "'" + kind + "'") +
            "); kick, call and err fds must be eventfds");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return make_error(Errc::io_error,
                      std::string("making its eventfd non-blocking: ") + std::strerror(errno));
  }
  return {};
}

// The eventfd counter id /proc shows for `fd` (Linux 5.13+), or -1.
long long eventfd_id(int fd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string key;
  while (in >> key) {
    if (key == "eventfd-id:") {
      long long id = -1;
      in >> id;
      return id;
    }
    in.ignore(1 << 12, '\n');
  }
  return -1;
}

// True if `a` and `b` are the same open file (one eventfd sent twice). kcmp(2) answers exactly;
// where it is not available (a seccomp filter, a kernel without CONFIG_KCMP) the eventfd ids
// /proc reports are compared. Neither available: false (a shared kick eventfd then only costs
// the two rings' workers stolen wake-ups: being non-blocking, neither can wait on it for good).
bool same_file(int a, int b) {
  const pid_t self = ::getpid();
  const long r = ::syscall(SYS_kcmp, self, self, KCMP_FILE, a, b);
  if (r >= 0) return r == 0;
  const long long ia = eventfd_id(a);
  return ia >= 0 && ia == eventfd_id(b);
}

}  // namespace

void VhostUserBlkServer::Impl::handle(detail::Message& m) {
  const std::uint32_t req = m.hdr.request;
  const bool need_reply = (m.hdr.flags & vu::kFlagNeedReply) != 0;
  Status st = dispatch(m);
  if (close_requested) return;  // a reply could not be sent: the connection is gone
  if (st.ok()) {
    if (need_reply && !has_natural_reply(req)) reply_u64(req, 0);
    return;
  }
  {
    std::lock_guard lock(mu);
    ++stats.failed_requests;
  }
  const std::string what = vu::request_name(req) + " failed: " + st.error().message;
  if (static_cast<Request>(req) == Request::get_config) {
    log_failure(what + "; replying with an empty payload");
    reply(req, nullptr, 0);
  } else if (static_cast<Request>(req) == Request::get_inflight_fd) {
    // mmap_size 0 and no fd: QEMU goes on without inflight tracking.
    log_failure(what + "; replying with an empty record");
    const vu::Inflight none{};
    reply(req, &none, sizeof none);
  } else if (!has_natural_reply(req) && need_reply) {
    log_failure(what + "; replying failure");
    reply_u64(req, 1);
  } else {
    log_failure(what + "; closing the connection (" +
                (has_natural_reply(req) ? "it has no meaningful reply"
                                        : "the front end asked for no reply") +
                ")");
    close_requested = true;
  }
}

Status VhostUserBlkServer::Impl::dispatch(detail::Message& m) {
  const std::uint32_t req = m.hdr.request;
  switch (static_cast<Request>(req)) {
    case Request::get_features:
      if (Status st = expect_size(m, 0); !st.ok()) return st;
      reply_u64(req, device_features | kProtocolFeaturesBit);
      return {};
    case Request::set_features: return set_features(m);
    case Request::set_owner:
      if (Status st = expect_size(m, 0); !st.ok()) return st;
      owner = true;
      return {};
    case Request::reset_owner:
      // Deprecated; the spec recommends disabling every ring, which is what keel does.
      if (Status st = expect_size(m, 0); !st.ok()) return st;
      pause();
      for (detail::Ring& r : rings) {
        r.started = r.enabled = false;
        r.kick.reset();
        ++r.gen;
      }
      return {};
    case Request::reset_device: {
      if (Status st = expect_size(m, 0); !st.ok()) return st;
      const bool was_owner = owner;
      const std::uint64_t proto = protocol_features;
      reset_connection_state();  // rings, memory, paravisor, features: as after connecting
      owner = was_owner;
      protocol_features = proto;
      return {};
    }
    case Request::set_mem_table: return set_mem_table(m);
    case Request::set_vring_num: {
      if (Status st = expect_size(m, sizeof(vu::VringState)); !st.ok()) return st;
      const auto s = payload_as<vu::VringState>(m);
      if (Status st = check_ring(s.index, queues); !st.ok()) return st;
      if (s.num == 0 || s.num > vu::kMaxRingSize || (s.num & (s.num - 1)) != 0) {
        return make_error(Errc::invalid_argument,
                          "ring " + std::to_string(s.index) + " size " + std::to_string(s.num) +
                              " is not a power of two up to " + std::to_string(vu::kMaxRingSize));
      }
      pause_ring(s.index);
      rings[s.index].num = s.num;
      ++rings[s.index].gen;
      return apply_rings();
    }
    case Request::set_vring_addr: return set_vring_addr(m);
    case Request::set_vring_base: {
      if (Status st = expect_size(m, sizeof(vu::VringState)); !st.ok()) return st;
      const auto s = payload_as<vu::VringState>(m);
      if (Status st = check_ring(s.index, queues); !st.ok()) return st;
      if (s.num > 0xFFFF) {
        return make_error(Errc::invalid_argument, "ring base " + std::to_string(s.num) +
                                                      " does not fit a split ring's 16 bits");
      }
      pause_ring(s.index);
      rings[s.index].base = static_cast<std::uint16_t>(s.num);
      ++rings[s.index].gen;
      return apply_rings();
    }
    case Request::get_vring_base: return get_vring_base(m);
    case Request::set_vring_kick:
    case Request::set_vring_call:
    case Request::set_vring_err: return ring_fd(m, static_cast<Request>(req));
    case Request::get_protocol_features:
      if (Status st = expect_size(m, 0); !st.ok()) return st;
      reply_u64(req, offered_protocol);
      return {};
    case Request::set_protocol_features: {
      if (Status st = expect_size(m, 8); !st.ok()) return st;
      const auto v = payload_as<std::uint64_t>(m);
      if ((v & ~offered_protocol) != 0) {
        return make_error(Errc::invalid_argument,
                          "protocol features " + hex(v & ~offered_protocol) +
                              " were not offered (offered " + hex(offered_protocol) + ")");
      }
      protocol_features = v;
      return {};
    }
    case Request::get_queue_num:
      if (Status st = expect_size(m, 0); !st.ok()) return st;
      reply_u64(req, queues);
      return {};
    case Request::set_vring_enable: {
      if (Status st = expect_size(m, sizeof(vu::VringState)); !st.ok()) return st;
      const auto s = payload_as<vu::VringState>(m);
      if (Status st = check_ring(s.index, queues); !st.ok()) return st;
      if (s.num > 1) {
        return make_error(Errc::invalid_argument,
                          "enable value " + std::to_string(s.num) + " (must be 0 or 1)");
      }
      if (rings[s.index].enabled == (s.num == 1)) return {};
      pause_ring(s.index);
      rings[s.index].enabled = s.num == 1;
      ++rings[s.index].gen;
      return apply_rings();
    }
    case Request::get_config: return get_config(m);
    case Request::set_config: return set_config(m);
    case Request::get_inflight_fd: return get_inflight_fd(m);
    case Request::set_inflight_fd: return set_inflight_fd(m);
    case Request::set_log_base:
    case Request::set_log_fd: break;
  }
  return make_error(Errc::invalid_argument, "not supported (keel offers protocol features " +
                                                hex(offered_protocol) + " and no dirty logging)");
}

Status VhostUserBlkServer::Impl::set_features(const detail::Message& m) {
  if (Status st = expect_size(m, 8); !st.ok()) return st;
  const auto v = payload_as<std::uint64_t>(m);
  const std::uint64_t offered = device_features | kProtocolFeaturesBit;
  if ((v & ~offered) != 0) {
    return make_error(
        Errc::invalid_argument,
        "features " + hex(v & ~offered) + " were not offered (offered " + hex(offered) + ")");
  }
  if ((v & virtio::bit(virtio::feature::kVersion1)) == 0) {
    return make_error(Errc::invalid_argument,
                      "VIRTIO_F_VERSION_1 not acknowledged: keel has no legacy interface");
  }
  pause();
  acked_features = v;
  features_set = true;
  if (pv != nullptr) {
    if (Status st = pv->set_features(v & ~kProtocolFeaturesBit); !st.ok()) return st;
  }
  for (detail::Ring& r : rings) ++r.gen;  // EVENT_IDX may have changed
  return apply_rings();
}

Status VhostUserBlkServer::Impl::set_vring_addr(const detail::Message& m) {
  if (Status st = expect_size(m, sizeof(vu::VringAddr)); !st.ok()) return st;
  const auto a = payload_as<vu::VringAddr>(m);
  if (Status st = check_ring(a.index, queues); !st.ok()) return st;
  if ((a.flags & vu::kVringFlagLog) != 0) {
    return make_error(Errc::invalid_argument,
                      "VHOST_VRING_F_LOG: dirty logging is not supported (no VHOST_F_LOG_ALL)");
  }
  if (memory == nullptr) {
    return make_error(Errc::invalid_argument, "ring addresses before any memory table");
  }
  detail::Ring& r = rings[a.index];
  // Checked against the size set so far (or just the first byte of each area).
  auto layout = layout_from(std::max<std::uint32_t>(r.num, 1), a.desc_user_addr, a.avail_user_addr,
                            a.used_user_addr);
  if (!layout) {
    return make_error(layout.error().code,
                      "ring " + std::to_string(a.index) + ": " + layout.error().message);
  }
  pause_ring(a.index);
  r.desc_user = a.desc_user_addr;
  r.avail_user = a.avail_user_addr;
  r.used_user = a.used_user_addr;
  r.has_addr = true;
  ++r.gen;
  return apply_rings();
}

Status VhostUserBlkServer::Impl::get_vring_base(const detail::Message& m) {
  if (Status st = expect_size(m, sizeof(vu::VringState)); !st.ok()) return st;
  const auto s = payload_as<vu::VringState>(m);
  if (Status st = check_ring(s.index, queues); !st.ok()) return st;
  pause_ring(s.index);  // its in-flight requests complete; base is then where it stands
  detail::Ring& r = rings[s.index];
  r.started = false;
  r.kick.reset();
  ++r.gen;
  const vu::VringState out{s.index, r.base};
  if (Status st = apply_rings(); !st.ok()) return st;  // the other rings carry on
  reply(m.hdr.request, &out, sizeof out);
  return {};
}

Status VhostUserBlkServer::Impl::ring_fd(detail::Message& m, Request which) {
  if (Status st = expect_size(m, 8); !st.ok()) return st;
  const auto v = payload_as<std::uint64_t>(m);
  if ((v & ~(vu::kVringIndexMask | vu::kVringNoFd)) != 0) {
    return make_error(Errc::invalid_argument, "payload " + hex(v) + " has unknown bits set");
  }
  const auto q = static_cast<std::uint32_t>(v & vu::kVringIndexMask);
  if (Status st = check_ring(q, queues); !st.ok()) return st;
  const bool no_fd = (v & vu::kVringNoFd) != 0;
  if (!no_fd && m.fds.size() != 1) {
    return make_error(Errc::invalid_argument,
                      "needs exactly one file descriptor or the no-fd flag (bit 8); got " +
                          std::to_string(m.fds.size()) + " descriptors");
  }
  UniqueFd fd = no_fd ? UniqueFd() : std::move(m.fds[0]);
  if (fd.valid()) {
    if (Status st = accept_eventfd(fd.get()); !st.ok()) return st;
    // One kick eventfd per ring, used for nothing else: two rings' workers waiting on one
    // counter steal each other's kicks, and a ring whose call fd is a kick fd wakes itself.
    for (unsigned o = 0; o < rings.size(); ++o) {
      const detail::Ring& other = rings[o];
      const bool kick = which == Request::set_vring_kick;
      const std::pair<const UniqueFd*, const char*> used[] = {
          {&other.kick, "kick"}, {&other.call, "call"}, {&other.err, "err"}};
      for (const auto& [u, name] : used) {
        // A kick fd may not be any other fd of any ring; a call or err fd no ring's kick fd.
        if (!u->valid() || (!kick && u != &other.kick) || (kick && o == q && u == &other.kick)) {
          continue;
        }
        if (same_file(fd.get(), u->get())) {
          return make_error(Errc::invalid_argument,
                            "its eventfd is already ring " + std::to_string(o) + "'s " + name +
                                " fd; every ring needs a kick eventfd of its own");
        }
      }
    }
  }
  detail::Ring& r = rings[q];
  if (which == Request::set_vring_err) {  // only the server uses it: nothing to stop
    r.err = std::move(fd);
    return {};
  }
  pause_ring(q);  // a running ring's worker holds the old descriptor
  if (which == Request::set_vring_kick) {
    r.kick = std::move(fd);
    r.started = true;
  } else {
    r.call = std::move(fd);
  }
  ++r.gen;
  return apply_rings();
}

Status VhostUserBlkServer::Impl::get_config(const detail::Message& m) {
  auto h = config_header(m);
  if (!h) return h.error();
  std::array<std::byte, vu::kMaxConfigBytes> space{};
  const std::vector<std::byte> c = pv != nullptr ? pv->config_bytes() : probe_config;
  std::memcpy(space.data(), c.data(), std::min(c.size(), space.size()));
  std::array<std::byte, sizeof(vu::ConfigHeader) + vu::kMaxConfigBytes> out{};
  std::memcpy(out.data(), &*h, sizeof(vu::ConfigHeader));
  std::memcpy(out.data() + sizeof(vu::ConfigHeader), space.data() + h->offset, h->size);
  reply(m.hdr.request, out.data(), sizeof(vu::ConfigHeader) + h->size);
  return {};
}

Status VhostUserBlkServer::Impl::set_config(const detail::Message& m) {
  auto h = config_header(m);
  if (!h) return h.error();
  if (h->flags > 1) {
    return make_error(Errc::invalid_argument, "config flags " + hex(h->flags) + " unknown");
  }
  const std::span<const std::byte> wanted(m.payload.data() + sizeof(vu::ConfigHeader), h->size);
  if (pv != nullptr) return pv->write_config(h->offset, wanted);
  // Before the first memory table there is no device yet: the probed space is read-only.
  for (std::uint32_t i = 0; i < h->size; ++i) {
    const std::size_t at = h->offset + i;
    if (wanted[i] != (at < probe_config.size() ? probe_config[at] : std::byte{0})) {
      return make_error(Errc::invalid_argument,
                        "config byte " + std::to_string(at) + " is read-only");
    }
  }
  return {};
}

}  // namespace keel::vmm
