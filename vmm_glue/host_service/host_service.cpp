// HostStorageService: setup (image, guest memory, io_uring), channels, and the control path.
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "keel/log.h"
#include "service_impl.h"

namespace keel::vmm {
namespace {

constexpr unsigned kMaxDepth = 4096;
constexpr log::Logger kLog{"host-service"};

Error sys_error(Errc code, const std::string& what, int err = errno) {
  return make_error(code, what + " failed: " + std::strerror(err));
}

Status add_to_epoll(int epoll_fd, int fd, std::uint64_t key) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = key;
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
    return sys_error(Errc::io_error, "epoll_ctl");
  return {};
}

}  // namespace

Status HostStorageService::Impl::open_image(const HostServiceConfig& cfg) {
  const std::string name =
      cfg.image_fd >= 0 ? "fd " + std::to_string(cfg.image_fd) : "'" + cfg.image_path + "'";
  if (cfg.image_fd >= 0) {
    image_fd.reset(fcntl(cfg.image_fd, F_DUPFD_CLOEXEC, 0));
    if (!image_fd.valid()) return sys_error(Errc::invalid_argument, "dup of image " + name);
    const int flags = fcntl(image_fd.get(), F_GETFL);
    if (flags < 0 || (flags & O_ACCMODE) != O_RDWR) {
      return make_error(Errc::invalid_argument, "image " + name + " is not open read-write");
    }
  } else {
    if (cfg.image_path.empty()) {
      return make_error(Errc::invalid_argument,
                        "no backing image: set HostServiceConfig::image_path or image_fd");
    }
    image_fd.reset(::open(cfg.image_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!image_fd.valid()) {
      const Errc code = errno == ENOENT ? Errc::not_found : Errc::io_error;
      return sys_error(code, "open of image " + name);
    }
  }
  struct stat st {};
  if (fstat(image_fd.get(), &st) != 0) return sys_error(Errc::io_error, "fstat of image " + name);
  std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode) && ioctl(image_fd.get(), BLKGETSIZE64, &size) != 0) {
    return sys_error(Errc::io_error, "BLKGETSIZE64 on image " + name);
  }
  if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode)) {
    return make_error(Errc::invalid_argument,
                      "image " + name + " is neither a regular file nor a block device");
  }
  // A block device may be a namespace a VF writes behind the page cache's back (the PF's
  // namespace of an SR-IOV SSD): its data IO is O_DIRECT (below), and what the kernel cached
  // of it before (a partition scan at probe) is dropped here as well, harmlessly.
  if (S_ISBLK(st.st_mode)) (void)ioctl(image_fd.get(), BLKFLSBUF, 0);
  base_offset = cfg.base_offset;
  length = cfg.length;
  if (length == 0 && base_offset < size) length = size - base_offset;
  if (length == 0 || base_offset > size || length > size - base_offset) {
    return make_error(Errc::invalid_argument, "image " + name + " (" + std::to_string(size) +
                                                  " bytes) is smaller than base_offset + length (" +
                                                  std::to_string(base_offset) + " + " +
                                                  std::to_string(cfg.length) +
                                                  "), or the slice is empty");
  }
  const bool direct = cfg.direct == HostDirectIo::on ||
                      (cfg.direct == HostDirectIo::automatic && S_ISBLK(st.st_mode));
  if (!direct) return {};
  if (auto s = open_direct(name, S_ISBLK(st.st_mode)); !s) return s;
  if ((base_offset | length) % dio_align != 0) {
    return make_error(Errc::invalid_argument,
                      "image " + name + ": the slice (base_offset " + std::to_string(base_offset) +
                          ", length " + std::to_string(length) + ") is not on the " +
                          std::to_string(dio_align) +
                          "-byte alignment O_DIRECT needs (a partial block shared with another "
                          "slice could not be rewritten safely); align it, or set "
                          "HostServiceConfig::direct to off");
  }
  return {};
}

