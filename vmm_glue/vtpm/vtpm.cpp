#include "keel/vtpm/vtpm.h"

#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>
#include <libtpms/tpm_memory.h>
#include <libtpms/tpm_nvfilename.h>
#include <libtpms/tpm_tis.h>

#include <openssl/crypto.h>

#include <cstdlib>
#include <cstring>

#include "keel/log.h"

namespace keel::vtpm {
namespace {

constexpr log::Logger kLog{"vtpm"};

// libtpms has one TPM per process and C callbacks without a context pointer.
std::atomic<Vtpm*> g_vtpm{nullptr};

TPM_RESULT cb_nvram_init() { return TPM_SUCCESS; }
TPM_RESULT cb_load(unsigned char** data, uint32_t* length, uint32_t, const char* name) {
  Vtpm* v = g_vtpm.load();
  return v ? v->nv_load(data, length, name) : TPM_FAIL;
}
TPM_RESULT cb_store(const unsigned char* data, uint32_t length, uint32_t, const char* name) {
  Vtpm* v = g_vtpm.load();
  return v ? v->nv_store(data, length, name) : TPM_FAIL;
}
TPM_RESULT cb_delete(uint32_t, const char* name, TPM_BOOL must_exist) {
  Vtpm* v = g_vtpm.load();
  return v ? v->nv_delete(name, must_exist != 0) : TPM_FAIL;
}
TPM_RESULT cb_io_init() { return TPM_SUCCESS; }
TPM_RESULT cb_locality(TPM_MODIFIER_INDICATOR* locality, uint32_t) {
  Vtpm* v = g_vtpm.load();
  *locality = v ? v->locality() : 0;
  return TPM_SUCCESS;
}
TPM_RESULT cb_presence(TPM_BOOL* present, uint32_t) {
  // Physical presence is a TPM 1.2 notion; no guest asserts it through a vTPM.
  *present = FALSE;
  return TPM_SUCCESS;
}

std::vector<std::uint8_t> result_only(std::uint32_t rc) {
  std::vector<std::uint8_t> out;
  append_be32(out, rc);
  return out;
}

bool blob_kind(std::uint32_t type, TPMLIB_StateType* out) {
  switch (type) {
    case kBlobPermanent: *out = TPMLIB_STATE_PERMANENT; return true;
    case kBlobVolatile: *out = TPMLIB_STATE_VOLATILE; return true;
    case kBlobSaveState: *out = TPMLIB_STATE_SAVE_STATE; return true;
    default: return false;
  }
}

constexpr std::uint32_t kCaps = kCapInit | kCapShutdown | kCapGetTpmEstablished | kCapSetLocality |
                                kCapHashing | kCapCancelTpmCmd | kCapStoreVolatile |
                                kCapResetTpmEstablished | kCapGetStateBlob | kCapSetStateBlob |
                                kCapStop | kCapGetConfig | kCapSetDataFd | kCapSetBufferSize |
                                kCapGetInfo | kCapLockStorage;

}  // namespace

Result<std::unique_ptr<Vtpm>> Vtpm::open(const SealedStateConfig& config) {
  std::unique_ptr<Vtpm> v(new Vtpm());
  Vtpm* expected = nullptr;
  if (!g_vtpm.compare_exchange_strong(expected, v.get())) {
    return make_error(Errc::busy,
                      "this process already serves a vTPM (libtpms has one TPM per "
                      "process)");
  }
  // From here, a failure's return destroys `v`, whose destructor unhooks it again.
  StateProblem problem = StateProblem::none;
  auto state = SealedState::open(config, &problem);
  if (!state) {
    if (problem != StateProblem::untrusted) {
      return state.error();
    }
    v->failure_reason_ = state.error().message;
    kLog.error(
        "%s; refusing it: the guest's TPM is in failure mode (every command answers "
        "TPM_RC_FAILURE) and the file is left as it is",
        v->failure_reason_.c_str());
    return v;
  }
  v->state_ = std::move(*state);
  if (TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2) != TPM_SUCCESS) {
    return make_error(Errc::unavailable, "libtpms has no TPM 2.0");
  }
  libtpms_callbacks cbs{};
  cbs.sizeOfStruct = sizeof cbs;
  cbs.tpm_nvram_init = cb_nvram_init;
  cbs.tpm_nvram_loaddata = cb_load;
  cbs.tpm_nvram_storedata = cb_store;
  cbs.tpm_nvram_deletename = cb_delete;
  cbs.tpm_io_init = cb_io_init;
  cbs.tpm_io_getlocality = cb_locality;
  cbs.tpm_io_getphysicalpresence = cb_presence;
  if (TPMLIB_RegisterCallbacks(&cbs) != TPM_SUCCESS) {
    return make_error(Errc::unavailable, "libtpms refused keel's storage callbacks");
  }
  return v;
}

