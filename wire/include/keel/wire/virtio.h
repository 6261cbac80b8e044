// keel/wire/virtio.h - virtio 1.1 split virtqueue and virtio-blk wire formats.
#pragma once

#include <cstddef>
#include <cstdint>

namespace keel::virtio {

/// Split virtqueue descriptor (virtio 1.1 section 2.6.5), little-endian in guest memory.
struct Desc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};
static_assert(sizeof(Desc) == 16 && offsetof(Desc, len) == 8 && offsetof(Desc, next) == 14);

inline constexpr std::uint16_t kDescNext = 1;
inline constexpr std::uint16_t kDescWrite = 2;     ///< Device writes (driver reads) this buffer.
inline constexpr std::uint16_t kDescIndirect = 4;  ///< Not offered by keel.

/// Available ring header; `ring[queue_size]` and `used_event` follow.
struct AvailHeader {
  std::uint16_t flags;
  std::uint16_t idx;
};
inline constexpr std::uint16_t kAvailNoInterrupt = 1;

struct UsedElem {
  std::uint32_t id;
  std::uint32_t len;
};
static_assert(sizeof(UsedElem) == 8);

/// Used ring header; `ring[queue_size]` and `avail_event` follow.
struct UsedHeader {
  std::uint16_t flags;
  std::uint16_t idx;
};
inline constexpr std::uint16_t kUsedNoNotify = 1;

/// Bytes of each split-ring area for a queue of `n` entries (with EVENT_IDX fields).
constexpr std::size_t desc_bytes(unsigned n) { return 16u * n; }
constexpr std::size_t avail_bytes(unsigned n) { return 4u + 2u * n + 2u; }
constexpr std::size_t used_bytes(unsigned n) { return 4u + 8u * n + 2u; }

/// Largest queue a split ring may have.
inline constexpr unsigned kMaxQueueSize = 32768;

// Feature bits (virtio 1.1 sections 5.2.3 and 6).
namespace feature {
inline constexpr unsigned kBlkSizeMax = 1;
inline constexpr unsigned kBlkSegMax = 2;
inline constexpr unsigned kBlkBlkSize = 6;
inline constexpr unsigned kBlkFlush = 9;
inline constexpr unsigned kBlkMq = 12;
inline constexpr unsigned kBlkWriteZeroes = 14;
inline constexpr unsigned kRingIndirectDesc = 28;
inline constexpr unsigned kRingEventIdx = 29;
inline constexpr unsigned kVersion1 = 32;
}  // namespace feature

constexpr std::uint64_t bit(unsigned b) { return std::uint64_t{1} << b; }

// Device status bits (virtio 1.1 section 2.1).
namespace status {
inline constexpr std::uint8_t kAcknowledge = 1;
inline constexpr std::uint8_t kDriver = 2;
inline constexpr std::uint8_t kDriverOk = 4;
inline constexpr std::uint8_t kFeaturesOk = 8;
inline constexpr std::uint8_t kDeviceNeedsReset = 64;
inline constexpr std::uint8_t kFailed = 128;
}  // namespace status

