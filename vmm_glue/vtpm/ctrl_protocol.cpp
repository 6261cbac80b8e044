#include "keel/vtpm/ctrl_protocol.h"

#include <array>
#include <cstdio>

namespace keel::vtpm {
namespace {

constexpr std::array<const char*, 20> kNames = {"?",
                                                "GET_CAPABILITY",
                                                "INIT",
                                                "SHUTDOWN",
                                                "GET_TPMESTABLISHED",
                                                "SET_LOCALITY",
                                                "HASH_START",
                                                "HASH_DATA",
                                                "HASH_END",
                                                "CANCEL_TPM_CMD",
                                                "STORE_VOLATILE",
                                                "RESET_TPMESTABLISHED",
                                                "GET_STATEBLOB",
                                                "SET_STATEBLOB",
                                                "STOP",
                                                "GET_CONFIG",
                                                "SET_DATAFD",
                                                "SET_BUFFERSIZE",
                                                "GET_INFO",
                                                "LOCK_STORAGE"};

// The smallest request payload each command needs (swtpm_ioctl sends one byte of locality,
// QEMU four).
std::size_t min_request(CtrlCmd cmd) {
  switch (cmd) {
    case CtrlCmd::init:
    case CtrlCmd::set_buffer_size:
    case CtrlCmd::lock_storage:
    case CtrlCmd::hash_data: return 4;
    case CtrlCmd::set_locality:
    case CtrlCmd::reset_tpm_established: return 1;
    case CtrlCmd::get_state_blob:
    case CtrlCmd::set_state_blob: return 12;
    case CtrlCmd::get_info: return 16;
    default: return 0;
  }
}

// The fixed part of each command's reply.
std::size_t reply_bytes(std::uint32_t cmd) {
  switch (static_cast<CtrlCmd>(cmd)) {
    case CtrlCmd::get_capability:
    case CtrlCmd::get_tpm_established:
    case CtrlCmd::get_config: return 8;
    case CtrlCmd::get_state_blob:
    case CtrlCmd::set_buffer_size: return 16;
    case CtrlCmd::get_info: return 12;
    default: return 4;
  }
}

}  // namespace

std::string ctrl_cmd_name(std::uint32_t code) {
  if (code >= 1 && code < kNames.size()) return kNames[code];
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", code);
  return buf;
}

std::vector<std::uint8_t> ctrl_error_reply(std::uint32_t cmd, std::uint32_t result) {
  std::vector<std::uint8_t> out;
  // GET_CAPABILITY's reply is read as one be64 of capabilities: a failure is all zeroes but
  // for the result in the upper half, which a reader of the newer u32-pair layout sees too.
  append_be32(out, result);
  out.resize(reply_bytes(cmd), 0);
  return out;
}

std::vector<std::uint8_t> tpm_error_response(std::uint32_t rc) {
  std::vector<std::uint8_t> out = {static_cast<std::uint8_t>(kStNoSessions >> 8),
                                   static_cast<std::uint8_t>(kStNoSessions & 0xff)};
  append_be32(out, static_cast<std::uint32_t>(kTpmHeaderBytes));
  append_be32(out, rc);
  return out;
}

CtrlParse parse_ctrl(std::span<const std::uint8_t> msg) {
  CtrlParse out;
  if (msg.size() < 4) {
    out.why = "control message of " + std::to_string(msg.size()) + " bytes, no command code";
    out.refusal = ctrl_error_reply(0, kResBadParameter);
    return out;
  }
  const std::uint32_t code = load_be32(msg.data());
  const auto payload = msg.subspan(4);
  if (code < 1 || code > static_cast<std::uint32_t>(CtrlCmd::lock_storage)) {
    out.why = "unknown control command " + ctrl_cmd_name(code);
    out.refusal = ctrl_error_reply(code, kResBadOrdinal);
    return out;
  }
  const auto cmd = static_cast<CtrlCmd>(code);
  auto refuse = [&](std::string why) {
    out.why = ctrl_cmd_name(code) + ": " + std::move(why);
    out.refusal = ctrl_error_reply(code, kResBadParameter);
    return out;
  };
  if (payload.size() < min_request(cmd)) {
    return refuse("request of " + std::to_string(payload.size()) + " bytes, needs " +
                  std::to_string(min_request(cmd)));
  }
  CtrlRequest req;
  req.cmd = cmd;
  const std::uint8_t* p = payload.data();
  switch (cmd) {
    case CtrlCmd::init:
    case CtrlCmd::set_buffer_size:
    case CtrlCmd::lock_storage: req.value = load_be32(p); break;
    case CtrlCmd::set_locality:
    case CtrlCmd::reset_tpm_established: req.locality = p[0]; break;
    case CtrlCmd::hash_data: {
      req.length = load_be32(p);
      if (req.length > kMaxHashData) {
        return refuse("hash data of " + std::to_string(req.length) + " bytes (at most " +
                      std::to_string(kMaxHashData) + ")");
      }
      if (payload.size() - 4 < req.length) {
        return refuse("announces " + std::to_string(req.length) + " bytes, carries " +
                      std::to_string(payload.size() - 4));
      }
      req.data = payload.subspan(4, req.length);
      break;
    }
    case CtrlCmd::get_state_blob:
      req.state_flags = load_be32(p);
      req.blob_type = load_be32(p + 4);
      req.offset = load_be32(p + 8);
      break;
    case CtrlCmd::set_state_blob: {
      req.state_flags = load_be32(p);
      req.blob_type = load_be32(p + 4);
      req.length = load_be32(p + 8);
      if (req.length > kMaxStateBlob) {
        return refuse("state blob of " + std::to_string(req.length) + " bytes (at most " +
                      std::to_string(kMaxStateBlob) + ")");
      }
      const auto carried = payload.subspan(12);
      if (carried.size() > req.length) {
        return refuse("carries " + std::to_string(carried.size()) + " blob bytes, announces " +
                      std::to_string(req.length));
      }
      req.data = carried;
      break;
    }
    case CtrlCmd::get_info: {
      std::uint64_t flags = 0;
      for (int i = 0; i < 8; ++i) flags = (flags << 8) | p[i];
      req.info_flags = flags;
      req.offset = load_be32(p + 8);
      break;
    }
    default: break;
  }
  out.request = req;
  return out;
}

}  // namespace keel::vtpm
