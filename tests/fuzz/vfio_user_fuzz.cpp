// libFuzzer target: what a vfio-user client can send keel-card. The input is a script of frames
// written into one end of a socketpair whose other end a FunctionServer serves a VF of the
// reference model card through: well-formed commands with any payload (and, if the script asks,
// a sealed memfd, an unsealed one or eventfds as SCM_RIGHTS), raw bytes (framing errors), and
// turns where the server handles what arrived and forwards interrupts. Checked: no crash, leak
// or hang under ASan + UBSan; the server never holds a window after the client is gone; the
// function still answers a register read afterwards.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "keel/fpga/model/model_card.h"
#include "keel/fpga/vfio_user/function_server.h"
#include "keel/sriov/pf_manager.h"

namespace {

using namespace keel;
using namespace keel::vfio_user;

#define CHECK(c)                \
  do {                          \
    if (!(c)) __builtin_trap(); \
  } while (0)

struct Card {
  std::unique_ptr<fpga::model::ModelCard> card;
  fpga::Function* vf = nullptr;
};

Card& card() {
  static Card* c = [] {
    auto* k = new Card();
    fpga::model::ModelConfig mc;
    mc.card.storage_bytes = 1 << 20;
    mc.card.lockstep = true;  // the card moves only when stepped: no DMA behind the fuzzer
    mc.card.max_vfs = 1;
    auto made = fpga::model::ModelCard::create(mc);
    if (!made.ok()) std::abort();
    k->card = std::move(made).value();
    auto pm = sriov::PfManager::discover(*k->card);
    if (!pm.ok()) std::abort();
    sriov::VfResources res;
    res.slice_lbas = (1 << 20) / 512;
    if (!pm->enable_vfs({&res, 1}).ok()) std::abort();
    k->vf = k->card->vf(0).value();
    return k;
  }();
  return *c;
}

// Sends bytes (and fds) from the client end without blocking; drops what does not fit.
void send_raw(int fd, const void* p, std::size_t n, const std::vector<int>& fds) {
  iovec iov{const_cast<void*>(p), n};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  std::vector<std::uint64_t> control((CMSG_SPACE(sizeof(int) * fds.size()) + 7) / 8);
  if (!fds.empty()) {
    m.msg_control = control.data();
    m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  (void)::sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

void drain(int fd) {
  char buf[65536];
  while (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

int make_memfd(bool sealed, std::uint64_t bytes) {
  const int fd = ::memfd_create("vfio-user-fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  (void)!::ftruncate(fd, static_cast<off_t>(bytes));
  if (sealed) (void)::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > (64u << 10)) return 0;
  Card& k = card();
  fuzz::FuzzInput in(data, size);
  int sv[2];
  CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int big = 1 << 20;
  (void)::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  (void)::setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  ChannelLimits limits;
  limits.max_message_bytes = 8192;
  limits.max_fds = 4;
  Channel served(UniqueFd(sv[1]), limits);
  FunctionServerConfig fc;
  fc.max_windows = 4;
  fc.doorbell_offset = 0x1000;  // as keel-card serves a VF: REGION_INFO and IO_FDS with fds
  fc.doorbell_bytes = k.vf->bar_size() - 0x1000;
  fc.doorbell_slots = 2 * k.vf->num_vectors();
  FunctionServer server(*k.vf, fc);
  bool alive = true;
  auto turn = [&] {
    // Handle what has arrived; a framing error ends the connection, as keel-card does.
    for (int i = 0; i < 16 && alive; ++i) {
      pollfd p{served.fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) break;
      auto m = served.receive(std::chrono::milliseconds(1));
      if (!m.ok() || !server.handle(served, *m).ok()) alive = false;
      drain(sv[0]);
    }
    server.apply_doorbells();
    server.forward_interrupts();
  };
  if ((in.u8() & 1) != 0) {  // most scripts start with a valid VERSION
    const auto v = encode_version(Capabilities{8, 4096});
    Header h{1, Command::version, static_cast<std::uint32_t>(sizeof(Header) + v.size()), 0, 0};
    std::vector<std::uint8_t> msg(sizeof h + v.size());
    std::memcpy(msg.data(), &h, sizeof h);
    std::memcpy(msg.data() + sizeof h, v.data(), v.size());
    send_raw(sv[0], msg.data(), msg.size(), {});
    turn();
  }
  for (unsigned frames = 0; frames < 64 && !in.empty() && alive; ++frames) {
    const std::uint8_t op = in.u8();
    if (op % 4 == 0) {  // a well-framed command
      Header h{};
      h.msg_id = in.u16();
      h.command = static_cast<Command>(1 + in.u8() % 13);
      h.flags = (in.u8() & 1) ? kFlagNoReply : 0;
      std::vector<std::uint8_t> payload(in.u16() % 512);
      in.bytes(payload.data(), payload.size());
      h.size = static_cast<std::uint32_t>(sizeof h + payload.size());
      std::vector<std::uint8_t> msg(h.size);
      std::memcpy(msg.data(), &h, sizeof h);
      if (!payload.empty()) std::memcpy(msg.data() + sizeof h, payload.data(), payload.size());
      const std::uint8_t fdsel = in.u8();
      std::vector<int> fds;
      if (fdsel & 1) fds.push_back(make_memfd(true, 4u << 20));
      if (fdsel & 2) fds.push_back(make_memfd(false, 4u << 20));
      if (fdsel & 4) fds.push_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (fdsel & 8) fds.push_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      send_raw(sv[0], msg.data(), msg.size(), fds);
      for (int fd : fds) ::close(fd);
    } else if (op % 4 == 1) {  // raw bytes: framing the parser must survive
      const std::string raw = in.bytes(in.u8());
      send_raw(sv[0], raw.data(), raw.size(), {});
    } else {
      turn();
    }
  }
  turn();
  ::close(sv[0]);  // the client goes
  server.client_gone();
  CHECK(server.windows() == 0);
  // The function still answers, and nothing the client mapped is left in its IOMMU domain.
  CHECK(k.vf->read32(0x8) == 0x00010400u);
  k.card->step(1);
  return 0;
}
