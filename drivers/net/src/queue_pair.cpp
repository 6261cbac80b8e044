// NIC queue pairs: TX (copy and zero-copy, batched doorbells), TX completion reaping, RX with
// buffer reposting and multi-buffer reassembly, waits, rebuilds on recovery.
#include "keel/drivers/net/queue_pair.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include <keel/regs/keel_regs.h>

namespace keel::drivers::net {

namespace rq = regs::nicq;

namespace {

constexpr std::size_t kEntry = 16;  // TxDesc, RxDesc and Cqe are all 16 bytes
/// Idle reap()/poll_rx() calls between two looks at the device's state (one register read),
/// so a caller that only polls notices a lost or reset device too.
constexpr unsigned kHealthEvery = 1024;
/// Slice of an interrupt wait for both of a queue pair's vectors (card time).
constexpr auto kAnySlice = std::chrono::microseconds(20);

/// The completion at `index` of `ring` if its phase is `phase`: the tag (last 4 bytes) is
/// loaded with acquire, so the rest of the entry read after it is the card's.
bool cqe_at(const fpga::DmaBuffer& ring, unsigned index, bool phase, knic::Cqe& out) noexcept {
  std::byte* e = ring.data() + std::size_t{index} * kEntry;
  const std::uint32_t tag =
      std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(e + 12))
          .load(std::memory_order_acquire);
  if (((tag >> 24) & knic::kCqePhase) != (phase ? 1u : 0u)) return false;
  std::memcpy(&out, e, sizeof out);
  return true;
}

std::uint32_t round_up64(std::uint32_t v) noexcept { return (v + 63u) & ~63u; }

}  // namespace

QueuePair::QueuePair(Nic& nic, unsigned q)
    : nic_(nic),
      fn_(nic.function()),
      q_(q),
      interrupts_(nic.config().interrupts),
      rx_caller_(nic.config().caller_rx_buffers) {
  const NicConfig& c = nic.config();
  tx_size_ = 1u << c.tx_ring_log2;
  rx_size_ = 1u << c.rx_ring_log2;
  max_frame_ = nic.max_frame();
  tx_buf_bytes_ = round_up64(max_frame_);
  rx_buf_bytes_ = c.rx_buffer_bytes;
  tx_slots_.resize(tx_size_);
  rx_slots_.resize(rx_size_);
  rx_scratch_.resize(max_frame_);
  flushed_.reserve(tx_size_);
  rx_flushed_.reserve(rx_size_);
}

QueuePair::~QueuePair() = default;

std::uint64_t QueuePair::reg(std::uint64_t r) const noexcept { return rq::at(q_, r); }

void QueuePair::stop() noexcept {
  if (fn_.read32(regs::nic::ID) == 0xFFFFFFFFu) return;
  fn_.write32(reg(rq::CFG), 0);
  // The write may be applied after it returns (the card takes register writes between
  // frames): until QSTATUS says stopped, a frame may still land in a posted buffer.
  (void)fpga::poll_until(nic_.clock(), nic_.stepper(), nic_.config().enable_timeout, [&] {
    const std::uint32_t qs = fn_.read32(reg(rq::QSTATUS));
    return qs == 0xFFFFFFFFu || (qs & rq::QSTATUS_ENABLED_MASK) == 0;
  });
}

void QueuePair::flush_in_flight() noexcept {
  for (unsigned i = tx_clean_; i != tx_tail_; i = (i + 1) & tx_mask()) {
    TxSlot& s = tx_slots_[i];
    if (!s.last) continue;
    ++stats_.tx_errors[knic::kFlushed];
    if (s.zero_copy) flushed_.push_back(TxCompletion{s.cookie, knic::kFlushed});
  }
  tx_clean_ = tx_tail_ = tx_published_ = 0;
  tx_frame_status_ = knic::kOk;
  rx_in_frame_ = false;
  rx_partial_ = 0;
}

