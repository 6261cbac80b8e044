// One virtio-net queue pair of a NetParavisor: the guest's receiveq and transmitq, the VF queue
// pair of the same index, and (worker 0) the fallback port. Owned by one thread: its own, or
// the caller of NetParavisor::run_once().
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <span>
#include <thread>
#include <vector>

#include "keel/drivers/net/queue_pair.h"
#include "keel/thread_cpu.h"
#include "keel/unique_fd.h"
#include "keel/vmm/net_paravisor.h"
#include "keel/vmm/virtqueue.h"

namespace keel::vmm {

class NetWorker {
 public:
  NetWorker(NetParavisor& pv, unsigned pair);
  ~NetWorker();
  NetWorker(const NetWorker&) = delete;
  NetWorker& operator=(const NetWorker&) = delete;

  /// `which`: 0 receiveq, 1 transmitq.
  Status setup(unsigned which, const Virtqueue::Layout& layout, bool event_idx,
               std::uint16_t last_avail);
  bool configured() const noexcept { return rxq_.ready() && txq_.ready(); }
  void set_call_fd(unsigned which, int fd) noexcept { call_fd_[which] = fd; }
  void set_kick_fd(unsigned which, int fd) noexcept { kick_fd_[which] = fd; }
  std::uint16_t last_avail(unsigned which) const noexcept {
    return which == 0 ? rxq_.last_avail() : txq_.last_avail();
  }
  bool broken() const noexcept { return rxq_.broken() || txq_.broken(); }

  /// Runs the worker on a thread of its own until stop().
  Status start_thread();
  /// Stops the thread (if any), then settles the rings: TX frames on the VF are reaped (for a
  /// bounded time) and every chain taken is returned, so last_avail() is where the next
  /// device starts.
  void stop();
  /// One pass of the data path (threads == false). Returns the work done.
  unsigned pass();
  /// Wakes the thread (probe now, stop).
  void wake() noexcept;

  NetCounters counters() const noexcept;
  ParavisorCounters paravisor_counters() const noexcept;
  std::uint64_t cpu_ns() const noexcept { return cpu_.ns(); }

 private:
  struct RxChain {
    std::uint16_t head;
    std::uint32_t capacity;
    std::vector<ChainSeg> segs;
    std::uint64_t seq = 0;  ///< Pop order on the receiveq.
  };
  /// A guest RX chain on the VF's RX ring (zero-copy receive). The card writes at chain offset
  /// kHdr, in the segment holding it; the header goes in front when the frame is complete.
  struct PostedRx {
    RxChain chain;
    std::uint32_t id = 0;       ///< Posting order (the cookie's low half).
    std::uint32_t written = 0;  ///< Bytes the card wrote (once completed).
  };

