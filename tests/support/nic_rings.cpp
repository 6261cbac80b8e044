#include "nic_rings.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include <keel/regs/keel_regs.h>

namespace keel::testing {

namespace nq = regs::nicq;
namespace nr = regs::nic;

namespace {
constexpr std::size_t kTxSlot = 9216;  // a jumbo frame fits one slot

fpga::DmaBuffer must_alloc(fpga::Function& fn, std::size_t bytes) {
  auto b = fn.alloc_dma(bytes);
  EXPECT_TRUE(b.ok()) << to_string(b.error());
  if (!b.ok()) return {};
  std::memset(b->data(), 0, b->size());
  return std::move(b).value();
}
}  // namespace

NicRings::NicRings(fpga::Function& vf, fpga::Card& card, unsigned q, unsigned tx_log2,
                   unsigned rx_log2, std::uint16_t buf_bytes)
    : vf_(vf), card_(card), q_(q), tx_log2_(tx_log2), rx_log2_(rx_log2), buf_bytes_(buf_bytes) {}

std::uint64_t NicRings::reg(std::uint64_t r) const noexcept { return nq::at(q_, r); }

std::uint32_t NicRings::start(bool tx_irq, bool rx_irq, bool post) {
  tx_ring_ = must_alloc(vf_, 16u * tx_size());
  tx_cq_ = must_alloc(vf_, 16u * tx_size());
  rx_ring_ = must_alloc(vf_, 16u * rx_size());
  rx_cq_ = must_alloc(vf_, 16u * rx_size());
  tx_bufs_ = must_alloc(vf_, kTxSlot * tx_size());
  rx_bufs_ = must_alloc(vf_, std::size_t{buf_bytes_} * rx_size());
  rx_len_.assign(rx_size(), 0);
  vf_.write32(nr::CTRL, nr::CTRL_ENABLE_MASK);
  vf_.write64(reg(nq::TX_BASE), tx_ring_.iova());
  vf_.write64(reg(nq::TX_CQ_BASE), tx_cq_.iova());
  vf_.write64(reg(nq::RX_BASE), rx_ring_.iova());
  vf_.write64(reg(nq::RX_CQ_BASE), rx_cq_.iova());
  std::uint32_t cfg = tx_log2_ | rx_log2_ << nq::CFG_RX_LOG2_SHIFT |
                      static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK);
  if (tx_irq) cfg |= nq::CFG_TX_IRQ_MASK;
  if (rx_irq) cfg |= nq::CFG_RX_IRQ_MASK;
  vf_.write32(reg(nq::CFG), cfg);
  tx_tail_ = rx_tail_ = tx_cq_head_ = rx_cq_head_ = 0;
  tx_phase_ = rx_phase_ = 1;
  if (post) post_rx(rx_size() - 1);
  return vf_.read32(reg(nq::QSTATUS));
}

fpga::Iova NicRings::tx_buffer_iova(unsigned i) const noexcept {
  return tx_bufs_.iova() + std::uint64_t{i} * kTxSlot;
}

void NicRings::queue_desc(const knic::TxDesc& d) {
  std::memcpy(tx_ring_.data() + 16u * tx_tail_, &d, sizeof d);
  tx_tail_ = (tx_tail_ + 1) & (tx_size() - 1);
}

unsigned NicRings::queue_frame(std::span<const std::uint8_t> frame, std::size_t split) {
  if (split == 0) split = frame.size();
  unsigned n = 0;
  std::size_t off = 0;
  do {
    const std::size_t len = std::min(split, frame.size() - off);
    std::memcpy(tx_bufs_.data() + kTxSlot * tx_tail_, frame.data() + off, len);
    knic::TxDesc d{};
    d.addr = tx_buffer_iova(tx_tail_);
    d.len = static_cast<std::uint16_t>(len);
    off += len;
    d.flags = off < frame.size() ? knic::kTxMore : 0;
    queue_desc(d);
    ++n;
  } while (off < frame.size());
  return n;
}

