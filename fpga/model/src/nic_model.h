// The reference card's NIC: a PF of its own with NIC VFs, each with up to NIC_MAX_QUEUES queue
// pairs of descriptor and completion rings in host memory, joined to each other and to an
// uplink by the embedded switch (keel::eswitch). Registers: NICPF/NICVFCFG and NIC/NICQ in
// docs/regmap.md; ring entries: keel/wire/knic.h.
//
// Threading: host register accesses and the card's data path (service(), from the card's
// thread or a lockstep step) serialise on `mu`. A doorbell is a plain store the card reads
// under `mu`, followed by Activity::kick. The uplink is read by a thread of its own (the MAC's
// receive side), which queues frames for service() and kicks the card.
#pragma once

#include <array>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "keel/eswitch/eswitch.h"
#include "keel/fpga/iommu_function.h"
#include "keel/fpga/msix_interrupts.h"
#include "keel/fpga/nic.h"
#include "keel/fpga/pf_function.h"
#include "keel/unique_fd.h"
#include "keel/wire/knic.h"
#include "vf_controller.h"

namespace keel::fpga::model {

class NicModel;

/// One queue pair of a NIC VF, card side.
struct NicQueue {
  std::uint64_t tx_base = 0, tx_cq_base = 0, rx_base = 0, rx_cq_base = 0;
  std::uint32_t cfg = 0;
  bool enabled = false;
  std::uint32_t err = 0;  ///< QSTATUS.ERR_CODE (0: none).
  // Host doorbells.
  std::atomic<std::uint32_t> tx_tail{0}, rx_tail{0}, tx_cq_head{0}, rx_cq_head{0};
  // Card state.
  std::uint32_t tx_head = 0, rx_head = 0;
  std::uint32_t tx_cq_tail = 0, rx_cq_tail = 0;
  std::uint8_t tx_phase = 1, rx_phase = 1;
  bool tx_fire = false, rx_fire = false;  ///< Completions posted since the last interrupt.
  bool throttled = false;                 ///< Waiting on the rate limiter (counted once).

  unsigned tx_size() const noexcept { return 1u << (cfg & 0xF); }
  unsigned rx_size() const noexcept { return 1u << ((cfg >> 4) & 0xF); }
  void stop() noexcept;
};

/// Counters of one NIC VF's port (NICVFCFG).
struct NicCounters {
  std::uint64_t tx_frames = 0, tx_bytes = 0, rx_frames = 0, rx_bytes = 0;
  std::uint64_t drop_spoof = 0, drop_bad_desc = 0, drop_oversize = 0, drop_dma_fault = 0;
  std::uint64_t drop_rx_no_buf = 0, tx_throttled = 0, drop_queue_off = 0, drop_no_route = 0;
};

/// One NIC VF, card side.
struct NicVf {
  explicit NicVf(unsigned vectors) : irq(vectors) {}
  std::atomic<bool> present{false};
  std::atomic<bool> removed{false};
  // VF registers.
  bool enabled = false;  ///< CTRL.ENABLE
  bool fatal = false;    ///< STATUS.FATAL
  bool mtu_err = false;  ///< STATUS.MTU_ERR
  unsigned mtu = 1500;
  std::array<NicQueue, 4> queues;
  MsixInterrupts irq;
  // Port (PF side).
  knic::Mac mac{};
  bool port_enabled = false;
  bool cfg_err = false;
  std::uint32_t err_code = 0;
  std::uint32_t rate = 0;  ///< NICVFCFG RATE as written.
  eswitch::TokenBucket bucket;
  NicCounters counters;
};

class NicPfFunction final : public PfFunctionBase<IommuFunction> {
 public:
  explicit NicPfFunction(NicModel& nic);
  std::uint64_t bar_size() const noexcept override { return 0x1000 + 64 * 0x100; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  unsigned num_vectors() const noexcept override { return 0; }

 private:
  bool gone() const noexcept override { return false; }
  NicModel& nic_;
};

class NicVfFunction final : public IommuFunction {
 public:
  NicVfFunction(NicModel& nic, unsigned index);
  std::uint64_t bar_size() const noexcept override { return 0x1000; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  unsigned num_vectors() const noexcept override;
  Result<std::uint32_t> wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) override;
  int interrupt_fd(unsigned vector) override;
  Status set_interrupt_target(unsigned vector, int eventfd) override;
  void set_interrupt_masked(unsigned vector, bool masked) override;
  Status flr() override;

