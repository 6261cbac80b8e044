// A scripted vhost-user front end for the tests: what QEMU does for a vhost-user-blk-pci
// device, written from the spec. Its own socket code, guest RAM in a memfd (two regions with a
// hole between them, at the addresses this process maps them), split rings built in that RAM,
// and kick/call eventfds. Every wait is bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "keel/unique_fd.h"
#include "keel/vmm/split_ring_driver.h"
#include "keel/vmm/vhost_user.h"
#include "keel/vmm/vhost_user_inflight.h"
#include "keel/wire/virtio.h"

namespace keel::testing {

namespace vu = keel::vhost_user;

/// Guest RAM: one memfd sealed against shrinking and growing (as QEMU's memory-backend-memfd),
/// mapped here, shown to the back end as two regions. Region 0: GPA 0,
/// the first half of the file; region 1: GPA kHighGpa, the second half (mmap_offset = half).
class GuestRam {
 public:
  static constexpr std::uint64_t kHighGpa = 1ull << 30;
  explicit GuestRam(std::uint64_t bytes_per_region = 4ull << 20);
  ~GuestRam();
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  /// Host pointer of [gpa, gpa + len), or nullptr.
  std::byte* at(std::uint64_t gpa, std::uint64_t len = 1) const;
  /// The front end's ("user") address of a GPA, as QEMU would put it in SET_VRING_ADDR.
  std::uint64_t user_addr(std::uint64_t gpa) const;
  /// The memory table describing both regions (or only region 0).
  vu::MemoryTable table(bool both_regions = true) const;
  int fd() const { return fd_; }
  std::uint64_t region_bytes() const { return half_; }

 private:
  int fd_ = -1;
  std::byte* base_ = nullptr;
  std::uint64_t half_;
};

/// One split virtqueue, driver side, in GuestRam. Requests are [header][data...][status].
class DriverRing {
 public:
  /// Lays the ring out at `gpa` (needs about 3 pages + 32 bytes per entry).
  DriverRing(GuestRam& ram, std::uint16_t size, std::uint64_t gpa);
  ~DriverRing();

  struct Seg {
    std::uint64_t gpa;
    std::uint32_t len;
  };
  /// Publishes a request (no kick). Returns its head.
  std::uint16_t submit(std::uint32_t type, std::uint64_t sector, std::span<const Seg> data);
  /// Makes `head` available as it is, valid or not (malformed-input tests).
  void publish_head(std::uint16_t head);
  /// Publishes a chain whose only descriptor (the last one of the table) links to itself.
  void publish_loop();
  /// The next used entry, if any: head and status byte.
  std::optional<std::pair<std::uint16_t, std::uint8_t>> reap();
  void kick() const;
  /// Reads (and clears) the call eventfd: how many notifications arrived since the last read.
  std::uint64_t take_calls() const;
  /// Waits up to `ms` for the call eventfd.
  bool wait_call(int ms) const;
  std::uint16_t used_idx() const;

  std::uint16_t size() const { return ring_.layout().size; }
  std::uint64_t desc_gpa() const { return ring_.layout().desc; }
  std::uint64_t avail_gpa() const { return ring_.layout().avail; }
  std::uint64_t used_gpa() const { return ring_.layout().used; }
  int kick_fd() const { return kick_fd_; }
  int call_fd() const { return call_fd_; }
  std::uint16_t avail_idx() const { return ring_.avail_idx(); }
  std::size_t free_descriptors() const { return ring_.free_descriptors(); }

 private:
  GuestRam& ram_;
  vmm::SplitRingDriver ring_;  ///< The ring itself, as the in-process guest driver runs it.
  std::uint64_t scratch_;      ///< Per head: request header, status byte at +16.
  int kick_fd_ = -1, call_fd_ = -1;
};

/// The socket side. `pump` lets a caller-driven server handle what was just sent (it is
/// called after every send); a server on its own thread needs none.
class FrontEnd {
 public:
  FrontEnd(std::string path, std::function<void()> pump);
  ~FrontEnd();
  FrontEnd(const FrontEnd&) = delete;
  FrontEnd& operator=(const FrontEnd&) = delete;

  bool connect();
  void close();
  /// Sends header + payload with `fds` attached, then pumps. False if the socket refused it.
  bool send(std::uint32_t request, const void* payload, std::size_t bytes,
            std::span<const int> fds = {}, bool need_reply = false);
  /// Sends raw bytes (malformed messages), optionally shuts down its sending side, then pumps.
  bool send_raw(const void* bytes, std::size_t n, std::span<const int> fds = {},
                bool hang_up = false);
  struct Reply {
    vu::Header hdr;
    std::vector<std::byte> payload;
  };
  /// The next reply, or nothing if none arrives within `ms` (or the peer closed).
  std::optional<Reply> recv(int ms = 2000);
  /// True if the back end closed the connection (EOF within `ms`).
  bool peer_closed(int ms = 2000);

  // Typed requests. Those with a reply return nothing if it did not come.
  std::optional<std::uint64_t> get_u64(vu::Request r);
  /// With need_reply: the ack value (0 = success), or nothing.
  std::optional<std::uint64_t> ack(vu::Request r, const void* payload, std::size_t bytes,
                                   std::span<const int> fds = {});
  std::optional<std::uint64_t> ack_u64(vu::Request r, std::uint64_t v,
                                       std::span<const int> fds = {}) {
    return ack(r, &v, sizeof v, fds);
  }
  std::optional<std::uint64_t> ack_state(vu::Request r, std::uint32_t index, std::uint32_t num) {
    const vu::VringState s{index, num};
    return ack(r, &s, sizeof s);
  }
  std::optional<vu::VringState> get_vring_base(std::uint32_t index);
  /// GET_INFLIGHT_FD for `num_queues` rings of `queue_size`: the reply's description and the
  /// fd that came with it (invalid if none), or nothing if no reply came.
  struct InflightReply {
    vu::Inflight desc{};
    UniqueFd fd;
  };
  std::optional<InflightReply> get_inflight_fd(std::uint16_t num_queues, std::uint16_t queue_size);
  /// GET_CONFIG: the config bytes (empty when the back end answered with an error).
  std::optional<std::vector<std::byte>> get_config(std::uint32_t offset, std::uint32_t size);

  /// QEMU's sequence: features, protocol features, queue count, owner, memory table, then
  /// each ring (num, base, addr, kick, call) and enabling them. Returns false (with a gtest
  /// failure) when a step fails.
  bool handshake(GuestRam& ram, std::span<DriverRing* const> rings);
  /// Starts one ring: num, base, addr, kick, call, enable (acked).
  bool start_ring(GuestRam& ram, unsigned q, const DriverRing& r, std::uint16_t base = 0);

 private:
  std::string path_;
  std::function<void()> pump_;
  int fd_ = -1;
};

/// File descriptors this process has open (for leak checks).
int open_fds();

}  // namespace keel::testing