void NicRings::tx_doorbell() {
  std::atomic_thread_fence(std::memory_order_release);
  vf_.write32(reg(nq::TX_TAIL), tx_tail_);
}

unsigned NicRings::send(std::span<const std::uint8_t> frame, std::size_t split) {
  const unsigned n = queue_frame(frame, split);
  tx_doorbell();
  return n;
}

void NicRings::post_rx(unsigned n, std::uint16_t len) {
  for (unsigned i = 0; i < n; ++i) {
    knic::RxDesc d{};
    d.addr = rx_bufs_.iova() + std::uint64_t{rx_tail_} * buf_bytes_;
    d.len = std::min(len, buf_bytes_);
    rx_len_[rx_tail_] = d.len;
    std::memcpy(rx_ring_.data() + 16u * rx_tail_, &d, sizeof d);
    rx_tail_ = (rx_tail_ + 1) & (rx_size() - 1);
  }
  std::atomic_thread_fence(std::memory_order_release);
  vf_.write32(reg(nq::RX_TAIL), rx_tail_);
}

void NicRings::step(unsigned n) {
  for (unsigned i = 0; i < n; ++i) card_.advance();
}

std::optional<knic::Cqe> NicRings::peek(bool tx) {
  const fpga::DmaBuffer& cq = tx ? tx_cq_ : rx_cq_;
  unsigned& head = tx ? tx_cq_head_ : rx_cq_head_;
  std::uint8_t& phase = tx ? tx_phase_ : rx_phase_;
  const auto* last =
      reinterpret_cast<const std::atomic<std::uint32_t>*>(cq.data() + 16u * head + 12);
  const std::uint32_t tail_word = last->load(std::memory_order_acquire);
  if (((tail_word >> 24) & knic::kCqePhase) != phase) return std::nullopt;
  knic::Cqe c;
  std::memcpy(&c, cq.data() + 16u * head, sizeof c);
  head = (head + 1) & ((tx ? tx_size() : rx_size()) - 1);
  if (head == 0) phase ^= 1;
  vf_.write32(reg(tx ? nq::TX_CQ_HEAD : nq::RX_CQ_HEAD), head);
  return c;
}

std::optional<knic::Cqe> NicRings::tx_cqe(unsigned steps) {
  for (unsigned i = 0;; ++i) {
    if (auto c = peek(true)) return c;
    if (i == steps) return std::nullopt;
    step(1);
  }
}

std::optional<RxFrame> NicRings::receive(unsigned steps) {
  RxFrame f;
  unsigned waited = 0;
  for (;;) {
    auto c = peek(false);
    if (!c) {
      if (waited++ == steps) return std::nullopt;
      step(1);
      continue;
    }
    f.cqes.push_back(*c);
    if (c->status != knic::kOk && f.status == knic::kOk) f.status = c->status;
    const std::byte* buf = rx_bufs_.data() + std::size_t{c->index} * buf_bytes_;
    const auto* b = reinterpret_cast<const std::uint8_t*>(buf);
    f.bytes.insert(f.bytes.end(), b, b + std::min<std::uint32_t>(c->len, buf_bytes_));
    post_rx(1);
    if ((c->flags & knic::kCqeMore) == 0) return f;
  }
}

std::vector<knic::Cqe> NicRings::drain_rx(unsigned steps) {
  std::vector<knic::Cqe> out;
  step(steps);
  while (auto c = peek(false)) out.push_back(*c);
  return out;
}

std::vector<std::uint8_t> make_frame(const knic::Mac& dst, const knic::Mac& src,
                                     std::size_t payload, std::uint8_t seed) {
  std::vector<std::uint8_t> f(knic::kEthHeader + payload);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = 0x08;
  f[13] = 0x00;
  for (std::size_t i = 0; i < payload; ++i) {
    f[knic::kEthHeader + i] = static_cast<std::uint8_t>(seed + i * 7);
  }
  return f;
}

}  // namespace keel::testing
