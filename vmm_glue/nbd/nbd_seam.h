// nbd_seam.h - the NBD server's test seam: a server over any NbdDevice, driven one loop turn at
// a time on the caller's thread, with connections handed in as connected sockets. The fuzz
// target (tests/fuzz/nbd_fuzz.cpp) uses it; production code does not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "keel/vmm/nbd_server.h"
#include "nbd_device.h"

namespace keel::vmm {

struct NbdServerTestSeam {
  /// The server (its thread not started; never call start() on it).
  static Result<std::unique_ptr<NbdServer>> create(const NbdServerConfig& config,
                                                   std::unique_ptr<NbdDevice> device,
                                                   GuestMemory& memory);
  /// Serves a connected, non-blocking socket as if it had been accepted (the server owns it).
  static void adopt(NbdServer& server, int fd);
  /// One turn of the server loop that never blocks; timers are checked every turn.
  static void step(NbdServer& server);
  /// Pool chunks free / in all (every chunk is free again once nothing is in flight).
  static std::uint64_t free_chunks(const NbdServer& server);
  static std::uint64_t total_chunks(const NbdServer& server);
  /// Requests the server still holds (in the device, queued, or waiting to be sent).
  static std::size_t live_requests(const NbdServer& server);
  /// Connections not closed yet.
  static std::size_t open_connections(const NbdServer& server);
  /// Ranges held by requests (nbd_overlap.h).
  static std::size_t held_ranges(const NbdServer& server);
  /// One line per live request (type, stage, flags), for failure messages.
  static std::string describe(const NbdServer& server);
};

}  // namespace keel::vmm
