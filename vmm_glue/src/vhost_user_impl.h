// The vhost-user-blk server's state, shared by vhost_user_*.cpp:
//   vhost_user_socket.cpp    listening, accepting, bounded message reads and replies
//   vhost_user_server.cpp    lifecycle, the event loop, reporting
//   vhost_user_messages.cpp  request validation and dispatch
//   vhost_user_rings.cpp     memory table, inflight record, paravisor (re)creation, ring
//                            start/stop
#pragma once

#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "keel/log.h"
#include "keel/unique_fd.h"
#include "keel/unix_listener.h"
#include "keel/vmm/vhost_user.h"
#include "keel/vmm/vhost_user_inflight.h"

namespace keel::vmm {

/// The vhost-user server's log: connections, and requests it refused.
inline constexpr log::Logger kVhostLog{"vhost-user"};

namespace detail {

/// One well-framed front-end message.
struct Message {
  vhost_user::Header hdr{};
  std::array<std::byte, vhost_user::kMaxPayload> payload{};
  std::vector<UniqueFd> fds;
};

/// What the front end told us about one virtqueue.
struct Ring {
  std::uint32_t num = 0;  ///< SET_VRING_NUM (0: not yet).
  bool has_addr = false;  ///< SET_VRING_ADDR seen.
  std::uint64_t desc_user = 0, avail_user = 0, used_user = 0;
  std::uint16_t base = 0;  ///< Next avail index to process (SET_VRING_BASE; updated on stop).
  UniqueFd kick, call, err;
  bool started = false;     ///< SET_VRING_KICK seen and no GET_VRING_BASE since.
  bool enabled = false;     ///< SET_VRING_ENABLE (or enabled from the start, see below).
  bool configured = false;  ///< Set up in the current paravisor (set_queue).
  bool running = false;     ///< Part of the paravisor's running set.
  std::uint64_t gen = 1;    ///< Bumped on every change of the above.
  std::uint64_t applied_gen = 0;
};

inline void add(ParavisorCounters& to, const ParavisorCounters& c) {
  to.requests += c.requests;
  to.vf_ios += c.vf_ios;
  to.fallback_ios += c.fallback_ios;
  to.reissued += c.reissued;
  to.bounced += c.bounced;
  to.pool_bounced += c.pool_bounced;
  to.errors += c.errors;
  to.bad_requests += c.bad_requests;
  to.notifications += c.notifications;
  to.given_back += c.given_back;
  to.kept_queue_pairs += c.kept_queue_pairs;
  to.to_fallback += c.to_fallback;
  to.to_vf += c.to_vf;
}

}  // namespace detail

struct VhostUserBlkServer::Impl {
  using Clock = std::chrono::steady_clock;

  VhostUserBlkConfig config;
  DeviceFactory factory;
  // The device, learned at create().
  std::uint64_t device_features = 0;
  std::vector<std::byte> probe_config;  ///< The device's config space, as probed.
  /// Protocol features offered: vhost_user::kOfferedProtocolFeatures less what the device
  /// has no use for (VhostDevice::protocol_features).
  std::uint64_t offered_protocol = vhost_user::kOfferedProtocolFeatures;
  unsigned queues = 0;

  UnixListener listener;
  UniqueFd conn_fd, wake_fd;
  std::atomic<bool> connected{false};  // conn_fd is valid (readable from any thread)

  // ---- per connection ----
  bool owner = false;
  bool features_set = false;
  std::uint64_t acked_features = 0;
  std::uint64_t protocol_features = 0;
  std::unique_ptr<GuestMemory> memory;
  /// INFLIGHT_SHMFD record (GET/SET_INFLIGHT_FD); the paravisor's rings record into it, so it
  /// outlives the paravisor (replacing it retires the paravisor first).
  std::unique_ptr<InflightRegion> inflight;
  std::unique_ptr<VhostDevice> pv;
  bool pv_running = false;
  bool err_signalled = false;
  std::vector<detail::Ring> rings;
  bool close_requested = false;  // a handler found the connection unusable
  /// take_session() gave the connection and the socket path to another process.
  bool handed_over = false;

  // ---- reporting (any thread) ----
  mutable std::mutex mu;  // guards the members below and the pv pointer for counters()
  Stats stats;
  std::string last_error;
  ParavisorCounters retired;
  std::vector<Transition> retired_transitions;

  // ---- own thread ----
  std::thread thread;
  std::atomic<bool> thread_running{false};
  std::atomic<bool> stop_thread{false};

  // vhost_user_socket.cpp
  Status listen();
  void unlink_socket() noexcept;
  /// Accepts one pending connection (or turns it away when one is being served).
  void accept_one();
  enum class ReadResult { message, closed, broken };
  /// Reads one whole message (its first byte is available); `why` says what broke.
  ReadResult read_message(detail::Message& m, std::string& why);
  /// Sends a reply to `request` with `payload` (and `fds`, with its first byte). False (and
  /// close_requested) on failure.
  bool reply(std::uint32_t request, const void* payload, std::size_t bytes,
             std::span<const int> fds = {});
  bool reply_u64(std::uint32_t request, std::uint64_t value) {
    return reply(request, &value, sizeof value);
  }

  // vhost_user_server.cpp
  /// Asks a paravisor built over no memory what the device is (features, config space,
  /// queues). Errors: the factory's, invalid_argument.
  Status probe_device();
  unsigned run_once(std::chrono::milliseconds timeout);
  void handle_input();
  void drop_connection(const std::string& why);
  void reset_connection_state();
  void log_failure(const std::string& what);
  void check_broken_rings();

  // vhost_user_messages.cpp
  void handle(detail::Message& m);
  Status dispatch(detail::Message& m);
  Status ring_fd(detail::Message& m, vhost_user::Request r);
  Status get_config(const detail::Message& m);
  Status set_config(const detail::Message& m);
  Status set_features(const detail::Message& m);
  Status get_vring_base(const detail::Message& m);
  Status set_vring_addr(const detail::Message& m);

  // vhost_user_rings.cpp
  Status set_mem_table(detail::Message& m);
  /// GET_INFLIGHT_FD: a fresh record, sent with the reply. On failure handle() replies with an
  /// empty one.
  Status get_inflight_fd(const detail::Message& m);
  Status set_inflight_fd(detail::Message& m);
  /// Makes `r` the connection's record: the paravisor (whose rings record into the old one)
  /// is retired first; the rings are set up again when they next start.
  void replace_inflight(std::unique_ptr<InflightRegion> r);
  /// Stops the paravisor's workers (in-flight requests complete) and records where each
  /// running ring stands. `keep_vf`: the VF queue pairs stay (a hand-over saves them).
  void pause(bool keep_vf = false);
  /// pause() if ring q runs. (While the paravisor runs, every ring set up in it runs; the
  /// others may change freely.)
  void pause_ring(unsigned q) {
    if (rings[q].running) pause();
  }
  /// Starts what should run: every ring started, enabled and set up.
  Status apply_rings();
  Status create_paravisor();
  /// Stops and destroys the paravisor, folding its counters and transitions into the totals.
  void retire_paravisor();
  /// Ring areas of `num` entries at front-end user addresses, as guest-physical addresses.
  /// Errors: out_of_range (an area not wholly inside one region of the memory table).
  Result<Virtqueue::Layout> layout_from(std::uint32_t num, std::uint64_t desc, std::uint64_t avail,
                                        std::uint64_t used) const;
  void reset_rings();
};

}  // namespace keel::vmm