Status HostStorageService::Impl::open_direct(const std::string& name, bool block_device) {
  std::uint64_t align = 0;
  if (block_device) {
    int logical = 0;
    if (ioctl(image_fd.get(), BLKSSZGET, &logical) != 0) {
      return sys_error(Errc::io_error, "BLKSSZGET on image " + name);
    }
    align = static_cast<std::uint64_t>(logical);
  } else {
    struct stat st {};
    if (fstat(image_fd.get(), &st) != 0) return sys_error(Errc::io_error, "fstat of image " + name);
    align = static_cast<std::uint64_t>(st.st_blksize);  // the file system's block: always enough
#ifdef STATX_DIOALIGN
    struct statx sx {};
    if (statx(image_fd.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
        (sx.stx_mask & STATX_DIOALIGN) != 0) {
      if (sx.stx_dio_offset_align == 0) {
        return make_error(Errc::invalid_argument,
                          "image " + name +
                              ": its file system does not support O_DIRECT; set "
                              "HostServiceConfig::direct to off or automatic");
      }
      align = std::max(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
    }
#endif
  }
  const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  if (align == 0 || (align & (align - 1)) != 0 || align > page) {
    return make_error(Errc::invalid_argument,
                      "image " + name + " needs a " + std::to_string(align) +
                          "-byte alignment for O_DIRECT; only powers of two up to the page size (" +
                          std::to_string(page) + ") are supported");
  }
  // Opened again, not switched with F_SETFL: a descriptor the caller passed shares its open
  // file (and so its flags) with the caller's.
  const std::string self = "/proc/self/fd/" + std::to_string(image_fd.get());
  UniqueFd fd(::open(self.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT));
  if (!fd.valid()) {
    const int err = errno;
    if (err == EINVAL) {
      return make_error(Errc::invalid_argument,
                        "image " + name +
                            " cannot be opened with O_DIRECT (its file system refuses it); set "
                            "HostServiceConfig::direct to off");
    }
    return sys_error(Errc::io_error, "open of image " + name + " with O_DIRECT (" + self + ")",
                     err);
  }
  image_fd = std::move(fd);
  dio_align = align;
  kLog.info("image %s: O_DIRECT, %llu-byte alignment (%s)", name.c_str(),
            static_cast<unsigned long long>(align), block_device ? "block device" : "regular file");
  return {};
}

Result<detail::MappedRegion> HostStorageService::Impl::map_region(const HostMemoryRegion& r,
                                                                  const std::string& what) {
  if (r.fd < 0 || r.bytes == 0 || r.gpa + r.bytes < r.gpa) {
    return make_error(Errc::invalid_argument, what + ": needs an fd and a non-zero size");
  }
  struct stat st {};
  if (fstat(r.fd, &st) != 0) return sys_error(Errc::invalid_argument, "fstat of " + what);
  if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) < r.fd_offset + r.bytes) {
    return make_error(Errc::invalid_argument, what + ": its fd holds " +
                                                  std::to_string(st.st_size) +
                                                  " bytes, less than fd_offset + bytes");
  }
  const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  const std::uint64_t aligned = r.fd_offset & ~(page - 1);
  const std::uint64_t delta = r.fd_offset - aligned;
  // Shared with the guest (or the paravisor's pool): the service reads and writes IO data here.
  void* map = mmap(nullptr, r.bytes + delta, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd,
                   static_cast<off_t>(aligned));
  if (map == MAP_FAILED) return sys_error(Errc::io_error, "mmap of " + what);
  detail::MappedRegion m;
  m.gpa = r.gpa;
  m.bytes = r.bytes;
  m.dev = static_cast<std::uint64_t>(st.st_dev);
  m.ino = static_cast<std::uint64_t>(st.st_ino);
  m.map = map;
  m.map_bytes = r.bytes + delta;
  m.host = static_cast<std::byte*>(map) + delta;
  return m;
}

