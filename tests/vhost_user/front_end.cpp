#include "front_end.h"

#include "keel/fd_passing.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>

namespace keel::testing {

namespace virtio = keel::virtio;
using vu::Request;

// ---- GuestRam ----

GuestRam::GuestRam(std::uint64_t bytes_per_region) : half_(bytes_per_region) {
  // As QEMU's memory-backend-memfd (seal=on): sealed against resizing, which keel requires.
  fd_ = memfd_create("vhost-user-test-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  EXPECT_GE(fd_, 0);
  EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(2 * half_)), 0);
  EXPECT_EQ(fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  void* p = mmap(nullptr, 2 * half_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  EXPECT_NE(p, MAP_FAILED);
  base_ = static_cast<std::byte*>(p);
}

GuestRam::~GuestRam() {
  munmap(base_, 2 * half_);
  ::close(fd_);
}

std::byte* GuestRam::at(std::uint64_t gpa, std::uint64_t len) const {
  if (gpa + len <= half_) return base_ + gpa;
  if (gpa >= kHighGpa && gpa - kHighGpa + len <= half_) return base_ + half_ + (gpa - kHighGpa);
  return nullptr;
}

std::uint64_t GuestRam::user_addr(std::uint64_t gpa) const {
  return reinterpret_cast<std::uint64_t>(at(gpa));
}

vu::MemoryTable GuestRam::table(bool both_regions) const {
  vu::MemoryTable t{};
  t.nregions = both_regions ? 2 : 1;
  t.regions[0] = {0, half_, reinterpret_cast<std::uint64_t>(base_), 0};
  t.regions[1] = {kHighGpa, half_, reinterpret_cast<std::uint64_t>(base_ + half_), half_};
  return t;
}

// ---- DriverRing ----

namespace {

// The ring's layout at `gpa`: the table, the available ring right after it, the used ring on
// the next page.
vmm::SplitRingDriver::Layout ring_layout(std::uint16_t size, std::uint64_t gpa) {
  vmm::SplitRingDriver::Layout l;
  l.size = size;
  l.desc = gpa;
  l.avail = l.desc + virtio::desc_bytes(size);
  l.used = (l.avail + virtio::avail_bytes(size) + 4095) & ~std::uint64_t{4095};
  return l;
}

}  // namespace

DriverRing::DriverRing(GuestRam& ram, std::uint16_t size, std::uint64_t gpa)
    : ram_(ram),
      ring_([&ram](std::uint64_t g, std::uint64_t len) { return ram.at(g, len); },
            ring_layout(size, gpa)) {
  scratch_ = (ring_.layout().used + virtio::used_bytes(size) + 4095) & ~std::uint64_t{4095};
  std::memset(ram.at(scratch_, 32u * size), 0, 32u * size);
  kick_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  call_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

DriverRing::~DriverRing() {
  ::close(kick_fd_);
  ::close(call_fd_);
}

std::uint16_t DriverRing::submit(std::uint32_t type, std::uint64_t sector,
                                 std::span<const Seg> data) {
  const std::size_t n = data.size() + 2;
  EXPECT_GE(ring_.free_descriptors(), n) << "test ring full";
  if (ring_.free_descriptors() < n) return size();  // no such head: the test has failed
  const std::uint16_t head = ring_.next_free();
  const std::uint64_t hdr = scratch_ + 32u * head;
  const virtio::blk::OutHeader h{type, 0, sector};
  std::memcpy(ram_.at(hdr, sizeof h), &h, sizeof h);
  *ram_.at(hdr + 16) = std::byte{0xFF};  // status: not written yet
  const bool data_written = type == virtio::blk::kIn;
  std::vector<vmm::SplitRingDriver::Piece> chain;
  chain.push_back({hdr, 16, false});
  for (const Seg& s : data) chain.push_back({s.gpa, s.len, data_written});
  chain.push_back({hdr + 16, 1, true});
  auto published = ring_.publish(chain);
  EXPECT_TRUE(published.ok());
  return published.ok() ? published.value() : size();
}

void DriverRing::publish_head(std::uint16_t head) { ring_.publish_head(head); }

void DriverRing::publish_loop() {
  const auto last = static_cast<std::uint16_t>(size() - 1);
  const virtio::Desc d{scratch_ + 32u * last, 16, virtio::kDescNext, last};
  ring_.write_raw({&d, 1}, last);
  publish_head(last);
}

std::optional<std::pair<std::uint16_t, std::uint8_t>> DriverRing::reap() {
  const std::optional<virtio::UsedElem> e = ring_.pop_used();
  if (!e) return std::nullopt;
  // EVENT_IDX: interrupt me at the next used entry.
  ring_.arm_used_event();
  EXPECT_LT(e->id, size());
  if (e->id >= size()) return std::nullopt;
  const auto head = static_cast<std::uint16_t>(e->id);
  const auto status = static_cast<std::uint8_t>(*ram_.at(scratch_ + 32u * head + 16));
  return std::make_pair(head, status);
}

void DriverRing::kick() const {
  const std::uint64_t one = 1;
  EXPECT_EQ(::write(kick_fd_, &one, sizeof one), 8);
}

std::uint64_t DriverRing::take_calls() const {
  std::uint64_t v = 0;
  if (::read(call_fd_, &v, sizeof v) != sizeof v) return 0;
  return v;
}

bool DriverRing::wait_call(int ms) const {
  pollfd p{call_fd_, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

std::uint16_t DriverRing::used_idx() const { return ring_.used_idx(); }

int open_fds() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// ---- FrontEnd ----

FrontEnd::FrontEnd(std::string path, std::function<void()> pump)
    : path_(std::move(path)), pump_(std::move(pump)) {}

FrontEnd::~FrontEnd() { close(); }

bool FrontEnd::connect() {
  close();
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path_.c_str());
  const timeval tv{2, 0};  // a blocked send gives up after 2 s
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) return false;
  if (pump_) pump_();  // the server accepts
  return true;
}

void FrontEnd::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool FrontEnd::send_raw(const void* bytes, std::size_t n, std::span<const int> fds, bool hang_up) {
  const std::span<const std::byte> parts[1] = {std::span(static_cast<const std::byte*>(bytes), n)};
  const bool ok = send_with_fds(fd_, parts, fds).ok();
  if (hang_up) ::shutdown(fd_, SHUT_WR);
  if (pump_) pump_();
  return ok;
}

bool FrontEnd::send(std::uint32_t request, const void* payload, std::size_t bytes,
                    std::span<const int> fds, bool need_reply) {
  std::vector<std::byte> buf(sizeof(vu::Header) + bytes);
  const vu::Header h{request, vu::kVersion | (need_reply ? vu::kFlagNeedReply : 0u),
                     static_cast<std::uint32_t>(bytes)};
  std::memcpy(buf.data(), &h, sizeof h);
  if (bytes > 0) std::memcpy(buf.data() + sizeof h, payload, bytes);
  return send_raw(buf.data(), buf.size(), fds);
}

std::optional<FrontEnd::Reply> FrontEnd::recv(int ms) {
  auto read_exact = [&](void* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms) != 1) return false;
      const ssize_t k = ::recv(fd_, static_cast<char*>(dst) + got, n - got, 0);
      if (k <= 0) return false;
      got += static_cast<std::size_t>(k);
    }
    return true;
  };
  Reply r{};
  if (!read_exact(&r.hdr, sizeof r.hdr)) return std::nullopt;
  EXPECT_EQ(r.hdr.flags, vu::kVersion | vu::kFlagReply);
  r.payload.resize(r.hdr.size);
  if (r.hdr.size > 0 && !read_exact(r.payload.data(), r.hdr.size)) return std::nullopt;
  return r;
}

