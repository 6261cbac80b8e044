// keel-perf-net: an in-process guest with a virtio-net device. Its memory, a receiveq and a
// transmitq on split rings driven as Linux's virtio_net would (EVENT_IDX, MRG_RXBUF, one
// descriptor per frame, 2 KiB receive buffers), kick and call eventfds, and the NetParavisor
// that serves it: on a NIC VF of the model card, or (vf null) on the software switch.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "keel/fpga/function.h"
#include "keel/fpga/model/model_card.h"
#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/net_paravisor.h"
#include "keel/vmm/split_ring_driver.h"
#include "keel/wire/knic.h"

namespace keel::perf {

class NetGuest {
 public:
  static constexpr std::uint16_t kQueue = 256;
  static constexpr std::uint32_t kRxBuf = 2048;
  static constexpr std::uint32_t kTxBuf = 2048;
  static constexpr std::uint32_t kHdr = 12;  // virtio_net_hdr with num_buffers

  /// A guest with MAC `mac`, its device on `vf` (null: the fallback only), its fallback port
  /// connected to the switch at `switch_path`. Its rings are set up, its RX buffers posted and
  /// its paravisor's worker started. `rx_copy`: the paravisor copies received frames instead
  /// of posting the guest's buffers on the VF (NetParavisorConfig::rx_zero_copy off).
  static Result<std::unique_ptr<NetGuest>> create(const knic::Mac& mac, fpga::Function* vf,
                                                  fpga::model::ModelCard& card,
                                                  const std::string& switch_path,
                                                  bool rx_copy = false);
  ~NetGuest();
  NetGuest(const NetGuest&) = delete;
  NetGuest& operator=(const NetGuest&) = delete;

  const knic::Mac& mac() const noexcept { return mac_; }
  vmm::NetParavisor& paravisor() noexcept { return *pv_; }

  /// Builds a frame of `len` bytes (Ethernet header included) to `dst` carrying `seq` and
  /// publishes it on the transmitq (no kick). False: no free descriptor.
  bool send(const knic::Mac& dst, std::uint32_t len, std::uint64_t seq);
  /// Kicks the transmitq if the device asked for it (EVENT_IDX).
  void kick_tx();
  /// Frees the transmitq's used chains; returns how many.
  unsigned reap_tx();
  std::size_t tx_free() const noexcept { return tx_->free_descriptors(); }

  /// Received frames: for each, `f(frame)` (Ethernet header on); the buffer is posted again.
  /// Returns how many. Frames of more than one buffer are counted in bad_frames().
  template <typename F>
  unsigned poll_rx(F&& f) {
    unsigned n = 0;
    while (auto u = rx_->pop_used()) {
      const std::span<const std::uint8_t> frame = rx_frame(*u);
      if (!frame.empty()) f(frame);
      ++n;
    }
    if (n > 0) repost_rx();
    return n;
  }
  std::uint64_t bad_frames() const noexcept { return bad_frames_; }

  /// Asks for an interrupt on the next used entry of the receiveq (and of the transmitq with
  /// `tx`), then sleeps on the call eventfds (and `extra_fd`) up to `timeout_ms`, as a vCPU
  /// halts, unless an entry came meanwhile.
  void wait(bool tx, int extra_fd, int timeout_ms);

 private:
  NetGuest() = default;
  std::uint64_t rx_buf(std::uint16_t slot) const { return kRxBufs + std::uint64_t{slot} * kRxBuf; }
  std::uint64_t tx_buf(std::uint16_t slot) const { return kTxBufs + std::uint64_t{slot} * kTxBuf; }
  std::span<const std::uint8_t> rx_frame(const virtio::UsedElem& u);
  void repost_rx();

  static constexpr std::uint64_t kRxBufs = 0x100000, kTxBufs = 0x200000;

  knic::Mac mac_{};
  std::unique_ptr<vmm::GuestMemory> mem_;
  std::unique_ptr<vmm::SplitRingDriver> rx_, tx_;
  UniqueFd kick_[2], call_[2];
  std::unique_ptr<vmm::NetParavisor> pv_;
  std::uint64_t bad_frames_ = 0;
};

}  // namespace keel::perf
