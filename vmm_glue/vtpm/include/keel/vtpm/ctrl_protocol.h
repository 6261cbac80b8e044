// keel/vtpm/ctrl_protocol.h - the control channel of a TPM emulator, as QEMU's tpm-emulator
// backend (-tpmdev emulator,chardev=...) and swtpm speak it.
//
// The channel is a unix stream socket. QEMU writes one message per request: a big-endian u32
// command code (CMD_*, 1..0x13) and the command's request payload; the reply is the response
// payload alone, of a fixed size per command (the "resp" halves of swtpm's tpm_ioctl.h
// structures), all integers big-endian. CMD_SET_DATAFD carries one fd (SCM_RIGHTS): one end of a
// stream socketpair that carries the TPM commands themselves from then on, each a whole TPM 2.0
// command (10-byte header with its size) answered by a whole response. Result codes on this
// channel are TPM 1.2 ones (0 success, TPM_BAD_PARAMETER, TPM_FAIL, ...), as swtpm answers.
//
// Sizes QEMU 7.2 sends and reads, which the parser accepts (longer requests are accepted too,
// as swtpm does, and a one-byte locality as swtpm_ioctl sends it):
//   GET_CAPABILITY   req 0          resp 8  (be64 caps; as u32 result + u32 caps on the wire)
//   INIT             req 4 flags    resp 4
//   SHUTDOWN, STOP, HASH_START, HASH_END, CANCEL_TPM_CMD, STORE_VOLATILE, SET_DATAFD: req 0, resp 4
//   GET_TPMESTABLISHED req 0        resp 8  (result, bit, 3 pad)
//   SET_LOCALITY, RESET_TPMESTABLISHED  req 1..4 (locality in the first byte)  resp 4
//   HASH_DATA        req 4 + n (n <= 4096)  resp 4
//   GET_STATEBLOB    req 12 (flags, type, offset)  resp 16 + blob (result, flags, total, length)
//   SET_STATEBLOB    req 12 (flags, type, length) then `length` blob bytes  resp 4
//   GET_CONFIG       req 0          resp 8  (result, flags)
//   SET_BUFFERSIZE   req 4          resp 16 (result, size, min, max)
//   GET_INFO         req 16 (flags u64, offset, pad)  resp 12 + text (result, total, length)
//   LOCK_STORAGE     req 4 retries  resp 4
// A request too short for its command gets that command's response with TPM_BAD_PARAMETER; an
// unknown command gets a 4-byte TPM_BAD_ORDINAL.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace keel::vtpm {

enum class CtrlCmd : std::uint32_t {
  get_capability = 0x01,
  init = 0x02,
  shutdown = 0x03,
  get_tpm_established = 0x04,
  set_locality = 0x05,
  hash_start = 0x06,
  hash_data = 0x07,
  hash_end = 0x08,
  cancel_tpm_cmd = 0x09,
  store_volatile = 0x0a,
  reset_tpm_established = 0x0b,
  get_state_blob = 0x0c,
  set_state_blob = 0x0d,
  stop = 0x0e,
  get_config = 0x0f,
  set_datafd = 0x10,
  set_buffer_size = 0x11,
  get_info = 0x12,
  lock_storage = 0x13,
};

/// "INIT", "SET_DATAFD", ... (or "0x%x" for an unknown code).
std::string ctrl_cmd_name(std::uint32_t code);

// PTM_CAP_* bits of CMD_GET_CAPABILITY.
inline constexpr std::uint32_t kCapInit = 1u << 0;
inline constexpr std::uint32_t kCapShutdown = 1u << 1;
inline constexpr std::uint32_t kCapGetTpmEstablished = 1u << 2;
inline constexpr std::uint32_t kCapSetLocality = 1u << 3;
inline constexpr std::uint32_t kCapHashing = 1u << 4;
inline constexpr std::uint32_t kCapCancelTpmCmd = 1u << 5;
inline constexpr std::uint32_t kCapStoreVolatile = 1u << 6;
inline constexpr std::uint32_t kCapResetTpmEstablished = 1u << 7;
inline constexpr std::uint32_t kCapGetStateBlob = 1u << 8;
inline constexpr std::uint32_t kCapSetStateBlob = 1u << 9;
inline constexpr std::uint32_t kCapStop = 1u << 10;
inline constexpr std::uint32_t kCapGetConfig = 1u << 11;
inline constexpr std::uint32_t kCapSetDataFd = 1u << 12;
inline constexpr std::uint32_t kCapSetBufferSize = 1u << 13;
inline constexpr std::uint32_t kCapGetInfo = 1u << 14;
inline constexpr std::uint32_t kCapLockStorage = 1u << 16;

