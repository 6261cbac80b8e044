// keel/wire/nbd.h - the NBD wire format (the NBD protocol, newstyle fixed handshake and
// simple replies): magics, flags, options, commands, errors and the message structs. Every
// integer is big-endian on the wire; the structs hold host-order values and are converted with
// to_wire()/from_wire() (which swap every field).
#pragma once

#include <cstddef>
#include <cstdint>

namespace keel::nbd {


inline constexpr std::uint64_t kInitPasswd = 0x4e42444d41474943ull;  ///< "NBDMAGIC"
inline constexpr std::uint64_t kOptMagic = 0x49484156454f5054ull;    ///< "IHAVEOPT"
inline constexpr std::uint64_t kOptReplyMagic = 0x0003e889045565a9ull;
inline constexpr std::uint32_t kRequestMagic = 0x25609513;
inline constexpr std::uint32_t kSimpleReplyMagic = 0x67446698;

// Handshake flags (server) and client flags.
inline constexpr std::uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr std::uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr std::uint32_t kFlagCFixedNewstyle = 1u << 0;
inline constexpr std::uint32_t kFlagCNoZeroes = 1u << 1;

// Transmission flags.
inline constexpr std::uint16_t kFlagHasFlags = 1u << 0;
inline constexpr std::uint16_t kFlagReadOnly = 1u << 1;
inline constexpr std::uint16_t kFlagSendFlush = 1u << 2;
inline constexpr std::uint16_t kFlagSendFua = 1u << 3;
inline constexpr std::uint16_t kFlagRotational = 1u << 4;
inline constexpr std::uint16_t kFlagSendTrim = 1u << 5;
inline constexpr std::uint16_t kFlagSendWriteZeroes = 1u << 6;
inline constexpr std::uint16_t kFlagSendDf = 1u << 7;
inline constexpr std::uint16_t kFlagCanMultiConn = 1u << 8;
inline constexpr std::uint16_t kFlagSendCache = 1u << 10;
inline constexpr std::uint16_t kFlagSendFastZero = 1u << 11;

// Options.
inline constexpr std::uint32_t kOptExportName = 1;
inline constexpr std::uint32_t kOptAbort = 2;
inline constexpr std::uint32_t kOptList = 3;
inline constexpr std::uint32_t kOptStartTls = 5;
inline constexpr std::uint32_t kOptInfo = 6;
inline constexpr std::uint32_t kOptGo = 7;
inline constexpr std::uint32_t kOptStructuredReply = 8;

// Option replies.
inline constexpr std::uint32_t kRepAck = 1;
inline constexpr std::uint32_t kRepServer = 2;
inline constexpr std::uint32_t kRepInfo = 3;
inline constexpr std::uint32_t kRepFlagError = 1u << 31;
inline constexpr std::uint32_t kRepErrUnsup = kRepFlagError + 1;
inline constexpr std::uint32_t kRepErrPolicy = kRepFlagError + 2;
inline constexpr std::uint32_t kRepErrInvalid = kRepFlagError + 3;
inline constexpr std::uint32_t kRepErrPlatform = kRepFlagError + 4;
inline constexpr std::uint32_t kRepErrTlsReqd = kRepFlagError + 5;
inline constexpr std::uint32_t kRepErrUnknown = kRepFlagError + 6;
inline constexpr std::uint32_t kRepErrShutdown = kRepFlagError + 7;
inline constexpr std::uint32_t kRepErrBlockSizeReqd = kRepFlagError + 8;
inline constexpr std::uint32_t kRepErrTooBig = kRepFlagError + 9;

// NBD_REP_INFO types.
inline constexpr std::uint16_t kInfoExport = 0;
inline constexpr std::uint16_t kInfoName = 1;
inline constexpr std::uint16_t kInfoDescription = 2;
inline constexpr std::uint16_t kInfoBlockSize = 3;

// Commands and command flags.
inline constexpr std::uint16_t kCmdRead = 0;
inline constexpr std::uint16_t kCmdWrite = 1;
inline constexpr std::uint16_t kCmdDisc = 2;
inline constexpr std::uint16_t kCmdFlush = 3;
inline constexpr std::uint16_t kCmdTrim = 4;
inline constexpr std::uint16_t kCmdCache = 5;
inline constexpr std::uint16_t kCmdWriteZeroes = 6;
inline constexpr std::uint16_t kCmdBlockStatus = 7;
inline constexpr std::uint16_t kCmdFlagFua = 1u << 0;
inline constexpr std::uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr std::uint16_t kCmdFlagDf = 1u << 2;
inline constexpr std::uint16_t kCmdFlagReqOne = 1u << 3;
inline constexpr std::uint16_t kCmdFlagFastZero = 1u << 4;

// Error values of simple replies (errno numbers as the spec fixes them, not the host's).
inline constexpr std::uint32_t kEperm = 1;
inline constexpr std::uint32_t kEio = 5;
inline constexpr std::uint32_t kEnomem = 12;
inline constexpr std::uint32_t kEinval = 22;
inline constexpr std::uint32_t kEnospc = 28;
inline constexpr std::uint32_t kEoverflow = 75;
inline constexpr std::uint32_t kEnotsup = 95;
inline constexpr std::uint32_t kEshutdown = 108;

/// Largest payload the spec lets a client assume (32 MiB). Upper bound of max_request_bytes:
/// a longer READ/WRITE gets EINVAL (a WRITE's payload is read and dropped).
inline constexpr std::uint32_t kMaxPayload = 32u << 20;
/// Longest string (export name, description, error message) the spec allows. A longer export
/// name in INFO/GO gets NBD_REP_ERR_INVALID; in EXPORT_NAME it matches nothing (dropped).
inline constexpr std::uint32_t kMaxString = 4096;

/// S: the first 18 bytes of the newstyle handshake.
struct [[gnu::packed]] Greeting {
  std::uint64_t passwd;  ///< kInitPasswd
  std::uint64_t magic;   ///< kOptMagic
  std::uint16_t flags;   ///< handshake flags
};
static_assert(sizeof(Greeting) == 18 && offsetof(Greeting, flags) == 16);

/// C: an option request header; `length` bytes of data follow.
struct [[gnu::packed]] OptionHeader {
  std::uint64_t magic;  ///< kOptMagic
  std::uint32_t option;
  std::uint32_t length;
};
static_assert(sizeof(OptionHeader) == 16 && offsetof(OptionHeader, length) == 12);

/// S: an option reply header; `length` bytes of data follow.
struct [[gnu::packed]] OptionReply {
  std::uint64_t magic;  ///< kOptReplyMagic
  std::uint32_t option;
  std::uint32_t type;
  std::uint32_t length;
};
static_assert(sizeof(OptionReply) == 20 && offsetof(OptionReply, length) == 16);

/// S: the end of NBD_OPT_EXPORT_NAME (124 zero bytes follow unless NO_ZEROES was agreed).
struct [[gnu::packed]] ExportNameReply {
  std::uint64_t size;
  std::uint16_t flags;  ///< transmission flags
};
static_assert(sizeof(ExportNameReply) == 10);

/// NBD_REP_INFO payload for NBD_INFO_EXPORT.
struct [[gnu::packed]] InfoExport {
  std::uint16_t type;  ///< kInfoExport
  std::uint64_t size;
  std::uint16_t flags;
};
static_assert(sizeof(InfoExport) == 12 && offsetof(InfoExport, flags) == 10);

/// NBD_REP_INFO payload for NBD_INFO_BLOCK_SIZE.
struct [[gnu::packed]] InfoBlockSize {
  std::uint16_t type;  ///< kInfoBlockSize
  std::uint32_t minimum;
  std::uint32_t preferred;
  std::uint32_t maximum;
};
static_assert(sizeof(InfoBlockSize) == 14 && offsetof(InfoBlockSize, maximum) == 10);

/// C: a transmission request; a WRITE's `length` bytes of payload follow.
struct [[gnu::packed]] Request {
  std::uint32_t magic;  ///< kRequestMagic
  std::uint16_t flags;
  std::uint16_t type;
  std::uint64_t handle;
  std::uint64_t offset;
  std::uint32_t length;
};
static_assert(sizeof(Request) == 28 && offsetof(Request, handle) == 8 &&
              offsetof(Request, offset) == 16 && offsetof(Request, length) == 24);

/// S: a simple reply; a successful READ's data follows.
struct [[gnu::packed]] SimpleReply {
  std::uint32_t magic;  ///< kSimpleReplyMagic
  std::uint32_t error;
  std::uint64_t handle;
};
static_assert(sizeof(SimpleReply) == 16 && offsetof(SimpleReply, handle) == 8);

/// Host order <-> wire order (the same swap both ways).
Greeting to_wire(Greeting m) noexcept;
OptionHeader to_wire(OptionHeader m) noexcept;
OptionReply to_wire(OptionReply m) noexcept;
ExportNameReply to_wire(ExportNameReply m) noexcept;
InfoExport to_wire(InfoExport m) noexcept;
InfoBlockSize to_wire(InfoBlockSize m) noexcept;
Request to_wire(Request m) noexcept;
SimpleReply to_wire(SimpleReply m) noexcept;
template <typename M>
M from_wire(M m) noexcept {
  return to_wire(m);
}

/// "NBD_CMD_READ", "NBD_OPT_GO", ... ("unknown" for others), for logs and tests.
const char* command_name(std::uint16_t type) noexcept;
const char* option_name(std::uint32_t option) noexcept;

}  // namespace keel::nbd
