// The two ways tests reach a TPM: a character device, and the swtpm control channel with its
// data channel handed over by CMD_SET_DATAFD (QEMU backends/tpm/tpm_emulator.c's sequence and
// wire sizes).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "tpm2_client.h"

namespace keel::vtpm {
namespace {

constexpr uint32_t kCmdGetCapability = 0x01;
constexpr uint32_t kCmdInit = 0x02;
constexpr uint32_t kCmdShutdown = 0x03;
constexpr uint32_t kCmdGetTpmEstablished = 0x04;
constexpr uint32_t kCmdSetLocality = 0x05;
constexpr uint32_t kCmdResetTpmEstablished = 0x0b;
constexpr uint32_t kCmdStop = 0x0e;
constexpr uint32_t kCmdSetDatafd = 0x10;
constexpr uint32_t kCmdSetBuffersize = 0x11;

// A response larger than any TPM's buffer means the size field is garbage; refuse it rather
// than allocate what a broken server claims.
constexpr size_t kMaxResponse = 1 << 20;
// Once a reply has started, the rest follows at once; a pause this long means the server sent
// all it will (an error reply is shorter than the success one).
constexpr int kReplyGapMs = 500;

[[noreturn]] void fail_errno(const std::string& what) {
  throw TpmError(what + ": " + std::strerror(errno));
}

uint32_t be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

void put32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

void send_all(int fd, const uint8_t* p, size_t n, const char* what) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail_errno(what);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Reads up to `want` bytes: waits `first_ms` for the first byte and kReplyGapMs for each later
// chunk; stops early at EOF or a pause. Returns what arrived.
Bytes read_upto(int fd, size_t want, int first_ms) {
  Bytes out;
  out.reserve(want);
  uint8_t buf[4096];
  while (out.size() < want) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, out.empty() ? first_ms : kReplyGapMs);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail_errno("poll");
    if (r == 0) break;
    ssize_t n = ::read(fd, buf, std::min(sizeof(buf), want - out.size()));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) fail_errno("read");
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

void read_exact(int fd, uint8_t* p, size_t n, int timeout_ms, const char* what) {
  Bytes got = read_upto(fd, n, timeout_ms);
  if (got.size() != n) {
    throw TpmError(std::string(what) + ": got " + std::to_string(got.size()) + " of " +
                   std::to_string(n) + " bytes (connection closed or timed out)");
  }
  std::memcpy(p, got.data(), n);
}

}  // namespace

DeviceTransport::DeviceTransport(const std::string& path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) fail_errno("open " + path);
}

DeviceTransport::~DeviceTransport() {
  if (fd_ >= 0) ::close(fd_);
}

Bytes DeviceTransport::transact(const Bytes& cmd) {
  // The kernel's TPM device takes a command in one write() and hands the whole response to
  // the next read(); a short write is an error there, not a partial transfer.
  ssize_t w;
  do {
    w = ::write(fd_, cmd.data(), cmd.size());
  } while (w < 0 && errno == EINTR);
  if (w < 0) fail_errno("write to TPM device");
  if (static_cast<size_t>(w) != cmd.size()) throw TpmError("short write to TPM device");
  Bytes out(8192);
  size_t got = 0;
  for (;;) {
    ssize_t n = ::read(fd_, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno("read from TPM device");
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got >= 10 && got >= be32(out.data() + 2)) break;
    if (got == out.size()) break;
  }
  out.resize(got);
  if (got < 10) throw TpmError("TPM device response of " + std::to_string(got) + " bytes");
  return out;
}

CtrlTransport::CtrlTransport(const std::string& socket_path, bool send_init, int timeout_ms)
    : timeout_ms_(timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) throw TpmError("socket path too long");
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  ctrl_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ctrl_ < 0) fail_errno("socket");
  if (::connect(ctrl_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    int e = errno;
    ::close(ctrl_);
    errno = e;
    fail_errno("connect " + socket_path);
  }
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
    ::close(ctrl_);
    fail_errno("socketpair");
  }
  data_ = pair[0];
  uint32_t r;
  try {
    r = set_datafd(pair[1]);
  } catch (...) {
    ::close(pair[1]);
    ::close(ctrl_);
    ::close(data_);
    throw;
  }
  ::close(pair[1]);
  auto give_up = [&](const char* what, uint32_t res) {
    ::close(ctrl_);
    ::close(data_);
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%x", res);
    throw TpmError(std::string(what) + " failed: result " + hex);
  };
  if (r != 0) give_up("CMD_SET_DATAFD", r);
  if (send_init) {
    uint32_t ir;
    try {
      ir = init(0);
    } catch (...) {
      ::close(ctrl_);
      ::close(data_);
      throw;
    }
    if (ir != 0) give_up("CMD_INIT", ir);
  }
}

