// The paravisor's control side: device setup, workers, and the failover state machine.
#include "keel/vmm/paravisor.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "keel/log.h"
#include "queue_worker.h"

namespace keel::vmm {

namespace drv = drivers::nvme;
using virtio::bit;
namespace f = virtio::feature;

constexpr log::Logger kLog{"paravisor"};

/// The paravisor as its queue workers reach it: the failover state machine, the VF controller
/// under the paravisor's lock, the guest notifier, the worker threads' run flag and probe tick.
class Paravisor::Link final : public worker::WorkerLink {
 public:
  explicit Link(Paravisor& pv) : pv_(pv) {}
  PathState state() const noexcept override { return pv_.state(); }
  std::uint64_t vf_epoch() const noexcept override {
    return pv_.vf_epoch_.load(std::memory_order_acquire);
  }
  void vf_failed(const std::string& reason) override { pv_.vf_failed(reason); }
  void worker_drained() override { pv_.worker_drained(); }
  bool with_controller(bool only_active, const std::function<void(drv::Controller&)>& fn) override {
    std::lock_guard lock(pv_.mu_);
    if (pv_.ctrl_ == nullptr || (only_active && pv_.state() != PathState::active)) return false;
    fn(*pv_.ctrl_);
    return true;
  }
  void notify(unsigned queue) override {
    if (pv_.notify_) pv_.notify_(queue);
  }
  bool running() const noexcept override { return pv_.running_.load(std::memory_order_acquire); }
  int stop_fd() const noexcept override { return pv_.stop_fd_.get(); }
  void tick() override { pv_.maybe_probe(); }
  Result<fpga::DmaBuffer> vf_dma(std::size_t bytes) override {
    // Not zeroed: the bounce pool is always written before it is read.
    if (pv_.config_.arena != nullptr) return pv_.config_.arena->alloc(bytes, false);
    if (pv_.vf_ == nullptr) return make_error(Errc::unavailable, "no VF");
    return pv_.vf_->alloc_dma(bytes);
  }
  std::unique_ptr<drv::QueuePair> take_kept_queue_pair() override {
    // Under mu_ (with_controller): the pool belongs to the controller of now.
    if (pv_.kept_pool_.empty()) return nullptr;
    std::unique_ptr<drv::QueuePair> q = std::move(pv_.kept_pool_.back());
    pv_.kept_pool_.pop_back();
    pv_.kept_qps_.fetch_add(1, std::memory_order_relaxed);
    return q;
  }