Vtpm::~Vtpm() {
  // A Vtpm that lost the race in open() never owned libtpms: it must not stop it or unhook the
  // one that did.
  Vtpm* self = this;
  if (!g_vtpm.compare_exchange_strong(self, nullptr)) return;
  stop();
  if (resp_) TPM_Free(resp_);
}

std::uint32_t Vtpm::nv_load(unsigned char** data, std::uint32_t* length, const char* name) {
  auto blob = state_ ? state_->load(name) : std::nullopt;
  // TPM_RETRY tells libtpms the blob does not exist yet (a TPM to manufacture).
  if (!blob) return TPM_RETRY;
  TPM_RESULT rc = TPM_Malloc(data, static_cast<std::uint32_t>(blob->size()));
  if (rc == TPM_SUCCESS) {
    std::memcpy(*data, blob->data(), blob->size());
    *length = static_cast<std::uint32_t>(blob->size());
  }
  OPENSSL_cleanse(blob->data(), blob->size());  // the TPM's seeds: no stray copies
  return rc == TPM_SUCCESS ? TPM_SUCCESS : TPM_FAIL;
}

std::uint32_t Vtpm::nv_store(const unsigned char* data, std::uint32_t length, const char* name) {
  if (!state_) return TPM_FAIL;
  Status st = state_->store(name, std::span<const std::uint8_t>(data, length));
  if (!st.ok()) {
    counters_.state_write_errors.fetch_add(1, std::memory_order_relaxed);
    kLog.error("storing the TPM's %s state: %s", name, to_string(st.error()).c_str());
    return TPM_FAIL;
  }
  return TPM_SUCCESS;
}

std::uint32_t Vtpm::nv_delete(const char* name, bool must_exist) {
  if (!state_) return TPM_FAIL;
  if (!state_->load(name)) return must_exist ? TPM_FAIL : TPM_SUCCESS;
  Status st = state_->store(name, std::nullopt);
  if (!st.ok()) {
    counters_.state_write_errors.fetch_add(1, std::memory_order_relaxed);
    kLog.error("deleting the TPM's %s state: %s", name, to_string(st.error()).c_str());
    return TPM_FAIL;
  }
  return TPM_SUCCESS;
}

std::uint32_t Vtpm::init(std::uint32_t flags) {
  stop();
  if (!state_) {
    // The control channel comes up so that the guest starts and finds a failed TPM.
    running_ = true;
    return kResSuccess;
  }
  TPM_RESULT rc = TPMLIB_MainInit();
  if (rc != TPM_SUCCESS) {
    kLog.error("libtpms could not start the TPM (0x%x)", rc);
    return rc;
  }
  running_ = true;
  if (flags & kInitDeleteVolatile) nv_delete(TPM_VOLATILESTATE_NAME, false);
  return kResSuccess;
}

void Vtpm::stop() {
  if (running_ && state_) TPMLIB_Terminate();
  running_ = false;
  hashing_ = false;
}