// CMD_INIT flags.
inline constexpr std::uint32_t kInitDeleteVolatile = 1u << 0;
// State blob types and flags (GET/SET_STATEBLOB).
inline constexpr std::uint32_t kBlobPermanent = 1;
inline constexpr std::uint32_t kBlobVolatile = 2;
inline constexpr std::uint32_t kBlobSaveState = 3;
inline constexpr std::uint32_t kStateFlagDecrypted = 1;
inline constexpr std::uint32_t kStateFlagEncrypted = 2;
// GET_CONFIG flags.
inline constexpr std::uint32_t kConfigFileKey = 1;

// Control-channel result codes (TPM 1.2 numbering, as swtpm answers).
inline constexpr std::uint32_t kResSuccess = 0x00;
inline constexpr std::uint32_t kResBadParameter = 0x03;
inline constexpr std::uint32_t kResFail = 0x09;
inline constexpr std::uint32_t kResBadOrdinal = 0x0a;
inline constexpr std::uint32_t kResBadLocality = 0x3d;

// TPM 2.0 response codes the vTPM itself answers with on the data channel.
inline constexpr std::uint32_t kRcFailure = 0x101;
inline constexpr std::uint32_t kRcCommandSize = 0x142;
inline constexpr std::uint16_t kStNoSessions = 0x8001;
inline constexpr std::size_t kTpmHeaderBytes = 10;
/// The largest TPM command or response the data channel carries (libtpms' TPM_BUFFER_MAX).
inline constexpr std::uint32_t kMaxTpmBuffer = 4096;
/// HASH_DATA's largest chunk, as in swtpm's ptm_hdata.
inline constexpr std::uint32_t kMaxHashData = 4096;
/// The largest state blob SET_STATEBLOB takes (libtpms' states are tens of KiB).
inline constexpr std::uint32_t kMaxStateBlob = 1u << 20;

/// One parsed control request. Fields that a command does not use stay zero.
struct CtrlRequest {
  CtrlCmd cmd{};
  std::uint32_t value = 0;  ///< INIT flags, SET_BUFFERSIZE size, LOCK_STORAGE retries
  std::uint8_t locality = 0;
  std::uint32_t state_flags = 0;  ///< GET/SET_STATEBLOB
  std::uint32_t blob_type = 0;
  std::uint32_t offset = 0;  ///< GET_STATEBLOB, GET_INFO
  std::uint32_t length = 0;  ///< SET_STATEBLOB's blob length; HASH_DATA's data length
  std::uint64_t info_flags = 0;
  /// HASH_DATA's bytes; SET_STATEBLOB's blob bytes that came in this message (the rest follow
  /// on the socket).
  std::span<const std::uint8_t> data;
};

/// What parse_ctrl made of one message: a request, or the reply that refuses it.
struct CtrlParse {
  std::optional<CtrlRequest> request;
  std::vector<std::uint8_t> refusal;  ///< Set when `request` is empty.
  std::string why;                    ///< For the log and counters, when refused.
};

/// Parses one control message (command code + payload). Never reads past `msg`.
CtrlParse parse_ctrl(std::span<const std::uint8_t> msg);

/// The reply `cmd` has when it fails with `result`: the command's response layout, zeroed, with
/// the result in its first four bytes (eight for GET_CAPABILITY, whose reply is one be64).
std::vector<std::uint8_t> ctrl_error_reply(std::uint32_t cmd, std::uint32_t result);

/// A bare TPM 2.0 error response (TPM_ST_NO_SESSIONS, size 10, `rc`).
std::vector<std::uint8_t> tpm_error_response(std::uint32_t rc);

// Big-endian helpers shared by the vTPM's parsers and replies.
inline std::uint32_t load_be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}
inline void append_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

}  // namespace keel::vtpm