Status HostStorageService::Impl::map_guest_memory(const HostServiceConfig& cfg) {
  if (!cfg.regions.empty() && cfg.guest_memory_fd >= 0) {
    return make_error(Errc::invalid_argument,
                      "guest memory: set either guest_memory_fd or regions, not both");
  }
  std::vector<HostMemoryRegion> list = cfg.regions;
  if (cfg.guest_memory_fd >= 0) list.push_back({cfg.guest_memory_fd, 0, 0, cfg.guest_memory_bytes});
  std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.gpa < b.gpa; });
  for (std::size_t i = 0; i < list.size(); ++i) {
    const HostMemoryRegion& r = list[i];
    const std::string what = "guest memory region at GPA " + std::to_string(r.gpa);
    if (i > 0 && list[i - 1].gpa + list[i - 1].bytes > r.gpa) {
      return make_error(Errc::invalid_argument, what + " overlaps the region before it");
    }
    auto m = map_region(r, what);
    if (!m) return m.error();
    regions.push_back(*m);
    region_info.push_back({m->gpa, m->bytes, m->dev, m->ino, false});
  }
  return {};
}

Status HostStorageService::Impl::init_io(const HostServiceConfig& cfg) {
  const unsigned depth = cfg.io_uring_depth;
  if (depth == 0 || depth > kMaxDepth) {
    return make_error(Errc::invalid_argument, "io_uring_depth " + std::to_string(depth) +
                                                  " is outside 1.." + std::to_string(kMaxDepth));
  }
  if (const int ret = io_uring_queue_init(depth, &ring, 0); ret < 0) {
    const Errc code = (ret == -ENOSYS || ret == -EPERM) ? Errc::unavailable : Errc::io_error;
    return sys_error(code, "io_uring_queue_init (depth " + std::to_string(depth) + ")", -ret);
  }
  ring_ready = true;
  uring_event_fd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  control_fd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  epoll_fd.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!uring_event_fd.valid() || !control_fd.valid()) return sys_error(Errc::io_error, "eventfd");
  if (!epoll_fd.valid()) return sys_error(Errc::io_error, "epoll_create1");
  if (const int ret = io_uring_register_eventfd(&ring, uring_event_fd.get()); ret < 0) {
    return sys_error(Errc::io_error, "io_uring_register_eventfd", -ret);
  }
  if (auto s = add_to_epoll(epoll_fd.get(), control_fd.get(), 0); !s) return s;
  if (auto s = add_to_epoll(epoll_fd.get(), uring_event_fd.get(), 1); !s) return s;
  // Source of zeroes for write_zeroes without ZERO_RANGE: a private read-only anonymous mapping
  // reads as the shared zero page, so it costs no memory.
  void* z = mmap(nullptr, detail::kZeroChunk, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (z == MAP_FAILED) return sys_error(Errc::no_memory, "mmap of the zero buffer");
  zeros = static_cast<const std::byte*>(z);
  zero_range = cfg.zero_range;
  slots.resize(depth);
  free_slots.reserve(depth);
  for (unsigned i = depth; i > 0; --i) free_slots.push_back(i - 1);
  if (dio_align == 0) return {};
  // O_DIRECT: a bounce buffer per slot, page aligned. Address space only until an unaligned
  // request touches it (MAP_NORESERVE: no commit charge for the untouched rest).
  bounce_map_bytes = std::uint64_t{depth} * detail::kBounceBytes;
  void* b = mmap(nullptr, bounce_map_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (b == MAP_FAILED) return sys_error(Errc::no_memory, "mmap of the O_DIRECT bounce buffers");
  bounce_map = static_cast<std::byte*>(b);
  for (unsigned i = 0; i < depth; ++i) slots[i].bounce = bounce_map + i * detail::kBounceBytes;
  deferred.reserve(depth);
  woken.reserve(depth);
  return {};
}

HostStorageService::Impl::~Impl() {
  channels.clear();
  pending.clear();
  // Closing the ring does not wait for IO in the kernel (the kernel cancels what it can in the
  // background and keeps the rest running), which is why stop() waits for every completion
  // first. Only if some never came back (leak_mappings) is memory they name left mapped: the
  // kernel may still write it, and an address unmapped here could be mapped again for
  // something else.
  if (ring_ready) io_uring_queue_exit(&ring);
  if (!leak_mappings) {
    for (const auto& r : regions) munmap(r.map, r.map_bytes);
    // const_cast: only to hand the zero mapping back; it was never written.
    if (zeros != nullptr) munmap(const_cast<std::byte*>(zeros), detail::kZeroChunk);
    if (bounce_map != nullptr) munmap(bounce_map, bounce_map_bytes);
  }
  for (const auto& r : pending_regions) munmap(r.map, r.map_bytes);  // never named by IO
}

void HostStorageService::Impl::note_error(const std::string& message) noexcept {
  std::lock_guard lock(pending_mutex);
  try {
    last_error_text = message;
  } catch (const std::bad_alloc&) {
    last_error_text.clear();
  }
}

Result<std::unique_ptr<HostStorageService>> HostStorageService::start(
    const HostServiceConfig& config) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  if (!impl->config.clock) impl->config.clock = shared_steady_clock();
  if (auto s = impl->open_image(config); !s) return s.error();
  if (auto s = impl->map_guest_memory(config); !s) return s.error();
  // The io_uring is set up on a thread that exits at once, never on the caller's: the kernel
  // ties a ring to every thread that set it up or used it, and when the ring is torn down it
  // queues task work on each of them, which makes whatever blocking call that thread is in at
  // the time fail with EINTR (not restarted for a socket with SO_RCVTIMEO/SO_SNDTIMEO). Callers
  // that then read a socket (an NBD or vhost-user server, a test's client) saw random failures.
  // A thread that has exited is tied to nothing; the service thread is joined before the ring
  // closes.
  std::optional<decltype(impl->init_io(config))> io;
  try {
    std::thread([&] { io.emplace(impl->init_io(config)); }).join();
  } catch (const std::system_error& e) {
    return make_error(Errc::io_error,
                      std::string("starting the io_uring setup thread failed: ") + e.what());
  }
  if (!*io) return io->error();
  try {
    impl->thread = std::thread([p = impl.get(), finished = impl->finished] {
      p->run();
      // The last act, on state the thread co-owns: after `done`, stop() may free *p.
      std::lock_guard lock(finished->mutex);
      finished->done = true;
      finished->cv.notify_all();
    });
  } catch (const std::system_error& e) {
    return make_error(Errc::io_error,
                      std::string("starting the service thread failed: ") + e.what());
  }
  pthread_setname_np(impl->thread.native_handle(), "keel-hostsvc");
  return std::unique_ptr<HostStorageService>(new HostStorageService(std::move(impl)));
}

