#include "keel/vtpm/vtpm_server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "keel/fd_passing.h"
#include "keel/log.h"

namespace keel::vtpm {
namespace {

constexpr log::Logger kLog{"vtpm"};
// How long a peer may pause in the middle of a command or a blob.
constexpr int kMidMessageTimeoutMs = 5000;
// A control message: the largest request (HASH_DATA, 4 + 4 + 4096) with room to spare.
constexpr std::size_t kCtrlBuffer = 8192;

void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void drain(int fd) {
  std::uint8_t sink[4096];
  while (::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

Result<std::unique_ptr<VtpmServer>> VtpmServer::create(VtpmServerConfig config) {
  std::unique_ptr<VtpmServer> s(new VtpmServer());
  s->config_ = std::move(config);
  auto vtpm = Vtpm::open(s->config_.state);
  if (!vtpm) return vtpm.error();
  s->vtpm_ = std::move(*vtpm);
  // A volatile state in the file is an upgrade's that no process took over: a fresh start must
  // not resume its PCRs and sessions (a guest's cold boot starts from zeroed PCRs).
  if (SealedState* st = s->vtpm_->state(); st != nullptr && st->load("volatilestate")) {
    if (Status d = st->store("volatilestate", std::nullopt); !d.ok()) return d.error();
    kLog.warn("dropped a volatile TPM state an unfinished upgrade left in %s",
              s->config_.state.path.c_str());
  }
  UnixListenerConfig lc;
  lc.backlog = 4;
  auto l = UnixListener::listen(s->config_.ctrl_path, lc);
  if (!l) return l.error();
  s->listener_ = std::move(*l);
  s->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->stop_fd_.valid()) {
    return make_error(Errc::io_error, std::string("eventfd: ") + std::strerror(errno));
  }
  kLog.info("vTPM of guest '%s' on %s, state %s%s", s->config_.state.guest.c_str(),
            s->config_.ctrl_path.c_str(), s->config_.state.path.c_str(),
            s->vtpm_->in_failure_mode() ? " (REFUSED: failure mode)" : "");
  return s;
}

Result<std::unique_ptr<VtpmServer>> VtpmServer::adopt(VtpmServerConfig config, VtpmHandover h) {
  std::unique_ptr<VtpmServer> s(new VtpmServer());
  s->config_ = std::move(config);
  auto vtpm = Vtpm::open(s->config_.state);
  if (!vtpm) return vtpm.error();
  s->vtpm_ = std::move(*vtpm);
  if (h.running) {
    if (Status st = s->vtpm_->resume(h.locality, h.buffer_size); !st.ok()) return st.error();
  }
  s->listener_ = UnixListener::adopt(std::move(h.listener), s->config_.ctrl_path);
  s->ctrl_ = std::move(h.ctrl);
  s->data_ = std::move(h.data);
  s->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->stop_fd_.valid()) {
    return make_error(Errc::io_error, std::string("eventfd: ") + std::strerror(errno));
  }
  kLog.info("vTPM of guest '%s' taken over from another process (TPM %s, client %s)",
            s->config_.state.guest.c_str(), h.running ? "resumed" : "stopped",
            s->ctrl_.valid() ? "connected" : "none");
  return s;
}

Result<VtpmHandover> VtpmServer::hand_over() {
  stop();
  if (thread_.joinable()) thread_.join();
  VtpmHandover h;
  h.running = vtpm_->running();
  h.locality = vtpm_->locality();
  h.buffer_size = vtpm_->buffer_size();
  if (Status saved = vtpm_->suspend(); !saved.ok()) {
    // The sockets still go: the next process starts the TPM from its permanent state, as after
    // a reset, which the guest survives better than channels that close for good.
    kLog.error("upgrade: %s; the next process starts the TPM from its permanent state",
               to_string(saved.error()).c_str());
  }
  vtpm_.reset();  // libtpms and the state's lock go before the next process opens them
  shutdown_ = true;
  h.listener.reset(::fcntl(listener_.fd(), F_DUPFD_CLOEXEC, 0));
  if (!h.listener.valid()) {
    return make_error(Errc::io_error,
                      std::string("duplicating the vTPM's listener: ") + std::strerror(errno));
  }
  listener_.release();
  h.ctrl = std::move(ctrl_);
  h.data = std::move(data_);
  return h;
}

VtpmServer::~VtpmServer() {
  stop();
  if (thread_.joinable()) thread_.join();
}

Status VtpmServer::start() {
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    return make_error(Errc::io_error, std::string("vTPM thread: ") + e.what());
  }
  return {};
}

void VtpmServer::stop() noexcept {
  if (stop_fd_.valid()) {
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }
}

void VtpmServer::drop_ctrl() {
  ctrl_.reset();
  kLog.debug("control connection closed");
}

bool VtpmServer::wait_io(int fd, short events, Deadline deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p[2] = {{fd, events, 0}, {stop_fd_.get(), POLLIN, 0}};
    int r = ::poll(p, 2, static_cast<int>(left.count()) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || p[1].revents) return false;  // stop() ends a stalled peer's hold at once
    if (r > 0) return true;
  }
}

bool VtpmServer::read_exact(int fd, std::uint8_t* buf, std::size_t n) {
  // One bound for the whole message: a peer that trickles bytes cannot hold the server longer.
  const Deadline deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kMidMessageTimeoutMs);
  std::size_t done = 0;
  while (done < n) {
    ssize_t k = ::recv(fd, buf + done, n - done, MSG_DONTWAIT);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN) {
      if (!wait_io(fd, POLLIN, deadline)) return false;
      continue;
    }
    if (k <= 0) return false;
    done += static_cast<std::size_t>(k);
  }
  return true;
}