bool FrontEnd::peer_closed(int ms) {
  for (;;) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms) != 1) return false;
    char b[256];
    const ssize_t k = ::recv(fd_, b, sizeof b, 0);
    if (k == 0 || (k < 0 && errno == ECONNRESET)) return true;
    if (k < 0) return false;
  }
}

std::optional<std::uint64_t> FrontEnd::get_u64(Request r) {
  if (!send(static_cast<std::uint32_t>(r), nullptr, 0)) return std::nullopt;
  auto rep = recv();
  if (!rep || rep->hdr.request != static_cast<std::uint32_t>(r) || rep->hdr.size != 8) {
    return std::nullopt;
  }
  std::uint64_t v;
  std::memcpy(&v, rep->payload.data(), 8);
  return v;
}

std::optional<std::uint64_t> FrontEnd::ack(Request r, const void* payload, std::size_t bytes,
                                           std::span<const int> fds) {
  if (!send(static_cast<std::uint32_t>(r), payload, bytes, fds, true)) return std::nullopt;
  auto rep = recv();
  if (!rep || rep->hdr.request != static_cast<std::uint32_t>(r) || rep->hdr.size != 8) {
    return std::nullopt;
  }
  std::uint64_t v;
  std::memcpy(&v, rep->payload.data(), 8);
  return v;
}

std::optional<vu::VringState> FrontEnd::get_vring_base(std::uint32_t index) {
  const vu::VringState s{index, 0};
  if (!send(static_cast<std::uint32_t>(Request::get_vring_base), &s, sizeof s)) {
    return std::nullopt;
  }
  auto rep = recv();
  if (!rep || rep->hdr.size != sizeof s) return std::nullopt;
  vu::VringState out;
  std::memcpy(&out, rep->payload.data(), sizeof out);
  return out;
}

