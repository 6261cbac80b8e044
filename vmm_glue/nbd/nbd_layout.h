// nbd_layout.h - the NBD server's units and guest-memory layout, shared by its pieces.
#pragma once

#include <cstdint>

#include "keel/vmm/nbd_server.h"

namespace keel::vmm::nbd_internal {

inline constexpr std::uint32_t kSector = 512;
/// Unit of the data-buffer pool: one NVMe MDTS, page aligned, so buffers stay PRP friendly.
inline constexpr std::uint32_t kChunk = 128u << 10;
/// Guest memory below the buffers: the rings, their header scratch, write-zeroes payloads.
inline constexpr std::uint64_t kRingArea = 8ull << 20;

inline std::uint64_t chunks_for(std::uint64_t bytes) noexcept {
  return (bytes + kChunk - 1) / kChunk;
}

/// Chunks the largest request can need: its unaligned covering range plus an RMW's scratch.
inline std::uint64_t max_request_chunks(const NbdServerConfig& c) noexcept {
  return chunks_for(std::uint64_t{c.max_request_bytes} + 2 * kSector) + 1;
}

}  // namespace keel::vmm::nbd_internal
