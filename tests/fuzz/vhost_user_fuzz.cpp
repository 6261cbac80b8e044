// libFuzzer target: the vhost-user message stream. Each input is a script of front-end actions
// against one in-process VhostUserBlkServer (caller-driven, a real paravisor on the host path
// over a fake card with no VF): messages with any request, flags, size and payload, each
// carrying no fd, a fresh eventfd, a blocking eventfd whose counter is full, a small sealed or
// unsealed memfd, a pipe, or too many fds; raw bytes (framing errors); the guest's writes to
// its RAM (rings and requests) and runs of the data path; reconnects. Nothing may crash (ASan,
// UBSan), hang (every server call is bounded: poll timeout 0, a 5 ms message timeout; an input
// that takes over 5 s aborts), or leak: after each input the process holds exactly the fds it
// held before it.
//
// Input format, repeated until the input ends:
//   op u8:  op % 8 < 4: a message: request u8, flags u8 (bit 0 need_reply, bit 1 a wrong
//           version, bit 2 the reply bit), fds u8 (% 11: none, eventfd, sealed memfd, unsealed
//           memfd, pipe, 2 eventfds, 9 fds, full blocking eventfd, 2 sealed memfds, /dev/null,
//           the previous message's first fd again), size u16 (LE, up to 4200:
//           beyond kMaxPayload), then `size` payload bytes (zeros past the end of the input)
//           4: guest writes its RAM: offset u16, n u8, n bytes, written at that offset of the
//              last sealed memfd sent (descriptors, rings and requests for the data path)
//           5: run the paravisor's data path until a request completes (at most 5 ms)
//           6: reconnect     7: raw bytes: n u8, then n bytes sent as they are
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "keel/fpga/card.h"
#include "keel/fpga/function.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/paravisor.h"
#include "keel/vmm/vhost_user.h"

namespace {

using namespace keel;
namespace vu = keel::vhost_user;

constexpr std::uint64_t kDiskBytes = 1 << 20;
constexpr std::size_t kMemfdBytes = 64 << 10;     // a memfd the input may attach
constexpr std::size_t kMaxSize = 4200;            // payload sizes the input may claim
constexpr std::chrono::seconds kMaxInputTime{5};  // see the end of LLVMFuzzerTestOneInput

// A function with no hardware behind it (the paravisor never reaches it: it has no VF).
class NoFunction final : public fpga::Function {
 public:
  unsigned number() const noexcept override { return 0; }
  std::uint64_t bar_size() const noexcept override { return 0; }
  std::uint32_t read32(std::uint64_t) noexcept override { return ~0u; }
  std::uint64_t read64(std::uint64_t) noexcept override { return ~0ull; }
  void write32(std::uint64_t, std::uint32_t) noexcept override {}
  void write64(std::uint64_t, std::uint64_t) noexcept override {}
  Result<fpga::DmaBuffer> alloc_dma(std::size_t) override {
    return make_error(Errc::gone, "no hardware");
  }
  Status map_dma(void*, std::size_t, fpga::Iova) override {
    return make_error(Errc::gone, "no hardware");
  }
  Status unmap_dma(fpga::Iova) override { return make_error(Errc::not_found, "no hardware"); }
  unsigned num_vectors() const noexcept override { return 0; }
  Result<std::uint32_t> wait_interrupt(unsigned, std::chrono::nanoseconds) override {
    return make_error(Errc::gone, "no hardware");
  }
  Status flr() override { return make_error(Errc::gone, "no hardware"); }
};

// A card with no VFs and a clock that advances by a microsecond per reading.
class NoCard final : public fpga::Card {
 public:
  std::string_view backend() const noexcept override { return "fuzz"; }
  std::string describe() const override { return "fuzz card (no VFs)"; }
  fpga::Function& pf() noexcept override { return pf_; }
  Result<fpga::Function*> vf(unsigned) override { return make_error(Errc::not_found, "no VFs"); }
  unsigned max_vfs() const noexcept override { return 0; }
  unsigned num_vfs() const noexcept override { return 0; }
  Status set_num_vfs(unsigned) override { return make_error(Errc::unavailable, "no VFs"); }
  bool lockstep() const noexcept override { return true; }
  unsigned step(unsigned n) override {
    now_ += n * 1000ull;
    return n;
  }
  std::uint64_t now_ns() const noexcept override { return now_ += 1000; }