bool VtpmServer::send_all(int fd, std::span<const std::uint8_t> bytes) {
  // A peer that stops reading its replies loses its channel instead of blocking the server.
  const Deadline deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kMidMessageTimeoutMs);
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t k = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN) {
      if (!wait_io(fd, POLLOUT, deadline)) return false;
      continue;
    }
    if (k <= 0) return false;
    done += static_cast<std::size_t>(k);
  }
  return true;
}

void VtpmServer::on_ctrl() {
  std::vector<std::uint8_t> buf(kCtrlBuffer);
  std::vector<UniqueFd> fds;
  auto got = recv_with_fds(ctrl_.get(), std::as_writable_bytes(std::span(buf)), fds, 2);
  if (!got || got->closed) return drop_ctrl();
  if (got->again) return;
  buf.resize(got->bytes);
  CtrlOutcome out;
  const bool datafd =
      buf.size() >= 4 && load_be32(buf.data()) == static_cast<std::uint32_t>(CtrlCmd::set_datafd);
  if (datafd && fds.size() != 1) {
    // SET_DATAFD must bring exactly one fd; the message itself is well-formed, so the vTPM's
    // counters see it as a failed command.
    kLog.warn("control channel: SET_DATAFD with %zu fds (needs 1)", fds.size());
    out.reply = ctrl_error_reply(static_cast<std::uint32_t>(CtrlCmd::set_datafd), kResBadParameter);
  } else {
    out = vtpm_->control(buf);
    // A refused SET_STATEBLOB header that announced a length (an oversized blob) is followed
    // by a body this server will not read: the stream cannot be resynchronised, so the
    // connection goes after the refusal. (A header too short to announce one is refused alone.)
    if (buf.size() >= 16 &&
        load_be32(buf.data()) == static_cast<std::uint32_t>(CtrlCmd::set_state_blob) &&
        !parse_ctrl(buf).request) {
      (void)send_all(ctrl_.get(), out.reply);
      kLog.warn("control channel: SET_STATEBLOB refused; closing the connection");
      return drop_ctrl();
    }
  }
  if (out.blob_rest) {
    CtrlParse parsed = parse_ctrl(buf);
    std::vector<std::uint8_t> blob(parsed.request->data.begin(), parsed.request->data.end());
    const std::size_t have = blob.size();
    blob.resize(have + out.blob_rest);
    if (!read_exact(ctrl_.get(), blob.data() + have, out.blob_rest)) {
      kLog.warn("control channel: SET_STATEBLOB's %u blob bytes never came; closing",
                out.blob_rest);
      return drop_ctrl();
    }
    out.reply = vtpm_->set_blob(*parsed.request, blob);
  }
  if (out.take_datafd) {
    data_ = std::move(fds[0]);
    set_nonblocking(data_.get());
    kLog.info("data channel set");
  }
  if (!send_all(ctrl_.get(), out.reply)) return drop_ctrl();
  if (out.shutdown) {
    kLog.info("SHUTDOWN: TPM stopped");
    data_.reset();
    if (config_.exit_on_shutdown) shutdown_ = true;
  }
}

void VtpmServer::on_data() {
  std::vector<std::uint8_t> cmd(kTpmHeaderBytes);
  ssize_t k = ::recv(data_.get(), cmd.data(), 1, MSG_DONTWAIT);
  if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
    data_.reset();
    kLog.info("data channel closed");
    return;
  }
  if (k < 0) return;
  if (!read_exact(data_.get(), cmd.data() + 1, kTpmHeaderBytes - 1)) {
    kLog.warn("data channel: a command header never came whole; closing the channel");
    data_.reset();
    return;
  }
  const std::uint32_t size = load_be32(cmd.data() + 2);
  if (size < kTpmHeaderBytes || size > kMaxTpmBuffer) {
    // The stream cannot be resynchronised past a size that lies: what is pending goes, and
    // the client learns why.
    drain(data_.get());
    auto resp = vtpm_->command(cmd);  // counted and answered as TPM_RC_COMMAND_SIZE
    if (!send_all(data_.get(), resp)) data_.reset();
    return;
  }
  cmd.resize(size);
  if (!read_exact(data_.get(), cmd.data() + kTpmHeaderBytes, size - kTpmHeaderBytes)) {
    kLog.warn("data channel: a %u-byte command never came whole; closing the channel", size);
    data_.reset();
    return;
  }
  auto resp = vtpm_->command(cmd);
  if (!send_all(data_.get(), resp)) {
    data_.reset();
    kLog.info("data channel closed while answering");
  }
}

void VtpmServer::run() {
  while (!shutdown_ && vtpm_) {
    pollfd fds[3];
    nfds_t n = 0;
    fds[n++] = {stop_fd_.get(), POLLIN, 0};
    // While a client is connected, others wait in the backlog.
    const int conn_fd = ctrl_.valid() ? ctrl_.get() : listener_.fd();
    fds[n++] = {conn_fd, POLLIN, 0};
    if (data_.valid()) fds[n++] = {data_.get(), POLLIN, 0};
    if (::poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      kLog.error("poll: %s", std::strerror(errno));
      return;
    }
    if (fds[0].revents) return;
    if (n > 2 && fds[2].revents) on_data();
    if (fds[1].revents) {
      if (ctrl_.valid()) {
        on_ctrl();
      } else if (UniqueFd c = listener_.accept(); c.valid()) {
        ctrl_ = std::move(c);
        kLog.debug("control connection accepted");
      }
    }
  }
}

}  // namespace keel::vtpm