void QueuePair::flush_rx_posted() noexcept {
  if (rx_caller_) {
    // Buffers the card filled before it stopped come back as it completed them; the rest
    // unfilled.
    knic::Cqe c;
    while (rx_cq_.valid() && rx_clean_ != rx_published_ &&
           cqe_at(rx_cq_, rx_cq_head_, rx_phase_, c) && c.index == rx_clean_) {
      rx_cq_head_ = (rx_cq_head_ + 1) & rx_mask();
      if (rx_cq_head_ == 0) rx_phase_ = !rx_phase_;
      rx_flushed_.push_back(take_rx(c));
    }
    for (unsigned i = rx_clean_; i != rx_tail_; i = (i + 1) & rx_mask()) {
      rx_flushed_.push_back(RxCompletion{rx_slots_[i].cookie, 0, 0, knic::kFlushed, false});
    }
  }
  rx_clean_ = rx_tail_ = rx_published_ = 0;
  rx_in_frame_ = false;
  rx_partial_ = 0;
}

void QueuePair::disable() noexcept {
  stop();
  flush_in_flight();
  flush_rx_posted();
  disabled_ = true;
}

Status QueuePair::use_caller_rx_buffers(bool on) {
  if (on == rx_caller_ && !disabled_) return {};
  stop();
  flush_in_flight();
  flush_rx_posted();
  rx_caller_ = on;
  return build();
}

Status QueuePair::build() {
  // Fresh memory: the old rings may be void (a restored function's DMA domain) and the device
  // must not see anything it wrote before. The old buffers go first (an arena has room for one
  // set).
  disabled_ = true;  // until the queue pair runs again
  for (fpga::DmaBuffer* b : {&tx_ring_, &tx_cq_, &rx_ring_, &rx_cq_, &tx_bufs_, &rx_bufs_}) {
    b->reset();
  }
  auto alloc = [&](fpga::DmaBuffer& b, std::size_t bytes) -> Status {
    auto r = nic_.dma(bytes);
    if (!r) return r.error();
    b = std::move(r).value();
    return {};
  };
  if (Status s = alloc(tx_ring_, tx_size_ * kEntry); !s.ok()) return s;
  if (Status s = alloc(tx_cq_, tx_size_ * kEntry); !s.ok()) return s;
  if (Status s = alloc(rx_ring_, rx_size_ * kEntry); !s.ok()) return s;
  if (Status s = alloc(rx_cq_, rx_size_ * kEntry); !s.ok()) return s;
  if (Status s = alloc(tx_bufs_, std::size_t{tx_size_} * tx_buf_bytes_); !s.ok()) return s;
  if (!rx_caller_) {
    if (Status s = alloc(rx_bufs_, std::size_t{rx_size_} * rx_buf_bytes_); !s.ok()) return s;
  }
  // An arena may hand out memory that is not zeroed: a stale phase bit would look like a
  // completion.
  std::memset(tx_cq_.data(), 0, tx_cq_.size());
  std::memset(rx_cq_.data(), 0, rx_cq_.size());

  std::fill(tx_slots_.begin(), tx_slots_.end(), TxSlot{});
  tx_clean_ = tx_tail_ = tx_published_ = tx_cq_head_ = 0;
  tx_phase_ = true;
  tx_frame_status_ = knic::kOk;
  flush_rx_posted();  // caller buffers still posted: kFlushed
  rx_cq_head_ = 0;
  rx_phase_ = true;
  // Driver buffers: every RX slot owns one for good, so reposting a slot is only moving the
  // tail. Caller buffers: written by post_rx().
  for (unsigned i = 0; i < rx_size_ && !rx_caller_; ++i) {
    knic::RxDesc d{};
    d.addr = rx_bufs_.iova() + std::uint64_t{i} * rx_buf_bytes_;
    d.len = static_cast<std::uint16_t>(rx_buf_bytes_);
    std::memcpy(rx_ring_.data() + std::size_t{i} * kEntry, &d, sizeof d);
  }

  const NicConfig& c = nic_.config();
  fn_.write32(reg(rq::CFG), 0);
  fn_.write64(reg(rq::TX_BASE), tx_ring_.iova());
  fn_.write64(reg(rq::TX_CQ_BASE), tx_cq_.iova());
  fn_.write64(reg(rq::RX_BASE), rx_ring_.iova());
  fn_.write64(reg(rq::RX_CQ_BASE), rx_cq_.iova());
  std::uint32_t cfg = c.tx_ring_log2 << rq::CFG_TX_LOG2_SHIFT |
                      c.rx_ring_log2 << rq::CFG_RX_LOG2_SHIFT |
                      static_cast<std::uint32_t>(rq::CFG_ENABLE_MASK);
  if (c.interrupts) cfg |= static_cast<std::uint32_t>(rq::CFG_TX_IRQ_MASK | rq::CFG_RX_IRQ_MASK);
  std::atomic_thread_fence(std::memory_order_release);
  fn_.write32(reg(rq::CFG), cfg);
  std::uint32_t qs = 0;
  const bool done = fpga::poll_until(nic_.clock(), nic_.stepper(), c.enable_timeout, [&] {
    qs = fn_.read32(reg(rq::QSTATUS));
    return (qs & (rq::QSTATUS_ENABLED_MASK | rq::QSTATUS_ERR_MASK)) != 0;
  });
  const std::string which = "NIC queue pair " + std::to_string(q_);
  if (qs == 0xFFFFFFFFu) return make_error(Errc::gone, which + ": the VF reads all ones");
  if ((qs & rq::QSTATUS_ERR_MASK) != 0) {
    return make_error(Errc::device_error,
                      which + " refused (QSTATUS.ERR_CODE " +
                          std::to_string(regs::field_get(qs, rq::QSTATUS_ERR_CODE_MASK,
                                                         rq::QSTATUS_ERR_CODE_SHIFT)) +
                          ")");
  }
  if (!done) return make_error(Errc::timeout, which + ": waited for QSTATUS.ENABLED");
  arm_interrupts(true);
  disabled_ = false;
  if (rx_caller_) return {};
  // All buffers but one posted (a ring holds entries - 1).
  rx_tail_ = rx_published_ = rx_size_ - 1;
  fn_.write32(reg(rq::RX_TAIL), rx_tail_);
  ++stats_.rx_doorbells;
  return {};
}

