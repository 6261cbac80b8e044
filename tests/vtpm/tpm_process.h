// Test helpers that run a TPM server as a child process: a temporary directory, a spawned
// process with its stdout and stderr in files, keel-vtpm (fresh key file, state in the
// directory) and swtpm, each waited for by polling on a condition (the control socket
// appearing and accepting, the process exiting) rather than by fixed sleeps.
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tpm2_client.h"

namespace keel::vtpm::proc {

using Clock = std::chrono::steady_clock;

// Polls `cond` every 2 ms until it holds or `timeout` passes; returns its last value.
inline bool wait_until(const std::function<bool()>& cond,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (cond()) return true;
    if (Clock::now() >= deadline) return cond();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

class TempDir {
 public:
  explicit TempDir(const char* prefix = "keel-vtpm-proc") {
    std::string tmpl = std::string("/tmp/") + prefix + "-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data())) path_ = buf.data();
  }
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline Bytes read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::string read_file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Writes `bytes` to a new file of mode `mode` (exact: umask does not narrow it further).
inline bool write_file_bytes(const std::string& path, const Bytes& bytes, mode_t mode = 0600) {
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return false;
  bool ok = ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
  ok = ::fchmod(fd, mode) == 0 && ok;
  ::close(fd);
  return ok;
}

// A fresh 32-byte AES key in a file of mode 0600.
inline bool write_random_key(const std::string& path) {
  Bytes key(32);
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) return false;
  return write_file_bytes(path, key, 0600);
}

// A child process; stdout and stderr go to files. The destructor SIGKILLs and reaps it if it
// still runs.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& out_path,
          const std::string& err_path) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(126);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Process() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      wait_exit(std::chrono::seconds(10));
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  // True while the child has not exited (reaps it when it has).
  bool running() {
    if (pid_ <= 0 || status_) return false;
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) status_ = st;
    return r == 0;
  }
  // The raw wait status once the child has exited within `timeout`.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    wait_until([&] { return !running(); }, timeout);
    return status_;
  }
  std::optional<int> status() const { return status_; }
  void signal(int sig) const {
    if (pid_ > 0 && !status_) ::kill(pid_, sig);
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

inline std::string describe_status(const std::optional<int>& st) {
  if (!st) return "still running";
  if (WIFEXITED(*st)) return "exit " + std::to_string(WEXITSTATUS(*st));
  if (WIFSIGNALED(*st)) return "killed by signal " + std::to_string(WTERMSIG(*st));
  return "status " + std::to_string(*st);
}

inline bool is_socket(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

// Waits until `proc` has created the socket at `sock` (false if it exits first or 10 s pass).
inline bool wait_for_socket(Process& proc, const std::string& sock) {
  return wait_until([&] { return is_socket(sock) || !proc.running(); }) && is_socket(sock) &&
         proc.running();
}

// A CtrlTransport, retried while the socket refuses connections (bound but not yet listening).
inline std::unique_ptr<CtrlTransport> connect_ctrl(const std::string& sock, bool send_init = true) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  for (;;) {
    try {
      return std::make_unique<CtrlTransport>(sock, send_init);
    } catch (const TpmError& e) {
      if (std::string(e.what()).find("refused") == std::string::npos || Clock::now() > deadline) {
        throw;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// The counters keel-vtpm prints on stdout when it exits.
struct VtpmCountersLine {
  bool found = false;
  uint64_t ctrl = 0, refused = 0, failed = 0, commands = 0, bad_size = 0, stopped = 0,
           failure_mode = 0, writes = 0, write_errors = 0;
};

inline VtpmCountersLine parse_counters(const std::string& out) {
  VtpmCountersLine c;
  auto pos = out.find("keel-vtpm: ");
  while (pos != std::string::npos) {
    unsigned long long v[9];
    if (std::sscanf(out.c_str() + pos,
                    "keel-vtpm: %llu control messages (%llu refused, %llu failed), %llu TPM "
                    "commands (%llu of a bad size, %llu while stopped, %llu in failure mode), "
                    "%llu state writes (%llu failed)",
                    &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) == 9) {
      c = {true, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
      return c;
    }
    pos = out.find("keel-vtpm: ", pos + 1);
  }
  return c;
}

#ifdef KEEL_VTPM_BIN
// keel-vtpm on files in `dir`: ctrl.sock, state, key (created when missing), vtpm.out, vtpm.err.
class KeelVtpm {
 public:
  explicit KeelVtpm(const TempDir& dir, std::string guest = "guest-a")
      : dir_(dir.path()), key_(dir / "key"), guest_(std::move(guest)) {}

  std::string sock() const { return sock_.empty() ? dir_ + "/ctrl.sock" : sock_; }
  std::string state() const { return dir_ + "/state"; }
  std::string key() const { return key_; }
  std::string out_path() const { return dir_ + "/" + name_ + ".out"; }
  std::string err_path() const { return dir_ + "/" + name_ + ".err"; }
  // Names the stdout/stderr files (NAME.out, NAME.err) of a second server in the same directory.
  void set_name(std::string name) { name_ = std::move(name); }
  void set_key(std::string path) { key_ = std::move(path); }
  void set_guest(std::string guest) { guest_ = std::move(guest); }
  void set_sock(std::string path) { sock_ = std::move(path); }

  // Starts a new process (the previous one must have exited) and waits for its socket; false
  // if it exits first.
  bool start() {
    spawn();
    return proc_->started() && wait_for_socket(*proc_, sock());
  }
  // Starts a new process without waiting for anything.
  void spawn() {
    proc_.reset();
    ::unlink(sock().c_str());  // a SIGKILLed server leaves its socket behind
    struct stat st;
    if (::stat(key_.c_str(), &st) != 0) write_random_key(key_);
    proc_ = std::make_unique<Process>(
        std::vector<std::string>{KEEL_VTPM_BIN, "--ctrl", sock(), "--state", state(), "--key", key_,
                                 "--guest", guest_},
        out_path(), err_path());
  }
  Process& proc() { return *proc_; }
  std::string out() const { return read_file_text(out_path()); }
  std::string err() const { return read_file_text(err_path()); }
  VtpmCountersLine counters() const { return parse_counters(out()); }

 private:
  std::string dir_, key_, guest_, sock_, name_ = "vtpm";
  std::unique_ptr<Process> proc_;
};
#endif

// Byte helpers and raw socket IO for tests that speak the wire protocol by hand.
inline Bytes be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16),
          static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
}

inline uint32_t get32(const Bytes& b, size_t off) {
  return uint32_t{b.at(off)} << 24 | uint32_t{b.at(off + 1)} << 16 | uint32_t{b.at(off + 2)} << 8 |
         b.at(off + 3);
}

inline Bytes cat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

inline Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }

inline Bytes be64(uint64_t v) {
  Bytes b;
  for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
  return b;
}

inline uint64_t get64(const Bytes& b) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = v << 8 | b.at(i);
  return v;
}

// Reads exactly `n` bytes from `fd` within `timeout_ms` overall; fewer on EOF or timeout.
inline Bytes read_n(int fd, size_t n, int timeout_ms = 10000) {
  Bytes out;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (out.size() < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    uint8_t buf[4096];
    ssize_t k = ::read(fd, buf, std::min(sizeof buf, n - out.size()));
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) break;
    out.insert(out.end(), buf, buf + k);
  }
  return out;
}

inline bool write_all(int fd, const Bytes& b) {
  size_t done = 0;
  while (done < b.size()) {
    ssize_t w = ::send(fd, b.data() + done, b.size() - done, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    done += static_cast<size_t>(w);
  }
  return true;
}

// One control message with (optionally) fds, as QEMU sends it.
inline bool send_msg(int fd, const Bytes& bytes, const std::vector<int>& fds = {}) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
  if (!fds.empty() && fds.size() <= 4) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  return ::sendmsg(fd, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

inline bool have_swtpm() { return std::system("command -v swtpm >/dev/null 2>&1") == 0; }

// swtpm on a fresh state directory, as QEMU's documentation starts it.
class SwtpmProcess {
 public:
  explicit SwtpmProcess(const TempDir& dir) : sock_(dir / "swtpm.sock") {
    proc_ = std::make_unique<Process>(
        std::vector<std::string>{"swtpm", "socket", "--tpm2", "--ctrl", "type=unixio,path=" + sock_,
                                 "--tpmstate", "dir=" + dir.path(), "--log",
                                 "file=" + (dir / "swtpm.log")},
        dir / "swtpm.out", dir / "swtpm.err");
    ready_ = proc_->started() && wait_for_socket(*proc_, sock_);
  }
  ~SwtpmProcess() {
    proc_->signal(SIGTERM);
    proc_->wait_exit(std::chrono::seconds(10));
  }
  bool ready() const { return ready_; }
  const std::string& sock() const { return sock_; }

 private:
  std::string sock_;
  std::unique_ptr<Process> proc_;
  bool ready_ = false;
};

}  // namespace keel::vtpm::proc
