// keel/vmm/net_paravisor.h - one guest's virtio-net device: frames between the guest's
// virtqueues and its NIC VF (drivers/net), with the host's software switch as the fallback
// path (keel/wire/fallback_port.h) while the VF is away.
//
// Paths. Active: the guest's TX chains go on the VF's TX ring without a copy (IOVA = guest
// physical address: guest RAM is mapped into the VF's DMA domain); frames the VF receives are
// copied into the guest's RX buffers (one copy: the VF's RX ring holds the driver's buffers).
// Fallback: TX frames are gathered into FRAME records on the fallback port; frames from the
// port are copied into the guest. Frames arriving on the fallback port are delivered in either
// state, so nothing in flight during a move is lost.
//
// Failover (the design brief's states): the VF is lost when the driver says so (gone, fatal,
// a TX it refuses) or when vf_removed() is called. The paravisor then tells the switch
// (STATE on_fallback = 1, so frames for the guest's MAC come to the port), re-sends through
// the port every TX frame still on the VF's ring (the guest's TCP copes with the odd
// duplicate; nothing is lost), and carries on there. While on the fallback it probes the VF
// every probe_interval (or at once after vf_arrived()); when the driver brings it back, STATE
// on_fallback = 0 and traffic returns to the VF. After vf_removed() it does not probe a VF that
// is still there (the host is about to take it): only once it has been seen gone, or after
// vf_arrived().
//
// Queue numbering as virtio-net: receiveq N = 2N, transmitq N = 2N + 1; one worker per queue
// pair, which owns the pair's VF queue pair. Frames from the fallback port go to pair 0.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "keel/clock.h"
#include "keel/drivers/net/nic.h"
#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/vhost_device.h"
#include "keel/wire/knic.h"

namespace keel::vmm {

/// Every member has a default except the MAC.
struct NetParavisorConfig {
  /// The guest's MAC: its VF's (assigned by the PF manager) and its fallback port's. QEMU's
  /// virtio-net-pci must be given the same (mac=...).
  knic::Mac mac{};
  /// The guest's MTU (VIRTIO_NET_F_MTU), 68..9000.
  unsigned mtu = 1500;
  /// Virtqueue pairs (MQ when more than one; at most NIC_MAX_QUEUES).
  unsigned queue_pairs = 1;
  /// Workers on threads of their own (vhost-user server) or driven by run_once() (tests).
  bool threads = true;
  /// While on the fallback, how often the VF is probed for its return.
  std::chrono::nanoseconds probe_interval = std::chrono::milliseconds(100);
  /// While on the VF and idle, how often a worker reads the VF's status (a receiving guest
  /// sends nothing that would notice a lost VF).
  std::chrono::nanoseconds health_interval = std::chrono::milliseconds(20);
  /// VF rings (log2 of entries).
  unsigned tx_ring_log2 = 8;
  unsigned rx_ring_log2 = 8;
  /// Frames a worker holds for a guest that has no RX buffer posted; more are dropped.
  unsigned rx_backlog = 256;
  /// Receive without a copy when the guest negotiated MRG_RXBUF: its RX buffers go on the VF's
  /// RX ring (IOVA = GPA) and the card writes frames straight into them. Off, or without
  /// MRG_RXBUF, the VF receives into the driver's buffers and frames are copied to the guest.
  bool rx_zero_copy = true;
  /// Dials the host's software switch again after it closed the fallback port (restarted,
  /// say), or when there was none at create(): a connected SOCK_SEQPACKET socket, or an invalid
  /// fd to be tried again after probe_interval. Called from a worker. Empty: a closed port stays
  /// closed until the front end sets the device up again.
  std::function<UniqueFd()> redial_fallback;
};

/// Counters beyond ParavisorCounters (which counts frames as requests).
struct NetCounters {
  std::uint64_t tx_vf = 0;          ///< Guest frames sent on the VF.
  std::uint64_t tx_fallback = 0;    ///< Guest frames sent on the fallback port.
  std::uint64_t tx_resent = 0;      ///< VF frames re-sent on the fallback at a failover.
  std::uint64_t rx_vf = 0;          ///< Frames from the VF delivered to the guest.
  std::uint64_t rx_fallback = 0;    ///< Frames from the fallback port delivered.
  std::uint64_t tx_bad = 0;         ///< Malformed TX chains (dropped, given back).
  std::uint64_t tx_dropped = 0;     ///< TX frames with no path (no VF, no port).
  std::uint64_t rx_dropped = 0;     ///< RX frames dropped: backlog full or buffers too small.
  std::uint64_t rx_bad_chains = 0;  ///< RX chains the guest posted that cannot take a frame.
  std::uint64_t tx_vf_errors = 0;   ///< VF TX completions with a drop status (spoofed, ...).
  std::uint64_t notifications = 0;  ///< Interrupts sent to the guest.
  /// Of rx_vf: frames the card wrote straight into the guest's buffers (zero-copy receive;
  /// the paravisor writes only the virtio-net header).
  std::uint64_t rx_zero_copy = 0;
  /// Of rx_zero_copy: frames spread over several guest buffers, whose later parts were moved
  /// within each buffer to where virtio-net wants them (the buffer's start, no header).
  std::uint64_t rx_moved = 0;
};

class NetWorker;

class NetParavisor final : public VhostDevice {
 public:
  /// `vf` may be null (the guest starts on the fallback). `fallback` is a connected
  /// SOCK_SEQPACKET socket to the host's software switch, or invalid (no fallback: frames
  /// without a VF are dropped and counted). The VF's port (MAC, enable) must already be set
  /// by the PF manager. A VF that does not come up leaves the guest on the fallback (logged).
  /// Errors: invalid_argument (config), io_error (the fallback port).
  static Result<std::unique_ptr<NetParavisor>> create(fpga::Function* vf, const Clock& clock,
                                                      fpga::Stepper& stepper, GuestMemory& memory,
                                                      UniqueFd fallback,
                                                      const NetParavisorConfig& config);
  ~NetParavisor() override;
  NetParavisor(const NetParavisor&) = delete;
  NetParavisor& operator=(const NetParavisor&) = delete;