Status Vtpm::suspend() {
  if (!running_ || !state_) {
    stop();
    return {};
  }
  unsigned char* buf = nullptr;
  std::uint32_t len = 0;
  TPM_RESULT rc = TPMLIB_VolatileAll_Store(&buf, &len);
  if (rc == TPM_SUCCESS) rc = nv_store(buf, len, TPM_VOLATILESTATE_NAME);
  if (buf) TPM_Free(buf);
  stop();
  if (rc != TPM_SUCCESS) {
    return make_error(Errc::io_error, "the TPM's volatile state could not be stored (0x" +
                                          std::to_string(rc) + ")");
  }
  return {};
}

Status Vtpm::resume(std::uint8_t locality, std::uint32_t buffer_size) {
  locality_ = locality > 4 ? 0 : locality;
  if (state_) {
    std::uint32_t min = 0, max = 0;
    buffer_size_ = TPMLIB_SetBufferSize(buffer_size, &min, &max);
  }
  std::uint32_t rc = init(kInitDeleteVolatile);
  if (rc != kResSuccess) {
    return make_error(Errc::io_error,
                      "libtpms could not resume the TPM (0x" + std::to_string(rc) + ")");
  }
  return {};
}

CtrlOutcome Vtpm::control(std::span<const std::uint8_t> msg) {
  counters_.ctrl_messages.fetch_add(1, std::memory_order_relaxed);
  CtrlOutcome out;
  CtrlParse parsed = parse_ctrl(msg);
  if (!parsed.request) {
    counters_.ctrl_refused.fetch_add(1, std::memory_order_relaxed);
    kLog.warn("control channel: %s", parsed.why.c_str());
    out.reply = std::move(parsed.refusal);
    return out;
  }
  const CtrlRequest& req = *parsed.request;
  const auto code = static_cast<std::uint32_t>(req.cmd);
  auto fail = [&](std::uint32_t rc) {
    counters_.ctrl_failed.fetch_add(1, std::memory_order_relaxed);
    return ctrl_error_reply(code, rc);
  };
  // Commands that need a running TPM with a trusted state.
  const bool live = running_ && state_;
  switch (req.cmd) {
    case CtrlCmd::get_capability:
      out.reply = result_only(kResSuccess);
      append_be32(out.reply, kCaps);
      break;
    case CtrlCmd::init: {
      std::uint32_t rc = init(req.value);
      out.reply = rc == kResSuccess ? result_only(rc) : fail(rc);
      break;
    }
    case CtrlCmd::shutdown:
      stop();
      out.reply = result_only(kResSuccess);
      out.shutdown = true;
      break;
    case CtrlCmd::stop:
      stop();
      out.reply = result_only(kResSuccess);
      break;
    case CtrlCmd::get_tpm_established: {
      TPM_BOOL bit = 0;
      if (!live) {
        out.reply = fail(kResFail);
        break;
      }
      TPM_RESULT rc = TPM_IO_TpmEstablished_Get(&bit);
      out.reply = rc == TPM_SUCCESS ? result_only(rc) : fail(rc);
      out.reply.resize(8, 0);
      out.reply[4] = bit ? 1 : 0;
      break;
    }
    case CtrlCmd::set_locality:
      if (req.locality > 4) {
        out.reply = fail(kResBadLocality);
        break;
      }
      locality_ = req.locality;
      out.reply = result_only(kResSuccess);
      break;
    case CtrlCmd::reset_tpm_established: {
      if (req.locality > 4) {
        out.reply = fail(kResBadLocality);
        break;
      }
      if (!live) {
        out.reply = fail(kResFail);
        break;
      }
      // libtpms checks the locality of the reset (3 or 4) through the callback.
      const std::uint8_t saved = locality_;
      locality_ = req.locality;
      TPM_RESULT rc = TPM_IO_TpmEstablished_Reset();
      locality_ = saved;
      out.reply = rc == TPM_SUCCESS ? result_only(rc) : fail(rc);
      break;
    }
    case CtrlCmd::hash_start:
    case CtrlCmd::hash_data:
    case CtrlCmd::hash_end: {
      if (!live || (req.cmd != CtrlCmd::hash_start && !hashing_)) {
        out.reply = fail(kResFail);
        break;
      }
      TPM_RESULT rc = TPM_SUCCESS;
      if (req.cmd == CtrlCmd::hash_start) {
        rc = TPM_IO_Hash_Start();
        hashing_ = rc == TPM_SUCCESS;
      } else if (req.cmd == CtrlCmd::hash_data) {
        rc = TPM_IO_Hash_Data(req.data.data(), static_cast<std::uint32_t>(req.data.size()));
      } else {
        rc = TPM_IO_Hash_End();
        hashing_ = false;
      }
      out.reply = rc == TPM_SUCCESS ? result_only(rc) : fail(rc);
      break;
    }
    case CtrlCmd::cancel_tpm_cmd:
      // Commands run to completion on the server's thread before the next message is read,
      // so there is never one to cancel.
      out.reply = result_only(live ? TPMLIB_CancelCommand() : kResSuccess);
      break;
    case CtrlCmd::store_volatile: {
      if (!live) {
        out.reply = fail(kResFail);
        break;
      }
      unsigned char* buf = nullptr;
      std::uint32_t len = 0;
      TPM_RESULT rc = TPMLIB_VolatileAll_Store(&buf, &len);
      if (rc == TPM_SUCCESS) rc = nv_store(buf, len, TPM_VOLATILESTATE_NAME);
      if (buf) TPM_Free(buf);
      out.reply = rc == TPM_SUCCESS ? result_only(rc) : fail(rc);
      break;
    }
    case CtrlCmd::get_state_blob: out.reply = get_blob(req); break;
    case CtrlCmd::set_state_blob:
      if (req.data.size() < req.length) {
        out.blob_rest = req.length - static_cast<std::uint32_t>(req.data.size());
        break;
      }
      out.reply = set_blob(req, req.data);
      break;
    case CtrlCmd::get_config:
      out.reply = result_only(kResSuccess);
      append_be32(out.reply, kConfigFileKey);
      break;
    case CtrlCmd::set_datafd:
      out.reply = result_only(kResSuccess);
      out.take_datafd = true;
      break;
    case CtrlCmd::set_buffer_size: {
      if (running_ && req.value != 0) {
        out.reply = fail(kResBadParameter);  // the TPM must be stopped first (CMD_STOP)
        break;
      }
      std::uint32_t min = kMaxTpmBuffer, max = kMaxTpmBuffer, actual = buffer_size_;
      if (state_) actual = TPMLIB_SetBufferSize(req.value, &min, &max);
      if (req.value != 0) buffer_size_ = actual;
      out.reply = result_only(kResSuccess);
      append_be32(out.reply, actual);
      append_be32(out.reply, min);
      append_be32(out.reply, max);
      break;
    }
    case CtrlCmd::get_info: out.reply = get_info(req); break;
    case CtrlCmd::lock_storage:
      // The state's lock is held from open to close; there is nothing more to take.
      out.reply = result_only(state_ ? kResSuccess : kResFail);
      break;
  }
  return out;
}