CtrlTransport::~CtrlTransport() {
  if (data_ >= 0) ::close(data_);
  if (ctrl_ >= 0) ::close(ctrl_);
}

Bytes CtrlTransport::transact(const Bytes& cmd) {
  send_all(data_, cmd.data(), cmd.size(), "data channel send");
  uint8_t hdr[10];
  read_exact(data_, hdr, sizeof(hdr), timeout_ms_, "data channel response header");
  uint32_t size = be32(hdr + 2);
  if (size < 10 || size > kMaxResponse) {
    throw TpmError("data channel response size field " + std::to_string(size));
  }
  Bytes out(hdr, hdr + 10);
  out.resize(size);
  if (size > 10) read_exact(data_, out.data() + 10, size - 10, timeout_ms_, "data channel body");
  return out;
}

Bytes CtrlTransport::ctrl_raw(const Bytes& bytes, size_t expected_reply_len, int pass_fd) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  // One message, as QEMU sends it: swtpm takes a command from one recvmsg().
  ssize_t w;
  do {
    w = ::sendmsg(ctrl_, &msg, MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w < 0) fail_errno("control channel send");
  if (static_cast<size_t>(w) != bytes.size()) {
    send_all(ctrl_, bytes.data() + w, bytes.size() - static_cast<size_t>(w), "control send");
  }
  return read_upto(ctrl_, expected_reply_len, timeout_ms_);
}

Bytes CtrlTransport::ctrl_cmd(uint32_t code, const Bytes& payload, size_t reply_len, int pass_fd) {
  Bytes msg;
  put32(msg, code);
  msg.insert(msg.end(), payload.begin(), payload.end());
  Bytes r = ctrl_raw(msg, reply_len, pass_fd);
  char name[48];
  std::snprintf(name, sizeof(name), "control command 0x%02x", code);
  // An error reply is the 4-byte result alone.
  bool short_error = r.size() == 4 && be32(r.data()) != 0;
  if (r.size() != reply_len && !short_error) {
    throw TpmError(std::string(name) + ": reply of " + std::to_string(r.size()) +
                   " bytes, expected " + std::to_string(reply_len));
  }
  r.resize(reply_len, 0);
  return r;
}

uint64_t CtrlTransport::get_capability() {
  Bytes r = ctrl_cmd(kCmdGetCapability, {}, 8);
  return uint64_t{be32(r.data())} << 32 | be32(r.data() + 4);
}

uint32_t CtrlTransport::init(uint32_t flags) {
  Bytes p;
  put32(p, flags);
  return be32(ctrl_cmd(kCmdInit, p, 4).data());
}

uint32_t CtrlTransport::shutdown() { return be32(ctrl_cmd(kCmdShutdown, {}, 4).data()); }

CtrlTransport::Established CtrlTransport::get_tpm_established() {
  Bytes r = ctrl_cmd(kCmdGetTpmEstablished, {}, 8);
  return {be32(r.data()), r[4]};
}

uint32_t CtrlTransport::set_locality(uint8_t locality) {
  return be32(ctrl_cmd(kCmdSetLocality, {locality, 0, 0, 0}, 4).data());
}

uint32_t CtrlTransport::reset_tpm_established(uint8_t locality) {
  return be32(ctrl_cmd(kCmdResetTpmEstablished, {locality, 0, 0, 0}, 4).data());
}

uint32_t CtrlTransport::stop() { return be32(ctrl_cmd(kCmdStop, {}, 4).data()); }

uint32_t CtrlTransport::set_datafd(int fd) {
  return be32(ctrl_cmd(kCmdSetDatafd, {}, 4, fd).data());
}

CtrlTransport::BufferSize CtrlTransport::set_buffersize(uint32_t size) {
  Bytes p;
  put32(p, size);
  Bytes r = ctrl_cmd(kCmdSetBuffersize, p, 16);
  return {be32(r.data()), be32(r.data() + 4), be32(r.data() + 8), be32(r.data() + 12)};
}

}  // namespace keel::vtpm