 private:
  Paravisor& pv_;
};

const char* to_string(PathState s) noexcept {
  switch (s) {
    case PathState::absent: return "absent";
    case PathState::ready: return "ready";
    case PathState::active: return "active";
    case PathState::draining: return "draining";
    case PathState::fallback: return "fallback";
  }
  return "unknown";
}

Paravisor::Paravisor(fpga::Function* vf, const Clock& clock, fpga::Stepper& stepper,
                     GuestMemory& memory, HostStorage& host, const ParavisorConfig& config)
    : vf_(vf), clock_(clock), stepper_(stepper), memory_(memory), host_(host), config_(config) {}

Result<std::unique_ptr<Paravisor>> Paravisor::create(fpga::Function* vf, const Clock& clock,
                                                     fpga::Stepper& stepper, GuestMemory& memory,
                                                     HostStorage& host,
                                                     const ParavisorConfig& config) {
  if (config.queues == 0 || config.queues > 64) {
    return make_error(Errc::invalid_argument, "queues must be 1..64");
  }
  if (config.max_queue_size == 0 || config.max_queue_size > 1024 ||
      (config.max_queue_size & (config.max_queue_size - 1)) != 0) {
    return make_error(Errc::invalid_argument, "max_queue_size must be a power of two up to 1024");
  }
  if (config.seg_max == 0 || config.seg_max > 1024) {
    return make_error(Errc::invalid_argument, "seg_max must be 1..1024");
  }
  if (config.size_max < 4096) {
    return make_error(Errc::invalid_argument, "size_max must be at least 4096 bytes (a page)");
  }
  if (config.block_bytes < 512 || config.block_bytes > QueueWorker::kChunkBytes ||
      (config.block_bytes & (config.block_bytes - 1)) != 0) {
    return make_error(Errc::invalid_argument,
                      "block_bytes must be a power of two from 512 to 128 KiB");
  }
  if (config.max_request_bytes < 512 || config.max_request_bytes > (64u << 20) ||
      config.max_request_bytes % 512 != 0) {
    return make_error(Errc::invalid_argument,
                      "max_request_bytes must be a multiple of 512 from 512 to 64 MiB");
  }
  std::unique_ptr<Paravisor> pv(new Paravisor(vf, clock, stepper, memory, host, config));
  pv->capacity_ = config.capacity_sectors;
  pv->block_bytes_ = 0;  // the first VF bring-up decides; 512 without one
  if (vf != nullptr) {
    if (Status st = pv->bring_up_vf(); !st.ok()) {
      pv->transition(PathState::fallback, "VF bring-up failed: " + to_string(st.error()));
    }
  }
  pv->config_.restore = nullptr;  // the caller's, read during create() only
  if (pv->block_bytes_ == 0) pv->block_bytes_ = config.block_bytes;
  if (pv->capacity_ == 0) {
    return make_error(Errc::invalid_argument,
                      "disk size unknown: no VF answered and capacity_sectors is 0");
  }
  if (config.confidential) {
    if (Status st = pv->make_shared_pool(); !st.ok()) return st.error();
  }
  const std::uint64_t slice = std::uint64_t{QueueWorker::kPoolChunks} * QueueWorker::kChunkBytes;
  pv->link_ = std::make_unique<Link>(*pv);
  const worker::WorkerPorts ports{*pv->link_, memory, vf, clock, stepper};
  for (unsigned q = 0; q < config.queues; ++q) {
    auto ch = host.open_channel();
    if (!ch) return ch.error();
    auto client = HostServiceClient::attach(*ch);
    if (!client) return client.error();
    worker::WorkerConfig wc;
    wc.index = q;
    wc.max_queue_size = config.max_queue_size;
    wc.seg_max = config.seg_max;
    wc.size_max = config.size_max;
    wc.max_request_bytes = config.max_request_bytes;
    wc.capacity_sectors = pv->capacity_;
    wc.block_bytes = pv->block_bytes_;
    wc.serial = config.serial;
    wc.confidential = config.confidential;
    wc.interrupts = config.threads;
    wc.command_timeout = config.command_timeout;
    wc.quiesce_timeout = config.quiesce_timeout.count() > 0
                             ? config.quiesce_timeout
                             : config.command_timeout * 2 + config.admin_timeout * 2;
    wc.max_sleep =
        std::min<std::chrono::nanoseconds>(config.probe_interval, std::chrono::milliseconds(100));
    if (pv->pool_ != nullptr) {
      wc.pool = pv->pool_ + q * slice;
      wc.pool_addr = pv->pool_addr_ + q * slice;
    }
    pv->workers_.push_back(std::make_unique<QueueWorker>(wc, ports, std::move(client).value()));
  }
  return pv;
}

Status Paravisor::make_shared_pool() {
  // The host is untrusted: it must reach none of this guest's RAM, only the pool.
  for (const HostRegionInfo& h : host_.regions()) {
    for (const GuestMemory::Region& g : memory_.regions()) {
      struct stat st {};
      if (fstat(g.fd, &st) != 0) continue;
      if (static_cast<std::uint64_t>(st.st_dev) == h.dev &&
          static_cast<std::uint64_t>(st.st_ino) == h.ino) {
        return make_error(Errc::invalid_argument,
                          "confidential guest: the host storage service maps this guest's RAM "
                          "(start it without guest memory; the paravisor shares a pool with it)");
      }
    }
  }
  pool_bytes_ = std::uint64_t{config_.queues} * QueueWorker::kPoolChunks * QueueWorker::kChunkBytes;
  pool_fd_ = memfd_create("keel-pv-shared-pool", MFD_CLOEXEC);
  if (pool_fd_ < 0) {
    return make_error(Errc::io_error, std::string("memfd_create: ") + std::strerror(errno));
  }
  if (ftruncate(pool_fd_, static_cast<off_t>(pool_bytes_)) != 0) {
    return make_error(Errc::io_error,
                      std::string("sizing the shared pool: ") + std::strerror(errno));
  }
  void* p = mmap(nullptr, pool_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, pool_fd_, 0);
  if (p == MAP_FAILED) {
    return make_error(Errc::io_error,
                      std::string("mapping the shared pool: ") + std::strerror(errno));
  }
  pool_ = static_cast<std::byte*>(p);
  auto at = host_.add_shared_region(pool_fd_, 0, pool_bytes_);
  if (!at) return at.error();
  pool_addr_ = *at;
  return {};
}

Paravisor::~Paravisor() {
  stop();
  workers_.clear();
  if (vf_ != nullptr && !config_.confidential) memory_.unmap_from_device(*vf_);
  kept_pool_.clear();  // (before their controller)
  ctrl_.reset();
  // The host service keeps its own mapping of the pool until it is destroyed.
  if (pool_ != nullptr) munmap(pool_, pool_bytes_);
  if (pool_fd_ >= 0) close(pool_fd_);
}

Status Paravisor::bring_up_vf() {
  drv::ControllerConfig cc;
  cc.admin_timeout = config_.admin_timeout;
  cc.io_queues = static_cast<std::uint16_t>(config_.queues);
  cc.arena = config_.arena;
  if (!config_.confidential) {
    // IOVA = GPA: guest RAM must stay below where the driver's own buffers go, and clear of
    // the DMA arena's window.
    const fpga::DmaArena* a = config_.arena;
    for (const GuestMemory::Region& r : memory_.regions()) {
      if (a != nullptr && r.gpa < a->base() + a->size() && a->base() < r.gpa + r.bytes) {
        vf_refused_ = true;
        return make_error(Errc::invalid_argument,
                          "guest RAM overlaps the VF driver's DMA arena at IOVA " +
                              std::to_string(a->base()) + ": the VF cannot map it at IOVA = GPA");
      }
      if (r.gpa + r.bytes > fpga::kDmaAllocBase) {
        vf_refused_ = true;  // this memory table never fits: no probing until a hot-add
        char b[160];
        std::snprintf(b, sizeof b,
                      "guest RAM at GPA 0x%llx-0x%llx reaches 2^52, where the VF driver's own "
                      "DMA buffers live; the VF cannot map it at IOVA = GPA",
                      static_cast<unsigned long long>(r.gpa),
                      static_cast<unsigned long long>(r.gpa + r.bytes - 1));
        return make_error(Errc::invalid_argument, b);
      }
    }
  }
  // Keepalive: the controller a previous process left running, taken over as it is; if the
  // device is not as saved (reset, FLR) or the state does not fit, the full bring-up below.
  bool taken_over = false;
  auto c = [&]() -> Result<std::unique_ptr<drv::Controller>> {
    if (config_.restore != nullptr && config_.arena != nullptr) {
      auto r = drv::Controller::restore(*vf_, clock_, stepper_, config_.restore->controller, cc);
      if (r) {
        taken_over = true;
        return r;
      }
      kLog.warn("keepalive: the VF cannot be taken over as it runs (%s); resetting it",
                to_string(r.error()).c_str());
    }
    return drv::Controller::open(*vf_, clock_, stepper_, cc);
  }();
  if (!c) return c.error();
  // Every queue pair taken over now, before anything else takes memory from the arena (a
  // worker's bounce pool must not land on a live queue); the workers take them on their first
  // pass. One that cannot be restored is deleted on the device, its id free again. (Declared
  // after the controller: on an error below they go first.)
  std::vector<std::unique_ptr<drv::QueuePair>> pool;
  if (taken_over) {
    for (const drv::SavedQueuePair& q : config_.restore->queue_pairs) {
      auto qp = (*c)->restore_queue_pair(q);
      if (qp) {
        pool.push_back(std::move(qp).value());
      } else {
        kLog.warn("keepalive: queue pair %u not taken over: %s", static_cast<unsigned>(q.qid),
                  to_string(qp.error()).c_str());
        (*c)->abandon_queue_pair(q.qid);
      }
    }
  }
  if (!config_.confidential) {
    memory_.unmap_from_device(*vf_);
    if (Status st = memory_.map_for_device(*vf_); !st.ok()) return st;
  }
  // The guest addresses 512-byte sectors; the VF path converts them to the namespace's LBAs.
  // The guest is told the LBA size (blk_size) once: a VF formatted differently later (after
  // the guest started without one) cannot serve it.
  const std::uint32_t lba = (*c)->block_bytes();
  if (lba < 512 || lba > QueueWorker::kChunkBytes || (lba & (lba - 1)) != 0 ||
      (block_bytes_ != 0 && lba != block_bytes_)) {
    vf_refused_ = true;  // a reformat comes with a hot-add (vf_arrived)
    return make_error(Errc::device_error,
                      "the VF's namespace has " + std::to_string(lba) +
                          "-byte LBAs; this guest's disk has " + std::to_string(block_bytes_) +
                          "-byte blocks (format the namespace with " +
                          std::to_string(block_bytes_ != 0 ? block_bytes_ : 512) + "-byte LBAs)");
  }
  const std::uint64_t cap = (*c)->block_count() * lba / 512;
  if (capacity_ != 0 && cap != capacity_) {
    return make_error(Errc::device_error, "the VF's namespace has " + std::to_string(cap) +
                                              " sectors; the guest's disk has " +
                                              std::to_string(capacity_));
  }
  capacity_ = cap;
  block_bytes_ = lba;
  kept_pool_ = std::move(pool);
  ctrl_ = std::move(c).value();
  transition(PathState::active,
             taken_over ? "VF controller taken over running (keepalive)" : "VF controller up");
  return {};
}

void Paravisor::transition(PathState to, const std::string& reason) {
  const PathState from = state_.exchange(to, std::memory_order_acq_rel);
  log_.push_back(Transition{from, to, reason, clock_.now_ns()});
  if (to == PathState::draining || (to == PathState::fallback && from == PathState::absent)) {
    to_fallback_.fetch_add(1);
  }
  if (to == PathState::active && from != PathState::absent) to_vf_.fetch_add(1);
  // Losing the VF is worth a warning; every other move is the state machine doing its job.
  kLog.logf(to == PathState::draining ? log::Level::warn : log::Level::info, "%s -> %s: %s",
            vmm::to_string(from), vmm::to_string(to), reason.c_str());
}

void Paravisor::vf_failed(const std::string& reason) {
  std::lock_guard lock(mu_);
  const PathState st = state();
  if (st != PathState::active && st != PathState::ready) return;
  drained_.store(0);
  vf_epoch_.fetch_add(1, std::memory_order_acq_rel);
  transition(PathState::draining, reason);
  // Stop the device from touching guest memory for the commands being re-issued: a controller
  // reset deletes every queue (and, with the reset generation, fails them in the driver). A
  // device that is gone fails fast here.
  if (ctrl_ != nullptr) (void)ctrl_->reset();
  kept_pool_.clear();  // of the generation before the reset: dead
  next_probe_ns_ = clock_.now_ns() + static_cast<std::uint64_t>(config_.probe_interval.count());
}

void Paravisor::vf_removed(const std::string& reason) { vf_failed("VF removed: " + reason); }

void Paravisor::vf_arrived() { probe_now_.store(true); }

void Paravisor::worker_drained() {
  if (drained_.fetch_add(1) + 1 != workers_.size()) return;
  std::lock_guard lock(mu_);
  if (state() == PathState::draining) {
    transition(PathState::fallback, "every in-flight VF command re-issued on the host path");
  }
}

void Paravisor::maybe_probe() {
  if (vf_ == nullptr || state() != PathState::fallback) return;
  const std::uint64_t now = clock_.now_ns();
  const bool now_asked = probe_now_.exchange(false);
  if (vf_refused_ && !now_asked) return;  // refused for good: wait for a hot-add
  if (!now_asked && now < next_probe_ns_) return;
  vf_refused_ = false;
  next_probe_ns_ = now + static_cast<std::uint64_t>(config_.probe_interval.count());
  // Asked of the driver, which knows how its device says so (no controller yet: the VF was
  // absent when the guest connected).
  const drv::DeviceState dev =
      ctrl_ != nullptr ? ctrl_->status() : drv::Controller::status_of(*vf_);
  if (dev == drv::DeviceState::gone) return;  // still gone
  std::lock_guard lock(mu_);
  Status st;
  if (ctrl_ != nullptr) {
    st = ctrl_->reset();
    if (st.ok() && !config_.confidential) {
      memory_.unmap_from_device(*vf_);
      st = memory_.map_for_device(*vf_);
    }
  } else {
    // The VF was absent when the guest connected: bring it up now. (The transition to active
    // counts the switch.)
    st = bring_up_vf();
    if (st.ok()) return;
  }
  if (!st.ok()) return;  // not yet; the next probe tries again
  transition(PathState::ready, "VF answers again");
  transition(PathState::active, "traffic returns to the VF");
}

std::uint64_t Paravisor::device_features() const noexcept {
  return bit(f::kVersion1) | bit(f::kBlkSizeMax) | bit(f::kBlkSegMax) | bit(f::kBlkBlkSize) |
         bit(f::kBlkFlush) | bit(f::kBlkWriteZeroes) | bit(f::kBlkMq) | bit(f::kRingEventIdx);
}

Status Paravisor::set_features(std::uint64_t features) {
  if ((features & ~device_features()) != 0) {
    return make_error(Errc::invalid_argument, "driver accepted features the device does not offer");
  }
  if ((features & bit(f::kVersion1)) == 0) {
    return make_error(Errc::invalid_argument,
                      "VIRTIO_F_VERSION_1 is required (no legacy interface)");
  }
  features_ = features;
  return {};
}

virtio::blk::Config Paravisor::config_space() const noexcept {
  virtio::blk::Config c{};
  c.capacity = capacity_;
  c.size_max = config_.size_max;
  c.seg_max = config_.seg_max;
  c.blk_size = block_bytes_;
  c.num_queues = static_cast<std::uint16_t>(config_.queues);
  c.max_write_zeroes_sectors = 1u << 16;
  c.max_write_zeroes_seg = 1;
  c.write_zeroes_may_unmap = 0;
  return c;
}

std::vector<std::byte> Paravisor::config_bytes() const {
  // The fields of virtio-blk's configuration, without the struct's tail padding.
  constexpr std::size_t kBytes =
      offsetof(virtio::blk::Config, unused1) + sizeof(virtio::blk::Config::unused1);
  static_assert(kBytes == 60, "virtio-blk config space is 60 bytes");
  const virtio::blk::Config c = config_space();
  std::vector<std::byte> out(kBytes);
  std::memcpy(out.data(), &c, kBytes);
  return out;
}

Status Paravisor::set_queue(unsigned q, const Virtqueue::Layout& layout, std::uint16_t last_avail) {
  if (q >= workers_.size()) {
    return make_error(Errc::invalid_argument, "queue " + std::to_string(q) + " does not exist (" +
                                                  std::to_string(workers_.size()) + " queues)");
  }
  return workers_[q]->setup(layout, (features_ & bit(f::kRingEventIdx)) != 0, last_avail);
}

void Paravisor::set_notifier(std::function<void(unsigned)> notify) { notify_ = std::move(notify); }
void Paravisor::set_call_fd(unsigned q, int fd) {
  if (q < workers_.size()) workers_[q]->call_fd = fd;
}
void Paravisor::set_kick_fd(unsigned q, int fd) {
  if (q < workers_.size()) workers_[q]->kick_fd = fd;
}

Status Paravisor::start() {
  if (!config_.threads || running_.load()) return {};
  if (!stop_fd_.valid()) {
    stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd_.valid()) {
      return make_error(Errc::io_error, std::string("eventfd: ") + std::strerror(errno));
    }
  }
  std::uint64_t v = 0;
  (void)!::read(stop_fd_.get(), &v, sizeof v);  // the last stop's signal
  running_.store(true);
  for (auto& w : workers_) threads_.emplace_back([w = w.get()] { w->run_thread(); });
  return {};
}