std::vector<std::uint8_t> Vtpm::get_blob(const CtrlRequest& req) {
  const auto code = static_cast<std::uint32_t>(CtrlCmd::get_state_blob);
  TPMLIB_StateType kind{};
  if (!state_ || !blob_kind(req.blob_type, &kind)) {
    counters_.ctrl_failed.fetch_add(1, std::memory_order_relaxed);
    return ctrl_error_reply(code, state_ ? kResBadParameter : kResFail);
  }
  unsigned char* buf = nullptr;
  std::uint32_t len = 0;
  TPM_RESULT rc = TPMLIB_GetState(kind, &buf, &len);
  if (rc != TPM_SUCCESS || req.offset > len) {
    if (buf) TPM_Free(buf);
    counters_.ctrl_failed.fetch_add(1, std::memory_order_relaxed);
    return ctrl_error_reply(code, rc != TPM_SUCCESS ? rc : kResBadParameter);
  }
  std::vector<std::uint8_t> out = result_only(kResSuccess);
  append_be32(out, 0);  // the blob is sent decrypted (the channel is the paravisor's own)
  append_be32(out, len - req.offset);
  append_be32(out, len - req.offset);
  out.insert(out.end(), buf + req.offset, buf + len);
  TPM_Free(buf);
  return out;
}

