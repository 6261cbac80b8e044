// Private state of the simulated card, shared by its source files.
//
// Locking: `mu` guards the shell and the Verilated card. In lockstep mode the caller's thread
// clocks the card under `mu`; in free-running mode the card thread does, and host threads hand
// it BAR accesses through `req_*` (writes are posted, reads wait for their data).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "keel/fpga/card_storage.h"
#include "keel/fpga/iommu_function.h"
#include "keel/fpga/msix_interrupts.h"
#include "keel/fpga/pf_function.h"
#include "keel/fpga/sim/sim_card.h"
#include "shell.h"
#include "sim_nic.h"

namespace keel::fpga::sim {

class SimPf final : public PfFunctionBase<IommuFunction> {
 public:
  explicit SimPf(SimCard::Impl& card);
  std::uint64_t bar_size() const noexcept override { return 0x4000; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  unsigned num_vectors() const noexcept override { return 1; }

 private:
  bool gone() const noexcept override { return false; }
  SimCard::Impl& card_;
};

class SimVf final : public IommuFunction {
 public:
  SimVf(SimCard::Impl& card, unsigned index);
  std::uint64_t bar_size() const noexcept override { return 0x2000; }
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
  bool gone() const noexcept override;

 private:
  SimCard::Impl& card_;
  unsigned index_;
};

struct SimCard::Impl {
  SimConfig config;
  std::unique_ptr<CardStorage> storage;
  std::unique_ptr<Iommu> iommu;
  std::vector<std::unique_ptr<MsixInterrupts>> irqs;  // per function; [0] is the PF's
  std::unique_ptr<Shell> shell;
  std::unique_ptr<SimPf> pf;
  std::vector<std::unique_ptr<SimVf>> vfs;
  std::unique_ptr<FaultInjector> faults;
  // The NIC half: NIC VF n's interrupts, the uplink's frames, the NicCard.
  std::vector<std::unique_ptr<MsixInterrupts>> nic_irqs;
  NicLink nic_link;
  std::unique_ptr<SimNic> nic;

  mutable std::mutex mu;  // the shell and the RTL

  // Free-running card.
  std::atomic<bool> running{false};
  std::thread thread;
  std::atomic<int> tid{-1};  ///< The free-running thread's kernel thread id.
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  struct Request {
    enum class Kind { mmio, flr, dbg } kind = Kind::mmio;
    MmioOp op;
    DbgOp dbg;
    unsigned fn = 0;
    std::uint64_t* result = nullptr;  // reads: where the data goes
    bool* done = nullptr;             // reads: set under req_mu when the data is there
  };
  std::mutex req_mu;
  std::condition_variable req_cv;   // the card thread waits for work here when idle
  std::condition_variable done_cv;  // readers wait for their data here
  std::deque<Request> requests;
  std::atomic<bool> has_requests{false};
  std::atomic<std::uint64_t> cycles{0};  // mirror of the shell's clock count

  std::uint64_t now_ns() const noexcept;
  bool lockstep() const noexcept { return config.card.lockstep; }

  /// One BAR access: the 8-byte word at `offset` (reads) or a strobed write.
  std::uint64_t mmio_read(unsigned fn, std::uint64_t offset) noexcept;
  void mmio_write(unsigned fn, std::uint64_t offset, std::uint64_t data,
                  std::uint8_t strb) noexcept;
  /// Lockstep: clocks the card (caller holds mu) until the shell's MMIO master is idle.
  void finish_mmio_locked() noexcept;
  /// Clocks the card `n` cycles (caller holds mu); returns completions posted.
  unsigned run_locked(std::uint64_t n) noexcept;
  /// Sends a debug-port request and (lockstep) clocks until the card has taken it.
  void send_dbg(const DbgOp& op);
  /// Requests an FLR of `fn` (or sends a debug request that resets it) and waits, bounded,
  /// until the card reports the reset done. Errors: timeout.
  Status do_flr(unsigned fn, const DbgOp* via_dbg);
  /// Free-running: hands a request to the card thread.
  void post(Request r);
  void run_thread();
};

std::unique_ptr<FaultInjector> make_sim_fault_injector(SimCard::Impl& card);

}  // namespace keel::fpga::sim
