// The data path of one virtio-net queue pair (net_worker.h).
#include "net_worker.h"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <keel/regs/keel_regs.h>

#include "keel/log.h"
#include "keel/thread_cpu.h"
#include "keel/wire/fallback_port.h"

namespace keel::vmm {

namespace {

constexpr log::Logger kLog{"net"};
namespace vnet = virtio::net;
namespace fp = fallback_port;
using drivers::net::NetErrc;

constexpr std::size_t kHdr = sizeof(vnet::Hdr);
constexpr unsigned kRxBudget = 64;
constexpr unsigned kTxBudget = 64;

bool ring_error(ChainError e) {
  return e == ChainError::bad_index || e == ChainError::loop || e == ChainError::indirect;
}

}  // namespace

NetWorker::NetWorker(NetParavisor& pv, unsigned pair)
    : pv_(pv), pair_(pair), wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

NetWorker::~NetWorker() { stop(); }

Status NetWorker::setup(unsigned which, const Virtqueue::Layout& layout, bool event_idx,
                        std::uint16_t last_avail) {
  Virtqueue& vq = which == 0 ? rxq_ : txq_;
  if (Status st = vq.setup(pv_.memory_, layout, event_idx, last_avail); !st.ok()) return st;
  if (which == 1) {
    on_vf_.assign(layout.size, 0);
    on_vf_heads_.clear();
  } else {
    rx_chains_.clear();
    rx_posted_.clear();
    rx_filled_ = 0;
    rx_pops_ = 0;
  }
  mrg_ = (pv_.features_ & (std::uint64_t{1} << vnet::kMrgRxbuf)) != 0;
  return {};
}

Status NetWorker::start_thread() {
  stop_.store(false);
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    return make_error(Errc::io_error, std::string("worker thread: ") + e.what());
  }
  return {};
}

void NetWorker::wake() noexcept {
  const std::uint64_t one = 1;
  if (wake_fd_.valid()) (void)!::write(wake_fd_.get(), &one, sizeof one);
}

void NetWorker::stop() {
  if (thread_.joinable()) {
    stop_.store(true);
    wake();
    thread_.join();
  }
  if (!txq_.ready()) return;
  // A loss this worker has not acted on yet: re-send through the fallback, report drained.
  if (epoch_ != pv_.epoch_.load(std::memory_order_acquire)) let_go_of_vf();
  // TX frames on the VF: give the card a bounded moment to complete them; whatever is still
  // there goes to the guest as sent (it may or may not have left: the guest's TCP decides).
  const std::uint64_t deadline = pv_.clock_.deadline_after(std::chrono::milliseconds(100));
  while (!on_vf_heads_.empty() && vf_queue() != nullptr && pv_.clock_.now_ns() < deadline) {
    if (reap() == 0) pv_.stepper_.advance();
  }
  // Guest memory the card may still touch (TX chains it has not completed, RX chains posted
  // for zero-copy receive) is handed back only once the queue pair is stopped; the next
  // start rebuilds it (sync_rx_mode).
  if (drivers::net::QueuePair* qp = vf_queue();
      qp != nullptr && (!on_vf_heads_.empty() || !rx_posted_.empty())) {
    quiesce_vf_queue(*qp);
  }
  reclaim_posted();
  for (std::uint16_t head : on_vf_heads_) {
    on_vf_[head] = 0;
    txq_.push_used(head, 0);
    pushed_[1] = true;
  }
  on_vf_heads_.clear();
  // RX chains taken but not filled go back to the avail ring when they are the last ones
  // taken; otherwise they are returned empty (the guest counts a short frame).
  bool last_taken = true;
  for (std::size_t i = 0; i < rx_chains_.size(); ++i) {
    last_taken = last_taken && rx_chains_[i].seq == rx_pops_ - rx_chains_.size() + i;
  }
  if (last_taken) {
    rxq_.unpop(static_cast<std::uint16_t>(rx_chains_.size()));
    rx_pops_ -= rx_chains_.size();
  } else {
    for (const RxChain& c : rx_chains_) rxq_.push_used(c.head, 0);
    pushed_[0] = !rx_chains_.empty();
  }
  rx_chains_.clear();
  notify(0);
  notify(1);
}

