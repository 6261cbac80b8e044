// The reference card: construction, time, arbitration, the free-running thread, VF functions.
#include <pthread.h>

#include <cstdio>
#include <string>

#include <keel/regs/keel_regs.h>

#include "card_impl.h"
#include "keel/thread_cpu.h"

namespace keel::fpga::model {

// ---------------------------------------------------------------- card

Result<std::unique_ptr<ModelCard>> ModelCard::create(const ModelConfig& config) {
  const CardOptions& o = config.card;
  if (o.max_vfs == 0 || o.max_vfs > regs::MAX_VFS) {
    return make_error(Errc::invalid_argument, "max_vfs must be 1.." +
                                                  std::to_string(regs::MAX_VFS) + ", got " +
                                                  std::to_string(o.max_vfs));
  }
  if (o.max_ioq_per_vf == 0 || o.max_ioq_per_vf > 255) {
    return make_error(Errc::invalid_argument,
                      "max_ioq_per_vf must be 1..255, got " + std::to_string(o.max_ioq_per_vf));
  }
  if (config.lba_shift != 9 && config.lba_shift != 12) {
    return make_error(Errc::invalid_argument, "lba_shift must be 9 (512-byte LBAs) or 12 (4 KiB)");
  }
  if (config.mqes < 1 || config.mqes > 0xFFFF || config.mdts < 1 || config.mdts > 8 ||
      config.ns_per_step == 0 || config.commands_per_weight == 0 || config.clock_mhz == 0) {
    return make_error(Errc::invalid_argument,
                      "model config out of range (mqes 1..65535, mdts 1..8, non-zero step, "
                      "commands per weight and clock)");
  }
  auto storage = CardStorage::open(o.image_path, o.storage_bytes);
  if (!storage) return storage.error();

  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->storage = std::move(storage).value();
  // Domains: the NVMe PF and VFs (0..64), then the NIC PF and its VFs (kNicPfFunction..).
  impl->iommu = std::make_unique<Iommu>(nic_vf_function(o.max_vfs - 1) + 1);
  impl->present = std::make_unique<std::atomic<bool>[]>(o.max_vfs);
  impl->pf = std::make_unique<PfFunction>(*impl);
  for (unsigned i = 0; i < o.max_vfs; ++i) {
    ControllerParams p;
    p.vf_index = i;
    p.function = i + 1;
    p.max_ioq = o.max_ioq_per_vf;
    p.mqes = config.mqes;
    p.mdts = config.mdts;
    p.lba_shift = config.lba_shift;
    p.clock_mhz = config.clock_mhz;
    impl->ctrls.push_back(
        std::make_unique<VfController>(p, *impl->iommu, *impl->storage, impl->activity));
    impl->vfs.push_back(std::make_unique<VfFunction>(*impl, i));
  }
  impl->faults = make_fault_injector(*impl);
  NicHost nic_host;
  nic_host.iommu = impl->iommu.get();
  nic_host.activity = &impl->activity;
  nic_host.lockstep = o.lockstep;
  nic_host.now_ns = [c = impl.get()] { return c->now_ns(); };
  nic_host.step = [c = impl.get()] {
    std::lock_guard lock(c->mu);
    c->round();
    c->virtual_ns.fetch_add(c->config.ns_per_step, std::memory_order_release);
  };
  impl->nic = std::make_unique<NicModel>(std::move(nic_host), o.max_vfs);
  std::unique_ptr<ModelCard> card(new ModelCard(std::move(impl)));
  if (!o.lockstep) {
    card->impl_->running.store(true);
    card->impl_->thread = std::thread([c = card->impl_.get()] { c->run(); });
  }
  return card;
}

ModelCard::ModelCard(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ModelCard::~ModelCard() {
  if (impl_->thread.joinable()) {
    impl_->running.store(false);
    impl_->activity.epoch.fetch_add(1, std::memory_order_seq_cst);
    impl_->activity.epoch.notify_all();
    impl_->thread.join();
  }
}

std::string ModelCard::describe() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "model card: %llu MiB storage (%llu LBAs), %u of %u VFs, %s",
                static_cast<unsigned long long>(impl_->storage->bytes() >> 20),
                static_cast<unsigned long long>(impl_->storage_lbas()), num_vfs(),
                impl_->config.card.max_vfs, lockstep() ? "lockstep" : "free-running");
  return buf;
}

Function& ModelCard::pf() noexcept { return *impl_->pf; }

Result<Function*> ModelCard::vf(unsigned index) {
  if (index >= num_vfs()) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) + " is not present (" +
                                           std::to_string(num_vfs()) +
                                           " VFs enabled; enable more with set_num_vfs)");
  }
  return static_cast<Function*>(impl_->vfs[index].get());
}

unsigned ModelCard::max_vfs() const noexcept { return impl_->config.card.max_vfs; }
unsigned ModelCard::num_vfs() const noexcept { return impl_->num_vfs.load(); }

Status ModelCard::set_num_vfs(unsigned n) {
  std::lock_guard lock(impl_->mu);
  return impl_->set_num_vfs_locked(n);
}

bool ModelCard::lockstep() const noexcept { return impl_->config.card.lockstep; }

int ModelCard::thread_id() const noexcept { return impl_->tid.load(std::memory_order_acquire); }

unsigned ModelCard::step(unsigned n) {
  if (!lockstep()) return 0;
  unsigned done = 0;
  for (unsigned i = 0; i < n; ++i) {
    std::lock_guard lock(impl_->mu);
    done += impl_->round();
    impl_->virtual_ns.fetch_add(impl_->config.ns_per_step, std::memory_order_release);
  }
  return done;
}