 private:
  bool gone() const noexcept override;
  NicModel& nic_;
  unsigned index_;
};

/// The card's hooks the NIC needs: time, the doorbell kick, and a lockstep step for waits.
struct NicHost {
  Iommu* iommu = nullptr;
  Activity* activity = nullptr;
  bool lockstep = false;
  std::function<std::uint64_t()> now_ns;
  std::function<void()> step;  ///< One lockstep step (takes the card's lock).
};

class NicModel final : public NicCard {
 public:
  NicModel(NicHost host, unsigned max_vfs);
  ~NicModel() override;

  Function& pf() noexcept override { return pf_; }
  Result<Function*> vf(unsigned index) override;
  unsigned max_vfs() const noexcept override { return max_vfs_; }
  unsigned num_vfs() const noexcept override { return num_vfs_.load(); }
  Status set_num_vfs(unsigned n) override;
  Status attach_uplink(UniqueFd fd) override;
  Status surprise_remove(unsigned index) override;
  Status restore(unsigned index) override;

  /// The data path: moves up to a budget of frames per VF and the frames the uplink brought.
  /// Returns frames moved. Called with the card's lock held.
  unsigned service(std::uint64_t now_ns) noexcept;
  /// True when service() has work now (posted descriptors, queued uplink frames).
  bool busy() noexcept;

 private:
  friend class NicPfFunction;
  friend class NicVfFunction;

  // Registers (nic_regs.cpp). Caller holds mu_.
  std::uint32_t pf_read32(std::uint64_t offset) noexcept;
  void pf_write32(std::uint64_t offset, std::uint32_t value) noexcept;
  std::uint32_t vf_read32(unsigned v, std::uint64_t offset) noexcept;
  std::uint64_t vf_read64(unsigned v, std::uint64_t offset) noexcept;
  void vf_write(unsigned v, std::uint64_t offset, std::uint64_t value, unsigned width) noexcept;
  void queue_write(NicVf& f, unsigned q, std::uint64_t reg, std::uint64_t value,
                   unsigned width) noexcept;
  Status set_num_vfs_locked(unsigned n);
  std::uint32_t enable_port(unsigned v) noexcept;
  void reset_vf(unsigned v) noexcept;   ///< FLR: queues, CTRL, MTU, masks; port stays.
  void sync_port(unsigned v) noexcept;  ///< Switch port config from the VF's state.

  // Data path (nic_datapath.cpp). Caller holds mu_.
  unsigned service_tx(unsigned v, NicQueue& q, std::uint64_t now, unsigned budget) noexcept;
  void deliver(unsigned v, std::span<const std::uint8_t> frame) noexcept;
  bool rx_into(unsigned v, NicQueue& q, std::span<const std::uint8_t> frame) noexcept;
  bool post_cqe(unsigned v, NicQueue& q, bool tx, const knic::Cqe& cqe) noexcept;
  void forward(unsigned in_port, std::span<const std::uint8_t> frame) noexcept;
  void ring_fault(unsigned v, NicQueue& q) noexcept;
  void uplink_reader(int fd, int stop_fd) noexcept;
  void stop_uplink() noexcept;

  NicHost host_;
  const unsigned max_vfs_;
  std::mutex mu_;
  std::atomic<unsigned> num_vfs_{0};
  bool num_vfs_err_ = false;
  std::vector<std::unique_ptr<NicVf>> vfs_;
  eswitch::Eswitch switch_;  ///< Ports 0..max_vfs-1: VFs; port max_vfs: the uplink.
  NicPfFunction pf_;
  std::vector<std::unique_ptr<NicVfFunction>> functions_;
  std::vector<std::uint8_t> scratch_;                             ///< Frame being moved.
  std::vector<std::pair<std::uint16_t, knic::RxDesc>> rx_descs_;  ///< Buffers a frame fills.

  // Uplink.
  UniqueFd uplink_;
  UniqueFd uplink_stop_;  ///< eventfd that ends the reader.
  std::thread uplink_thread_;
  std::mutex uplink_mu_;
  std::deque<std::vector<std::uint8_t>> uplink_rx_;  ///< Frames read, not yet switched.
  std::atomic<bool> uplink_pending_{false};
  std::uint64_t uplink_tx_frames_ = 0, uplink_tx_bytes_ = 0;
  std::uint64_t uplink_rx_frames_ = 0, uplink_rx_bytes_ = 0, uplink_drops_ = 0;
  std::uint64_t uplink_tx_drops_ = 0;
  std::atomic<bool> uplink_failed_{false};         ///< The reader stopped on an error or hang-up.
  std::atomic<std::uint64_t> uplink_overflow_{0};  ///< Frames the reader had no room for.
};

}  // namespace keel::fpga::model