 private:
  NoFunction pf_;
  mutable std::uint64_t now_ = 0;
};

struct World {
  NoCard card;
  std::string image;
  std::unique_ptr<vmm::HostStorageService> host;
  std::unique_ptr<vmm::VhostUserBlkServer> server;
};

// The fds this process has open, each with what it is ("3 -> anon_inode:[eventfd]").
std::vector<std::string> open_fds() {
  std::vector<std::string> fds;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) std::abort();
  while (const dirent* e = readdir(d)) {
    if (e->d_name[0] == '.' || std::atoi(e->d_name) == dirfd(d)) continue;
    char link[256] = {};
    const std::string path = std::string("/proc/self/fd/") + e->d_name;
    (void)!readlink(path.c_str(), link, sizeof link - 1);
    fds.push_back(std::string(e->d_name) + " -> " + link);
  }
  closedir(d);
  std::sort(fds.begin(), fds.end());
  return fds;
}

World& world() {
  static World* w = [] {
    auto* w = new World();
    w->image = "/tmp/keel-vhost-user-fuzz-" + std::to_string(getpid()) + ".img";
    const int fd = open(w->image.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, kDiskBytes) != 0) std::abort();
    close(fd);
    vmm::VhostUserBlkConfig vc;
    vc.socket_path = "/tmp/keel-vhost-user-fuzz-" + std::to_string(getpid()) + ".sock";
    vc.message_timeout = std::chrono::milliseconds(5);
    auto factory = [w](vmm::GuestMemory& mem) -> Result<std::unique_ptr<vmm::Paravisor>> {
      w->host.reset();  // the server destroyed the paravisor that used it
      vmm::HostServiceConfig hc;
      hc.image_path = w->image;
      hc.length = kDiskBytes;
      for (const auto& r : mem.regions()) hc.regions.push_back({r.fd, r.fd_offset, r.gpa, r.bytes});
      hc.io_uring_depth = 8;
      auto h = vmm::HostStorageService::start(hc);
      if (!h) return h.error();
      w->host = std::move(h).value();
      vmm::ParavisorConfig pc;
      pc.queues = 2;
      pc.capacity_sectors = kDiskBytes / 512;
      return vmm::Paravisor::create(nullptr, w->card, w->card, mem, *w->host, pc);
    };
    auto s = vmm::VhostUserBlkServer::create(vc, factory);
    if (!s) {
      std::fprintf(stderr, "vhost_user_fuzz: %s\n", s.error().message.c_str());
      std::abort();
    }
    w->server = std::move(s).value();
    w->host.reset();
    // At exit (libFuzzer ends with exit()): the server removes its socket, then the image goes.
    std::atexit([] {
      World& me = world();
      me.server.reset();
      me.host.reset();
      unlink(me.image.c_str());
    });
    return w;
  }();
  return *w;
}

using Reader = keel::fuzz::FuzzInput;

// Opens the fds a message carries (closed by the caller once sent: the server holds its own).
// `previous`: the first fd of the last message that carried one (kind 10 sends it again: one
// eventfd as the kick fd of two rings, say).
// `ram`: a duplicate of the last sealed memfd attached, for the guest's writes (op 4).
void attach(std::uint8_t kind, std::vector<int>& fds, int previous, int& ram) {
  auto memfd = [&](bool sealed) {
    const int fd = memfd_create("fuzz-ram", MFD_CLOEXEC | (sealed ? MFD_ALLOW_SEALING : 0u));
    if (fd < 0) return;
    (void)!ftruncate(fd, kMemfdBytes);
    if (sealed) {
      (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
      if (ram >= 0) close(ram);
      ram = dup(fd);
    }
    fds.push_back(fd);
  };
  switch (kind % 11) {
    case 0: break;
    case 1: fds.push_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); break;
    case 2: memfd(true); break;
    case 3: memfd(false); break;
    case 4: {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) break;
      fds.push_back(p[1]);
      close(p[0]);
      break;
    }
    case 5:
      fds.push_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      fds.push_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      break;
    case 6:  // more than kMaxFds
      for (unsigned i = 0; i <= vu::kMaxFds; ++i) fds.push_back(eventfd(0, EFD_CLOEXEC));
      break;
    case 7: {  // blocking, counter full: a write of 1 would wait for a read
      const int fd = eventfd(0, EFD_CLOEXEC);
      const std::uint64_t full = 0xfffffffffffffffeull;
      (void)!write(fd, &full, sizeof full);
      fds.push_back(fd);
      break;
    }
    case 8:  // two sealed memfds (a two-region table)
      memfd(true);
      memfd(true);
      break;
    case 9: fds.push_back(open("/dev/null", O_RDWR | O_CLOEXEC)); break;
    default:
      if (previous >= 0) fds.push_back(dup(previous));
      break;
  }
}