std::uint64_t ModelCard::now_ns() const noexcept { return impl_->now_ns(); }
FaultInjector* ModelCard::faults() noexcept { return impl_->faults.get(); }
NicCard* ModelCard::nic() noexcept { return impl_->nic.get(); }
Iommu& ModelCard::iommu() noexcept { return *impl_->iommu; }

std::uint64_t ModelCard::Impl::now_ns() const noexcept {
  if (config.card.lockstep) return virtual_ns.load(std::memory_order_acquire);
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

std::uint64_t ModelCard::Impl::storage_lbas() const noexcept {
  return storage->bytes() >> config.lba_shift;
}

unsigned ModelCard::Impl::round() noexcept {
  const unsigned n = num_vfs.load(std::memory_order_relaxed);
  const std::uint64_t now = now_ns();
  unsigned done = nic->service(now);
  if (n == 0) return done;
  for (unsigned k = 0; k < n; ++k) {
    VfController& c = *ctrls[(rr + k) % n];
    const unsigned weight = c.resources().weight == 0 ? 1 : c.resources().weight;
    done += c.service(now, weight * config.commands_per_weight);
  }
  rr = (rr + 1) % n;
  return done;
}

bool ModelCard::Impl::any_busy() noexcept {
  if (nic->busy()) return true;
  const unsigned n = num_vfs.load(std::memory_order_relaxed);
  const std::uint64_t now = now_ns();
  for (unsigned i = 0; i < n; ++i) {
    if (ctrls[i]->busy(now)) return true;
  }
  return false;
}

void ModelCard::Impl::run() {
  pthread_setname_np(pthread_self(), "keel-card");
  tid.store(this_thread_tid(), std::memory_order_release);
  // Like silicon that clock-gates when idle: poll for a short while after the last piece of
  // work, then sleep until the host writes a register or doorbell. Sleeping early matters on a
  // shared host: a thread that spins gets scheduled late when work does arrive.
  constexpr auto kSpin = std::chrono::microseconds(30);
  auto last_work = std::chrono::steady_clock::now();
  while (running.load(std::memory_order_relaxed)) {
    unsigned done;
    bool busy;
    {
      std::lock_guard lock(mu);
      done = round();
      busy = done == 0 && any_busy();
    }
    if (done > 0) {
      last_work = std::chrono::steady_clock::now();
      continue;
    }
    if (busy) {
      // Timers pending, a full completion queue or a rate limit: nothing to do for a moment.
      std::this_thread::sleep_for(std::chrono::microseconds(20));
      continue;
    }
    if (std::chrono::steady_clock::now() - last_work < kSpin) {
      __builtin_ia32_pause();
      continue;
    }
    // Announce the sleep, then look once more: a host store either is seen here or sees
    // `sleeping` and bumps the epoch (Activity::kick).
    activity.sleeping.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint64_t seen = activity.epoch.load(std::memory_order_seq_cst);
    bool work;
    {
      std::lock_guard lock(mu);
      work = any_busy();
    }
    if (!work && running.load()) activity.epoch.wait(seen, std::memory_order_seq_cst);
    activity.sleeping.store(false, std::memory_order_relaxed);
    last_work = std::chrono::steady_clock::now();
  }
}

// ---------------------------------------------------------------- VF functions

VfFunction::VfFunction(ModelCard::Impl& card, unsigned index)
    : IommuFunction(*card.iommu, index + 1), card_(card), index_(index) {}

bool VfFunction::gone() const noexcept {
  return !card_.present[index_].load(std::memory_order_acquire) || card_.ctrls[index_]->removed();
}

std::uint32_t VfFunction::read32(std::uint64_t offset) noexcept {
  if (!card_.present[index_].load(std::memory_order_acquire)) return 0xFFFFFFFFu;
  return card_.ctrls[index_]->read32(offset);
}

std::uint64_t VfFunction::read64(std::uint64_t offset) noexcept {
  if (!card_.present[index_].load(std::memory_order_acquire)) return ~std::uint64_t{0};
  return card_.ctrls[index_]->read64(offset);
}

void VfFunction::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (!card_.present[index_].load(std::memory_order_acquire)) return;
  card_.ctrls[index_]->write32(offset, value);
}

void VfFunction::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (!card_.present[index_].load(std::memory_order_acquire)) return;
  card_.ctrls[index_]->write64(offset, value);
}

unsigned VfFunction::num_vectors() const noexcept {
  return card_.ctrls[index_]->interrupts().vectors();
}

Result<std::uint32_t> VfFunction::wait_interrupt(unsigned vector,
                                                 std::chrono::nanoseconds timeout) {
  return card_.ctrls[index_]->interrupts().wait(
      index_, vector, timeout, card_.config.card.lockstep, [&] { return card_.now_ns(); },
      [&] {
        std::lock_guard lock(card_.mu);
        card_.round();
        card_.virtual_ns.fetch_add(card_.config.ns_per_step, std::memory_order_release);
      },
      [&] { return gone(); });
}

int VfFunction::interrupt_fd(unsigned vector) {
  return card_.ctrls[index_]->interrupts().fd(vector);
}

Status VfFunction::set_interrupt_target(unsigned vector, int eventfd) {
  return card_.ctrls[index_]->interrupts().set_target(vector, eventfd);
}

void VfFunction::set_interrupt_masked(unsigned vector, bool masked) {
  card_.ctrls[index_]->interrupts().set_masked(vector, masked);
}

Status VfFunction::flr() {
  std::lock_guard lock(card_.mu);
  if (!card_.present[index_].load()) {
    return make_error(Errc::gone, "VF " + std::to_string(index_) + " is not present");
  }
  if (card_.ctrls[index_]->removed()) {
    return make_error(Errc::gone, "VF " + std::to_string(index_) + " was removed");
  }
  card_.ctrls[index_]->flr();
  return {};
}

}  // namespace keel::fpga::model