void NetWorker::deliver_driver_buffers(drivers::net::QueuePair& qp) {
  (void)qp.poll_rx(~0u, [this](std::span<const std::uint8_t> f) { receive(f, true); });
}

drivers::net::QueuePair* NetWorker::own_queue() noexcept {
  drivers::net::Nic* nic = pv_.nic_.get();
  return nic != nullptr && pair_ < nic->queue_count() ? &nic->queue(pair_) : nullptr;
}

bool NetWorker::want_zero_copy() const noexcept { return mrg_ && pv_.config_.rx_zero_copy; }

void NetWorker::sync_rx_mode() {
  drivers::net::QueuePair* qp = vf_queue();
  if (qp == nullptr) return;
  const bool want = want_zero_copy();
  if (!qp->disabled() && qp->caller_rx_buffers() == want) return;
  // A rebuild hands back what is on the rings: only when this worker has nothing there.
  if (!on_vf_heads_.empty() || !rx_posted_.empty()) return;
  // Frames already in driver buffers are delivered before the rebuild drops those buffers.
  if (!qp->caller_rx_buffers() && !qp->disabled()) deliver_driver_buffers(*qp);
  if (Status st = qp->use_caller_rx_buffers(want); !st.ok()) {
    pv_.vf_failed("VF queue pair " + std::to_string(pair_) + ": " + st.error().message);
    if (epoch_ != pv_.epoch_.load(std::memory_order_acquire)) let_go_of_vf();
  }
}

drivers::net::QueuePair* NetWorker::vf_queue() noexcept {
  if (pv_.state() != PathState::active || epoch_ != pv_.epoch_.load(std::memory_order_acquire)) {
    return nullptr;
  }
  drivers::net::QueuePair* qp = own_queue();
  if (qp != nullptr) used_vf_ = true;
  return qp;
}

void NetWorker::let_go_of_vf() {
  // Guest RX chains on the VF's ring: frames the card completed are delivered, the rest
  // serve the fallback once the card can no longer write them (the queue pair is stopped;
  // recover() rebuilds it when the VF returns). Before the epoch moves: their cookies carry
  // this one.
  // Copy mode too: frames already in driver buffers reach the guest, not the next rebuild.
  // Only a worker that used the VF in this epoch (it is one the drain waits for, so worker
  // 0's recover() cannot be running on its queue pair).
  if (drivers::net::QueuePair* qp = own_queue(); qp != nullptr && used_vf_) quiesce_vf_queue(*qp);
  used_vf_ = false;
  reclaim_posted();
  epoch_ = pv_.epoch_.load(std::memory_order_acquire);
  // The VF is lost: what its TX ring held may never leave. Send it again through the
  // fallback (TCP copes with a duplicate; a lost frame would cost a retransmit timeout).
  for (std::uint16_t head : on_vf_heads_) {
    on_vf_[head] = 0;
    // Read and checked again: the guest may have rewritten the chain since it was checked.
    if (!valid_tx(txq_.read_chain(head, segs_), segs_)) {
      c_.tx_bad.fetch_add(1, std::memory_order_relaxed);
    } else if (send_fallback(segs_, std::chrono::milliseconds(50)) == PortSend::sent) {
      c_.tx_resent.fetch_add(1, std::memory_order_relaxed);
    } else {
      c_.tx_dropped.fetch_add(1, std::memory_order_relaxed);
    }
    txq_.push_used(head, 0);
    pushed_[1] = true;
  }
  on_vf_heads_.clear();
  pv_.worker_drained(epoch_);
}

unsigned NetWorker::pass() {
  if (epoch_ != pv_.epoch_.load(std::memory_order_acquire)) let_go_of_vf();
  if (pair_ == 0) {
    pv_.maybe_probe();
    pv_.maybe_redial();
  }
  check_vf();
  sync_rx_mode();
  unsigned work = reap();
  work += tx_pass();
  work += rx_pass();
  notify(0);
  notify(1);
  return work;
}