std::optional<FrontEnd::InflightReply> FrontEnd::get_inflight_fd(std::uint16_t num_queues,
                                                                 std::uint16_t queue_size) {
  vu::Inflight ask{};
  ask.num_queues = num_queues;
  ask.queue_size = queue_size;
  if (!send(static_cast<std::uint32_t>(Request::get_inflight_fd), &ask, sizeof ask)) {
    return std::nullopt;
  }
  // The reply carries the record's fd: read it with recvmsg.
  std::vector<std::byte> buf(sizeof(vu::Header) + sizeof(vu::Inflight));
  std::vector<UniqueFd> fds;
  std::size_t got = 0;
  while (got < buf.size()) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 2000) != 1) return std::nullopt;
    auto r = recv_with_fds(fd_, std::span(buf.data() + got, buf.size() - got), fds, 4);
    if (!r || r->closed) return std::nullopt;
    got += r->bytes;
  }
  vu::Header h;
  std::memcpy(&h, buf.data(), sizeof h);
  EXPECT_EQ(h.request, static_cast<std::uint32_t>(Request::get_inflight_fd));
  EXPECT_EQ(h.flags, vu::kVersion | vu::kFlagReply);
  EXPECT_EQ(h.size, sizeof(vu::Inflight));
  InflightReply out;
  std::memcpy(&out.desc, buf.data() + sizeof h, sizeof out.desc);
  EXPECT_LE(fds.size(), 1u);
  if (!fds.empty()) out.fd = std::move(fds[0]);
  return out;
}

std::optional<std::vector<std::byte>> FrontEnd::get_config(std::uint32_t offset,
                                                           std::uint32_t size) {
  std::vector<std::byte> req(sizeof(vu::ConfigHeader) + size);
  const vu::ConfigHeader h{offset, size, 0};
  std::memcpy(req.data(), &h, sizeof h);
  if (!send(static_cast<std::uint32_t>(Request::get_config), req.data(), req.size())) {
    return std::nullopt;
  }
  auto rep = recv();
  if (!rep) return std::nullopt;
  if (rep->hdr.size == 0) return std::vector<std::byte>{};
  if (rep->hdr.size != req.size()) return std::nullopt;
  return std::vector<std::byte>(rep->payload.begin() + sizeof h, rep->payload.end());
}

bool FrontEnd::start_ring(GuestRam& ram, unsigned q, const DriverRing& r, std::uint16_t base) {
  const int kick = r.kick_fd(), call = r.call_fd();
  const vu::VringAddr a{
      q, 0, ram.user_addr(r.desc_gpa()), ram.user_addr(r.used_gpa()), ram.user_addr(r.avail_gpa()),
      0};
  EXPECT_EQ(ack_state(Request::set_vring_num, q, r.size()), 0u);
  EXPECT_EQ(ack_state(Request::set_vring_base, q, base), 0u);
  EXPECT_EQ(ack(Request::set_vring_addr, &a, sizeof a), 0u);
  EXPECT_EQ(ack_u64(Request::set_vring_kick, q, {&kick, 1}), 0u);
  EXPECT_EQ(ack_u64(Request::set_vring_call, q, {&call, 1}), 0u);
  EXPECT_EQ(ack_state(Request::set_vring_enable, q, 1), 0u);
  return !::testing::Test::HasFailure();
}

bool FrontEnd::handshake(GuestRam& ram, std::span<DriverRing* const> rings) {
  const auto features = get_u64(Request::get_features);
  EXPECT_TRUE(features.has_value());
  if (!features) return false;
  EXPECT_NE(*features & (1ull << vu::kFeatureProtocolFeatures), 0u);
  const auto proto = get_u64(Request::get_protocol_features);
  EXPECT_TRUE(proto.has_value());
  if (!proto) return false;
  const std::uint64_t want = (1ull << vu::protocol::kMq) | (1ull << vu::protocol::kReplyAck) |
                             (1ull << vu::protocol::kConfig);
  EXPECT_EQ(*proto & want, want);
  const std::uint64_t p = *proto & want;
  send(static_cast<std::uint32_t>(Request::set_protocol_features), &p, sizeof p);
  EXPECT_GE(get_u64(Request::get_queue_num).value_or(0), rings.size());
  EXPECT_EQ(ack(Request::set_owner, nullptr, 0), 0u);
  EXPECT_EQ(ack_u64(Request::set_features, *features), 0u);  // everything offered
  const vu::MemoryTable t = ram.table();
  const int fds[2] = {ram.fd(), ram.fd()};
  EXPECT_EQ(ack(Request::set_mem_table, &t, 8 + 2 * sizeof(vu::MemoryRegion), fds), 0u);
  for (unsigned q = 0; q < rings.size(); ++q) {
    if (!start_ring(ram, q, *rings[q])) return false;
  }
  return !::testing::Test::HasFailure();
}

}  // namespace keel::testing