namespace {

// The signal that interrupts a worker blocked in a system call. Its handler does nothing and is
// installed without SA_RESTART, so the call returns EINTR.
int worker_interrupt_signal() {
  static const int sig = [] {
    const int s = SIGRTMIN + 5;
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART
    (void)sigaction(s, &sa, nullptr);
    return s;
  }();
  return sig;
}

// Waits for a worker thread told to stop. A worker may be blocked in write() on its call
// eventfd: keel makes that fd non-blocking, but O_NONBLOCK lives on the open file description
// the front end shares, so a hostile front end can clear it again and fill the counter. After
// a grace period in which a worker normally sees `running_` false (its sleeps are bounded at
// 100 ms), the thread is signalled until it leaves the blocked call and returns. Bounded.
void await_worker(const QueueWorker& w, std::thread& t) {
  const timespec one_ms{0, 1'000'000};
  for (unsigned ms = 0; !w.thread_exited() && ms < 10'000; ++ms) {
    if (ms >= 250) (void)pthread_kill(t.native_handle(), worker_interrupt_signal());
    nanosleep(&one_ms, nullptr);
  }
}

}  // namespace

Result<drv::SavedDriver> Paravisor::save() {
  if (running_.load(std::memory_order_acquire)) {
    return make_error(Errc::busy, "the paravisor is running: stop() it first");
  }
  if (config_.arena == nullptr) {
    return make_error(Errc::invalid_argument,
                      "the VF driver's memory is not in a DMA arena: it dies with the process");
  }
  std::lock_guard lock(mu_);
  if (ctrl_ == nullptr || state() != PathState::active) {
    return make_error(Errc::unavailable, std::string("the VF path is ") + vmm::to_string(state()) +
                                             ", not active: nothing runs on the VF to keep");
  }
  for (const auto& w : workers_) {
    if (w->vf_outstanding() != 0) {
      return make_error(Errc::unavailable, "queue " + std::to_string(&w - workers_.data()) +
                                               " still has commands on the VF");
    }
  }
  drv::SavedDriver out;
  for (const auto& w : workers_) {
    if (Status st = w->save_vf(out.queue_pairs); !st.ok()) return st.error();
  }
  for (const auto& q : kept_pool_) {  // taken over and never used: the next process's too
    drv::SavedQueuePair s;
    if (Status st = q->save(s); !st.ok()) return st.error();
    out.queue_pairs.push_back(std::move(s));
  }
  if (Status st = ctrl_->save(out.controller); !st.ok()) return st.error();
  kLog.info("keepalive: VF controller and %zu queue pair(s) saved, left running",
            out.queue_pairs.size());
  return out;
}

