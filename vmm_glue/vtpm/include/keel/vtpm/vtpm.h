// keel/vtpm/vtpm.h - one guest's TPM 2.0: libtpms behind the control channel's commands and
// the data channel's TPM commands, with its state in a SealedState.
//
// libtpms keeps one TPM per process, so a process holds at most one Vtpm (the paravisor process
// serves one guest). Socket-free: VtpmServer feeds it messages; tests and the fuzzer call it
// directly.
//
// Failure mode: a state file that cannot be trusted (tampered with, another key, another
// guest's, truncated) is never loaded and never overwritten. The Vtpm then still answers the
// control channel (QEMU would otherwise refuse to start the guest) but every TPM command gets
// TPM_RC_FAILURE, as a TPM whose self-test failed: the guest sees a broken TPM, never a fresh
// one that would let it seal new secrets, and never someone else's.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "keel/result.h"
#include "keel/vtpm/ctrl_protocol.h"
#include "keel/vtpm/sealed_state.h"

namespace keel::vtpm {

struct VtpmCounters {
  std::atomic<std::uint64_t> ctrl_messages{0};
  std::atomic<std::uint64_t> tpm_commands{0};
  std::atomic<std::uint64_t> ctrl_refused{0};      ///< malformed or unknown control messages
  std::atomic<std::uint64_t> ctrl_failed{0};       ///< well-formed, answered with an error
  std::atomic<std::uint64_t> bad_command_size{0};  ///< TPM commands of a wrong size
  std::atomic<std::uint64_t> not_running{0};       ///< TPM commands before INIT or after STOP
  std::atomic<std::uint64_t> failure_mode{0};      ///< TPM commands refused in failure mode
  std::atomic<std::uint64_t> state_write_errors{0};
};

/// What the transport must do after a control message.
struct CtrlOutcome {
  std::vector<std::uint8_t> reply;
  bool take_datafd = false;  ///< SET_DATAFD succeeded: the fd that came with it is the data channel
  bool shutdown = false;     ///< SHUTDOWN: the TPM is stopped; a standalone process exits
  std::uint32_t blob_rest = 0;  ///< SET_STATEBLOB: read this many more bytes, then set_blob()
};

class Vtpm {
 public:
  /// Opens the state (SealedState::open) and prepares libtpms. An untrusted state file puts
  /// the Vtpm in failure mode (logged as an error naming the file and the reason) instead of
  /// failing. Errors: invalid_argument / busy / io_error for a bad configuration (no key, a key
  /// others can read, the state held by another vTPM); busy when this process already has a
  /// Vtpm.
  static Result<std::unique_ptr<Vtpm>> open(const SealedStateConfig& config);
  ~Vtpm();
  Vtpm(const Vtpm&) = delete;
  Vtpm& operator=(const Vtpm&) = delete;

  /// One control message (code + payload) in, what to answer and do out.
  CtrlOutcome control(std::span<const std::uint8_t> msg);
  /// SET_STATEBLOB's whole blob once the transport has read it (`req` from the header).
  std::vector<std::uint8_t> set_blob(const CtrlRequest& req, std::span<const std::uint8_t> blob);
  /// One TPM command in, its response out (valid until the next call). A command whose size
  /// field disagrees with its length, or longer than the buffer, gets TPM_RC_COMMAND_SIZE.
  std::span<const std::uint8_t> command(std::span<const std::uint8_t> cmd);

  /// Servicing: seals the running TPM's volatile state into the state file and stops it.
  Status suspend();
  /// Servicing, in the next process: starts the TPM from the state suspend() left (then drops
  /// the volatile part), with the client's buffer size and locality.
  Status resume(std::uint8_t locality, std::uint32_t buffer_size);

  bool running() const noexcept { return running_; }
  bool in_failure_mode() const noexcept { return !state_; }
  const std::string& failure_reason() const noexcept { return failure_reason_; }
  std::uint32_t buffer_size() const noexcept { return buffer_size_; }
  const VtpmCounters& counters() const noexcept { return counters_; }
  /// The sealed state (nullptr in failure mode).
  SealedState* state() noexcept { return state_.get(); }

  // libtpms' callbacks (one Vtpm per process); public for the C trampolines only.
  std::uint32_t nv_load(unsigned char** data, std::uint32_t* length, const char* name);
  std::uint32_t nv_store(const unsigned char* data, std::uint32_t length, const char* name);
  std::uint32_t nv_delete(const char* name, bool must_exist);
  std::uint8_t locality() const noexcept { return locality_; }

 private:
  Vtpm() = default;
  std::uint32_t init(std::uint32_t flags);
  void stop();
  std::vector<std::uint8_t> get_blob(const CtrlRequest& req);
  std::vector<std::uint8_t> get_info(const CtrlRequest& req);

  std::unique_ptr<SealedState> state_;
  std::string failure_reason_;
  bool running_ = false;
  std::uint8_t locality_ = 0;
  std::uint32_t buffer_size_ = kMaxTpmBuffer;
  bool hashing_ = false;
  unsigned char* resp_ = nullptr;  ///< libtpms' response buffer, reused
  std::uint32_t resp_cap_ = 0;
  std::vector<std::uint8_t> own_resp_;
  VtpmCounters counters_;
};

}  // namespace keel::vtpm
