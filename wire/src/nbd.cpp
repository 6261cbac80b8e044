// The NBD wire format: byte order and names.
#include <bit>

#include "keel/wire/nbd.h"

namespace keel::nbd {

namespace {

template <typename T>
T be(T v) noexcept {
  if constexpr (std::endian::native == std::endian::big || sizeof(T) == 1) {
    return v;
  } else if constexpr (sizeof(T) == 2) {
    return static_cast<T>(__builtin_bswap16(v));
  } else if constexpr (sizeof(T) == 4) {
    return static_cast<T>(__builtin_bswap32(v));
  } else {
    static_assert(sizeof(T) == 8);
    return static_cast<T>(__builtin_bswap64(v));
  }
}

}  // namespace

Greeting to_wire(Greeting m) noexcept { return {be(m.passwd), be(m.magic), be(m.flags)}; }
OptionHeader to_wire(OptionHeader m) noexcept { return {be(m.magic), be(m.option), be(m.length)}; }
OptionReply to_wire(OptionReply m) noexcept {
  return {be(m.magic), be(m.option), be(m.type), be(m.length)};
}
ExportNameReply to_wire(ExportNameReply m) noexcept { return {be(m.size), be(m.flags)}; }
InfoExport to_wire(InfoExport m) noexcept { return {be(m.type), be(m.size), be(m.flags)}; }
InfoBlockSize to_wire(InfoBlockSize m) noexcept {
  return {be(m.type), be(m.minimum), be(m.preferred), be(m.maximum)};
}
Request to_wire(Request m) noexcept {
  return {be(m.magic), be(m.flags), be(m.type), be(m.handle), be(m.offset), be(m.length)};
}
SimpleReply to_wire(SimpleReply m) noexcept { return {be(m.magic), be(m.error), be(m.handle)}; }

const char* command_name(std::uint16_t type) noexcept {
  switch (type) {
    case kCmdRead: return "NBD_CMD_READ";
    case kCmdWrite: return "NBD_CMD_WRITE";
    case kCmdDisc: return "NBD_CMD_DISC";
    case kCmdFlush: return "NBD_CMD_FLUSH";
    case kCmdTrim: return "NBD_CMD_TRIM";
    case kCmdCache: return "NBD_CMD_CACHE";
    case kCmdWriteZeroes: return "NBD_CMD_WRITE_ZEROES";
    case kCmdBlockStatus: return "NBD_CMD_BLOCK_STATUS";
    default: return "unknown";
  }
}

const char* option_name(std::uint32_t option) noexcept {
  switch (option) {
    case kOptExportName: return "NBD_OPT_EXPORT_NAME";
    case kOptAbort: return "NBD_OPT_ABORT";
    case kOptList: return "NBD_OPT_LIST";
    case kOptStartTls: return "NBD_OPT_STARTTLS";
    case kOptInfo: return "NBD_OPT_INFO";
    case kOptGo: return "NBD_OPT_GO";
    case kOptStructuredReply: return "NBD_OPT_STRUCTURED_REPLY";
    default: return "unknown";
  }
}

}  // namespace keel::nbd
