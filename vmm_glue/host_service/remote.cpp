// The host storage service across a process boundary: RemoteHostStorage (the paravisor's
// side) and RemoteHostSession (keel-hostd's side). Protocol: keel/vmm/remote_host.h.
#include "keel/vmm/remote_host.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "keel/clock.h"
#include "keel/fd_passing.h"
#include "keel/log.h"
#include "keel/unix_listener.h"

namespace keel::vmm {
namespace {

constexpr log::Logger kLog{"hostd"};
constexpr std::size_t kMaxFds = remote::kMaxRegions;

template <typename T>
std::span<const std::byte> bytes_of(const T& v) {
  return std::as_bytes(std::span(&v, 1));
}

template <typename T>
void append(std::vector<std::byte>& out, const T& v) {
  const auto b = bytes_of(v);
  out.insert(out.end(), b.begin(), b.end());
}

template <typename T>
Result<T> read_as(std::span<const std::byte> p, std::size_t at, const char* what) {
  T v{};
  if (p.size() < at + sizeof v) {
    return make_error(Errc::invalid_argument,
                      std::string(what) + ": " + std::to_string(p.size()) + " bytes, too short");
  }
  std::memcpy(&v, p.data() + at, sizeof v);
  return v;
}

Status send_message(int sock, remote::Type type, std::uint32_t status,
                    std::span<const std::byte> payload, std::span<const int> fds) {
  const remote::Header h{type, status};
  const std::span<const std::byte> parts[2] = {bytes_of(h), payload};
  return send_with_fds(sock, parts, fds);
}

}  // namespace

// ---------------------------------------------------------------- the paravisor's side

Result<std::unique_ptr<RemoteHostStorage>> RemoteHostStorage::connect(
    const std::string& socket_path, const std::string& disk,
    const std::vector<HostMemoryRegion>& regions, std::chrono::milliseconds timeout) {
  if (disk.empty() || disk.size() >= remote::kDiskNameBytes) {
    return make_error(Errc::invalid_argument, "disk name '" + disk + "' is empty or too long");
  }
  if (regions.size() > remote::kMaxRegions) {
    return make_error(Errc::invalid_argument, std::to_string(regions.size()) +
                                                  " guest RAM regions; keel-hostd takes " +
                                                  std::to_string(remote::kMaxRegions));
  }
  auto fd = connect_unix(socket_path, SOCK_SEQPACKET);
  if (!fd) {
    if (fd.error().code != Errc::unavailable) return fd.error();
    return make_error(Errc::unavailable, "keel-hostd: " + fd.error().message);
  }
  std::unique_ptr<RemoteHostStorage> r(new RemoteHostStorage(std::move(fd).value(), timeout));
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(r->sock_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    r->server_pid_ = cred.pid;
  }
  std::vector<std::byte> p;
  remote::Open o{};
  std::memcpy(o.disk, disk.c_str(), disk.size() + 1);
  o.regions = static_cast<std::uint32_t>(regions.size());
  append(p, o);
  std::vector<int> fds;
  for (const HostMemoryRegion& m : regions) {
    append(p, remote::OpenRegion{m.gpa, m.bytes, m.fd_offset});
    fds.push_back(m.fd);
  }
  auto reply = r->call(remote::Type::open, p, fds);
  if (!reply) return reply.error();
  auto bytes = read_as<std::uint64_t>(reply->payload, 0, "OPEN reply");
  if (!bytes) return bytes.error();
  r->disk_bytes_ = *bytes;
  return r;
}

RemoteHostStorage::~RemoteHostStorage() = default;

Result<RemoteHostStorage::Reply> RemoteHostStorage::call(remote::Type type,
                                                         std::span<const std::byte> payload,
                                                         std::span<const int> fds) const {
  if (Status s = send_message(sock_.get(), type, 0, payload, fds); !s.ok()) {
    return make_error(s.error().code, "keel-hostd: " + s.error().message);
  }
  const std::uint64_t deadline = steady_clock().deadline_after(timeout_);
  Reply out;
  std::vector<std::byte> buf(remote::kMaxMessageBytes);
  for (;;) {
    const std::uint64_t now = steady_clock().now_ns();
    if (now >= deadline) return make_error(Errc::timeout, "keel-hostd did not answer");
    pollfd pfd{sock_.get(), POLLIN, 0};
    const auto ms =
        static_cast<int>(std::min<std::uint64_t>((deadline - now) / 1'000'000 + 1, 60'000));
    if (::poll(&pfd, 1, ms) <= 0) continue;
    auto r = recv_with_fds(sock_.get(), buf, out.fds, kMaxFds);
    if (!r) return r.error();
    if (r->again) continue;
    if (r->closed) return make_error(Errc::gone, "keel-hostd closed the connection");
    auto h = read_as<remote::Header>(std::span(buf.data(), r->bytes), 0, "keel-hostd reply");
    if (!h) return h.error();
    if (h->type != type) {
      return make_error(Errc::invalid_argument, "keel-hostd answered another request");
    }
    const auto* body = buf.data() + sizeof(remote::Header);
    const std::size_t body_bytes = r->bytes - sizeof(remote::Header);
    if (h->status != 0) {
      const auto code = h->status - 1 <= static_cast<std::uint32_t>(Errc::io_error)
                            ? static_cast<Errc>(h->status - 1)
                            : Errc::device_error;
      return make_error(
          code, "keel-hostd: " + std::string(reinterpret_cast<const char*>(body), body_bytes));
    }
    out.payload.assign(body, body + body_bytes);
    return out;
  }
}

Result<HostChannel> RemoteHostStorage::open_channel(unsigned entries) {
  const std::uint32_t e = entries;
  auto r = call(remote::Type::open_channel, bytes_of(e));
  if (!r) return r.error();
  auto got = read_as<std::uint32_t>(r->payload, 0, "OPEN_CHANNEL reply");
  if (!got) return got.error();
  if (r->fds.size() != 3) {
    return make_error(Errc::invalid_argument,
                      "OPEN_CHANNEL reply with " + std::to_string(r->fds.size()) + " fds, not 3");
  }
  HostChannel ch{r->fds[0].get(), r->fds[1].get(), r->fds[2].get(), *got};
  for (auto& f : r->fds) channel_fds_.push_back(std::move(f));
  return ch;
}

Result<std::uint64_t> RemoteHostStorage::add_shared_region(int fd, std::uint64_t fd_offset,
                                                           std::uint64_t bytes) {
  std::vector<std::byte> p;
  append(p, fd_offset);
  append(p, bytes);
  auto r = call(remote::Type::add_shared, p, {&fd, 1});
  if (!r) return r.error();
  return read_as<std::uint64_t>(r->payload, 0, "ADD_SHARED reply");
}

std::vector<HostRegionInfo> RemoteHostStorage::regions() const {
  std::vector<HostRegionInfo> out;
  auto r = call(remote::Type::regions, {});
  if (!r) {
    kLog.warn("REGIONS: %s", r.error().message.c_str());
    return out;
  }
  for (std::size_t at = 0; at + sizeof(remote::Region) <= r->payload.size();
       at += sizeof(remote::Region)) {
    remote::Region g;
    std::memcpy(&g, r->payload.data() + at, sizeof g);
    out.push_back({g.gpa, g.bytes, g.dev, g.ino, g.shared != 0});
  }
  return out;
}

// ---------------------------------------------------------------- keel-hostd's side

RemoteHostSession::RemoteHostSession(UniqueFd conn, const std::map<std::string, HostDisk>& disks,
                                     HostServiceConfig base)
    : conn_(std::move(conn)), disks_(disks), base_(std::move(base)) {}

RemoteHostSession::~RemoteHostSession() = default;

bool RemoteHostSession::handle() {
  std::vector<std::byte> buf(remote::kMaxMessageBytes);
  std::vector<UniqueFd> fds;
  auto r = recv_with_fds(conn_.get(), buf, fds, kMaxFds);
  if (!r) return false;
  if (r->again) return true;
  if (r->closed) return false;
  if (r->fds_truncated) {
    kLog.warn("a client sent more than %zu fds: dropped", kMaxFds);
    return false;
  }
  auto h = read_as<remote::Header>(std::span(buf.data(), r->bytes), 0, "request");
  if (!h) {
    kLog.warn("%s: dropped", h.error().message.c_str());
    return false;
  }
  const std::span<const std::byte> payload(buf.data() + sizeof(remote::Header),
                                           r->bytes - sizeof(remote::Header));
  std::vector<UniqueFd> out_fds;
  auto reply = dispatch(*h, payload, fds, out_fds);
  Status sent;
  if (!reply) {
    const std::string& text = reply.error().message;
    kLog.info("refused: %s", text.c_str());
    sent = send_message(conn_.get(), h->type, 1 + static_cast<std::uint32_t>(reply.error().code),
                        std::as_bytes(std::span(text.data(), text.size())), {});
  } else {
    std::vector<int> raw;
    for (const UniqueFd& f : out_fds) raw.push_back(f.get());
    sent = send_message(conn_.get(), h->type, 0, *reply, raw);
  }
  return sent.ok();
}

Result<std::vector<std::byte>> RemoteHostSession::dispatch(const remote::Header& h,
                                                           std::span<const std::byte> p,
                                                           std::vector<UniqueFd>& fds,
                                                           std::vector<UniqueFd>& out_fds) {
  if (h.type == remote::Type::open) return open(p, fds);
  if (!service_) return make_error(Errc::invalid_argument, "OPEN a disk first");
  std::vector<std::byte> out;
  switch (h.type) {
    case remote::Type::add_shared: {
      auto off = read_as<std::uint64_t>(p, 0, "ADD_SHARED");
      auto len = read_as<std::uint64_t>(p, 8, "ADD_SHARED");
      if (!off) return off.error();
      if (!len) return len.error();
      if (fds.size() != 1) {
        return make_error(Errc::invalid_argument,
                          "ADD_SHARED takes one fd, got " + std::to_string(fds.size()));
      }
      auto at = service_->add_shared_region(fds[0].get(), *off, *len);
      if (!at) return at.error();
      append(out, *at);
      return out;
    }
    case remote::Type::open_channel: {
      auto entries = read_as<std::uint32_t>(p, 0, "OPEN_CHANNEL");
      if (!entries) return entries.error();
      auto ch = service_->open_channel(*entries);
      if (!ch) return ch.error();
      for (int f : {ch->ring_fd, ch->submit_eventfd, ch->complete_eventfd}) {
        out_fds.emplace_back(::fcntl(f, F_DUPFD_CLOEXEC, 0));
        if (!out_fds.back().valid()) return make_error(Errc::io_error, "dup of a channel fd");
      }
      append(out, static_cast<std::uint32_t>(ch->entries));
      return out;
    }
    case remote::Type::regions: {
      for (const HostRegionInfo& g : service_->regions()) {
        append(out, remote::Region{g.gpa, g.bytes, g.dev, g.ino, g.shared ? 1u : 0u, 0});
      }
      return out;
    }
    case remote::Type::open: break;
  }
  return make_error(Errc::invalid_argument,
                    "unknown request " + std::to_string(static_cast<std::uint32_t>(h.type)));
}

Result<std::vector<std::byte>> RemoteHostSession::open(std::span<const std::byte> p,
                                                       std::vector<UniqueFd>& fds) {
  if (service_) return make_error(Errc::busy, "this connection has opened '" + disk_ + "'");
  auto o = read_as<remote::Open>(p, 0, "OPEN");
  if (!o) return o.error();
  if (std::memchr(o->disk, 0, sizeof o->disk) == nullptr) {
    return make_error(Errc::invalid_argument, "OPEN: the disk name is not terminated");
  }
  const std::string name(o->disk);
  if (o->regions > remote::kMaxRegions || o->regions != fds.size()) {
    return make_error(Errc::invalid_argument, "OPEN: " + std::to_string(o->regions) +
                                                  " regions with " + std::to_string(fds.size()) +
                                                  " fds");
  }
  const auto it = disks_.find(name);
  if (it == disks_.end()) return make_error(Errc::not_found, "no disk '" + name + "' here");
  HostServiceConfig cfg = base_;
  cfg.image_path = it->second.image_path;
  cfg.image_fd = -1;
  cfg.base_offset = it->second.offset;
  cfg.length = it->second.length;
  cfg.guest_memory_fd = -1;
  cfg.regions.clear();
  for (std::uint32_t i = 0; i < o->regions; ++i) {
    auto g = read_as<remote::OpenRegion>(p, sizeof(remote::Open) + i * sizeof(remote::OpenRegion),
                                         "OPEN region");
    if (!g) return g.error();
    cfg.regions.push_back({fds[i].get(), g->fd_offset, g->gpa, g->bytes});
  }
  auto svc = HostStorageService::start(cfg);  // maps the regions: their fds may close after
  if (!svc) return svc.error();
  std::uint64_t bytes = cfg.length;
  if (bytes == 0) {
    // To the image's end: seeking finds it for a block device too (whose st_size is 0).
    const UniqueFd image(::open(cfg.image_path.c_str(), O_RDONLY | O_CLOEXEC));
    const off_t end = image.valid() ? ::lseek(image.get(), 0, SEEK_END) : -1;
    if (end > 0 && static_cast<std::uint64_t>(end) > cfg.base_offset) {
      bytes = static_cast<std::uint64_t>(end) - cfg.base_offset;
    }
  }
  service_ = std::move(svc).value();
  disk_ = name;
  kLog.info("'%s' opened with %u guest RAM region(s)%s", name.c_str(), o->regions,
            o->regions == 0 ? " (confidential: only shared regions)" : "");
  std::vector<std::byte> out;
  append(out, bytes);
  return out;
}

}  // namespace keel::vmm
