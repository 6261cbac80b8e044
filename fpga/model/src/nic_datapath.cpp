// The reference card's NIC data path: TX rings into the switch, the switch into RX rings and the
// uplink, the uplink's reader.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <keel/regs/keel_regs.h>

#include "keel/log.h"
#include "nic_model.h"

namespace keel::fpga::model {

namespace nq = regs::nicq;

constexpr log::Logger kLog{"nic"};

namespace {

constexpr unsigned kTxBudget = 32;          ///< TX frames one queue moves per service().
constexpr std::size_t kUplinkQueue = 4096;  ///< Frames the uplink reader may hold.
constexpr std::uint32_t kQErrRingFault = 3;

/// Spreads a VF's received flows over its enabled RX queues (RSS-like): IPv4 addresses,
/// protocol and TCP/UDP ports when the frame has them, else the MAC pair.
std::uint32_t flow_hash(std::span<const std::uint8_t> f) noexcept {
  std::uint32_t h = 2166136261u;
  auto mix = [&](std::size_t from, std::size_t n) {
    for (std::size_t i = from; i < from + n && i < f.size(); ++i) h = (h ^ f[i]) * 16777619u;
  };
  if (f.size() >= 34 && f[12] == 0x08 && f[13] == 0x00) {
    const std::size_t ihl = (f[14] & 0xF) * 4u;
    mix(23, 1);  // protocol
    mix(26, 8);  // source and destination address
    if ((f[23] == 6 || f[23] == 17) && f.size() >= 14 + ihl + 4) mix(14 + ihl, 4);  // ports
  } else {
    mix(0, 12);
  }
  return h;
}

}  // namespace

unsigned NicModel::service(std::uint64_t now_ns) noexcept {
  std::lock_guard lock(mu_);
  unsigned moved = 0;
  if (uplink_pending_.load(std::memory_order_acquire)) {
    std::deque<std::vector<std::uint8_t>> frames;
    {
      std::lock_guard ul(uplink_mu_);
      frames.swap(uplink_rx_);
      uplink_pending_.store(false, std::memory_order_relaxed);
    }
    for (const auto& frame : frames) {
      ++uplink_rx_frames_;
      uplink_rx_bytes_ += frame.size();
      forward(max_vfs_, frame);
      ++moved;
    }
  }
  const unsigned n = num_vfs_.load(std::memory_order_relaxed);
  for (unsigned v = 0; v < n; ++v) {
    NicVf& f = *vfs_[v];
    if (f.removed.load(std::memory_order_relaxed) || !f.enabled || f.fatal) continue;
    for (NicQueue& q : f.queues) {
      if (q.enabled) moved += service_tx(v, q, now_ns, kTxBudget);
    }
  }
  // One interrupt per queue and direction for everything this pass completed.
  for (unsigned v = 0; v < n; ++v) {
    NicVf& f = *vfs_[v];
    for (unsigned qi = 0; qi < f.queues.size(); ++qi) {
      NicQueue& q = f.queues[qi];
      if (q.tx_fire && (q.cfg & nq::CFG_TX_IRQ_MASK) != 0) f.irq.fire(2 * qi);
      if (q.rx_fire && (q.cfg & nq::CFG_RX_IRQ_MASK) != 0) f.irq.fire(2 * qi + 1);
      q.tx_fire = q.rx_fire = false;
    }
  }
  return moved;
}

bool NicModel::busy() noexcept {
  if (uplink_pending_.load(std::memory_order_acquire)) return true;
  std::lock_guard lock(mu_);
  const unsigned n = num_vfs_.load(std::memory_order_relaxed);
  for (unsigned v = 0; v < n; ++v) {
    const NicVf& f = *vfs_[v];
    if (f.removed.load(std::memory_order_relaxed) || !f.enabled || f.fatal) continue;
    for (const NicQueue& q : f.queues) {
      if (q.enabled && q.tx_tail.load(std::memory_order_relaxed) != q.tx_head) return true;
    }
  }
  return false;
}

void NicModel::ring_fault(unsigned v, NicQueue& q) noexcept {
  vfs_[v]->fatal = true;
  q.err = kQErrRingFault;
}

bool NicModel::post_cqe(unsigned v, NicQueue& q, bool tx, const knic::Cqe& cqe) noexcept {
  std::uint32_t& tail = tx ? q.tx_cq_tail : q.rx_cq_tail;
  std::uint8_t& phase = tx ? q.tx_phase : q.rx_phase;
  const unsigned size = tx ? q.tx_size() : q.rx_size();
  knic::Cqe c = cqe;
  c.flags = static_cast<std::uint8_t>((c.flags & ~knic::kCqePhase) | phase);
  const std::uint64_t at = (tx ? q.tx_cq_base : q.rx_cq_base) + std::uint64_t{tail} * sizeof c;
  if (!host_.iommu->dma_write_release_last32(nic_vf_function(v), at, &c, sizeof c)) {
    ring_fault(v, q);
    return false;
  }
  tail = (tail + 1) & (size - 1);
  if (tail == 0) phase ^= 1;
  return true;
}

unsigned NicModel::service_tx(unsigned v, NicQueue& q, std::uint64_t now,
                              unsigned budget) noexcept {
  NicVf& f = *vfs_[v];
  const unsigned fn = nic_vf_function(v);
  const unsigned size = q.tx_size(), mask = size - 1;
  unsigned frames = 0;
  std::array<knic::TxDesc, regs::NIC_MAX_SEGS> d{};
  while (frames < budget && !f.fatal) {
    const std::uint32_t tail = q.tx_tail.load(std::memory_order_acquire);
    if (q.tx_head == tail) break;
    const unsigned avail = (tail - q.tx_head) & mask;
    unsigned n = 0;
    bool complete = false;
    while (n < avail && n < d.size()) {
      const unsigned idx = (q.tx_head + n) & mask;
      if (!host_.iommu->dma_read(fn, q.tx_base + std::uint64_t{idx} * sizeof d[0], &d[n],
                                 sizeof d[0])) {
        ring_fault(v, q);
        return frames;
      }
      ++n;
      if ((d[n - 1].flags & knic::kTxMore) == 0) {
        complete = true;
        break;
      }
    }
    const bool chain_too_long = !complete && n == d.size();
    if (!complete && !chain_too_long) break;  // the rest of the frame is not posted yet
    const unsigned cq_used = (q.tx_cq_tail - q.tx_cq_head.load(std::memory_order_acquire)) & mask;
    if (size - 1 - cq_used < n) break;  // the host has not consumed enough completions

    std::size_t total = 0;
    bool zero = false;
    for (unsigned i = 0; i < n; ++i) {
      total += d[i].len;
      zero |= d[i].len == 0;
    }
    knic::Status status = knic::kOk;
    if (chain_too_long || zero || total < knic::kEthHeader) {
      status = knic::kBadDesc;
    } else if (total > f.mtu + regs::NIC_FRAME_OVERHEAD) {
      status = knic::kOversize;
    } else {
      if (!f.bucket.unlimited() && !f.bucket.take(total, now)) {
        if (!q.throttled) ++f.counters.tx_throttled;
        q.throttled = true;
        break;  // the frame waits in its ring
      }
      q.throttled = false;
      scratch_.resize(total);
      std::size_t off = 0;
      for (unsigned i = 0; i < n && status == knic::kOk; ++i) {
        if (!host_.iommu->dma_read(fn, d[i].addr, scratch_.data() + off, d[i].len)) {
          status = knic::kDmaFault;
        }
        off += d[i].len;
      }
      if (status == knic::kOk) {
        const eswitch::Route route = switch_.route(v, scratch_);
        if (route.drop == eswitch::Drop::spoof) {
          status = knic::kSpoofed;
        } else if (route.drop == eswitch::Drop::runt) {
          status = knic::kBadDesc;
        } else if (route.drop == eswitch::Drop::oversize) {
          status = knic::kOversize;
        } else {
          // Forwarded, or dropped by the switch for want of a route or a link: the VF sent it.
          ++f.counters.tx_frames;
          f.counters.tx_bytes += total;
          if (route.drop != eswitch::Drop::none) ++f.counters.drop_no_route;
          for (unsigned p = 0; p <= max_vfs_; ++p) {
            if (route.to.test(p)) deliver(p, scratch_);
          }
        }
      }
    }
    switch (status) {
      case knic::kBadDesc: ++f.counters.drop_bad_desc; break;
      case knic::kOversize: ++f.counters.drop_oversize; break;
      case knic::kDmaFault: ++f.counters.drop_dma_fault; break;
      case knic::kSpoofed: ++f.counters.drop_spoof; break;
      default: break;
    }
    for (unsigned i = 0; i < n; ++i) {
      knic::Cqe c{};
      c.len = d[i].len;
      c.index = static_cast<std::uint16_t>((q.tx_head + i) & mask);
      c.status = status;
      if (!post_cqe(v, q, true, c)) return frames;
    }
    q.tx_head = (q.tx_head + n) & mask;
    q.tx_fire = true;
    ++frames;
  }
  return frames;
}

void NicModel::forward(unsigned in_port, std::span<const std::uint8_t> frame) noexcept {
  const eswitch::Route route = switch_.route(in_port, frame);
  if (route.drop != eswitch::Drop::none) {
    if (in_port == max_vfs_) ++uplink_drops_;
    return;
  }
  for (unsigned p = 0; p <= max_vfs_; ++p) {
    if (route.to.test(p)) deliver(p, frame);
  }
}

void NicModel::deliver(unsigned p, std::span<const std::uint8_t> frame) noexcept {
  if (p == max_vfs_) {
    // write(), not send(): the uplink may be a TAP device as well as a connected socket.
    if (!uplink_.valid() || ::write(uplink_.get(), frame.data(), frame.size()) < 0) {
      ++uplink_tx_drops_;
      switch_.egress_failed(p, frame.size(), eswitch::Drop::no_buffer);
      return;
    }
    ++uplink_tx_frames_;
    uplink_tx_bytes_ += frame.size();
    return;
  }
  NicVf& g = *vfs_[p];
  if (g.removed.load(std::memory_order_relaxed) || !g.enabled || g.fatal) {
    ++g.counters.drop_queue_off;
    switch_.egress_failed(p, frame.size(), eswitch::Drop::no_buffer);
    return;
  }
  std::array<unsigned, regs::NIC_MAX_QUEUES> live{};
  unsigned count = 0;
  for (unsigned qi = 0; qi < g.queues.size(); ++qi) {
    if (g.queues[qi].enabled) live[count++] = qi;
  }
  if (count == 0) {
    ++g.counters.drop_queue_off;
    switch_.egress_failed(p, frame.size(), eswitch::Drop::no_buffer);
    return;
  }
  NicQueue& q = g.queues[live[flow_hash(frame) % count]];
  if (!rx_into(p, q, frame)) switch_.egress_failed(p, frame.size(), eswitch::Drop::no_buffer);
}

bool NicModel::rx_into(unsigned v, NicQueue& q, std::span<const std::uint8_t> frame) noexcept {
  NicVf& f = *vfs_[v];
  const unsigned fn = nic_vf_function(v);
  const unsigned size = q.rx_size(), mask = size - 1;
  if (frame.size() > f.mtu + regs::NIC_FRAME_OVERHEAD) {
    ++f.counters.drop_oversize;
    return false;
  }
  const unsigned avail = (q.rx_tail.load(std::memory_order_acquire) - q.rx_head) & mask;
  const unsigned cq_free =
      size - 1 - ((q.rx_cq_tail - q.rx_cq_head.load(std::memory_order_acquire)) & mask);
  rx_descs_.clear();
  std::size_t room = 0;
  while (room < frame.size()) {
    if (rx_descs_.size() == avail || rx_descs_.size() == cq_free) {
      ++f.counters.drop_rx_no_buf;
      return false;
    }
    const unsigned idx = (q.rx_head + static_cast<unsigned>(rx_descs_.size())) & mask;
    knic::RxDesc d{};
    if (!host_.iommu->dma_read(fn, q.rx_base + std::uint64_t{idx} * sizeof d, &d, sizeof d)) {
      ring_fault(v, q);
      return false;
    }
    if (d.len == 0) {
      // A buffer the host posted empty: give it back as bad, drop the frame.
      knic::Cqe c{};
      c.index = static_cast<std::uint16_t>((q.rx_head + rx_descs_.size()) & mask);
      c.status = knic::kBadDesc;
      ++f.counters.drop_bad_desc;
      for (const auto& [index, dd] : rx_descs_) {
        (void)dd;
        knic::Cqe b{};
        b.index = index;
        b.status = knic::kBadDesc;
        if (!post_cqe(v, q, false, b)) return false;
      }
      if (!post_cqe(v, q, false, c)) return false;
      q.rx_head = (q.rx_head + static_cast<unsigned>(rx_descs_.size()) + 1) & mask;
      q.rx_fire = true;
      return false;
    }
    rx_descs_.emplace_back(static_cast<std::uint16_t>(idx), d);
    room += d.len;
  }
  knic::Status status = knic::kOk;
  std::size_t off = 0;
  for (const auto& [index, d] : rx_descs_) {
    (void)index;
    const std::size_t chunk = std::min<std::size_t>(d.len, frame.size() - off);
    if (!host_.iommu->dma_write(fn, d.addr, frame.data() + off, chunk)) {
      status = knic::kDmaFault;
      break;
    }
    off += chunk;
  }
  off = 0;
  for (std::size_t i = 0; i < rx_descs_.size(); ++i) {
    const auto& [index, d] = rx_descs_[i];
    const std::size_t chunk = std::min<std::size_t>(d.len, frame.size() - off);
    off += chunk;
    knic::Cqe c{};
    c.index = index;
    c.status = status;
    c.len = status == knic::kOk ? static_cast<std::uint32_t>(chunk) : 0;
    c.frame = static_cast<std::uint32_t>(frame.size());
    c.flags = i + 1 < rx_descs_.size() ? knic::kCqeMore : 0;
    if (!post_cqe(v, q, false, c)) return false;
  }
  q.rx_head = (q.rx_head + static_cast<unsigned>(rx_descs_.size())) & mask;
  q.rx_fire = true;
  if (status != knic::kOk) {
    ++f.counters.drop_dma_fault;
    return false;
  }
  ++f.counters.rx_frames;
  f.counters.rx_bytes += frame.size();
  return true;
}

// ---------------------------------------------------------------- uplink

Status NicModel::attach_uplink(UniqueFd fd) {
  if (!fd.valid()) return make_error(Errc::invalid_argument, "uplink: no fd");
  stop_uplink();
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    return make_error(Errc::invalid_argument, std::string("uplink fd: ") + strerror(errno));
  }
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) return make_error(Errc::io_error, std::string("eventfd: ") + strerror(errno));
  {
    std::lock_guard lock(mu_);
    uplink_ = std::move(fd);
    uplink_failed_.store(false);
    uplink_stop_ = std::move(stop);
    sync_port(max_vfs_);
  }
  uplink_thread_ = std::thread(
      [this, ufd = uplink_.get(), sfd = uplink_stop_.get()] { uplink_reader(ufd, sfd); });
  return {};
}

