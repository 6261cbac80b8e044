// keel/vtpm/vtpm_server.h - a guest's vTPM served on a unix socket in the swtpm control-channel
// protocol (keel/vtpm/ctrl_protocol.h), so that QEMU's tpm-emulator backend connects to it:
//
//   -chardev socket,id=chrtpm,path=CTRL -tpmdev emulator,id=tpm0,chardev=chrtpm
//   -device tpm-crb,tpmdev=tpm0
//
// One control connection at a time (a second client waits in the listen backlog until the first
// one leaves, as with swtpm). The data channel is the fd the client hands over with SET_DATAFD;
// a command is read whole (its header's size), run, and answered before the next message on
// either channel is read. A command that announces a size below 10 or above the buffer gets
// TPM_RC_COMMAND_SIZE and what is pending on the channel is dropped. A peer that takes more than
// 5 s to send a whole command or state blob, or to take a whole reply, loses its channel; so
// does one whose SET_STATEBLOB header is refused (its body cannot be told from the next
// message). stop() ends such a wait at once. Nothing a client sends stops the server but
// SHUTDOWN, and only when `exit_on_shutdown` (the standalone keel-vtpm).
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <thread>

#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/unix_listener.h"
#include "keel/vtpm/vtpm.h"

namespace keel::vtpm {

struct VtpmServerConfig {
  std::string ctrl_path;  ///< The control socket's path.
  SealedStateConfig state;
  /// SHUTDOWN ends run() (swtpm's behaviour, for a process that serves nothing else); otherwise
  /// the TPM stops and the server waits for the next client (a guest that is started again).
  bool exit_on_shutdown = false;
};

/// What a server gives another process at a servicing upgrade: its sockets (the listener, the
/// client's control connection and data channel, each possibly invalid) and the TPM's runtime
/// settings. The TPM's volatile state (PCRs, loaded objects, sessions) travels in the sealed
/// state file, never in the clear.
struct VtpmHandover {
  UniqueFd listener, ctrl, data;
  std::uint8_t locality = 0;
  std::uint32_t buffer_size = kMaxTpmBuffer;
  bool running = false;
};

class VtpmServer {
 public:
  /// Opens the vTPM (Vtpm::open) and listens. Errors: those of Vtpm::open and
  /// UnixListener::listen.
  static Result<std::unique_ptr<VtpmServer>> create(VtpmServerConfig config);
  ~VtpmServer();
  VtpmServer(const VtpmServer&) = delete;
  VtpmServer& operator=(const VtpmServer&) = delete;

  /// Takes over a server another process handed over (hand_over()): opens the state, resumes
  /// a running TPM from the volatile state saved there (then deletes it), and serves the same
  /// client on the same channels. Errors: those of Vtpm::open; io_error when libtpms cannot
  /// resume.
  static Result<std::unique_ptr<VtpmServer>> adopt(VtpmServerConfig config, VtpmHandover h);
  /// Stops serving (joining the thread of start()) and gives everything up for another process:
  /// the running TPM's volatile state is sealed into the state file, libtpms stops, the state's
  /// lock is released, the socket file stays. The server serves nothing afterwards.
  /// Errors: io_error when the volatile state cannot be stored (the TPM is stopped anyway; the
  /// next process starts it from its permanent state, as after a reset).
  Result<VtpmHandover> hand_over();
  /// Serves on the calling thread until stop(), or SHUTDOWN with exit_on_shutdown.
  void run();
  /// Serves on a thread of its own (joined by stop() or the destructor).
  Status start();
  /// Ends run() from any thread (or a signal handler).
  void stop() noexcept;

  Vtpm& vtpm() noexcept { return *vtpm_; }
  const std::string& ctrl_path() const noexcept { return config_.ctrl_path; }

 private:
  VtpmServer() = default;
  void on_ctrl();
  void on_data();
  void drop_ctrl();
  using Deadline = std::chrono::steady_clock::time_point;
  /// Waits for `events` on fd until `deadline`; false on timeout or stop().
  bool wait_io(int fd, short events, Deadline deadline);
  /// A whole message in / out within 5 s (false: the peer stalled or went, or stop()).
  bool read_exact(int fd, std::uint8_t* buf, std::size_t n);
  bool send_all(int fd, std::span<const std::uint8_t> bytes);

  VtpmServerConfig config_;
  std::unique_ptr<Vtpm> vtpm_;
  UnixListener listener_;
  UniqueFd ctrl_;
  UniqueFd data_;
  UniqueFd stop_fd_;  ///< eventfd
  bool shutdown_ = false;
  std::thread thread_;
};

}  // namespace keel::vtpm