void NetWorker::check_vf() {
  // Every health_interval on the VF: is it still there? A guest that only receives sends
  // nothing the VF could refuse, so nothing else would notice it gone.
  if (vf_queue() == nullptr) return;
  const std::uint64_t now = pv_.clock_.now_ns();
  if (now < next_health_ns_) return;
  next_health_ns_ = now + static_cast<std::uint64_t>(pv_.config_.health_interval.count());
  const auto s = pv_.nic_->state();
  if (s != drivers::net::DeviceState::ready) {
    pv_.vf_failed(std::string("VF ") + drivers::net::to_string(s));
    if (epoch_ != pv_.epoch_.load(std::memory_order_acquire)) let_go_of_vf();
  }
}

unsigned NetWorker::reap() {
  drivers::net::QueuePair* qp = vf_queue();
  if (qp == nullptr) return 0;
  std::array<drivers::net::TxCompletion, 64> done;
  unsigned total = 0;
  for (;;) {
    const unsigned n = qp->reap(done);
    for (unsigned i = 0; i < n; ++i) {
      const std::uint64_t ck = done[i].cookie;
      const auto head = static_cast<std::uint16_t>(ck & 0xFFFF);
      // A frame of an older epoch was re-sent through the fallback already.
      if ((ck >> 16) != epoch_ || head >= on_vf_.size() || on_vf_[head] == 0) continue;
      on_vf_[head] = 0;
      on_vf_heads_.erase(std::find(on_vf_heads_.begin(), on_vf_heads_.end(), head));
      if (done[i].status != knic::kOk) c_.tx_vf_errors.fetch_add(1, std::memory_order_relaxed);
      txq_.push_used(head, 0);
      pushed_[1] = true;
      ++total;
    }
    if (n < done.size()) break;
  }
  return total;
}

unsigned NetWorker::tx_pass() {
  tx_blocked_ = false;
  port_full_ = false;
  if (!txq_.ready() || txq_.broken()) return 0;
  unsigned n = 0;
  std::uint16_t head;
  while (n < kTxBudget && txq_.pop(&head)) {
    const ChainError e = txq_.read_chain(head, segs_);
    if (ring_error(e)) {
      kLog.warn("transmitq %u: %s: the queue is broken", pair_, to_string(e));
      txq_.mark_broken();
      return n;
    }
    if (head < on_vf_.size() && on_vf_[head] != 0) {
      kLog.warn(
          "transmitq %u: chain %u made available again while the device holds it: the "
          "queue is broken",
          pair_, head);
      txq_.mark_broken();
      return n;
    }
    if (!valid_tx(e, segs_)) {
      c_.tx_bad.fetch_add(1, std::memory_order_relaxed);
      txq_.push_used(head, 0);
      pushed_[1] = true;
      ++n;
      continue;
    }
    if (!transmit(head, segs_)) {
      txq_.unpop(1);  // the VF's ring or the port is full: after the next reap, or POLLOUT
      tx_blocked_ = true;
      break;
    }
    ++n;
  }
  if (drivers::net::QueuePair* qp = vf_queue()) qp->flush();
  return n;
}

bool NetWorker::valid_tx(ChainError e, const std::vector<ChainSeg>& segs) {
  std::size_t bytes = 0;
  bool readable = true;
  for (const ChainSeg& s : segs) {
    bytes += s.len;
    readable = readable && !s.device_writes;
  }
  if (e != ChainError::ok || !readable || bytes < kHdr + knic::kEthHeader ||
      bytes - kHdr > pv_.config_.mtu + 18u) {
    return false;
  }
  // The header must say what keel offered: no checksum offload, no segmentation.
  vnet::Hdr hdr{};
  scratch_.clear();
  if (!gather(segs, 0, scratch_, kHdr) || scratch_.size() < kHdr) return false;
  std::memcpy(&hdr, scratch_.data(), kHdr);
  return hdr.gso_type == vnet::kGsoNone && (hdr.flags & vnet::kHdrNeedsCsum) == 0;
}