void NicModel::stop_uplink() noexcept {
  if (uplink_thread_.joinable()) {
    const std::uint64_t one = 1;
    (void)!::write(uplink_stop_.get(), &one, sizeof one);
    uplink_thread_.join();
  }
  std::lock_guard lock(mu_);
  uplink_.reset();
  uplink_stop_.reset();
  sync_port(max_vfs_);
}

void NicModel::uplink_reader(int fd, int stop_fd) noexcept {
  std::vector<std::uint8_t> buf(65536);
  int type = 0;
  socklen_t len = sizeof type;
  // 1: a datagram socket or not a socket at all (a TAP device); 0: a connection.
  const int datagram =
      ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type == SOCK_DGRAM ? 1 : 0;
  for (;;) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      kLog.error("uplink: poll: %s", strerror(errno));
      uplink_failed_.store(true);
      return;
    }
    if (p[1].revents != 0) return;
    bool got = false;
    for (;;) {
      const ssize_t r = ::read(fd, buf.data(), buf.size());  // the fd is non-blocking
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
        if (errno == ECONNREFUSED) continue;  // a datagram to a peer that is not there yet
        kLog.error("uplink: read: %s; the uplink stops receiving", strerror(errno));
        uplink_failed_.store(true);
        return;
      }
      // A zero-length read is the peer's end on a connection (SEQPACKET); on a datagram
      // socket it is an empty datagram (a runt the switch drops).
      if (r == 0 && (datagram == 0 || (p[0].revents & POLLHUP) != 0)) {
        kLog.info("uplink: peer closed; the uplink stops receiving");
        uplink_failed_.store(true);
        return;
      }
      std::lock_guard lock(uplink_mu_);
      if (uplink_rx_.size() >= kUplinkQueue) {
        uplink_overflow_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      uplink_rx_.emplace_back(buf.begin(), buf.begin() + r);
      uplink_pending_.store(true, std::memory_order_release);
      got = true;
    }
    if (got) host_.activity->kick();
  }
}

}  // namespace keel::fpga::model
