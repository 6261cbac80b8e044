// keel/vmm/blk_request.h - a virtio-blk request, parsed and validated from a descriptor chain.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "keel/vmm/guest_memory.h"
#include "keel/vmm/virtqueue.h"

namespace keel::vmm {

/// A run of guest memory that request data moves through; always inside one memory region.
struct DataSeg {
  std::uint64_t gpa;
  std::uint32_t len;
};

/// What the parser decided.
enum class ParseOutcome : std::uint8_t {
  submit,    ///< Valid: do the IO, then write the status.
  complete,  ///< Decided already (error, unsupported, or GET_ID done): write `status` now.
  broken,    ///< Cannot even report a status: the device must be reset (DEVICE_NEEDS_RESET).
};

struct BlkRequest {
  std::uint16_t head = 0;
  std::uint32_t type = 0;
  std::uint64_t sector = 0;   ///< First 512-byte sector (IN/OUT/WRITE_ZEROES).
  std::uint64_t sectors = 0;  ///< Length in sectors (IN/OUT/WRITE_ZEROES).
  /// IN: device-writable data; OUT: driver data. Descriptors that cross from one memory
  /// region into an adjacent one are cut at the boundary. Callers reserve BlkLimits::max_pieces.
  std::vector<DataSeg> data;
  std::uint64_t status_gpa = 0;  ///< Where the status byte goes.
  std::uint8_t status = 0;       ///< With ParseOutcome::complete.
  std::uint32_t written = 0;     ///< Bytes the device writes (used.len), status included.
  const char* why = "";          ///< For errors: what was wrong, for logs and counters.
};

/// What a request may ask for (the trust boundary with the guest). A request beyond any of
/// them completes with VIRTIO_BLK_S_IOERR (counted as a bad request); nothing else is affected.
struct BlkLimits {
  std::uint64_t capacity_sectors = 0;
  std::uint32_t seg_max = 126;  ///< Data descriptors per request (virtio-blk seg_max).
  /// Bytes of one data descriptor (virtio-blk size_max).
  std::uint32_t size_max = 128 * 1024;
  /// Data bytes of one read or write; more is refused.
  std::uint32_t max_request_bytes = 4u << 20;
  /// Data pieces after cutting at memory-region boundaries (the capacity of BlkRequest::data).
  std::uint32_t max_pieces = 126 + 16;
  /// Logical block size (virtio-blk blk_size): reads, writes and write-zeroes must start and
  /// end on it.
  std::uint32_t block_bytes = 512;
  std::uint32_t max_write_zeroes_sectors = 1u << 16;
  const char* serial = "keel";  ///< GET_ID answer (up to 20 bytes).
};

/// Parses the chain at `head` (read with Virtqueue::read_chain into `chain`) into `out`.
/// Framing is free (virtio 1.x): the header is the first 16 driver-readable bytes, the status
/// the last device-writable byte, data what lies between. Never touches memory outside guest
/// RAM. GET_ID is answered here (the id is written into guest memory).
ParseOutcome parse_blk_request(const GuestMemory& mem, const BlkLimits& limits, std::uint16_t head,
                               ChainError chain_error, std::span<const ChainSeg> chain,
                               BlkRequest& out) noexcept;

/// Writes the status byte of a request. False if it lies outside guest memory.
bool write_blk_status(const GuestMemory& mem, const BlkRequest& r, std::uint8_t status) noexcept;

}  // namespace keel::vmm
