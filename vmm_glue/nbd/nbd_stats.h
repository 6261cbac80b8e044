// nbd_stats.h - what the NBD server counts and the last problem it noticed. Written on the
// server thread, read from any thread (NbdServer::stats(), NbdServer::last_error()).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "keel/vmm/nbd_server.h"

namespace keel::vmm::nbd_internal {

/// The counters behind NbdServerStats (relaxed: each one is exact, together they are not a
/// snapshot).
struct Counters {
  std::atomic<std::uint64_t> connections{0}, turned_away{0}, transmissions{0}, disconnects{0},
      protocol_errors{0}, options{0}, requests{0}, reads{0}, writes{0}, flushes{0}, trims{0},
      write_zeroes{0}, bytes_read{0}, bytes_written{0}, error_replies{0}, unaligned{0},
      device_timeouts{0}, send_timeouts{0}, idle_timeouts{0}, quota_waits{0}, overlap_waits{0},
      virtio_requests{0}, virtio_errors{0};

  NbdServerStats snapshot() const noexcept;
};

inline void bump(std::atomic<std::uint64_t>& a, std::uint64_t n = 1) noexcept {
  a.fetch_add(n, std::memory_order_relaxed);
}

/// The last problem the server noticed (a dropped peer, a failed device request), also logged
/// (component "nbd", warn) when the configuration asks for logging.
class Notes {
 public:
  explicit Notes(bool log) : log_(log) {}

  void note(const std::string& what);
  std::string last() const;
  bool log() const noexcept { return log_; }

 private:
  const bool log_;
  mutable std::mutex mu_;  // last_
  std::string last_;
};

}  // namespace keel::vmm::nbd_internal
