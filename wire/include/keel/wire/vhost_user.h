// keel/wire/vhost_user.h - the vhost-user wire format (QEMU docs/interop/vhost-user.rst):
// message header, requests, payload structs, feature bits. Native byte order throughout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace keel::vhost_user {


/// Every message starts with this header; `size` bytes of payload follow.
struct Header {
  std::uint32_t request;
  std::uint32_t flags;
  std::uint32_t size;
};
static_assert(sizeof(Header) == 12 && offsetof(Header, flags) == 4 && offsetof(Header, size) == 8);

inline constexpr std::uint32_t kVersion = 0x1;  ///< flags bits 0-1.
inline constexpr std::uint32_t kVersionMask = 0x3;
inline constexpr std::uint32_t kFlagReply = 1u << 2;      ///< Set on every back-end reply.
inline constexpr std::uint32_t kFlagNeedReply = 1u << 3;  ///< REPLY_ACK: front end wants an ack.

/// Front-end requests (the ones keel knows by name).
enum class Request : std::uint32_t {
  get_features = 1,
  set_features = 2,
  set_owner = 3,
  reset_owner = 4,
  set_mem_table = 5,
  set_log_base = 6,
  set_log_fd = 7,
  set_vring_num = 8,
  set_vring_addr = 9,
  set_vring_base = 10,
  get_vring_base = 11,
  set_vring_kick = 12,
  set_vring_call = 13,
  set_vring_err = 14,
  get_protocol_features = 15,
  set_protocol_features = 16,
  get_queue_num = 17,
  set_vring_enable = 18,
  get_config = 24,
  set_config = 25,
  get_inflight_fd = 31,
  set_inflight_fd = 32,
  reset_device = 34,
};
/// "SET_VRING_ADDR" for known requests, "request 99" otherwise.
std::string request_name(std::uint32_t request);

/// SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE (and its reply), SET_VRING_ENABLE.
struct VringState {
  std::uint32_t index;
  std::uint32_t num;
};
static_assert(sizeof(VringState) == 8 && offsetof(VringState, num) == 4);

/// SET_VRING_ADDR: front-end user addresses of the three ring areas.
struct VringAddr {
  std::uint32_t index;
  std::uint32_t flags;  ///< Bit 0: VHOST_VRING_F_LOG (dirty logging, not supported).
  std::uint64_t desc_user_addr;
  std::uint64_t used_user_addr;
  std::uint64_t avail_user_addr;
  std::uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40 && offsetof(VringAddr, desc_user_addr) == 8 &&
              offsetof(VringAddr, used_user_addr) == 16 &&
              offsetof(VringAddr, avail_user_addr) == 24 &&
              offsetof(VringAddr, log_guest_addr) == 32);
inline constexpr std::uint32_t kVringFlagLog = 1;

struct MemoryRegion {
  std::uint64_t guest_phys_addr;
  std::uint64_t memory_size;
  std::uint64_t userspace_addr;
  std::uint64_t mmap_offset;  ///< Offset of the region in its fd.
};
static_assert(sizeof(MemoryRegion) == 32 && offsetof(MemoryRegion, userspace_addr) == 16 &&
              offsetof(MemoryRegion, mmap_offset) == 24);

/// SET_MEM_TABLE: `nregions` regions, one fd each (SCM_RIGHTS, in region order). QEMU sends
/// only the regions in use: payload size 8 + 32 * nregions.
inline constexpr unsigned kMaxRegions = 8;
struct MemoryTable {
  std::uint32_t nregions;
  std::uint32_t padding;
  MemoryRegion regions[kMaxRegions];
};
static_assert(sizeof(MemoryTable) == 8 + 32 * kMaxRegions && offsetof(MemoryTable, regions) == 8);

/// GET_CONFIG / SET_CONFIG: this header, then `size` bytes of device configuration space.
struct ConfigHeader {
  std::uint32_t offset;
  std::uint32_t size;
  std::uint32_t flags;  ///< 0: written by the driver; 1: live migration.
};
static_assert(sizeof(ConfigHeader) == 12 && offsetof(ConfigHeader, flags) == 8);
inline constexpr std::uint32_t kMaxConfigBytes = 256;

/// SET_VRING_KICK / CALL / ERR payload (u64): ring index in bits 0-7, bit 8 "no fd" (kick:
/// the back end polls; call/err: no notification).
inline constexpr std::uint64_t kVringIndexMask = 0xff;
inline constexpr std::uint64_t kVringNoFd = 1u << 8;

/// Feature bit (GET_FEATURES / SET_FEATURES) announcing protocol-feature negotiation.
inline constexpr unsigned kFeatureProtocolFeatures = 30;

/// Protocol feature bits.
namespace protocol {
inline constexpr unsigned kMq = 0;
inline constexpr unsigned kLogShmfd = 1;
inline constexpr unsigned kReplyAck = 3;
inline constexpr unsigned kBackendReq = 5;
inline constexpr unsigned kConfig = 9;
inline constexpr unsigned kInflightShmfd = 12;
inline constexpr unsigned kResetDevice = 13;
inline constexpr unsigned kConfigureMemSlots = 15;
inline constexpr unsigned kStatus = 16;
}  // namespace protocol

}  // namespace keel::vhost_user
