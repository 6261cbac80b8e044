// The simulated card: construction, time, the free-running thread and BAR access plumbing.
#include <cstdio>
#include <string>

#include <keel/regs/keel_regs.h>

#include "keel/thread_cpu.h"
#include "sim_impl.h"

namespace keel::fpga::sim {
namespace {

constexpr unsigned kResetCycles = 8;
constexpr unsigned kNsPerCycle = 4;                  // 250 MHz
constexpr std::uint64_t kFlrMaxCycles = 8'000'000;   // 32 ms of card time
constexpr auto kFreeWait = std::chrono::seconds(2);  // free-running card: bound on host waits

// The Verilated card's parameters (set by fpga/sim/CMakeLists.txt with the -G options).
#ifndef KEEL_SIM_NUM_VFS
#error "KEEL_SIM_NUM_VFS must name the NUM_VFS the RTL was Verilated with"
#endif
#ifndef KEEL_SIM_NUM_IOQ
#error "KEEL_SIM_NUM_IOQ must name the NUM_IOQ the RTL was Verilated with"
#endif

}  // namespace

unsigned SimCard::hardware_vfs() noexcept { return KEEL_SIM_NUM_VFS; }
unsigned SimCard::hardware_ioq() noexcept { return KEEL_SIM_NUM_IOQ; }

Result<std::unique_ptr<SimCard>> SimCard::create(const SimConfig& config) {
  const CardOptions& o = config.card;
  if (o.max_vfs == 0 || o.max_vfs > hardware_vfs()) {
    return make_error(Errc::invalid_argument,
                      "max_vfs must be 1.." + std::to_string(hardware_vfs()) +
                          " on the simulated card (its RTL is built with NUM_VFS=" +
                          std::to_string(hardware_vfs()) + "), got " + std::to_string(o.max_vfs));
  }
  if (o.max_ioq_per_vf == 0 || o.max_ioq_per_vf > hardware_ioq()) {
    return make_error(Errc::invalid_argument,
                      "max_ioq_per_vf must be 1.." + std::to_string(hardware_ioq()) +
                          " on the simulated card (NUM_IOQ=" + std::to_string(hardware_ioq()) +
                          "), got " + std::to_string(o.max_ioq_per_vf));
  }
  if (config.cycles_per_step == 0 || config.cycles_per_batch == 0) {
    return make_error(Errc::invalid_argument,
                      "sim config: cycles_per_step and cycles_per_batch must be non-zero");
  }
  auto storage = CardStorage::open(o.image_path, o.storage_bytes);
  if (!storage) return storage.error();

  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->storage = std::move(storage).value();
  impl->iommu = std::make_unique<Iommu>(nic_vf_function(kSimNicVfs - 1) + 1);
  for (unsigned i = 0; i < kSimNicVfs; ++i) {
    impl->nic_irqs.push_back(std::make_unique<MsixInterrupts>(2 * regs::NIC_MAX_QUEUES));
  }
  impl->irqs.push_back(std::make_unique<MsixInterrupts>(1));
  for (unsigned i = 0; i < o.max_vfs; ++i) {
    impl->irqs.push_back(std::make_unique<MsixInterrupts>(o.max_ioq_per_vf + 1));
  }
  ShellConfig sc;
  sc.max_vfs = o.max_vfs;
  sc.max_ioq = o.max_ioq_per_vf;
  sc.host_read_latency = config.host_read_latency;
  sc.ddr_read_latency = config.ddr_read_latency;
  sc.write_resp_latency = config.write_resp_latency;
  sc.ats_latency = config.ats_latency;
  sc.stall_percent = config.stall_percent;
  sc.stall_seed = config.stall_seed;
  impl->shell = std::make_unique<Shell>(sc, *impl->iommu, *impl->storage, impl->irqs,
                                        impl->nic_irqs, impl->nic_link);
  impl->shell->reset(kResetCycles);
  impl->pf = std::make_unique<SimPf>(*impl);
  for (unsigned i = 0; i < o.max_vfs; ++i) impl->vfs.push_back(std::make_unique<SimVf>(*impl, i));
  impl->faults = make_sim_fault_injector(*impl);
  impl->nic = std::make_unique<SimNic>(*impl);
  std::unique_ptr<SimCard> card(new SimCard(std::move(impl)));
  if (!o.lockstep) {
    card->impl_->running.store(true);
    card->impl_->thread = std::thread([c = card->impl_.get()] { c->run_thread(); });
  }
  return card;
}

SimCard::SimCard(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SimCard::~SimCard() {
  impl_->nic.reset();  // its uplink reader first
  if (impl_->thread.joinable()) {
    impl_->running.store(false);
    {
      std::lock_guard lock(impl_->req_mu);
      impl_->req_cv.notify_all();
    }
    impl_->thread.join();
  }
}

std::string SimCard::describe() const {
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "sim card (Verilated RTL, %u VFs x %u IO queues in hardware): %llu MiB storage "
                "(%llu LBAs), %u of %u VFs, %s",
                hardware_vfs(), hardware_ioq(),
                static_cast<unsigned long long>(impl_->storage->bytes() >> 20),
                static_cast<unsigned long long>(impl_->storage->bytes() >> 9), num_vfs(),
                impl_->config.card.max_vfs, lockstep() ? "lockstep" : "free-running");
  return buf;
}

Function& SimCard::pf() noexcept { return *impl_->pf; }

Result<Function*> SimCard::vf(unsigned index) {
  if (index >= num_vfs()) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) + " is not present (" +
                                           std::to_string(num_vfs()) +
                                           " VFs enabled; enable more with set_num_vfs)");
  }
  return static_cast<Function*>(impl_->vfs[index].get());
}

