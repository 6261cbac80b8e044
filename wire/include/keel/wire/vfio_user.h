// keel/wire/vfio_user.h - the vfio-user wire format (QEMU docs/devel/vfio-user.rst, protocol
// version 0.9.1): a device served by another process over a unix socket, with VFIO's device
// model as messages. Host byte order throughout. Offsets in the comments are those of the spec's
// tables, from the end of the 16-byte header; every struct's layout is checked below.
//
// Used by keel-card (the card as its own process, one socket per PCI function) and by the
// fpga/ backend that reaches such a card (issue 12).
#pragma once

#include <cstddef>
#include <cstdint>

namespace keel::vfio_user {

/// Protocol version keel speaks (major must match; a server replies with a minor <= proposed).
inline constexpr std::uint16_t kMajor = 0;
inline constexpr std::uint16_t kMinor = 1;

enum class Command : std::uint16_t {
  version = 1,
  dma_map = 2,
  dma_unmap = 3,
  device_get_info = 4,
  device_get_region_info = 5,
  device_get_region_io_fds = 6,
  device_get_irq_info = 7,
  device_set_irqs = 8,
  region_read = 9,
  region_write = 10,
  dma_read = 11,   ///< server -> client
  dma_write = 12,  ///< server -> client
  device_reset = 13,
};

/// Every message, command or reply, starts with this header; `size` counts the header too.
struct Header {
  std::uint16_t msg_id;   ///< The sender's; echoed in the reply.
  Command command;        ///< Echoed in the reply.
  std::uint32_t size;     ///< Whole message, header included.
  std::uint32_t flags;    ///< kFlagType* | kFlagNoReply | kFlagError.
  std::uint32_t error;    ///< errno of a failed command (reply with kFlagError); else 0.
};
static_assert(sizeof(Header) == 16 && offsetof(Header, command) == 2 &&
              offsetof(Header, size) == 4 && offsetof(Header, flags) == 8 &&
              offsetof(Header, error) == 12);

inline constexpr std::uint32_t kFlagTypeMask = 0xf;   ///< Bits 0-3: the message type.
inline constexpr std::uint32_t kFlagTypeCommand = 0;
inline constexpr std::uint32_t kFlagTypeReply = 1;
inline constexpr std::uint32_t kFlagNoReply = 1u << 4;  ///< A command that wants no reply.
inline constexpr std::uint32_t kFlagError = 1u << 5;    ///< A reply to a failed command.

/// VERSION (both ways): followed by an optional NUL-terminated JSON object of capabilities,
/// {"capabilities": {"max_msg_fds": N, "max_data_xfer_size": N, "migration": {...}}}.
struct Version {
  std::uint16_t major;
  std::uint16_t minor;
};
static_assert(sizeof(Version) == 4);
/// What a peer that names no capability supports.
inline constexpr std::uint32_t kDefaultMaxMsgFds = 1;
inline constexpr std::uint32_t kDefaultMaxDataXferSize = 1u << 20;

/// DMA_MAP (client -> server); the region's fd, if the server may mmap it, travels as
/// SCM_RIGHTS. No reply payload.
struct DmaMap {
  std::uint32_t argsz;  ///< sizeof(DmaMap)
  std::uint32_t flags;  ///< kDmaRead | kDmaWrite
  std::uint64_t offset; ///< In the fd (0 without one).
  std::uint64_t address;
  std::uint64_t size;
};
static_assert(sizeof(DmaMap) == 32 && offsetof(DmaMap, offset) == 8 &&
              offsetof(DmaMap, address) == 16 && offsetof(DmaMap, size) == 24);
inline constexpr std::uint32_t kDmaRead = 1u << 0;
inline constexpr std::uint32_t kDmaWrite = 1u << 1;

/// DMA_UNMAP (client -> server): address and size match a mapping exactly; the reply echoes it.
struct DmaUnmap {
  std::uint32_t argsz;
  std::uint32_t flags;
  std::uint64_t address;
  std::uint64_t size;
};
static_assert(sizeof(DmaUnmap) == 24 && offsetof(DmaUnmap, address) == 8 &&
              offsetof(DmaUnmap, size) == 16);

/// DEVICE_GET_INFO, request (argsz = room for the reply, the rest 0) and reply.
struct DeviceInfo {
  std::uint32_t argsz;
  std::uint32_t flags;  ///< kDeviceReset | kDevicePci
  std::uint32_t num_regions;
  std::uint32_t num_irqs;
};
static_assert(sizeof(DeviceInfo) == 16 && offsetof(DeviceInfo, num_irqs) == 12);
inline constexpr std::uint32_t kDeviceReset = 1u << 0;
inline constexpr std::uint32_t kDevicePci = 1u << 1;

/// DEVICE_GET_REGION_INFO, request (argsz and index set) and reply (capabilities may follow,
/// at cap_offset from the start of this struct; a mappable region's fd travels as SCM_RIGHTS).
struct RegionInfo {
  std::uint32_t argsz;  ///< Reply: the size of the whole reply payload, capabilities included.
  std::uint32_t flags;  ///< kRegionRead | kRegionWrite | kRegionMmap | kRegionCaps
  std::uint32_t index;
  std::uint32_t cap_offset;
  std::uint64_t size;
  std::uint64_t offset;  ///< mmap offset of the region in its fd.
};
static_assert(sizeof(RegionInfo) == 32 && offsetof(RegionInfo, index) == 8 &&
              offsetof(RegionInfo, cap_offset) == 12 && offsetof(RegionInfo, size) == 16 &&
              offsetof(RegionInfo, offset) == 24);
inline constexpr std::uint32_t kRegionRead = 1u << 0;
inline constexpr std::uint32_t kRegionWrite = 1u << 1;
inline constexpr std::uint32_t kRegionMmap = 1u << 2;
inline constexpr std::uint32_t kRegionCaps = 1u << 3;

/// A region capability's header (as <linux/vfio.h>'s vfio_info_cap_header); `next` is an
/// offset from the start of the RegionInfo, 0 at the end of the list.
struct CapHeader {
  std::uint16_t id;
  std::uint16_t version;
  std::uint32_t next;
};
static_assert(sizeof(CapHeader) == 8);
inline constexpr std::uint16_t kCapSparseMmap = 1;  ///< version 1
inline constexpr std::uint16_t kCapType = 2;

/// The sparse-mmap capability after its CapHeader: nr_areas SparseArea entries follow (offsets
/// are added to RegionInfo::offset for mmap).
struct SparseMmap {
  std::uint32_t nr_areas;
  std::uint32_t reserved;
};
struct SparseArea {
  std::uint64_t offset;
  std::uint64_t size;
};
static_assert(sizeof(SparseMmap) == 8 && sizeof(SparseArea) == 16);

/// DEVICE_GET_REGION_IO_FDS, request (argsz: how much reply the client takes, index) and
/// reply: `count` IoFd entries follow; their fds travel as SCM_RIGHTS (several entries may
/// share one).
struct RegionIoFds {
  std::uint32_t argsz;
  std::uint32_t flags;
  std::uint32_t index;
  std::uint32_t count;
};
static_assert(sizeof(RegionIoFds) == 16);
/// One sub-region whose writes the client signals on an fd instead of sending REGION_WRITE.
struct IoFd {
  std::uint64_t offset;  ///< In the region.
  std::uint64_t size;    ///< Bytes of the sub-region.
  std::uint32_t fd_index;
  std::uint32_t type;  ///< kIoFdIoeventfd
  std::uint32_t flags;
  std::uint32_t padding;
  std::uint64_t datamatch;
};
static_assert(sizeof(IoFd) == 40 && offsetof(IoFd, fd_index) == 16 &&
              offsetof(IoFd, datamatch) == 32);
inline constexpr std::uint32_t kIoFdIoeventfd = 0;

/// DEVICE_GET_IRQ_INFO, request (argsz and index) and reply.
struct IrqInfo {
  std::uint32_t argsz;
  std::uint32_t flags;  ///< kIrqEventfd | kIrqMaskable | kIrqAutomasked | kIrqNoresize
  std::uint32_t index;  ///< kPciIntxIrq, kPciMsiIrq, kPciMsixIrq, ...
  std::uint32_t count;
};
static_assert(sizeof(IrqInfo) == 16 && offsetof(IrqInfo, count) == 12);
inline constexpr std::uint32_t kIrqEventfd = 1u << 0;
inline constexpr std::uint32_t kIrqMaskable = 1u << 1;
inline constexpr std::uint32_t kIrqAutomasked = 1u << 2;
inline constexpr std::uint32_t kIrqNoresize = 1u << 3;

/// DEVICE_SET_IRQS (client -> server): one data kind and one action; eventfds travel as
/// SCM_RIGHTS (none with kIrqSetDataEventfd: de-assign), a bool array follows with
/// kIrqSetDataBool. count = start = 0 with kIrqSetDataNone disables the whole index.
struct IrqSet {
  std::uint32_t argsz;  ///< The request's own size, data included.
  std::uint32_t flags;
  std::uint32_t index;
  std::uint32_t start;
  std::uint32_t count;
};
static_assert(sizeof(IrqSet) == 20 && offsetof(IrqSet, start) == 12 &&
              offsetof(IrqSet, count) == 16);
inline constexpr std::uint32_t kIrqSetDataNone = 1u << 0;
inline constexpr std::uint32_t kIrqSetDataBool = 1u << 1;
inline constexpr std::uint32_t kIrqSetDataEventfd = 1u << 2;
inline constexpr std::uint32_t kIrqSetActionMask = 1u << 3;
inline constexpr std::uint32_t kIrqSetActionUnmask = 1u << 4;
inline constexpr std::uint32_t kIrqSetActionTrigger = 1u << 5;
inline constexpr std::uint32_t kIrqSetDataMask = 0x7;
inline constexpr std::uint32_t kIrqSetActionMaskBits = 0x38;

/// REGION_READ / REGION_WRITE: request and reply; `count` bytes of data follow a read's reply
/// and a write's request. count <= the peer's max_data_xfer_size.
struct RegionAccess {
  std::uint64_t offset;
  std::uint32_t region;
  std::uint32_t count;
};
static_assert(sizeof(RegionAccess) == 16 && offsetof(RegionAccess, region) == 8 &&
              offsetof(RegionAccess, count) == 12);

/// DMA_READ / DMA_WRITE (server -> client, for memory the client shared without an fd).
struct DmaAccess {
  std::uint64_t address;
  std::uint64_t count;
};
static_assert(sizeof(DmaAccess) == 16);

/// Region and IRQ indexes of a PCI device (as <linux/vfio.h>).
inline constexpr std::uint32_t kPciBar0Region = 0;  ///< BARs 0-5 are indexes 0-5.
inline constexpr std::uint32_t kPciRomRegion = 6;
inline constexpr std::uint32_t kPciConfigRegion = 7;
inline constexpr std::uint32_t kPciVgaRegion = 8;
inline constexpr std::uint32_t kPciNumRegions = 9;
inline constexpr std::uint32_t kPciIntxIrq = 0;
inline constexpr std::uint32_t kPciMsiIrq = 1;
inline constexpr std::uint32_t kPciMsixIrq = 2;
inline constexpr std::uint32_t kPciErrIrq = 3;
inline constexpr std::uint32_t kPciReqIrq = 4;
inline constexpr std::uint32_t kPciNumIrqs = 5;

/// "VERSION", "DMA_MAP", ... ("unknown" for others), for logs and errors.
const char* command_name(std::uint16_t command) noexcept;

}  // namespace keel::vfio_user