class Client {
 public:
  explicit Client(World& w) : w_(w) { connect(); }
  ~Client() { disconnect(); }

  void connect() {
    disconnect();
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", w_.server->socket_path().c_str());
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) std::abort();
    pump();  // accepted
  }
  void disconnect() {
    if (fd_ < 0) return;
    close(fd_);
    fd_ = -1;
    pump();                                    // the server notices the hang-up
    if (w_.server->connected()) std::abort();  // a closed front end must be dropped
  }

  void send(const void* bytes, std::size_t n, const std::vector<int>& fds) {
    iovec iov{const_cast<void*>(bytes), n};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)] = {};
    if (!fds.empty()) {
      m.msg_control = control;
      m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    (void)sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    pump();
    drain_replies();
    if (!w_.server->connected()) connect();  // the server hung up: start over
  }

  void pump() {
    for (int i = 0; i < 8 && w_.server->run_once(std::chrono::milliseconds(0)) > 0; ++i) {
    }
  }

 private:
  void drain_replies() {
    char buf[4096];
    while (recv(fd_, buf, sizeof buf, MSG_DONTWAIT) > 0) {
    }
  }

  World& w_;
  int fd_ = -1;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  // Compared with what is open after the input (libFuzzer itself opens fds between inputs: the
  // symbolizer's pipes).
  const std::vector<std::string> before = open_fds();
  const auto start = std::chrono::steady_clock::now();
  {
    Reader in(data, size);
    Client client(w);
    std::vector<std::uint8_t> msg;
    int previous = -1, ram = -1;
    unsigned steps = 0;
    while (!in.empty() && ++steps <= 64) {
      const std::uint8_t op = in.u8();
      std::vector<int> fds;
      switch (op % 8) {
        case 4: {
          const std::uint16_t offset = in.u16();
          msg.resize(in.u8());
          in.bytes(msg.data(), msg.size());
          if (ram >= 0 && !msg.empty()) (void)!pwrite(ram, msg.data(), msg.size(), offset);
          continue;
        }
        case 5: {
          // The host service completes requests on its own thread: a bounded wait for one.
          const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(5);
          while (w.server->run_paravisor_once() == 0 && std::chrono::steady_clock::now() < until) {
          }
          continue;
        }
        case 6: client.connect(); continue;
        case 7: {
          msg.resize(in.u8());
          in.bytes(msg.data(), msg.size());
          client.send(msg.data(), msg.size(), fds);
          continue;
        }
        default: break;
      }
      const std::uint32_t request = in.u8();
      const std::uint8_t flags = in.u8();
      attach(in.u8(), fds, previous, ram);
      const std::size_t bytes = in.u16() % (kMaxSize + 1);
      vu::Header h{request, vu::kVersion, static_cast<std::uint32_t>(bytes)};
      if ((flags & 1) != 0) h.flags |= vu::kFlagNeedReply;
      if ((flags & 2) != 0) h.flags ^= 3;
      if ((flags & 4) != 0) h.flags |= vu::kFlagReply;
      msg.resize(sizeof h + bytes);
      std::memcpy(msg.data(), &h, sizeof h);
      in.bytes(msg.data() + sizeof h, bytes);
      client.send(msg.data(), msg.size(), fds);
      if (!fds.empty()) {
        if (previous >= 0) close(previous);
        previous = dup(fds[0]);
      }
      for (int fd : fds) close(fd);
    }
    if (previous >= 0) close(previous);
    if (ram >= 0) close(ram);
  }
  // A call that blocked (a write to a front end's full blocking eventfd, say) ends only when a
  // signal interrupts it: libFuzzer's timer, every timeout / 2 + 1 seconds. An input that took
  // that long blocked somewhere: 64 steps of at most 5 ms each take well under a second.
  const auto took = std::chrono::steady_clock::now() - start;
  if (took > kMaxInputTime) {
    std::fprintf(stderr, "vhost_user_fuzz: the input took %lld ms: a call blocked\n",
                 static_cast<long long>(
                     std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    std::abort();
  }
  // The connection is gone: so is everything it set up (paravisor, memory, ring fds).
  w.host.reset();
  const std::vector<std::string> now = open_fds();
  if (now != before) {
    std::fprintf(stderr, "vhost_user_fuzz: fds open before the input:\n");
    for (const std::string& f : before) std::fprintf(stderr, "  %s\n", f.c_str());
    std::fprintf(stderr, "after this one:\n");
    for (const std::string& f : now) std::fprintf(stderr, "  %s\n", f.c_str());
    std::abort();
  }
  return 0;
}