unsigned SimCard::max_vfs() const noexcept { return impl_->config.card.max_vfs; }
unsigned SimCard::num_vfs() const noexcept { return impl_->shell->num_vfs(); }

Status SimCard::set_num_vfs(unsigned n) {
  const unsigned max = max_vfs();
  const unsigned cur = num_vfs();
  if (n > max) {
    impl_->mmio_write(0, 0x08, std::uint64_t{n & 0xFF} << 32, 0xF0);  // sets NUM_VFS_ERR
    return make_error(Errc::invalid_argument, "the card has " + std::to_string(max) +
                                                  " VFs; cannot enable " + std::to_string(n));
  }
  if (cur != 0 && n != 0 && n != cur) {
    impl_->mmio_write(0, 0x08, std::uint64_t{n} << 32, 0xF0);
    return make_error(Errc::busy, std::to_string(cur) + " VFs are enabled; set the count to 0 " +
                                      "before changing it to " + std::to_string(n));
  }
  impl_->mmio_write(0, 0x08, std::uint64_t{n} << 32, 0xF0);
  // The write completes once the card has (dis)connected every VF; a read orders after it.
  (void)impl_->mmio_read(0, 0x18);
  if (num_vfs() != n) {
    return make_error(Errc::unavailable, "the card did not take NUM_VFS=" + std::to_string(n));
  }
  return {};
}

bool SimCard::lockstep() const noexcept { return impl_->lockstep(); }

int SimCard::thread_id() const noexcept { return impl_->tid.load(std::memory_order_acquire); }

unsigned SimCard::step(unsigned n) {
  if (!lockstep()) return 0;
  std::lock_guard lock(impl_->mu);
  return impl_->run_locked(std::uint64_t{n} * impl_->config.cycles_per_step);
}

unsigned SimCard::run_cycles(std::uint64_t cycles) {
  if (!lockstep()) return 0;
  std::lock_guard lock(impl_->mu);
  return impl_->run_locked(cycles);
}

std::uint64_t SimCard::now_ns() const noexcept { return impl_->now_ns(); }
FaultInjector* SimCard::faults() noexcept { return impl_->faults.get(); }
NicCard* SimCard::nic() noexcept { return impl_->nic.get(); }
Iommu& SimCard::iommu() noexcept { return *impl_->iommu; }

SimStats SimCard::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->shell->stats();
}

// ---------------------------------------------------------------- Impl

