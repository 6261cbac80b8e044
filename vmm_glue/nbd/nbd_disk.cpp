// NbdDisk: a whole keel guest disk behind an NBD server (card, VF, host service, paravisor).
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "keel/sriov/pf_manager.h"
#include "keel/vmm/nbd_server.h"

namespace keel::vmm {

namespace {

std::string temp_image_path() {
  static std::atomic<unsigned> counter{0};
  const std::filesystem::path dir =
      std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
  return (dir / ("keel-nbd-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + ".img"))
      .string();
}

Error context(const std::string& what, const Error& e) {
  return make_error(e.code, what + ": " + e.message);
}

}  // namespace

Result<std::unique_ptr<NbdDisk>> NbdDisk::create(const NbdDiskOptions& options) {
  constexpr std::uint64_t kMiB = 1ull << 20;
  if (options.size_bytes == 0 || options.size_bytes % kMiB != 0) {
    return make_error(Errc::invalid_argument, "disk size " + std::to_string(options.size_bytes) +
                                                  " bytes: must be a non-zero multiple of 1 MiB");
  }
  std::unique_ptr<NbdDisk> d(new NbdDisk());
  d->image_ = options.image;
  if (d->image_.empty()) {
    d->image_ = temp_image_path();
    d->remove_image_ = true;
    std::filesystem::remove(d->image_);
  }

  fpga::CardOptions co;
  co.image_path = d->image_;
  co.storage_bytes = options.size_bytes;
  co.lockstep = false;  // the card works on its own thread, like silicon
  auto card = fpga::open_card(options.card, co);
  if (!card) return context("opening the " + options.card + " card", card.error());
  d->card_ = std::move(card).value();
  struct stat sb {};
  if (stat(d->image_.c_str(), &sb) != 0 ||
      static_cast<std::uint64_t>(sb.st_size) < options.size_bytes) {
    return make_error(Errc::invalid_argument, "image " + d->image_ + " is smaller than the disk (" +
                                                  std::to_string(options.size_bytes / kMiB) +
                                                  " MiB)");
  }

  auto pm = sriov::PfManager::discover(*d->card_);
  if (!pm) return context("PF manager", pm.error());
  sriov::VfResources res;
  res.queues = 1;
  res.slice_base = 0;
  res.slice_lbas = options.size_bytes / 512;
  if (Status s = pm->enable_vfs({&res, 1}); !s.ok()) return context("enabling the VF", s.error());

  auto mem = GuestMemory::create(NbdServer::guest_memory_bytes(options.server));
  if (!mem) return context("guest memory", mem.error());
  d->memory_ = std::move(mem).value();

  HostServiceConfig hc;
  hc.image_path = d->image_;
  hc.base_offset = 0;
  hc.length = options.size_bytes;
  hc.guest_memory_fd = d->memory_->regions()[0].fd;
  hc.guest_memory_bytes = d->memory_->regions()[0].bytes;
  auto host = HostStorageService::start(hc);  // sets its io_uring up off this thread
  if (!host) return context("host storage service", host.error());
  d->host_ = std::move(host).value();

  fpga::Function* vf = nullptr;
  if (options.vf_path) {
    auto v = d->card_->vf(0);
    if (!v) return context("VF 0", v.error());
    vf = *v;
  }
  ParavisorConfig pc;
  pc.threads = true;
  pc.capacity_sectors = options.size_bytes / 512;
  pc.max_queue_size = std::max<std::uint16_t>(pc.max_queue_size, options.server.virtqueue_size);
  auto pv = Paravisor::create(vf, *d->card_, *d->card_, *d->memory_, *d->host_, pc);
  if (!pv) return context("paravisor", pv.error());
  d->pv_ = std::move(pv).value();
  if (options.vf_path && d->pv_->state() != PathState::active) {
    return make_error(Errc::unavailable, std::string("the VF did not come up (paravisor state ") +
                                             to_string(d->pv_->state()) + "); see the log above");
  }

  auto server = NbdServer::create(options.server, *d->pv_, *d->memory_);
  if (!server) return context("NBD server", server.error());
  d->server_ = std::move(server).value();
  if (Status s = d->server_->start(); !s.ok()) return context("starting", s.error());
  return d;
}

std::uint64_t NbdDisk::host_cpu_ns() const {
  if (stopped_cpu_ns_ != 0 || pv_ == nullptr) return stopped_cpu_ns_;
  return pv_->worker_cpu_ns() + host_->thread_cpu_ns() + host_->io_worker_cpu_ns();
}

void NbdDisk::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (server_ != nullptr) server_->stop();
  // Worker thread CPU is readable only while the threads live.
  if (pv_ != nullptr) {
    stopped_cpu_ns_ = pv_->worker_cpu_ns() + host_->thread_cpu_ns() + host_->io_worker_cpu_ns();
    pv_->stop();
  }
}

NbdDisk::~NbdDisk() {
  stop();
  server_.reset();  // detaches the guest driver from the (stopped) paravisor
  pv_.reset();
  host_.reset();
  memory_.reset();
  card_.reset();
  if (remove_image_) {
    std::error_code ec;
    std::filesystem::remove(image_, ec);
  }
}

}  // namespace keel::vmm