bool NetWorker::transmit(std::uint16_t head, const std::vector<ChainSeg>& segs) {
  if (drivers::net::QueuePair* qp = vf_queue()) {
    // Zero copy: the guest's buffers, past the header, go on the VF's ring as they are.
    std::array<drivers::net::TxSegment, regs::NIC_MAX_SEGS> out;
    unsigned k = 0;
    std::size_t skip = kHdr;
    bool fits = true;
    for (const ChainSeg& s : segs) {
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      if (k == out.size() || s.len - skip > 0xFFFF) {
        fits = false;
        break;
      }
      out[k++] = {s.gpa + skip, static_cast<std::uint32_t>(s.len - skip)};
      skip = 0;
    }
    NetErrc r;
    if (fits) {
      r = qp->send_zero_copy(std::span(out.data(), k), cookie(head));
    } else {
      // Too many pieces for one frame on the ring: one copy.
      scratch_.clear();
      gather(segs, kHdr, scratch_);
      r = qp->send(scratch_);
      if (r == NetErrc::ok) {
        txq_.push_used(head, 0);
        pushed_[1] = true;
        c_.tx_vf.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
    }
    switch (r) {
      case NetErrc::ok:
        on_vf_[head] = 1;
        on_vf_heads_.push_back(head);
        c_.tx_vf.fetch_add(1, std::memory_order_relaxed);
        return true;
      case NetErrc::full: return false;
      case NetErrc::down:
      case NetErrc::gone:
        pv_.vf_failed(std::string("VF refused a frame: ") + drivers::net::to_string(r));
        if (epoch_ != pv_.epoch_.load(std::memory_order_acquire)) let_go_of_vf();
        break;  // this frame takes the fallback
      default:  // invalid, too_large: checked above, so the VF disagrees: drop it
        c_.tx_bad.fetch_add(1, std::memory_order_relaxed);
        txq_.push_used(head, 0);
        pushed_[1] = true;
        return true;
    }
  }
  switch (send_fallback(segs)) {
    case PortSend::sent: c_.tx_fallback.fetch_add(1, std::memory_order_relaxed); break;
    case PortSend::full:
      // The switch has not read what it was sent: the chain waits (the guest's queue backs
      // up, as on a full VF ring) until the port takes more.
      port_full_ = true;
      return false;
    case PortSend::failed: c_.tx_dropped.fetch_add(1, std::memory_order_relaxed); break;
  }
  txq_.push_used(head, 0);
  pushed_[1] = true;
  return true;
}

NetParavisor::PortSend NetWorker::send_fallback(const std::vector<ChainSeg>& segs,
                                                std::chrono::milliseconds wait) {
  if (!pv_.port_usable()) return PortSend::failed;
  scratch_.assign(sizeof(fp::RecordHeader), 0);
  scratch_[0] = static_cast<std::uint8_t>(fp::RecordType::frame);
  const std::size_t at = scratch_.size();
  std::vector<std::uint8_t> frame;
  if (!gather(segs, kHdr, frame) || frame.size() < knic::kEthHeader) return PortSend::failed;
  scratch_.resize(at + frame.size());
  std::memcpy(scratch_.data() + at, frame.data(), frame.size());
  return pv_.port_send(scratch_, wait);
}

bool NetWorker::gather(const std::vector<ChainSeg>& segs, std::size_t skip,
                       std::vector<std::uint8_t>& out, std::size_t limit) {
  for (const ChainSeg& s : segs) {
    std::uint64_t gpa = s.gpa;
    std::uint64_t left = s.len;
    while (left > 0 && limit > 0) {
      // Only what is wanted is looked at: a chain may be far longer than its frame.
      const std::uint64_t want = limit == SIZE_MAX ? left : std::uint64_t{skip} + limit;
      const std::uint64_t run = std::min({left, region_run(pv_.memory_, gpa), want});
      const std::byte* p = pv_.memory_.translate(gpa, run);
      if (run == 0 || p == nullptr) return false;
      if (skip >= run) {
        skip -= run;
      } else {
        const auto* b = reinterpret_cast<const std::uint8_t*>(p) + skip;
        const auto n = static_cast<std::size_t>(run - skip);
        out.insert(out.end(), b, b + n);
        if (limit != SIZE_MAX) limit -= n;
        skip = 0;
      }
      gpa += run;
      left -= run;
    }
  }
  return true;
}

unsigned NetWorker::rx_pass() {
  if (!rxq_.ready() || rxq_.broken()) return 0;
  drivers::net::QueuePair* qp = vf_queue();
  // Zero-copy receive: frames are in the guest's buffers already, whatever the backlog holds.
  const bool zc = qp != nullptr && qp->caller_rx_buffers();
  unsigned n = zc ? rx_vf_zero_copy(*qp) : 0;
  while (!backlog_.empty() && deliver(backlog_.front().frame)) {
    (backlog_.front().from_vf ? c_.rx_vf : c_.rx_fallback).fetch_add(1, std::memory_order_relaxed);
    backlog_.pop_front();
    ++n;
  }
  // The guest has no buffers: leave frames where they are (zero-copy: the card drops what
  // finds no guest buffer, and counts it).
  if (!backlog_.empty()) return n;
  if (qp != nullptr && !zc) {
    n += qp->poll_rx(kRxBudget, [this](std::span<const std::uint8_t> f) { receive(f, true); });
  }
  // The port carries the guest's frames while it is on the fallback; on the VF only for a
  // moment around a move. There, look only when a sleep saw it readable or every 64th pass
  // (a recv that finds nothing is a system call per pass).
  const bool look = vf_queue() == nullptr || port_readable_ || (++passes_ & 63) == 0;
  port_readable_ = false;
  if (pair_ == 0 && pv_.port_usable() && look) {
    std::array<std::uint8_t, fp::kMaxRecord> rec;
    for (unsigned i = 0; i < kRxBudget && backlog_.size() < pv_.config_.rx_backlog; ++i) {
      const ssize_t r = ::recv(pv_.fallback_.get(), rec.data(), rec.size(), MSG_DONTWAIT);
      if (r < 0) break;
      if (r == 0) {
        // The switch closed the port: no fallback from now on (a paravisor built for the
        // next memory table dials it again). Stop polling a socket that is always readable.
        pv_.port_lost();
        break;
      }
      if (static_cast<std::size_t>(r) < sizeof(fp::RecordHeader) + knic::kEthHeader ||
          rec[0] != static_cast<std::uint8_t>(fp::RecordType::frame)) {
        continue;  // not a frame: the switch sends nothing else
      }
      receive(std::span(rec.data() + sizeof(fp::RecordHeader),
                        static_cast<std::size_t>(r) - sizeof(fp::RecordHeader)),
              false);
      ++n;
    }
  }
  // What the backlog and the port left goes on the VF's ring for the card to fill.
  if (zc && backlog_.empty() && !rxq_.broken()) post_rx_chains(*qp);
  return n;
}

void NetWorker::receive(std::span<const std::uint8_t> frame, bool from_vf) {
  if (backlog_.empty()) {
    const std::uint64_t dropped = c_.rx_dropped.load(std::memory_order_relaxed);
    if (deliver(frame)) {
      // deliver() also "succeeds" by dropping a frame no chain can hold (counted there).
      if (c_.rx_dropped.load(std::memory_order_relaxed) == dropped) {
        (from_vf ? c_.rx_vf : c_.rx_fallback).fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
  }
  if (backlog_.size() >= pv_.config_.rx_backlog) {
    c_.rx_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  backlog_.push_back({std::vector<std::uint8_t>(frame.begin(), frame.end()), from_vf});
}

bool NetWorker::take_rx_chain() {
  std::uint16_t head;
  while (rxq_.pop(&head)) {
    RxChain c{head, 0, {}, rx_pops_++};
    const ChainError e = rxq_.read_chain(head, c.segs);
    if (ring_error(e)) {
      kLog.warn("receiveq %u: %s: the queue is broken", pair_, to_string(e));
      rxq_.mark_broken();
      return false;
    }
    bool writable = e == ChainError::ok;
    for (const ChainSeg& s : c.segs) {
      writable = writable && s.device_writes;
      c.capacity += s.len;
    }
    // Empty buffers hold nothing: not kept (a chain of thousands of them would pin memory).
    std::erase_if(c.segs, [](const ChainSeg& s) { return s.len == 0; });
    // A frame needs at least the header in the first buffer (and, without MRG_RXBUF, the
    // whole frame in one chain: checked by deliver()).
    if (!writable || c.capacity < kHdr) {
      c_.rx_bad_chains.fetch_add(1, std::memory_order_relaxed);
      rxq_.push_used(head, 0);
      pushed_[0] = true;
      continue;
    }
    rx_chains_.push_back(std::move(c));
    return true;
  }
  return false;
}

bool NetWorker::deliver(std::span<const std::uint8_t> frame) {
  const std::size_t need = kHdr + frame.size();
  // Chains enough for the frame, taken from the ring as needed.
  std::size_t have = 0;
  std::size_t chains = 0;
  for (;;) {
    if (chains == rx_chains_.size() && !take_rx_chain()) return false;
    if (!mrg_ && rx_chains_[chains].capacity < need) {
      // Without MRG_RXBUF a frame must fit one chain: this one cannot take it.
      c_.rx_dropped.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    have += rx_chains_[chains].capacity;
    ++chains;
    if (have >= need || !mrg_) break;
  }
  vnet::Hdr hdr{};
  hdr.num_buffers = static_cast<std::uint16_t>(chains);
  hdr.flags = 0;
  hdr.gso_type = vnet::kGsoNone;
  std::size_t off = 0;  // into the stream header + frame
  auto byte_at = [&](std::size_t i) -> const std::uint8_t* {
    return i < kHdr ? reinterpret_cast<const std::uint8_t*>(&hdr) + i : frame.data() + (i - kHdr);
  };
  for (std::size_t c = 0; c < chains; ++c) {
    const RxChain& rc = rx_chains_.front();
    std::uint32_t written = 0;
    for (const ChainSeg& s : rc.segs) {
      std::uint64_t gpa = s.gpa;
      std::uint64_t left = s.len;
      while (left > 0 && off < need) {
        const std::uint64_t run = std::min({left, region_run(pv_.memory_, gpa), need - off});
        std::byte* p = pv_.memory_.translate(gpa, run);
        if (p == nullptr || run == 0) break;
        // Header and frame are separate sources: copy in at most two pieces.
        std::size_t done = 0;
        while (done < run) {
          const std::size_t i = off + done;
          const std::size_t piece =
              i < kHdr ? std::min<std::size_t>(kHdr - i, run - done) : run - done;
          std::memcpy(p + done, byte_at(i), piece);
          done += piece;
        }
        off += run;
        written += static_cast<std::uint32_t>(run);
        gpa += run;
        left -= run;
      }
    }
    rxq_.push_used(rc.head, written);
    rx_chains_.pop_front();
  }
  pushed_[0] = true;
  return true;
}

void NetWorker::notify(unsigned which) {
  if (!pushed_[which]) return;
  pushed_[which] = false;
  Virtqueue& vq = which == 0 ? rxq_ : txq_;
  if (!vq.should_notify()) return;
  c_.notifications.fetch_add(1, std::memory_order_relaxed);
  const int fd = call_fd_[which];
  if (fd >= 0) {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);  // EAGAIN: one is pending already
  } else if (pv_.notify_) {
    pv_.notify_(2 * pair_ + which);
  }
}

void NetWorker::run() {
  char name[16];
  std::snprintf(name, sizeof name, "keel-net%u", pair_);
  pthread_setname_np(pthread_self(), name);
  cpu_.start();
  while (!stop_.load(std::memory_order_acquire)) {
    if (pass() == 0) sleep();
  }
  cpu_.finish();
}

void NetWorker::sleep() {
  // Ask to be kicked, then look once more (a kick between the last pass and now is seen).
  // New RX buffers matter only to frames waiting for them; new TX chains only if the last
  // pass was not held up by a full VF ring or port (then those are what it waits for).
  // Zero-copy receive: new RX buffers matter once the VF's RX ring is half empty (before, the
  // next received frame wakes the worker and it posts them then: fewer wake-ups), and
  // received frames always (they are in guest memory already).
  const bool held = !backlog_.empty();
  drivers::net::QueuePair* qp = vf_queue();
  const bool zc = qp != nullptr && qp->caller_rx_buffers();
  const bool want_rx_buffers = held || (zc && qp->rx_posted() < qp->rx_free());
  const bool want_rx_frames = (!held || zc) && !rxq_.broken();
  const bool rx_more = rxq_.ready() && rxq_.enable_kicks() && want_rx_buffers;
  const bool tx_more = txq_.ready() && txq_.enable_kicks() && !tx_blocked_;
  if (rx_more || tx_more) return;
  if (qp != nullptr) {
    qp->arm_interrupts(true);
    if ((want_rx_frames && qp->rx_ready()) || (qp->tx_ready() && !on_vf_heads_.empty())) return;
  }
  std::vector<pollfd> fds;
  auto add = [&fds](int fd, short events = POLLIN) {
    if (fd >= 0) fds.push_back({fd, events, 0});
  };
  add(wake_fd_.get());
  if (want_rx_buffers) add(kick_fd_[0]);
  if (!tx_blocked_) add(kick_fd_[1]);
  if (qp != nullptr) {
    if (want_rx_frames) add(qp->rx_interrupt_fd());
    if (!on_vf_heads_.empty()) add(qp->tx_interrupt_fd());
  }
  const int port = pv_.port_usable() ? pv_.fallback_.get() : -1;
  if (pair_ == 0 && port >= 0 && (!held || port_full_)) {
    add(port, static_cast<short>((held ? 0 : POLLIN) | (port_full_ ? POLLOUT : 0)));
  }
  if (pair_ != 0 && port_full_ && port >= 0) add(port, POLLOUT);
  // Bounded: health checks on the VF, probes for its return, rings without kick fds.
  auto interval = qp != nullptr ? pv_.config_.health_interval : pv_.config_.probe_interval;
  if (kick_fd_[0] < 0 || kick_fd_[1] < 0) interval = std::chrono::milliseconds(1);
  const int ms = static_cast<int>(std::clamp<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(interval).count(), 1, 50));
  if (::poll(fds.data(), fds.size(), ms) > 0) {
    for (const pollfd& p : fds) {
      if (p.fd == port) {
        port_readable_ = (p.revents & ~POLLOUT) != 0;
      } else if ((p.revents & POLLIN) != 0) {
        std::uint64_t v;
        (void)!::read(p.fd, &v, sizeof v);
      }
    }
  }
  if (rxq_.ready()) rxq_.disable_kicks();
  if (txq_.ready()) txq_.disable_kicks();
}

NetCounters NetWorker::counters() const noexcept {
  NetCounters n;
  n.tx_vf = c_.tx_vf.load();
  n.tx_fallback = c_.tx_fallback.load();
  n.tx_resent = c_.tx_resent.load();
  n.rx_vf = c_.rx_vf.load();
  n.rx_fallback = c_.rx_fallback.load();
  n.tx_bad = c_.tx_bad.load();
  n.tx_dropped = c_.tx_dropped.load();
  n.rx_dropped = c_.rx_dropped.load();
  n.rx_bad_chains = c_.rx_bad_chains.load();
  n.tx_vf_errors = c_.tx_vf_errors.load();
  n.notifications = c_.notifications.load();
  n.rx_zero_copy = c_.rx_zero_copy.load();
  n.rx_moved = c_.rx_moved.load();
  return n;
}

ParavisorCounters NetWorker::paravisor_counters() const noexcept {
  const NetCounters n = counters();
  ParavisorCounters p;
  p.vf_ios = n.tx_vf + n.rx_vf;
  p.fallback_ios = n.tx_fallback + n.rx_fallback;
  p.requests = p.vf_ios + p.fallback_ios;
  p.reissued = n.tx_resent;
  p.bad_requests = n.tx_bad + n.rx_bad_chains;
  p.errors = n.tx_dropped + n.rx_dropped + n.tx_vf_errors;
  p.notifications = n.notifications;
  return p;
}

}  // namespace keel::vmm