void QueuePair::arm_interrupts(bool armed) noexcept {
  if (!interrupts_) return;
  fn_.set_interrupt_masked(tx_vector(), !armed);
  fn_.set_interrupt_masked(rx_vector(), !armed);
}

void QueuePair::idle() noexcept {
  if (++idle_polls_ % kHealthEvery == 0 && check_device() == NetErrc::ok) (void)nic_.state();
}

NetErrc QueuePair::check_device() const noexcept {
  if (disabled_) return NetErrc::down;
  switch (nic_.seen()) {
    case DeviceState::ready: return NetErrc::ok;
    case DeviceState::gone: return NetErrc::gone;
    default: return NetErrc::down;
  }
}

NetErrc QueuePair::send(std::span<const std::span<const std::uint8_t>> parts) noexcept {
  if (NetErrc e = check_device(); e != NetErrc::ok) return e;
  std::size_t total = 0;
  for (const auto& p : parts) total += p.size();
  if (total < knic::kEthHeader) return NetErrc::invalid;
  if (total > max_frame_) return NetErrc::too_large;
  if (tx_free() == 0) return NetErrc::full;
  const unsigned slot = tx_tail_;
  std::byte* buf = tx_bufs_.data() + std::size_t{slot} * tx_buf_bytes_;
  std::size_t at = 0;
  for (const auto& p : parts) {
    if (!p.empty()) std::memcpy(buf + at, p.data(), p.size());
    at += p.size();
  }
  knic::TxDesc d{};
  d.addr = tx_bufs_.iova() + std::uint64_t{slot} * tx_buf_bytes_;
  d.len = static_cast<std::uint16_t>(total);
  std::memcpy(tx_ring_.data() + std::size_t{slot} * kEntry, &d, sizeof d);
  tx_slots_[slot] = TxSlot{0, static_cast<std::uint32_t>(total), knic::kOk, true, false};
  tx_tail_ = (tx_tail_ + 1) & tx_mask();
  return NetErrc::ok;
}