void Paravisor::stop(bool keep_vf_queues) {
  if (running_.exchange(false)) {
    const std::uint64_t one = 1;
    if (stop_fd_.valid()) (void)!::write(stop_fd_.get(), &one, sizeof one);  // wakes sleepers
    for (std::size_t i = 0; i < threads_.size(); ++i) await_worker(*workers_[i], threads_[i]);
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  for (auto& w : workers_) w->quiesce(keep_vf_queues);
}

bool Paravisor::needs_reset() const noexcept {
  for (const auto& w : workers_) {
    if (w->vq().broken()) return true;
  }
  return false;
}

std::uint16_t Paravisor::last_avail(unsigned q) const noexcept {
  return q < workers_.size() ? workers_[q]->vq().last_avail() : 0;
}

unsigned Paravisor::run_once() {
  maybe_probe();
  unsigned n = 0;
  for (auto& w : workers_) n += w->run_once();
  return n;
}

Paravisor::HostWait Paravisor::wait_for_host(std::chrono::nanoseconds timeout) {
  std::vector<pollfd> fds;
  std::vector<QueueWorker*> asleep;
  for (auto& w : workers_) {
    if (w->has_work_off_host()) return HostWait::not_needed;  // the VF side can move
    if (w->host_outstanding() == 0) continue;
    fds.push_back({w->host_client().completion_fd(), POLLIN, 0});
    asleep.push_back(w.get());
  }
  if (fds.empty()) return HostWait::not_needed;
  bool ready = false;
  std::size_t armed = 0;
  for (; armed < asleep.size() && !ready; ++armed)
    ready = !asleep[armed]->host_client().prepare_wait();
  if (!ready) {
    const auto ns = std::max<std::int64_t>(timeout.count(), 0);
    const timespec ts{static_cast<time_t>(ns / 1'000'000'000),
                      static_cast<long>(ns % 1'000'000'000)};
    ready = ::ppoll(fds.data(), fds.size(), &ts, nullptr) > 0;
    for (const pollfd& p : fds) {
      std::uint64_t v = 0;
      if ((p.revents & POLLIN) != 0) (void)!::read(p.fd, &v, sizeof v);
    }
  }
  for (std::size_t i = 0; i < armed; ++i) asleep[i]->host_client().end_wait();
  return ready ? HostWait::ready : HostWait::timed_out;
}

std::vector<Transition> Paravisor::transitions() const {
  std::lock_guard lock(mu_);
  return log_;
}

ParavisorCounters Paravisor::counters() const {
  ParavisorCounters c;
  for (const auto& w : workers_) {
    const auto& k = w->counters();
    c.requests += k.requests.load();
    c.vf_ios += k.vf_ios.load();
    c.fallback_ios += k.fallback_ios.load();
    c.reissued += k.reissued.load();
    c.bounced += k.bounced.load();
    c.pool_bounced += k.pool_bounced.load();
    c.errors += k.errors.load();
    c.bad_requests += k.bad_requests.load();
    c.notifications += k.notifications.load();
    c.given_back += k.given_back.load();
  }
  c.to_fallback = to_fallback_.load();
  c.to_vf = to_vf_.load();
  c.kept_queue_pairs = kept_qps_.load();
  return c;
}

std::uint64_t Paravisor::worker_cpu_ns() const {
  std::uint64_t n = 0;
  for (const auto& w : workers_) n += w->thread_cpu_ns();
  return n;
}

}  // namespace keel::vmm
