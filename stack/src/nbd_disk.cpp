// NbdDisk: a whole keel guest disk behind an NBD server (card, VF, host service, paravisor),
// stood up by the stack.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>

#include "keel/stack/nbd_disk.h"
#include "keel/log.h"
#include "keel/stack/stack.h"

namespace keel::stack {

using namespace keel::vmm;  // NbdDisk assembles the paravisor's pieces

namespace {

constexpr log::Logger kLog{"nbd-disk"};

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
    d->image_ = scratch_image_path("nbd");
    d->remove_image_ = true;
  }

  stack::StackConfig sc;
  sc.card = options.card;
  sc.card_options.image_path = d->image_;
  sc.card_options.storage_bytes = options.size_bytes;
  sc.card_options.lockstep = false;  // the card works on its own thread, like silicon
  sc.vfs.resources.resize(1);
  sc.vfs.resources[0].queues = std::max(1u, options.server.queues);  // a queue pair per worker
  sc.vfs.resources[0].slice_base = 0;
  sc.vfs.resources[0].slice_lbas = options.size_bytes / 512;
  auto st = stack::Stack::open_card(sc);
  if (!st) return context("opening the " + options.card + " card", st.error());
  d->stack_ = std::move(st).value();
  if (!d->stack_->card().owns_pf() && options.image.empty()) {
    return make_error(Errc::invalid_argument,
                      options.card +
                          " is one function (a VF handed to this process): give the image its "
                          "namespace lives on for the host path (--image: the PF's namespace, "
                          "such as /dev/nvme0n1, or keel-card's image)");
  }
  // The end of the image, a file or a block device (whose st_size is 0).
  const int image_fd = ::open(d->image_.c_str(), O_RDONLY | O_CLOEXEC);
  const off_t image_end = image_fd >= 0 ? ::lseek(image_fd, 0, SEEK_END) : -1;
  if (image_fd >= 0) ::close(image_fd);
  if (image_end < 0 || static_cast<std::uint64_t>(image_end) < options.size_bytes) {
    return make_error(Errc::invalid_argument, "image " + d->image_ + " is smaller than the disk (" +
                                                  std::to_string(options.size_bytes / kMiB) +
                                                  " MiB), or cannot be read");
  }

  // A card of one function has its VF set up already (by whoever owns its PF).
  if (d->stack_->card().owns_pf()) {
    if (Status s = d->stack_->discover_pf(); !s.ok()) return context("PF manager", s.error());
    if (Status s = d->stack_->enable_vfs(); !s.ok()) return context("enabling the VF", s.error());
  }

  // Each server worker's queue wants a VF queue pair of its own. A VF set up elsewhere (a card
  // of one function) may give fewer than there are workers: the connections are then spread
  // over as many queues as it gives, not left on the host path of a queue without one.
  NbdServerConfig server = options.server;  // (queues 0 or too many: NbdServer refuses them)
  fpga::Function* vf = nullptr;
  if (options.vf_path) {
    auto v = d->stack_->vf(0);
    if (!v) return context("VF 0", v.error());
    vf = *v;
    if (!d->stack_->card().owns_pf()) {
      drivers::nvme::ControllerConfig cc;
      cc.io_queues = static_cast<std::uint16_t>(std::clamp(server.queues, 1u, 64u));
      auto probe = d->stack_->open_controller(*vf, cc);
      if (!probe) return context("the VF's controller", probe.error());
      const unsigned granted = (*probe)->io_queue_count();
      if (granted != 0 && granted < server.queues) {
        kLog.warn("the VF gives %u IO queue pairs: the connections share %u queues, not %u",
                  granted, granted, server.queues);
        server.queues = granted;
      }
    }
  }

  auto mem = GuestMemory::create(NbdServer::guest_memory_bytes(server));
  if (!mem) return context("guest memory", mem.error());
  d->memory_ = std::move(mem).value();

  stack::DiskSpec disk;
  disk.base_offset = 0;
  disk.length = options.size_bytes;
  disk.ram = stack::GuestRamView::whole;
  // Sets its io_uring up off this thread.
  auto host = d->stack_->start_host_service(d->stack_->host_config(*d->memory_, disk));
  if (!host) return context("host storage service", host.error());
  d->host_ = std::move(host).value();

  ParavisorConfig pc;
  pc.threads = true;
  pc.queues = std::max(1u, server.queues);  // a virtqueue per NBD server worker
  pc.capacity_sectors = options.size_bytes / 512;
  pc.max_queue_size = std::max<std::uint16_t>(pc.max_queue_size, server.virtqueue_size);
  auto pv = d->stack_->create_paravisor(vf, *d->memory_, *d->host_, pc);
  if (!pv) return context("paravisor", pv.error());
  d->pv_ = std::move(pv).value();
  if (options.vf_path && d->pv_->state() != PathState::active) {
    return make_error(Errc::unavailable, std::string("the VF did not come up (paravisor state ") +
                                             to_string(d->pv_->state()) + "); see the log above");
  }

  auto srv = NbdServer::create(server, *d->pv_, *d->memory_);
  if (!srv) return context("NBD server", srv.error());
  d->server_ = std::move(srv).value();
  if (Status s = d->server_->start(); !s.ok()) return context("starting", s.error());
  return d;
}

fpga::Card& NbdDisk::card() noexcept { return stack_->card(); }

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
  stack_.reset();
  if (remove_image_) {
    std::error_code ec;
    std::filesystem::remove(image_, ec);
  }
}

}  // namespace keel::stack