NetErrc QueuePair::send_zero_copy(std::span<const TxSegment> segs, std::uint64_t cookie) noexcept {
  if (NetErrc e = check_device(); e != NetErrc::ok) return e;
  if (segs.empty() || segs.size() > regs::NIC_MAX_SEGS) return NetErrc::invalid;
  std::size_t total = 0;
  for (const TxSegment& s : segs) {
    if (s.len == 0 || s.len > 65535) return NetErrc::invalid;
    total += s.len;
  }
  if (total < knic::kEthHeader) return NetErrc::invalid;
  if (total > max_frame_) return NetErrc::too_large;
  if (segs.size() > tx_free()) return NetErrc::full;
  for (std::size_t i = 0; i < segs.size(); ++i) {
    const bool last = i + 1 == segs.size();
    knic::TxDesc d{};
    d.addr = segs[i].iova;
    d.len = static_cast<std::uint16_t>(segs[i].len);
    d.flags = last ? 0 : knic::kTxMore;
    std::memcpy(tx_ring_.data() + std::size_t{tx_tail_} * kEntry, &d, sizeof d);
    tx_slots_[tx_tail_] =
        last ? TxSlot{cookie, static_cast<std::uint32_t>(total), knic::kOk, true, true} : TxSlot{};
    tx_tail_ = (tx_tail_ + 1) & tx_mask();
  }
  return NetErrc::ok;
}

void QueuePair::flush() noexcept {
  if (tx_tail_ == tx_published_ && rx_tail_ == rx_published_) return;
  if (check_device() != NetErrc::ok) return;            // the rebuild will flush them
  std::atomic_thread_fence(std::memory_order_release);  // descriptors before the doorbell
  if (tx_tail_ != tx_published_) {
    fn_.write32(reg(rq::TX_TAIL), tx_tail_);
    tx_published_ = tx_tail_;
    ++stats_.tx_doorbells;
  }
  if (rx_tail_ != rx_published_) {
    fn_.write32(reg(rq::RX_TAIL), rx_tail_);
    rx_published_ = rx_tail_;
    ++stats_.rx_doorbells;
  }
}

NetErrc QueuePair::post_rx(const RxBuffer& buf) noexcept {
  if (NetErrc e = check_device(); e != NetErrc::ok) return e;
  if (!rx_caller_ || buf.len == 0 || buf.len > 65535) return NetErrc::invalid;
  if (rx_free() == 0) return NetErrc::full;
  knic::RxDesc d{};
  d.addr = buf.iova;
  d.len = static_cast<std::uint16_t>(buf.len);
  std::memcpy(rx_ring_.data() + std::size_t{rx_tail_} * kEntry, &d, sizeof d);
  rx_slots_[rx_tail_] = RxSlot{buf.cookie, buf.len};
  rx_tail_ = (rx_tail_ + 1) & rx_mask();
  return NetErrc::ok;
}

bool QueuePair::pop_rx_cqe(knic::Cqe& c, bool& ok) noexcept {
  if (!cqe_at(rx_cq_, rx_cq_head_, rx_phase_, c)) return false;
  rx_cq_head_ = (rx_cq_head_ + 1) & rx_mask();
  if (rx_cq_head_ == 0) rx_phase_ = !rx_phase_;
  ok = rx_clean_ != rx_published_ && c.index == rx_clean_;
  if (!ok) ++stats_.device_errors;  // names no posted buffer, or not the next one
  return true;
}

RxCompletion QueuePair::take_rx(const knic::Cqe& c) noexcept {
  const RxSlot& slot = rx_slots_[rx_clean_];
  RxCompletion r{slot.cookie, c.len, c.frame, static_cast<knic::Status>(c.status),
                 (c.flags & knic::kCqeMore) != 0};
  rx_clean_ = (rx_clean_ + 1) & rx_mask();
  if (r.status == knic::kOk && r.len > slot.len) {
    ++stats_.device_errors;
    r.status = knic::kBadDesc;
  }
  if (r.status != knic::kOk) r.len = 0;
  // Counted per frame, as in driver-buffer mode.
  if (!rx_in_frame_) {
    rx_in_frame_ = true;
    rx_partial_ = 0;
    rx_partial_bad_ = false;
  }
  rx_partial_ += r.len;
  rx_partial_bad_ = rx_partial_bad_ || r.status != knic::kOk;
  if (!r.more) {
    rx_in_frame_ = false;
    if (rx_partial_bad_ || rx_partial_ != r.frame) {
      ++stats_.rx_errors;
    } else {
      ++stats_.rx_frames;
      stats_.rx_bytes += rx_partial_;
    }
  }
  return r;
}