// virtio-blk (virtio 1.1 section 5.2).
namespace blk {

/// Request header: the first 16 bytes of every request, driver -> device.
struct OutHeader {
  std::uint32_t type;
  std::uint32_t reserved;
  std::uint64_t sector;  ///< 512-byte units, always, whatever blk_size is.
};
static_assert(sizeof(OutHeader) == 16);

/// Payload of WRITE_ZEROES / DISCARD requests.
struct DiscardWriteZeroes {
  std::uint64_t sector;
  std::uint32_t num_sectors;
  std::uint32_t flags;  ///< bit 0: unmap.
};
static_assert(sizeof(DiscardWriteZeroes) == 16);

inline constexpr std::uint32_t kIn = 0;
inline constexpr std::uint32_t kOut = 1;
inline constexpr std::uint32_t kFlush = 4;
inline constexpr std::uint32_t kGetId = 8;
inline constexpr std::uint32_t kDiscard = 11;
inline constexpr std::uint32_t kWriteZeroes = 13;

inline constexpr std::uint8_t kStatusOk = 0;
inline constexpr std::uint8_t kStatusIoErr = 1;
inline constexpr std::uint8_t kStatusUnsupp = 2;

inline constexpr std::uint32_t kSectorBytes = 512;
inline constexpr std::uint32_t kIdBytes = 20;

/// Device configuration space (the fields keel offers), virtio 1.1 section 5.2.4.
struct Config {
  std::uint64_t capacity;  ///< In 512-byte sectors.
  std::uint32_t size_max;
  std::uint32_t seg_max;
  struct {
    std::uint16_t cylinders;
    std::uint8_t heads;
    std::uint8_t sectors;
  } geometry;
  std::uint32_t blk_size;
  struct {
    std::uint8_t physical_block_exp;
    std::uint8_t alignment_offset;
    std::uint16_t min_io_size;
    std::uint32_t opt_io_size;
  } topology;
  std::uint8_t writeback;
  std::uint8_t unused0;
  std::uint16_t num_queues;
  std::uint32_t max_discard_sectors;
  std::uint32_t max_discard_seg;
  std::uint32_t discard_sector_alignment;
  std::uint32_t max_write_zeroes_sectors;
  std::uint32_t max_write_zeroes_seg;
  std::uint8_t write_zeroes_may_unmap;
  std::uint8_t unused1[3];
};
static_assert(offsetof(Config, blk_size) == 20 && offsetof(Config, num_queues) == 34 &&
                  offsetof(Config, max_write_zeroes_sectors) == 48 &&
                  offsetof(Config, write_zeroes_may_unmap) == 56,
              "virtio-blk config layout");

}  // namespace blk

// virtio-net (virtio 1.1 section 5.1).
namespace net {

// Feature bits (5.1.3).
inline constexpr unsigned kCsum = 0;
inline constexpr unsigned kGuestCsum = 1;
inline constexpr unsigned kMtu = 3;
inline constexpr unsigned kMac = 5;
inline constexpr unsigned kGuestTso4 = 7;
inline constexpr unsigned kHostTso4 = 11;
inline constexpr unsigned kMrgRxbuf = 15;
inline constexpr unsigned kStatus = 16;
inline constexpr unsigned kCtrlVq = 17;
inline constexpr unsigned kMq = 22;

/// Device configuration (5.1.4), the fields keel offers: mac, status, max_virtqueue_pairs, mtu.
struct Config {
  std::uint8_t mac[6];
  std::uint16_t status;
  std::uint16_t max_virtqueue_pairs;
  std::uint16_t mtu;
};
static_assert(sizeof(Config) == 12 && offsetof(Config, mtu) == 10);
inline constexpr std::uint16_t kStatusLinkUp = 1;

/// The header in front of every packet (5.1.6). With VERSION_1 it is always 12 bytes;
/// num_buffers is the count of RX buffers a packet spans (1 without MRG_RXBUF).
struct Hdr {
  std::uint8_t flags;
  std::uint8_t gso_type;
  std::uint16_t hdr_len;
  std::uint16_t gso_size;
  std::uint16_t csum_start;
  std::uint16_t csum_offset;
  std::uint16_t num_buffers;
};
static_assert(sizeof(Hdr) == 12 && offsetof(Hdr, num_buffers) == 10);
inline constexpr std::uint8_t kHdrNeedsCsum = 1;
inline constexpr std::uint8_t kHdrDataValid = 2;
inline constexpr std::uint8_t kGsoNone = 0;

/// Virtqueue numbering: receiveq N is 2N, transmitq N is 2N + 1 (the control queue, which keel
/// does not offer, would follow).
constexpr unsigned rx_queue(unsigned pair) { return 2 * pair; }
constexpr unsigned tx_queue(unsigned pair) { return 2 * pair + 1; }

}  // namespace net
}  // namespace keel::virtio
