// A register-level host for one queue pair of a NIC VF: what the card suite uses to drive the
// NIC's rings byte by byte, without the driver (drivers/net) in the way.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "keel/fpga/card.h"
#include "keel/fpga/dma.h"
#include "keel/result.h"
#include "keel/wire/knic.h"

namespace keel::testing {

/// A frame as the card's RX ring gave it: its buffers' completions and the bytes joined.
struct RxFrame {
  std::vector<knic::Cqe> cqes;
  std::vector<std::uint8_t> bytes;
  std::uint8_t status = knic::kOk;  ///< The first non-ok status of its buffers.
};

class NicRings {
 public:
  /// Queue pair `q` of `vf`; rings of 2^tx_log2 / 2^rx_log2 entries; RX buffers of `buf_bytes`.
  NicRings(fpga::Function& vf, fpga::Card& card, unsigned q = 0, unsigned tx_log2 = 4,
           unsigned rx_log2 = 4, std::uint16_t buf_bytes = 2048);

  /// Allocates the rings and buffers, enables the VF (CTRL.ENABLE) and the queue pair, and
  /// posts every RX buffer but one (a ring holds size - 1). Returns QSTATUS after the enable.
  std::uint32_t start(bool tx_irq = false, bool rx_irq = false, bool post_rx = true);

  unsigned tx_size() const noexcept { return 1u << tx_log2_; }
  unsigned rx_size() const noexcept { return 1u << rx_log2_; }
  std::uint64_t reg(std::uint64_t nicq_reg) const noexcept;  ///< BAR offset of a NICQ register.

  /// Copies `frame` into TX buffers, `split` bytes per descriptor (0: one descriptor), and
  /// queues its descriptors. Returns the number of descriptors. doorbell() makes them visible.
  unsigned queue_frame(std::span<const std::uint8_t> frame, std::size_t split = 0);
  /// Queues a raw descriptor.
  void queue_desc(const knic::TxDesc& d);
  void tx_doorbell();
  /// queue_frame + doorbell.
  unsigned send(std::span<const std::uint8_t> frame, std::size_t split = 0);

  /// The next TX completion, stepping the card up to `steps` times. Writes TX_CQ_HEAD.
  std::optional<knic::Cqe> tx_cqe(unsigned steps = 1000);
  /// The next RX frame (all its buffers), stepping up to `steps`; reposts its buffers.
  std::optional<RxFrame> receive(unsigned steps = 1000);
  /// Steps the card `steps` times and returns every RX completion that arrived (no repost).
  std::vector<knic::Cqe> drain_rx(unsigned steps);

  /// Posts `n` RX buffers of `len` bytes (a ring's worth at most), then RX_TAIL.
  void post_rx(unsigned n, std::uint16_t len);
  void post_rx(unsigned n) { post_rx(n, buf_bytes_); }

  /// IOVA of TX buffer slot `i` (for descriptors a test builds by hand).
  fpga::Iova tx_buffer_iova(unsigned i) const noexcept;
  fpga::Function& vf() noexcept { return vf_; }

 private:
  std::optional<knic::Cqe> peek(bool tx);
  void step(unsigned n);

  fpga::Function& vf_;
  fpga::Card& card_;
  unsigned q_;
  unsigned tx_log2_, rx_log2_;
  std::uint16_t buf_bytes_;
  fpga::DmaBuffer tx_ring_, tx_cq_, rx_ring_, rx_cq_, tx_bufs_, rx_bufs_;
  unsigned tx_tail_ = 0, rx_tail_ = 0, tx_cq_head_ = 0, rx_cq_head_ = 0;
  std::uint8_t tx_phase_ = 1, rx_phase_ = 1;
  std::vector<std::uint16_t> rx_len_;  ///< Length posted in each RX slot.
};

/// A frame from `src` to `dst` with an IPv4 ethertype and `payload` bytes after the header,
/// filled from `seed`.
std::vector<std::uint8_t> make_frame(const knic::Mac& dst, const knic::Mac& src,
                                     std::size_t payload, std::uint8_t seed = 0);

}  // namespace keel::testing