std::uint64_t SimCard::Impl::now_ns() const noexcept {
  if (lockstep()) return cycles.load(std::memory_order_acquire) * kNsPerCycle;
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

unsigned SimCard::Impl::run_locked(std::uint64_t n) noexcept {
  constexpr std::uint64_t kMinSkip = 16;
  const std::uint64_t before = shell->stats().completions;
  std::uint64_t i = 0;
  while (i < n) {
    if (config.fast_forward && n - i > kMinSkip && shell->can_skip()) {
      std::uint64_t k = n - i - 1;
      const std::uint32_t wake = shell->wake();
      if (k > std::uint64_t{wake} - 1) k = wake == 0 ? 0 : wake - 1;
      if (k > 0xFFFF0000u) k = 0xFFFF0000u;
      if (k >= kMinSkip) {
        shell->skip(static_cast<std::uint32_t>(k));
        i += k + 1;
        continue;
      }
    }
    shell->cycle();
    ++i;
  }
  cycles.store(shell->cycles(), std::memory_order_release);
  return static_cast<unsigned>(shell->stats().completions - before);
}

void SimCard::Impl::finish_mmio_locked() noexcept {
  while (shell->mmio_busy()) shell->cycle();
  cycles.store(shell->cycles(), std::memory_order_release);
}

void SimCard::Impl::post(Request r) {
  {
    std::lock_guard lock(req_mu);
    requests.push_back(r);
    has_requests.store(true, std::memory_order_release);
  }
  req_cv.notify_one();
}

std::uint64_t SimCard::Impl::mmio_read(unsigned fn, std::uint64_t offset) noexcept {
  MmioOp op;
  op.write = false;
  op.fn = static_cast<std::uint8_t>(fn);
  op.addr = static_cast<std::uint16_t>(offset & ~std::uint64_t{7});
  if (lockstep()) {
    std::lock_guard lock(mu);
    finish_mmio_locked();
    shell->start_mmio(op);
    finish_mmio_locked();
    return shell->mmio_result();
  }
  std::uint64_t result = ~std::uint64_t{0};
  bool done = false;
  Request r;
  r.op = op;
  r.result = &result;
  r.done = &done;
  post(r);
  std::unique_lock lock(req_mu);
  done_cv.wait_for(lock, kFreeWait, [&] { return done; });
  return done ? result : ~std::uint64_t{0};
}

void SimCard::Impl::mmio_write(unsigned fn, std::uint64_t offset, std::uint64_t data,
                               std::uint8_t strb) noexcept {
  MmioOp op;
  op.write = true;
  op.fn = static_cast<std::uint8_t>(fn);
  op.addr = static_cast<std::uint16_t>(offset & ~std::uint64_t{7});
  op.data = data;
  op.strb = strb;
  if (lockstep()) {
    std::lock_guard lock(mu);
    finish_mmio_locked();
    shell->start_mmio(op);
    finish_mmio_locked();
    return;
  }
  Request r;  // posted, as PCIe memory writes are
  r.op = op;
  post(r);
}

void SimCard::Impl::send_dbg(const DbgOp& op) {
  if (lockstep()) {
    std::lock_guard lock(mu);
    shell->request_dbg(op);
    while (shell->side_band_pending()) shell->cycle();
    shell->cycle();  // the card acts on it
    cycles.store(shell->cycles(), std::memory_order_release);
    return;
  }
  Request r;
  r.kind = Request::Kind::dbg;
  r.dbg = op;
  post(r);
}

Status SimCard::Impl::do_flr(unsigned fn, const DbgOp* via_dbg) {
  if (lockstep()) {
    std::lock_guard lock(mu);
    const std::uint64_t before = shell->flr_done(fn);
    if (via_dbg != nullptr)
      shell->request_dbg(*via_dbg);
    else
      shell->request_flr(fn);
    for (std::uint64_t i = 0; i < kFlrMaxCycles && shell->flr_done(fn) == before; ++i) {
      shell->cycle();
    }
    cycles.store(shell->cycles(), std::memory_order_release);
    if (shell->flr_done(fn) == before) {
      return make_error(Errc::timeout, "function " + std::to_string(fn) +
                                           " did not finish its reset within " +
                                           std::to_string(kFlrMaxCycles) + " cycles");
    }
    return {};
  }
  const std::uint64_t before = shell->flr_done(fn);
  Request r;
  if (via_dbg != nullptr) {
    r.kind = Request::Kind::dbg;
    r.dbg = *via_dbg;
  } else {
    r.kind = Request::Kind::flr;
    r.fn = fn;
  }
  post(r);
  const auto deadline = std::chrono::steady_clock::now() + kFreeWait;
  while (shell->flr_done(fn) == before) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return make_error(Errc::timeout,
                        "function " + std::to_string(fn) + " did not finish its reset in 2 s");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  return {};
}

void SimCard::Impl::run_thread() {
  tid.store(this_thread_tid(), std::memory_order_release);
  std::uint64_t* read_result = nullptr;
  bool* read_done = nullptr;
  std::unique_lock lock(mu);
  while (running.load(std::memory_order_relaxed)) {
    for (unsigned i = 0; i < config.cycles_per_batch; ++i) {
      if (!shell->mmio_busy() && read_done != nullptr) {
        {
          std::lock_guard rl(req_mu);
          *read_result = shell->mmio_result();
          *read_done = true;
        }
        done_cv.notify_all();
        read_done = nullptr;
      }
      if (!shell->mmio_busy() && read_done == nullptr &&
          has_requests.load(std::memory_order_acquire)) {
        std::lock_guard rl(req_mu);
        // Side-band requests go straight to the shell; one BAR access at a time.
        while (!requests.empty()) {
          Request& r = requests.front();
          if (r.kind == Request::Kind::flr) {
            shell->request_flr(r.fn);
          } else if (r.kind == Request::Kind::dbg) {
            shell->request_dbg(r.dbg);
          } else {
            shell->start_mmio(r.op);
            read_result = r.result;
            read_done = r.done;
            requests.pop_front();
            break;
          }
          requests.pop_front();
        }
        has_requests.store(!requests.empty(), std::memory_order_release);
      }
      shell->cycle();
    }
    cycles.store(shell->cycles(), std::memory_order_release);
    if (shell->quiet() && read_done == nullptr && !has_requests.load(std::memory_order_acquire)) {
      // Nothing on the buses: let host threads run, and wake early for a request.
      lock.unlock();
      {
        std::unique_lock rl(req_mu);
        req_cv.wait_for(rl, std::chrono::microseconds(50), [&] {
          return has_requests.load(std::memory_order_acquire) ||
                 !running.load(std::memory_order_relaxed);
        });
      }
      lock.lock();
    } else {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    }
  }
  if (read_done != nullptr) {
    std::lock_guard rl(req_mu);
    *read_done = true;
    done_cv.notify_all();
  }
}

}  // namespace keel::fpga::sim
