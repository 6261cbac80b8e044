// keel/crc32c.h - CRC-32C (Castagnoli), the checksum of state keel hands from one process to
// the next (servicing): the same polynomial NVMe and iSCSI use, so a corrupt blob is caught
// with the odds of a 32-bit CRC.
#pragma once

#include <cstdint>
#include <span>

namespace keel {

/// CRC-32C of `data`, continuing from `crc` (0 to start). Reflected, initial and final XOR
/// 0xFFFFFFFF, as RFC 3720: crc32c("123456789") == 0xE3069283.
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept;

}  // namespace keel