std::vector<std::uint8_t> Vtpm::set_blob(const CtrlRequest& req,
                                         std::span<const std::uint8_t> blob) {
  const auto code = static_cast<std::uint32_t>(CtrlCmd::set_state_blob);
  TPMLIB_StateType kind{};
  std::uint32_t rc = kResSuccess;
  if (!state_) {
    rc = kResFail;
  } else if (running_ || !blob_kind(req.blob_type, &kind) ||
             (req.state_flags & kStateFlagEncrypted)) {
    rc = kResBadParameter;  // stopped TPMs only; blobs in the clear only
  } else {
    rc = TPMLIB_SetState(kind, blob.data(), static_cast<std::uint32_t>(blob.size()));
  }
  if (rc != kResSuccess) {
    counters_.ctrl_failed.fetch_add(1, std::memory_order_relaxed);
    return ctrl_error_reply(code, rc);
  }
  return result_only(kResSuccess);
}

std::vector<std::uint8_t> Vtpm::get_info(const CtrlRequest& req) {
  const auto code = static_cast<std::uint32_t>(CtrlCmd::get_info);
  char* text =
      state_ ? TPMLIB_GetInfo(static_cast<TPMLIB_InfoFlags>(req.info_flags & 0x7)) : nullptr;
  if (!text) {
    counters_.ctrl_failed.fetch_add(1, std::memory_order_relaxed);
    return ctrl_error_reply(code, kResFail);
  }
  std::size_t len = std::strlen(text);
  std::vector<std::uint8_t> out;
  if (req.offset > len) {
    counters_.ctrl_failed.fetch_add(1, std::memory_order_relaxed);
    out = ctrl_error_reply(code, kResBadParameter);
  } else {
    out = result_only(kResSuccess);
    append_be32(out, static_cast<std::uint32_t>(len));
    append_be32(out, static_cast<std::uint32_t>(len - req.offset));
    out.insert(out.end(), text + req.offset, text + len);
  }
  std::free(text);
  return out;
}

std::span<const std::uint8_t> Vtpm::command(std::span<const std::uint8_t> cmd) {
  counters_.tpm_commands.fetch_add(1, std::memory_order_relaxed);
  auto refuse = [&](std::atomic<std::uint64_t>& counter, std::uint32_t rc) {
    counter.fetch_add(1, std::memory_order_relaxed);
    own_resp_ = tpm_error_response(rc);
    return std::span<const std::uint8_t>(own_resp_);
  };
  if (cmd.size() < kTpmHeaderBytes || load_be32(cmd.data() + 2) != cmd.size() ||
      cmd.size() > buffer_size_) {
    return refuse(counters_.bad_command_size, kRcCommandSize);
  }
  if (!state_) return refuse(counters_.failure_mode, kRcFailure);
  if (!running_) return refuse(counters_.not_running, kRcFailure);
  // libtpms takes a mutable command buffer.
  std::vector<unsigned char> in(cmd.begin(), cmd.end());
  std::uint32_t resp_len = 0;
  TPM_RESULT rc = TPMLIB_Process(&resp_, &resp_len, &resp_cap_, in.data(),
                                 static_cast<std::uint32_t>(in.size()));
  if (rc != TPM_SUCCESS || resp_len < kTpmHeaderBytes) {
    kLog.error("libtpms failed to process a command (0x%x)", rc);
    own_resp_ = tpm_error_response(kRcFailure);
    return own_resp_;
  }
  return {resp_, resp_len};
}

}  // namespace keel::vtpm