unsigned QueuePair::poll_rx_buffers(std::span<RxCompletion> out) noexcept {
  unsigned n = 0;
  while (rx_flushed_next_ < rx_flushed_.size() && n < out.size()) {
    out[n++] = rx_flushed_[rx_flushed_next_++];
  }
  if (rx_flushed_next_ < rx_flushed_.size()) return n;
  rx_flushed_.clear();
  rx_flushed_next_ = 0;
  if (!rx_caller_ || !rx_cq_.valid()) return n;
  unsigned consumed = 0;
  knic::Cqe c;
  bool ok = false;
  while (n < out.size() && pop_rx_cqe(c, ok)) {
    ++consumed;
    if (ok) out[n++] = take_rx(c);
  }
  if (consumed > 0 && check_device() == NetErrc::ok) {
    fn_.write32(reg(rq::RX_CQ_HEAD), rx_cq_head_);
  }
  if (consumed == 0 && n == 0) idle();
  return n;
}

bool QueuePair::tx_ready() const noexcept {
  if (!tx_cq_.valid()) return false;
  if (flushed_next_ < flushed_.size()) return true;
  knic::Cqe c;
  return cqe_at(tx_cq_, tx_cq_head_, tx_phase_, c);
}

bool QueuePair::rx_ready() const noexcept {
  if (!rx_cq_.valid()) return false;
  if (rx_flushed_next_ < rx_flushed_.size()) return true;
  knic::Cqe c;
  return cqe_at(rx_cq_, rx_cq_head_, rx_phase_, c);
}

void QueuePair::finish_frame(const TxSlot& slot, std::uint8_t status) noexcept {
  if (status == knic::kOk) {
    ++stats_.tx_frames;
    stats_.tx_bytes += slot.frame_bytes;
  } else {
    ++stats_.tx_errors[std::min<std::size_t>(status, stats_.tx_errors.size() - 1)];
  }
}

unsigned QueuePair::reap(std::span<TxCompletion> out) noexcept {
  unsigned n = 0;
  while (flushed_next_ < flushed_.size() && n < out.size()) out[n++] = flushed_[flushed_next_++];
  if (flushed_next_ < flushed_.size()) return n;
  flushed_.clear();
  flushed_next_ = 0;
  if (!tx_cq_.valid()) return n;
  unsigned consumed = 0;
  knic::Cqe c;
  while (tx_clean_ != tx_published_ && cqe_at(tx_cq_, tx_cq_head_, tx_phase_, c)) {
    const TxSlot& slot = tx_slots_[tx_clean_];
    const bool matches = c.index == tx_clean_;
    if (matches && slot.last && slot.zero_copy && n == out.size()) break;  // no room
    tx_cq_head_ = (tx_cq_head_ + 1) & tx_mask();
    if (tx_cq_head_ == 0) tx_phase_ = !tx_phase_;
    ++consumed;
    if (!matches) {
      ++stats_.device_errors;
      continue;
    }
    if (c.status != knic::kOk && tx_frame_status_ == knic::kOk) tx_frame_status_ = c.status;
    tx_clean_ = (tx_clean_ + 1) & tx_mask();
    if (!slot.last) continue;
    finish_frame(slot, tx_frame_status_);
    if (slot.zero_copy) {
      out[n++] = TxCompletion{slot.cookie, static_cast<knic::Status>(tx_frame_status_)};
    }
    tx_frame_status_ = knic::kOk;
  }
  if (consumed > 0 && check_device() == NetErrc::ok) {
    fn_.write32(reg(rq::TX_CQ_HEAD), tx_cq_head_);
  }
  if (consumed == 0 && n == 0) idle();
  return n;
}