HostStorageService::HostStorageService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HostStorageService::~HostStorageService() {
  if (!impl_) return;
  (void)stop();
  // A thread that never finished still uses everything: leave it all (stop() said so).
  if (impl_->thread.joinable()) (void)impl_.release();
}

Status HostStorageService::stop() {
  Impl& im = *impl_;
  std::lock_guard stop_lock(im.stop_mutex);
  if (im.stopped) return im.stop_status;
  im.stopped = true;
  if (!im.thread.joinable()) return im.stop_status;
  im.stop.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(im.control_fd.get(), &one, sizeof one);
  // The thread notices within idle_timeout_ms and then waits at most stop_timeout_ms for the
  // kernel; the slack covers a loaded machine.
  // Counted on the configured clock, in real-time slices (a test clock ends it when moved).
  const auto bound = std::chrono::milliseconds(std::uint64_t{im.config.stop_timeout_ms} +
                                               im.config.idle_timeout_ms + 2000);
  const Clock& clk = *im.config.clock;
  const std::uint64_t deadline = clk.deadline_after(bound);
  bool done = false;
  {
    std::unique_lock lock(im.finished->mutex);
    while (!(done = im.finished->done) && clk.now_ns() < deadline) {
      const auto slice = std::chrono::nanoseconds(
          std::min<std::uint64_t>(deadline - clk.now_ns(), std::uint64_t{100'000'000}));
      done = im.finished->cv.wait_for(lock, slice, [&] { return im.finished->done; });
      if (done) break;
    }
  }
  if (!done) {
    // Stuck in a system call (a page of shared memory that never arrives, a hung device): it
    // still uses the rings and the mappings, so nothing is released; the destructor leaks it.
    im.stop_status = make_error(Errc::timeout,
                                "the host storage service thread did not finish within " +
                                    std::to_string(bound.count()) +
                                    " ms of the stop; it and everything it uses are left in place");
    im.note_error(im.stop_status.error().message);
    return im.stop_status;
  }
  if (im.stuck_at_stop == 0) {
    im.thread.join();  // nothing of ours left in the kernel: its exit is prompt
    return im.stop_status;
  }
  // The thread's exit waits in the kernel for its stuck IO workers, possibly for ever: let it.
  im.thread.detach();
  im.stop_status = make_error(
      Errc::timeout, std::to_string(im.stuck_at_stop) + " request(s) were still in the kernel " +
                         std::to_string(im.config.stop_timeout_ms) +
                         " ms after they were cancelled; they were completed -ETIMEDOUT and the "
                         "memory they name stays mapped (the kernel may still write it)");
  return im.stop_status;
}