  void run();
  void sleep();
  /// Zero-copy receive when the guest merges RX buffers (and the config allows it).
  bool want_zero_copy() const noexcept;
  /// Puts the VF queue pair in the RX buffer mode wanted (a rebuild), or rebuilds it after a
  /// stop() disabled it. Only while nothing of this worker is on its rings.
  void sync_rx_mode();
  /// The Nic's queue pair of this worker whatever the path state (nullptr: no Nic).
  drivers::net::QueuePair* own_queue() noexcept;
  /// Zero-copy receive: completes the frames the card wrote into posted chains.
  unsigned rx_vf_zero_copy(drivers::net::QueuePair& qp);
  /// Zero-copy receive: puts guest RX chains on the VF's RX ring while it has room.
  void post_rx_chains(drivers::net::QueuePair& qp);
  /// The first `bufs` posted chains hold a frame of `frame_len` bytes: header, move, used.
  void finish_vf_frame(std::size_t bufs, std::uint32_t frame_len, bool bad);
  /// Stops the VF queue pair (the card then writes no guest buffer and reads no TX chain) and
  /// takes back the chains it held: completed frames are delivered first.
  void quiesce_vf_queue(drivers::net::QueuePair& qp);
  /// Copy mode: every frame waiting in the driver's RX buffers goes to the guest (or the
  /// backlog), before those buffers are dropped by a stop or a mode switch.
  void deliver_driver_buffers(drivers::net::QueuePair& qp);
  /// Chains on the VF's RX ring go back to rx_chains_ (the card no longer writes them).
  void reclaim_posted();
  /// Writes `len` bytes at chain offset `off`. False if the chain is shorter or not guest RAM.
  bool write_chain(const std::vector<ChainSeg>& segs, std::size_t off, const std::uint8_t* src,
                   std::size_t len);
  /// The VF queue pair if traffic is on the VF in this worker's epoch, else nullptr.
  drivers::net::QueuePair* vf_queue() noexcept;
  /// The VF was lost (a newer epoch): re-send what is on its TX ring through the fallback.
  void let_go_of_vf();
  void check_vf();
  unsigned reap();
  unsigned tx_pass();
  unsigned rx_pass();
  /// Sends one guest TX chain (the frame after its virtio-net header). False: the VF ring is
  /// full (the chain stays popped in `head`: the caller gives it back).
  bool transmit(std::uint16_t head, const std::vector<ChainSeg>& segs);
  using PortSend = NetParavisor::PortSend;
  /// Sends the frame of a TX chain as a FRAME record on the fallback port, waiting up to
  /// `wait` for room in the socket.
  PortSend send_fallback(const std::vector<ChainSeg>& segs,
                         std::chrono::milliseconds wait = std::chrono::milliseconds(0));
  /// A TX chain keel can send: read by the device only, header + an Ethernet frame within the
  /// MTU, and a header asking for nothing keel did not offer (checksum, segmentation).
  bool valid_tx(ChainError e, const std::vector<ChainSeg>& segs);
  /// Copies a frame into the guest's RX buffers. False: not enough buffers posted yet.
  bool deliver(std::span<const std::uint8_t> frame);
  /// A frame for the guest: delivered now, or held in the backlog (or dropped when full).
  void receive(std::span<const std::uint8_t> frame, bool from_vf);
  bool take_rx_chain();
  void notify(unsigned which);
  /// Gathers the bytes of `segs` after the first `skip` into `out`, at most `limit` of them.
  bool gather(const std::vector<ChainSeg>& segs, std::size_t skip, std::vector<std::uint8_t>& out,
              std::size_t limit = SIZE_MAX);
  std::uint64_t cookie(std::uint16_t head) const noexcept { return epoch_ << 16 | head; }

  NetParavisor& pv_;
  const unsigned pair_;
  Virtqueue rxq_, txq_;
  int call_fd_[2] = {-1, -1};
  int kick_fd_[2] = {-1, -1};
  bool mrg_ = false;
  bool pushed_[2] = {false, false};

  std::uint64_t epoch_ = 0;          ///< The VF epoch this worker works in.
  std::vector<std::uint8_t> on_vf_;  ///< Per TX head: on the VF's ring.
  std::vector<std::uint16_t> on_vf_heads_;
  std::deque<RxChain> rx_chains_;   ///< Popped RX chains not filled yet (nor on the VF).
  std::uint64_t rx_pops_ = 0;       ///< Chains popped from the receiveq since setup.
  std::deque<PostedRx> rx_posted_;  ///< Chains on the VF's RX ring, in posting order.
  std::size_t rx_filled_ = 0;       ///< Leading rx_posted_ holding the frame being received.
  std::uint32_t rx_posts_ = 0;      ///< Buffers posted (PostedRx::id).
  bool rx_frame_bad_ = false;
  bool used_vf_ = false;  ///< vf_queue() gave this worker the VF in its epoch.
  struct Held {
    std::vector<std::uint8_t> frame;
    bool from_vf;
  };
  std::deque<Held> backlog_;  ///< Frames for a guest with no RX buffer posted.
  bool tx_blocked_ = false;   ///< The last pass left a TX chain: VF ring or port full.
  bool port_full_ = false;    ///< ... the port's socket was full.
  std::vector<ChainSeg> segs_;
  std::vector<std::uint8_t> scratch_;
  std::uint64_t next_health_ns_ = 0;

  std::thread thread_;
  std::atomic<bool> stop_{false};
  UniqueFd wake_fd_;
  ThreadCpuMeter cpu_;
  bool port_readable_ = false;  ///< The last sleep saw the fallback port readable.
  std::uint32_t passes_ = 0;

  struct Counters {
    std::atomic<std::uint64_t> tx_vf{0}, tx_fallback{0}, tx_resent{0}, rx_vf{0}, rx_fallback{0};
    std::atomic<std::uint64_t> tx_bad{0}, tx_dropped{0}, rx_dropped{0}, rx_bad_chains{0};
    std::atomic<std::uint64_t> tx_vf_errors{0}, notifications{0}, rx_zero_copy{0}, rx_moved{0};
  } c_;
};

}  // namespace keel::vmm
