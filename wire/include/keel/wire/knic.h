// keel/wire/knic.h - the NIC VF's ring entries (keel's own NIC programming model; the registers
// are in the generated keel/regs/keel_regs.h, blocks NIC and NICQ) and the Ethernet basics the
// card and the switches look at. Every field is little-endian in host memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace keel::knic {

/// TX descriptor: one buffer of a frame. A frame spans consecutive descriptors, every one but
/// the last with kTxMore set; each descriptor gets its own completion.
struct TxDesc {
  std::uint64_t addr;  ///< IOVA of the buffer.
  std::uint16_t len;   ///< Bytes in the buffer (1..65535; 0 is a bad descriptor).
  std::uint16_t flags;
  std::uint32_t reserved;
};
static_assert(sizeof(TxDesc) == 16 && offsetof(TxDesc, len) == 8 && offsetof(TxDesc, flags) == 10);
inline constexpr std::uint16_t kTxMore = 1;  ///< The frame continues in the next descriptor.

/// RX descriptor: one empty buffer the card may fill.
struct RxDesc {
  std::uint64_t addr;  ///< IOVA of the buffer.
  std::uint16_t len;   ///< Size of the buffer (0 is a bad descriptor: completed with kBadDesc).
  std::uint16_t flags;
  std::uint32_t reserved;
};
static_assert(sizeof(RxDesc) == 16 && offsetof(RxDesc, len) == 8);

/// Completion of one TX descriptor or one RX buffer. The phase bit is in the last 4 bytes, which
/// the card makes visible after the rest (an acquire load of them sees the whole entry).
struct Cqe {
  std::uint32_t len;    ///< RX: bytes written into this buffer. TX: the descriptor's length.
  std::uint32_t frame;  ///< RX: length of the whole frame (on every buffer of it). TX: 0.
  std::uint32_t reserved;
  std::uint16_t index;  ///< Ring index of the descriptor it completes.
  std::uint8_t status;  ///< Status (below).
  std::uint8_t flags;   ///< kCqePhase, kCqeMore.
};
static_assert(sizeof(Cqe) == 16 && offsetof(Cqe, index) == 12 && offsetof(Cqe, flags) == 15);
inline constexpr std::uint8_t kCqePhase = 1;  ///< Flips on every wrap of the ring; starts at 1.
inline constexpr std::uint8_t kCqeMore = 2;   ///< RX: the frame continues in the next buffer.

/// Completion status. A TX frame that is dropped completes every one of its descriptors with
/// the cause; the switch counts it once per frame (NICVFCFG DROP_*).
enum Status : std::uint8_t {
  kOk = 0,
  kBadDesc = 1,   ///< Zero length, too many descriptors, or a frame shorter than a header.
  kOversize = 2,  ///< Frame longer than the MTU plus regs::NIC_FRAME_OVERHEAD.
  kDmaFault = 3,  ///< A buffer outside the VF's DMA windows.
  kSpoofed = 4,   ///< Source MAC is not the VF's.
  /// Never written by the card (a stopped queue neither sends nor completes what it held):
  /// drivers report it for frames they took back when a queue stopped (reset, FLR, removal).
  kFlushed = 5,
};

/// A MAC address, first byte on the wire first.
using Mac = std::array<std::uint8_t, 6>;

inline constexpr std::size_t kEthHeader = 14;
inline constexpr Mac kBroadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

constexpr bool is_multicast(const Mac& m) noexcept { return (m[0] & 1) != 0; }
constexpr bool is_zero(const Mac& m) noexcept {
  return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0;
}

/// Destination and source MAC of a frame of at least kEthHeader bytes.
inline Mac dst_mac(std::span<const std::uint8_t> frame) noexcept {
  Mac m;
  std::memcpy(m.data(), frame.data(), 6);
  return m;
}
inline Mac src_mac(std::span<const std::uint8_t> frame) noexcept {
  Mac m;
  std::memcpy(m.data(), frame.data() + 6, 6);
  return m;
}

/// A MAC as the registers hold it: bytes 0-3 in LO (byte 0 in bits 7:0), bytes 4-5 in HI.
constexpr std::uint32_t mac_lo(const Mac& m) noexcept {
  return std::uint32_t{m[0]} | std::uint32_t{m[1]} << 8 | std::uint32_t{m[2]} << 16 |
         std::uint32_t{m[3]} << 24;
}
constexpr std::uint32_t mac_hi(const Mac& m) noexcept {
  return std::uint32_t{m[4]} | std::uint32_t{m[5]} << 8;
}
constexpr Mac mac_from_regs(std::uint32_t lo, std::uint32_t hi) noexcept {
  return Mac{static_cast<std::uint8_t>(lo),       static_cast<std::uint8_t>(lo >> 8),
             static_cast<std::uint8_t>(lo >> 16), static_cast<std::uint8_t>(lo >> 24),
             static_cast<std::uint8_t>(hi),       static_cast<std::uint8_t>(hi >> 8)};
}

}  // namespace keel::knic