  // ---- VhostDevice ----
  std::uint64_t device_features() const noexcept override;
  Status set_features(std::uint64_t features) override;
  unsigned num_queues() const noexcept override { return 2 * config_.queue_pairs; }
  /// Without CONFIG (QEMU's virtio-net keeps its own config space) and INFLIGHT_SHMFD (frames
  /// are not resubmitted after a back-end restart: TCP retransmits them).
  std::uint64_t protocol_features(std::uint64_t offered) const noexcept override;
  std::vector<std::byte> config_bytes() const override;
  Status set_queue(unsigned q, const Virtqueue::Layout& layout,
                   std::uint16_t last_avail = 0) override;
  void set_call_fd(unsigned q, int fd) override;
  void set_kick_fd(unsigned q, int fd) override;
  Status start() override;
  void stop(bool keep_vf_queues = false) override;
  bool needs_reset() const noexcept override;
  std::uint16_t last_avail(unsigned q) const noexcept override;
  unsigned run_once() override;
  std::vector<Transition> transitions() const override;
  ParavisorCounters counters() const override;

  /// In-process guests (tests): called with the queue index when the guest is to be
  /// interrupted and the queue has no call fd.
  void set_notifier(std::function<void(unsigned)> notify);

  // ---- failover ----
  PathState state() const noexcept { return state_.load(std::memory_order_acquire); }
  /// The VF goes away (announced by the host, perhaps before it is gone): traffic moves to the
  /// fallback now, and stays there until the VF has been seen gone or vf_arrived() is called.
  void vf_removed(const std::string& reason);
  /// The VF is back (announced by the host): probe it now.
  void vf_arrived();
  NetCounters net_counters() const;
  /// CPU time of the worker threads, for benchmarks.
  std::uint64_t worker_cpu_ns() const;

 private:
  friend class NetWorker;
  NetParavisor(fpga::Function* vf, const Clock& clock, fpga::Stepper& stepper, GuestMemory& memory,
               UniqueFd fallback, const NetParavisorConfig& config);
  Status bring_up_vf();
  void transition(PathState to, const std::string& reason);
  void transition_locked(PathState to, const std::string& reason);  // caller holds mu_
  unsigned running_workers() const noexcept;
  /// The fallback port exists and the switch has not closed it.
  bool port_usable() const noexcept;
  void port_lost() noexcept;
  /// One record on the port, waiting up to `wait` for room (0: not at all).
  enum class PortSend : std::uint8_t { sent, full, failed };
  PortSend port_send(std::span<const std::uint8_t> record, std::chrono::milliseconds wait);
  /// A worker (or vf_removed) found the VF lost: move to draining, tell the switch.
  void vf_failed(const std::string& reason);
  /// A worker has let go of its VF queue pair; the last one completes the move.
  void worker_drained(std::uint64_t epoch);
  /// From worker 0 while on the fallback: brings the VF back when it answers.
  void maybe_probe();
  /// From worker 0 while the port is lost: dials the switch again (config_.redial_fallback),
  /// puts the new connection behind the same fd number, says HELLO and STATE.
  void maybe_redial();
  Status send_state(bool on_fallback);
  Status send_hello();

  fpga::Function* vf_;
  const Clock& clock_;
  fpga::Stepper& stepper_;
  GuestMemory& memory_;
  UniqueFd fallback_;
  std::mutex fallback_mu_;  // one record at a time on the port
  NetParavisorConfig config_;
  std::uint64_t features_ = 0;

  std::unique_ptr<drivers::net::Nic> nic_;
  bool vf_mapped_ = false;
  std::atomic<PathState> state_{PathState::absent};
  /// Bumped on every loss of the VF: a worker still on an older epoch lets go of its queue
  /// pair and reports drained.
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<unsigned> drained_{0};
  unsigned drain_target_ = 0;  ///< Workers that must let go of the VF (guarded by mu_).
  std::atomic<bool> port_lost_{false};
  std::atomic<bool> probe_now_{false};
  /// vf_removed() was called and the VF has not been seen gone since, nor vf_arrived() called.
  std::atomic<bool> removal_announced_{false};
  std::uint64_t next_probe_ns_ = 0;
  std::uint64_t next_redial_ns_ = 0;

  std::vector<std::unique_ptr<NetWorker>> workers_;
  std::function<void(unsigned)> notify_;

  mutable std::mutex mu_;  // transitions_, failover steps
  std::vector<Transition> transitions_;
};

}  // namespace keel::vmm