unsigned QueuePair::poll_rx_impl(unsigned budget, void (*cb)(void*, std::span<const std::uint8_t>),
                                 void* ctx) noexcept {
  if (!rx_cq_.valid() || rx_caller_) return 0;
  if (!rx_ready()) {
    idle();
    return 0;
  }
  unsigned delivered = 0, consumed = 0, freed = 0;
  knic::Cqe c;
  bool ok = false;
  while (delivered < budget && pop_rx_cqe(c, ok)) {
    ++consumed;
    if (!ok) continue;
    const auto* buf = reinterpret_cast<const std::uint8_t*>(rx_bufs_.data()) +
                      std::size_t{rx_clean_} * rx_buf_bytes_;
    rx_clean_ = (rx_clean_ + 1) & rx_mask();
    ++freed;
    const bool more = (c.flags & knic::kCqeMore) != 0;
    const bool bad = c.status != knic::kOk || c.len > rx_buf_bytes_;
    if (!rx_in_frame_ && !more) {
      // The whole frame in one buffer: delivered in place.
      if (bad || c.len < knic::kEthHeader || c.len != c.frame) {
        ++stats_.rx_errors;
        continue;
      }
      cb(ctx, std::span<const std::uint8_t>(buf, c.len));
      ++stats_.rx_frames;
      stats_.rx_bytes += c.len;
      ++delivered;
      continue;
    }
    if (!rx_in_frame_) {
      rx_in_frame_ = true;
      rx_partial_ = 0;
      rx_partial_bad_ = false;
    }
    if (bad || rx_partial_ + c.len > rx_scratch_.size()) {
      rx_partial_bad_ = true;
    } else {
      std::memcpy(rx_scratch_.data() + rx_partial_, buf, c.len);
      rx_partial_ += c.len;
    }
    if (more) continue;
    rx_in_frame_ = false;
    if (rx_partial_bad_ || rx_partial_ != c.frame || rx_partial_ < knic::kEthHeader) {
      ++stats_.rx_errors;
      continue;
    }
    cb(ctx, std::span<const std::uint8_t>(rx_scratch_.data(), rx_partial_));
    ++stats_.rx_frames;
    stats_.rx_bytes += rx_partial_;
    ++delivered;
  }
  if (consumed > 0 && check_device() == NetErrc::ok) {
    // Release the completions, then give the buffers back (their descriptors never change).
    fn_.write32(reg(rq::RX_CQ_HEAD), rx_cq_head_);
    if (freed > 0) {
      rx_tail_ = rx_published_ = (rx_tail_ + freed) & rx_mask();
      std::atomic_thread_fence(std::memory_order_release);
      fn_.write32(reg(rq::RX_TAIL), rx_tail_);
      ++stats_.rx_doorbells;
    }
  }
  return delivered;
}

bool QueuePair::wait(WaitFor what, std::chrono::nanoseconds timeout) noexcept {
  flush();
  auto ready = [&] {
    switch (what) {
      case WaitFor::rx: return rx_ready();
      case WaitFor::tx: return tx_ready();
      case WaitFor::any: break;
    }
    return rx_ready() || tx_ready();
  };
  if (ready()) return true;
  if (check_device() != NetErrc::ok) return false;
  if (interrupts_) {
    const Clock& clock = nic_.clock();
    const std::uint64_t deadline = clock.deadline_after(timeout);
    bool tx_turn = false;
    for (;;) {
      const std::uint64_t now = clock.now_ns();
      if (now >= deadline) break;
      auto left = std::chrono::nanoseconds(deadline - now);
      unsigned vector = what == WaitFor::tx ? tx_vector() : rx_vector();
      // Both vectors: alternate in slices, unless no TX is in flight.
      if (what == WaitFor::any && tx_in_flight() > 0) {
        tx_turn = !tx_turn;
        vector = tx_turn ? tx_vector() : rx_vector();
        left = std::min<std::chrono::nanoseconds>(left, kAnySlice);
      }
      fn_.set_interrupt_masked(vector, false);  // armed while it sleeps on it
      auto r = fn_.wait_interrupt(vector, left);
      if (ready()) return true;
      if (!r.ok() && r.error().code != Errc::timeout) break;  // gone
    }
  } else {
    if (fpga::poll_until(nic_.clock(), nic_.stepper(), timeout, ready)) return true;
  }
  if (ready()) return true;
  (void)nic_.state();  // a device lost meanwhile is noticed here
  return false;
}

}  // namespace keel::drivers::net