Result<HostChannel> HostStorageService::open_channel(unsigned entries) {
  if (!detail::valid_entries(entries)) {
    return make_error(Errc::invalid_argument, "channel entries " + std::to_string(entries) +
                                                  " must be a power of two in 1.." +
                                                  std::to_string(detail::kMaxEntries));
  }
  auto ch = detail::ServiceChannel::create(entries);
  if (!ch) return ch.error();
  const HostChannel out{(*ch)->ring_fd.get(), (*ch)->submit_fd.get(), (*ch)->complete_fd.get(),
                        entries};
  {
    std::lock_guard lock(impl_->pending_mutex);
    if (impl_->closed || impl_->stop.load(std::memory_order_acquire)) {
      return make_error(Errc::gone, "the host storage service is stopping");
    }
    impl_->pending.push_back(std::move(*ch));
    impl_->has_pending.store(true, std::memory_order_release);
  }
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(impl_->control_fd.get(), &one, sizeof one);
  return out;
}

Result<std::uint64_t> HostStorageService::add_shared_region(int fd, std::uint64_t fd_offset,
                                                            std::uint64_t bytes) {
  constexpr std::uint64_t kAlign = 2 << 20;
  std::unique_lock lock(impl_->pending_mutex);
  if (impl_->closed || impl_->stop.load(std::memory_order_acquire)) {
    return make_error(Errc::gone, "the host storage service is stopping");
  }
  std::uint64_t at = kHostSharedBase;
  for (const HostRegionInfo& r : impl_->region_info) at = std::max(at, r.gpa + r.bytes);
  at = (at + kAlign - 1) & ~(kAlign - 1);
  auto m = Impl::map_region({fd, fd_offset, at, bytes}, "shared region at " + std::to_string(at));
  if (!m) return m.error();
  impl_->pending_regions.push_back(*m);
  impl_->region_info.push_back({m->gpa, m->bytes, m->dev, m->ino, true});
  const std::uint64_t ticket = ++impl_->regions_added;
  impl_->has_pending.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(impl_->control_fd.get(), &one, sizeof one);
  // The service thread adopts it on its next pass (or in shut_down(), which adopts whatever
  // is pending): after that, requests may name it.
  const auto bound = std::chrono::milliseconds(std::uint64_t{impl_->config.idle_timeout_ms} + 2000);
  if (!impl_->regions_cv.wait_for(lock, bound, [&] { return impl_->regions_adopted >= ticket; })) {
    // It stays mapped (the thread may adopt it yet) until the service is destroyed.
    return make_error(Errc::timeout,
                      "the host storage service thread did not take the shared "
                      "region within " +
                          std::to_string(bound.count()) + " ms");
  }
  return at;
}

std::vector<HostRegionInfo> HostStorageService::regions() const {
  std::lock_guard lock(impl_->pending_mutex);
  return impl_->region_info;
}

HostStorageService::Stats HostStorageService::stats() const {
  const auto& c = impl_->counters;
  constexpr auto r = std::memory_order_relaxed;
  return Stats{c.requests.load(r),         c.bytes.load(r),           c.errors.load(r),
               c.io_uring_submits.load(r), c.retries.load(r),         c.sleeps.load(r),
               c.client_kicks.load(r),     c.broken_channels.load(r), c.cancelled_at_stop.load(r),
               c.stuck_at_stop.load(r),    c.bounced.load(r),         c.rmw_reads.load(r),
               c.overlap_waits.load(r)};
}

std::string HostStorageService::last_error() const {
  std::lock_guard lock(impl_->pending_mutex);
  return impl_->last_error_text;
}

}  // namespace keel::vmm
