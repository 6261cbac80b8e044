// libFuzzer target: what a paravisor process can send keel-hostd. The host storage service in
// its own process serves paravisors that run in guests' VMs, so every record is untrusted. The
// input is a script of SOCK_SEQPACKET records written into one end of a socketpair whose other
// end a RemoteHostSession serves: well-formed requests with any payload (OPEN with the served
// disk's name or another, guest RAM regions with memfds of various sizes, eventfds where memory
// is expected, ADD_SHARED, OPEN_CHANNEL, REGIONS, unknown types), short records, and turns where
// the session handles what arrived. Checked: no crash, leak or hang under ASan + UBSan; a
// session ends only when the peer is gone or a record is not this protocol.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "keel/fd_passing.h"
#include "keel/vmm/remote_host.h"

namespace {

using namespace keel;
using namespace keel::vmm;

#define CHECK(c)                \
  do {                          \
    if (!(c)) __builtin_trap(); \
  } while (0)

const std::map<std::string, HostDisk>& disks() {
  static const auto* d = [] {
    char path[] = "/tmp/keel-remote-host-fuzz-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0 || ::ftruncate(fd, 1 << 20) != 0) std::abort();
    ::close(fd);
    auto* m = new std::map<std::string, HostDisk>();
    (*m)["vm0"] = HostDisk{path, 4096, 0};
    std::atexit([] { ::unlink(disks().at("vm0").image_path.c_str()); });
    return m;
  }();
  return *d;
}

int make_memfd(std::uint64_t bytes) {
  const int fd = ::memfd_create("remote-host-fuzz", MFD_CLOEXEC);
  if (fd < 0) return -1;
  (void)!::ftruncate(fd, static_cast<off_t>(bytes));
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > (16u << 10)) return 0;
  fuzz::FuzzInput in(data, size);
  int sv[2];
  CHECK(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  HostServiceConfig base;
  base.io_uring_depth = 8;
  base.stop_timeout_ms = 1000;
  auto session = std::make_unique<RemoteHostSession>(UniqueFd(sv[1]), disks(), base);
  bool alive = true;
  auto turn = [&] {
    for (int i = 0; i < 8 && alive; ++i) {
      pollfd p{session->fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) break;
      alive = session->handle();
      // Replies (and the fds they carry) are read and dropped, as a client would.
      std::vector<std::byte> buf(remote::kMaxMessageBytes);
      std::vector<UniqueFd> fds;
      for (;;) {
        auto r = recv_with_fds(sv[0], buf, fds, 8);
        if (!r || r->again || r->closed) break;
      }
    }
  };
  for (unsigned frames = 0; frames < 32 && !in.empty() && alive; ++frames) {
    const std::uint8_t op = in.u8();
    if (op % 3 == 0) {  // a request
      std::vector<std::byte> msg(sizeof(remote::Header));
      remote::Header h{static_cast<remote::Type>(in.u8() % 6), in.u32()};
      std::memcpy(msg.data(), &h, sizeof h);
      std::vector<int> fds;
      if (h.type == remote::Type::open && (in.u8() & 1) != 0) {
        remote::Open o{};
        const bool served = (in.u8() & 3) != 0;
        const std::string name = served ? "vm0" : in.bytes(in.u8() % 80);
        std::memcpy(o.disk, name.data(), std::min(name.size(), sizeof o.disk));
        o.regions = in.u8() % 4;
        const auto b = std::as_bytes(std::span(&o, 1));
        msg.insert(msg.end(), b.begin(), b.end());
        for (std::uint32_t i = 0; i < o.regions; ++i) {
          remote::OpenRegion g{in.u64() % (1ull << 34), (in.u32() % (1u << 21)),
                               in.u32() % (1u << 20)};
          const auto gb = std::as_bytes(std::span(&g, 1));
          msg.insert(msg.end(), gb.begin(), gb.end());
        }
      } else {
        const std::string payload = in.bytes(in.u16() % 256);
        const auto* p = reinterpret_cast<const std::byte*>(payload.data());
        msg.insert(msg.end(), p, p + payload.size());
      }
      const std::uint8_t fdsel = in.u8();
      for (unsigned i = 0; i < (fdsel & 3u); ++i) fds.push_back(make_memfd((in.u8() % 3) << 20));
      if ((fdsel & 4) != 0) fds.push_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      const std::span<const std::byte> parts[1] = {msg};
      (void)send_with_fds(sv[0], parts, fds);
      for (int fd : fds) ::close(fd);
    } else if (op % 3 == 1) {  // a record too short for a header, or empty
      const std::string raw = in.bytes(in.u8() % sizeof(remote::Header));
      (void)::send(sv[0], raw.data(), raw.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
      turn();
    }
  }
  turn();
  ::close(sv[0]);  // the paravisor goes: its session and service end
  if (alive) {
    pollfd p{session->fd(), POLLIN, 0};
    CHECK(::poll(&p, 1, 1000) == 1);
    CHECK(!session->handle());
  }
  session.reset();
  return 0;
}
