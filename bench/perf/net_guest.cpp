#include "net_guest.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "keel/unix_listener.h"
#include "keel/wire/virtio.h"

namespace keel::perf {

namespace {

namespace vnet = virtio::net;

constexpr std::uint64_t bit(unsigned b) { return std::uint64_t{1} << b; }

// What Linux's virtio_net takes of what the paravisor offers, bar MQ: one queue pair.
constexpr std::uint64_t kFeatures = bit(virtio::feature::kVersion1) | bit(vnet::kMrgRxbuf) |
                                    bit(vnet::kMac) | bit(vnet::kStatus) | bit(vnet::kMtu) |
                                    bit(virtio::feature::kRingEventIdx);
static_assert(sizeof(vnet::Hdr) == NetGuest::kHdr);

vmm::Virtqueue::Layout layout_of(const vmm::SplitRingDriver& d) {
  return {d.layout().size, d.layout().desc, d.layout().avail, d.layout().used, nullptr};
}

}  // namespace

Result<std::unique_ptr<NetGuest>> NetGuest::create(const knic::Mac& mac, fpga::Function* vf,
                                                   fpga::model::ModelCard& card,
                                                   const std::string& switch_path, bool rx_copy) {
  std::unique_ptr<NetGuest> g(new NetGuest());
  g->mac_ = mac;
  auto mem = vmm::GuestMemory::create(8u << 20);
  if (!mem) return mem.error();
  g->mem_ = std::move(mem).value();
  auto translate = [m = g->mem_.get()](std::uint64_t gpa, std::uint64_t len) {
    return m->translate(gpa, len);
  };
  g->rx_ = std::make_unique<vmm::SplitRingDriver>(
      translate, vmm::SplitRingDriver::Layout{kQueue, 0x0000, 0x1000, 0x2000});
  g->tx_ = std::make_unique<vmm::SplitRingDriver>(
      translate, vmm::SplitRingDriver::Layout{kQueue, 0x4000, 0x5000, 0x6000});
  for (unsigned q = 0; q < 2; ++q) {
    g->kick_[q] = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    g->call_[q] = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!g->kick_[q].valid() || !g->call_[q].valid()) {
      return make_error(Errc::io_error, std::string("eventfd: ") + std::strerror(errno));
    }
  }
  auto port = connect_unix(switch_path, SOCK_SEQPACKET);
  if (!port) return port.error();
  vmm::NetParavisorConfig cfg;
  cfg.mac = mac;
  cfg.threads = true;
  cfg.rx_zero_copy = !rx_copy;
  auto pv = vmm::NetParavisor::create(vf, card, card, *g->mem_, std::move(port).value(), cfg);
  if (!pv) return pv.error();
  g->pv_ = std::move(pv).value();
  if (Status st = g->pv_->set_features(kFeatures); !st.ok()) return st.error();
  for (unsigned q = 0; q < 2; ++q) {
    g->pv_->set_kick_fd(q, g->kick_[q].get());
    g->pv_->set_call_fd(q, g->call_[q].get());
  }
  if (Status st = g->pv_->set_queue(0, layout_of(*g->rx_)); !st.ok()) return st.error();
  if (Status st = g->pv_->set_queue(1, layout_of(*g->tx_)); !st.ok()) return st.error();
  // Every RX buffer posted before the device starts, as virtnet_open() fills the ring.
  g->repost_rx();
  g->rx_->arm_used_event();
  if (Status st = g->pv_->start(); !st.ok()) return st.error();
  return g;
}

NetGuest::~NetGuest() {
  if (pv_) {
    pv_->stop();
    for (unsigned q = 0; q < 2; ++q) {
      pv_->set_kick_fd(q, -1);
      pv_->set_call_fd(q, -1);
    }
    pv_.reset();
  }
}

bool NetGuest::send(const knic::Mac& dst, std::uint32_t len, std::uint64_t seq) {
  if (tx_->free_descriptors() == 0 && reap_tx() == 0) return false;
  const std::uint16_t slot = tx_->next_free();
  const std::uint64_t gpa = tx_buf(slot);
  std::byte* p = mem_->translate(gpa, kHdr + len);
  std::memset(p, 0, kHdr);  // no checksum offload, no segmentation
  std::byte* f = p + kHdr;
  std::memcpy(f, dst.data(), 6);
  std::memcpy(f + 6, mac_.data(), 6);
  f[12] = std::byte{0x88};  // local experimental EtherType 0x88B5
  f[13] = std::byte{0xB5};
  if (len >= knic::kEthHeader + sizeof seq) std::memcpy(f + knic::kEthHeader, &seq, sizeof seq);
  const vmm::SplitRingDriver::Piece piece{gpa, kHdr + len, false};
  return tx_->publish(std::span(&piece, 1)).ok();
}

void NetGuest::kick_tx() {
  if (tx_->need_kick()) {
    const std::uint64_t one = 1;
    (void)!::write(kick_[1].get(), &one, sizeof one);
  }
}

unsigned NetGuest::reap_tx() {
  unsigned n = 0;
  while (tx_->pop_used()) ++n;
  return n;
}

std::span<const std::uint8_t> NetGuest::rx_frame(const virtio::UsedElem& u) {
  const auto slot = static_cast<std::uint16_t>(u.id % kQueue);
  const auto* p = reinterpret_cast<const std::uint8_t*>(mem_->translate(rx_buf(slot), kRxBuf));
  vnet::Hdr hdr;
  std::memcpy(&hdr, p, sizeof hdr);
  if (hdr.num_buffers != 1 || u.len < kHdr + knic::kEthHeader || u.len > kRxBuf) {
    ++bad_frames_;  // a 1518-byte frame fits one 2 KiB buffer: more is not this benchmark's
    return {};
  }
  return {p + kHdr, u.len - kHdr};
}

void NetGuest::repost_rx() {
  while (rx_->free_descriptors() > 0) {
    const std::uint16_t slot = rx_->next_free();
    const vmm::SplitRingDriver::Piece piece{rx_buf(slot), kRxBuf, true};
    if (!rx_->publish(std::span(&piece, 1)).ok()) break;
  }
  if (rx_->need_kick()) {
    const std::uint64_t one = 1;
    (void)!::write(kick_[0].get(), &one, sizeof one);
  }
}

void NetGuest::wait(bool tx, int extra_fd, int timeout_ms) {
  rx_->arm_used_event();
  if (tx) tx_->arm_used_event();
  // An entry used after the device read the old used_event came without an interrupt: look
  // once more after arming, as virtqueue_enable_cb() does.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (rx_->used_idx() != rx_->last_used()) return;
  if (tx && tx_->used_idx() != tx_->last_used()) return;
  pollfd fds[3];
  nfds_t n = 0;
  fds[n++] = {call_[0].get(), POLLIN, 0};
  if (tx) fds[n++] = {call_[1].get(), POLLIN, 0};
  if (extra_fd >= 0) fds[n++] = {extra_fd, POLLIN, 0};
  if (::poll(fds, n, timeout_ms) <= 0) return;
  for (nfds_t i = 0; i < n; ++i) {
    if ((fds[i].revents & POLLIN) != 0) {
      std::uint64_t v;
      (void)!::read(fds[i].fd, &v, sizeof v);
    }
  }
}

}  // namespace keel::perf
