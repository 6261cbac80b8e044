// A scripted NBD client for the server tests: blocking unix-socket IO with bounded waits (every
// receive and send gives up after the socket timeout), and raw access to every message so the
// tests can also misbehave on purpose.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "keel/vmm/nbd_server.h"

namespace keel::test {

namespace nbd = keel::nbd;

class NbdClient {
 public:
  struct OptReply {
    std::uint32_t option = 0;
    std::uint32_t type = 0;
    std::string data;
  };
  struct Export {
    std::uint64_t size = 0;
    std::uint16_t flags = 0;
    nbd::InfoBlockSize block{};
    std::string name, description;
  };

  /// Connects; nullptr if the socket does not answer.
  static std::unique_ptr<NbdClient> connect(const std::string& path, int timeout_s = 20) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return nullptr;
    timeval tv{timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
      close(fd);
      return nullptr;
    }
    return std::unique_ptr<NbdClient>(new NbdClient(fd));
  }
  ~NbdClient() {
    if (fd_ >= 0) close(fd_);
  }
  NbdClient(const NbdClient&) = delete;
  NbdClient& operator=(const NbdClient&) = delete;

  int fd() const { return fd_; }
  void close_now() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // EINTR is a failure like any other: nothing in the tests sends this process signals, so an
  // interrupted call means something interrupted the test's thread (see failure()).
  bool send_all(const void* p, std::size_t n) {
    const auto* b = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t k = send(fd_, b, n, MSG_NOSIGNAL);
      if (k <= 0) return failed("send", k);
      b += k;
      n -= static_cast<std::size_t>(k);
    }
    return true;
  }
  bool recv_all(void* p, std::size_t n) {
    auto* b = static_cast<char*>(p);
    while (n > 0) {
      const ssize_t k = recv(fd_, b, n, 0);
      if (k <= 0) return failed("recv", k);
      b += k;
      n -= static_cast<std::size_t>(k);
    }
    return true;
  }
  /// Why the last send or receive failed ("recv: Interrupted system call", "recv: closed by
  /// the server"), for assertion messages; "" if none did.
  const std::string& failure() const { return failure_; }
  /// True when the server closed the connection (EOF or reset) before the timeout; data that
  /// was still coming is skipped.
  bool closed_by_peer() {
    char b[4096];
    for (;;) {
      const ssize_t k = recv(fd_, b, sizeof b, 0);
      if (k == 0) return true;
      if (k < 0) return errno == ECONNRESET;
    }
  }

  template <typename M>
  bool send_msg(const M& m) {
    const M w = nbd::to_wire(m);
    return send_all(&w, sizeof w);
  }
  template <typename M>
  bool recv_msg(M& m) {
    if (!recv_all(&m, sizeof m)) return false;
    m = nbd::from_wire(m);
    return true;
  }

  /// Reads the greeting and sends the client flags.
  bool handshake(std::uint32_t client_flags = nbd::kFlagCFixedNewstyle | nbd::kFlagCNoZeroes) {
    nbd::Greeting g{};
    if (!recv_msg(g)) return false;
    if (g.passwd != nbd::kInitPasswd || g.magic != nbd::kOptMagic) return false;
    greeting_flags_ = g.flags;
    const std::uint32_t f = __builtin_bswap32(client_flags);
    return send_all(&f, 4);
  }
  std::uint16_t greeting_flags() const { return greeting_flags_; }

  bool send_option(std::uint32_t option, const std::string& data) {
    return send_msg(nbd::OptionHeader{nbd::kOptMagic, option,
                                      static_cast<std::uint32_t>(data.size())}) &&
           send_all(data.data(), data.size());
  }
  bool read_opt_reply(OptReply& r) {
    nbd::OptionReply h{};
    if (!recv_msg(h) || h.magic != nbd::kOptReplyMagic || h.length > (1u << 20)) return false;
    r.option = h.option;
    r.type = h.type;
    r.data.resize(h.length);
    return recv_all(r.data.data(), h.length);
  }

  static std::string info_request(const std::string& name,
                                  const std::vector<std::uint16_t>& infos) {
    std::string d;
    const std::uint32_t n = __builtin_bswap32(static_cast<std::uint32_t>(name.size()));
    d.append(reinterpret_cast<const char*>(&n), 4);
    d += name;
    const std::uint16_t k = __builtin_bswap16(static_cast<std::uint16_t>(infos.size()));
    d.append(reinterpret_cast<const char*>(&k), 2);
    for (std::uint16_t t : infos) {
      const std::uint16_t b = __builtin_bswap16(t);
      d.append(reinterpret_cast<const char*>(&b), 2);
    }
    return d;
  }

  /// NBD_OPT_GO (or INFO); returns the final reply type (kRepAck on success) and fills `e`.
  std::uint32_t go(const std::string& name, Export& e, bool info_only = false,
                   const std::vector<std::uint16_t>& infos = {nbd::kInfoName, nbd::kInfoDescription,
                                                              nbd::kInfoBlockSize}) {
    const std::uint32_t opt = info_only ? nbd::kOptInfo : nbd::kOptGo;
    if (!send_option(opt, info_request(name, infos))) return 0;
    for (;;) {
      OptReply r;
      if (!read_opt_reply(r) || r.option != opt) return 0;
      if (r.type != nbd::kRepInfo) return r.type;
      if (r.data.size() < 2) return 0;
      std::uint16_t t;
      std::memcpy(&t, r.data.data(), 2);
      t = __builtin_bswap16(t);
      if (t == nbd::kInfoExport && r.data.size() == sizeof(nbd::InfoExport)) {
        nbd::InfoExport ie;
        std::memcpy(&ie, r.data.data(), sizeof ie);
        ie = nbd::from_wire(ie);
        e.size = ie.size;
        e.flags = ie.flags;
      } else if (t == nbd::kInfoBlockSize && r.data.size() == sizeof(nbd::InfoBlockSize)) {
        std::memcpy(&e.block, r.data.data(), sizeof e.block);
        e.block = nbd::from_wire(e.block);
      } else if (t == nbd::kInfoName) {
        e.name = r.data.substr(2);
      } else if (t == nbd::kInfoDescription) {
        e.description = r.data.substr(2);
      }
    }
  }

  /// Greeting, flags and GO for `name`: ready for transmission.
  bool open(const std::string& name, Export& e) {
    return handshake() && go(name, e) == nbd::kRepAck;
  }

  bool send_request(std::uint16_t type, std::uint16_t flags, std::uint64_t handle,
                    std::uint64_t offset, std::uint32_t length, const void* payload = nullptr,
                    std::uint32_t magic = nbd::kRequestMagic) {
    if (!send_msg(nbd::Request{magic, flags, type, handle, offset, length})) return false;
    return payload == nullptr || send_all(payload, length);
  }
  bool read_reply(nbd::SimpleReply& r) { return recv_msg(r) && r.magic == nbd::kSimpleReplyMagic; }

  // Synchronous helpers: return the reply's error, or ~0u if the connection failed.
  std::uint32_t write(std::uint64_t offset, const std::vector<std::uint8_t>& data,
                      std::uint16_t flags = 0) {
    const std::uint64_t h = next_handle_++;
    if (!send_request(nbd::kCmdWrite, flags, h, offset, static_cast<std::uint32_t>(data.size()),
                      data.data())) {
      return ~0u;
    }
    return finish(h, nullptr, 0);
  }
  std::uint32_t read(std::uint64_t offset, std::uint32_t length, std::vector<std::uint8_t>& out) {
    const std::uint64_t h = next_handle_++;
    if (!send_request(nbd::kCmdRead, 0, h, offset, length)) return ~0u;
    out.assign(length, 0);
    return finish(h, out.data(), length);
  }
  std::uint32_t command(std::uint16_t type, std::uint64_t offset, std::uint32_t length,
                        std::uint16_t flags = 0) {
    const std::uint64_t h = next_handle_++;
    if (!send_request(type, flags, h, offset, length)) return ~0u;
    return finish(h, nullptr, 0);
  }

 private:
  explicit NbdClient(int fd) : fd_(fd) {}
  std::uint32_t finish(std::uint64_t handle, void* data, std::uint32_t length) {
    nbd::SimpleReply r{};
    if (!read_reply(r) || r.handle != handle) return ~0u;
    if (r.error == 0 && data != nullptr && !recv_all(data, length)) return ~0u;
    return r.error;
  }

  bool failed(const char* what, ssize_t k) {
    failure_ = std::string(what) + ": " +
               (k == 0 ? std::string("closed by the server") : std::string(std::strerror(errno)));
    return false;
  }

  int fd_ = -1;
  std::string failure_;
  std::uint16_t greeting_flags_ = 0;
  std::uint64_t next_handle_ = 1;
};

}  // namespace keel::test
