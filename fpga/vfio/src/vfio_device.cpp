// VFIO groups and devices: viability, BAR0, MSI-X through eventfds, FLR, hot-removal notice.
#include "vfio_device.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <limits>
#include <system_error>

#include "keel/fpga/vfio/region_info.h"

namespace keel::fpga::vfio {

// The region info and its capabilities are the kernel's structs; the shared parser reads them
// through vfio-user's copies of them (region_info.h), which must match byte for byte.
static_assert(sizeof(vfio_region_info) == sizeof(RegionInfo) &&
              offsetof(vfio_region_info, cap_offset) == offsetof(RegionInfo, cap_offset) &&
              offsetof(vfio_region_info, size) == offsetof(RegionInfo, size));
static_assert(VFIO_REGION_INFO_FLAG_MMAP == vfio_user::kRegionMmap &&
              VFIO_REGION_INFO_FLAG_CAPS == vfio_user::kRegionCaps &&
              VFIO_REGION_INFO_CAP_SPARSE_MMAP == vfio_user::kCapSparseMmap);
static_assert(sizeof(vfio_info_cap_header) == sizeof(vfio_user::CapHeader) &&
              sizeof(vfio_region_sparse_mmap_area) == sizeof(SparseArea) &&
              sizeof(vfio_region_info_cap_sparse_mmap) ==
                  sizeof(vfio_user::CapHeader) + sizeof(vfio_user::SparseMmap));

namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

// Fills a VFIO info structure whose capability chain may need more room than the structure:
// calls `ioctl` on a buffer, grows the buffer to the argsz the kernel asks for, calls again.
// `head` carries the input fields (argsz is set here) and receives the fixed part.
template <typename Info>
bool query_with_caps(int fd, unsigned long request, Info& head, std::vector<std::byte>& buf) {
  buf.assign(sizeof(Info), std::byte{0});
  for (int attempt = 0; attempt < 2; ++attempt) {
    head.argsz = static_cast<std::uint32_t>(buf.size());
    std::memcpy(buf.data(), &head, sizeof head);
    if (::ioctl(fd, request, buf.data()) < 0) return false;
    const std::uint32_t asked = head.argsz;
    std::memcpy(&head, buf.data(), sizeof head);
    if (head.argsz <= asked) return true;
    buf.assign(head.argsz, std::byte{0});
    head.argsz = asked;
  }
  return true;
}

// True when the kernel lets us map the whole region in one piece: it is mmap-able and has no
// sparse-mmap capability that leaves holes (such as an MSI-X table on older kernels).
bool whole_region_mappable(const vfio_region_info& info, const std::vector<std::byte>& buf) {
  auto areas = mappable_areas(buf);
  return areas.ok() && areas->size() == 1 && (*areas)[0].offset == 0 &&
         (*areas)[0].size >= info.size;
}

// VFIO_DEVICE_SET_IRQS with eventfds as triggers for vectors [start, start + fds.size()) of
// `index`.
bool set_irq_eventfds(int device, std::uint32_t index, const std::vector<int>& fds,
                      std::uint32_t start = 0) {
  vfio_irq_set head{};
  const std::size_t bytes = offsetof(vfio_irq_set, data) + fds.size() * sizeof(std::int32_t);
  std::vector<std::byte> buf(bytes);
  head.argsz = static_cast<std::uint32_t>(bytes);
  head.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  head.index = index;
  head.start = start;
  head.count = static_cast<std::uint32_t>(fds.size());
  std::memcpy(buf.data(), &head, offsetof(vfio_irq_set, data));
  for (std::size_t i = 0; i < fds.size(); ++i) {
    const std::int32_t fd = fds[i];
    std::memcpy(buf.data() + offsetof(vfio_irq_set, data) + i * sizeof fd, &fd, sizeof fd);
  }
  return ::ioctl(device, VFIO_DEVICE_SET_IRQS, buf.data()) == 0;
}

// How many vectors VFIO offers at `index` (0 when none, or when they cannot be eventfds).
std::uint32_t irq_count(int device, std::uint32_t index) {
  vfio_irq_info info{};
  info.argsz = sizeof info;
  info.index = index;
  if (::ioctl(device, VFIO_DEVICE_GET_IRQ_INFO, &info) < 0) return 0;
  if ((info.flags & VFIO_IRQ_INFO_EVENTFD) == 0) return 0;
  return info.count;
}

// VFIO_GROUP_GET_DEVICE_FD for `name` (the address, plus the VF token when one is needed).
Result<UniqueFd> device_fd(const Group& group, const std::string& address,
                           const std::string& name) {
  const int device = ::ioctl(group.fd(), VFIO_GROUP_GET_DEVICE_FD, name.c_str());
  if (device >= 0) return UniqueFd(device);
  const int err = errno;
  if (err == EBUSY) {
    return make_error(Errc::busy, address + " is already open (in another process?)");
  }
  if (err == EACCES) {
    return make_error(Errc::unavailable,
                      "VFIO refused " + address +
                          ": it needs its PF's VF token (is the PF held by another process?)");
  }
  return make_error(Errc::unavailable,
                    "VFIO_GROUP_GET_DEVICE_FD for " + address + " failed: " + errno_text(err));
}

}  // namespace

// ------------------------------------------------------------------------------------ Group

Result<UniqueFd> Group::open_node(const std::string& path, unsigned number) {
  const std::string group = "IOMMU group " + std::to_string(number);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    switch (err) {
      case ENOENT:
        return make_error(Errc::unavailable, path + " not present: the device of " + group +
                                                 " is not bound to vfio-pci");
      case EACCES:
      case EPERM:
        return make_error(Errc::unavailable, "permission denied opening " + path +
                                                 ": run as root or give your user the node "
                                                 "(docs/boards.md)");
      case EBUSY:
        return make_error(
            Errc::busy, group + " (" + path + ") is open in another process; VFIO allows one user");
      default: return make_error(Errc::unavailable, "cannot open " + path + ": " + errno_text(err));
    }
  }
  vfio_group_status status{};
  status.argsz = sizeof status;
  if (::ioctl(fd.get(), VFIO_GROUP_GET_STATUS, &status) < 0) {
    return make_error(Errc::unavailable, path + " is not a VFIO group (VFIO_GROUP_GET_STATUS: " +
                                             errno_text(errno) + ")");
  }
  if ((status.flags & VFIO_GROUP_FLAGS_VIABLE) == 0) {
    return make_error(Errc::unavailable,
                      group + " is not viable: bind every device in /sys/kernel/iommu_groups/" +
                          std::to_string(number) + "/devices to vfio-pci (or to no driver)");
  }
  return fd;
}

Result<std::shared_ptr<Group>> Group::open(const std::string& path, unsigned number,
                                           const std::string& container_path) {
  auto container = Container::open(container_path);
  if (!container.ok()) return container.error();
  auto fd = open_node(path, number);
  if (!fd.ok()) return fd.error();
  std::shared_ptr<Container> shared(std::move(container).value());
  int container_fd = shared->fd();
  if (::ioctl(fd->get(), VFIO_GROUP_SET_CONTAINER, &container_fd) < 0) {
    return make_error(Errc::unavailable, "cannot attach IOMMU group " + std::to_string(number) +
                                             " to a VFIO container: " + errno_text(errno));
  }
  if (Status st = shared->set_iommu(); !st.ok()) return st.error();
  return std::shared_ptr<Group>(new Group(number, std::move(fd).value(), std::move(shared)));
}

Result<std::shared_ptr<Group>> Group::rejoin(const std::string& path, unsigned number,
                                             std::shared_ptr<Container> container) {
  auto fd = open_node(path, number);
  if (!fd.ok()) return fd.error();
  if (Status st = container->attach(fd->get()); !st.ok()) return st.error();
  return std::shared_ptr<Group>(new Group(number, std::move(fd).value(), std::move(container)));
}

Group::~Group() {
  fd_.reset();  // the kernel takes the group out of the container
  container_->detach();
}

// ---------------------------------------------------------------------------- VfioFunction

Result<std::unique_ptr<VfioFunction>> VfioFunction::open(std::shared_ptr<Group> group,
                                                         const std::string& address,
                                                         const std::string& name, unsigned number) {
  auto device = device_fd(*group, address, name);
  if (!device.ok()) return device.error();
  std::unique_ptr<VfioFunction> fn(
      new VfioFunction(std::move(group), address, name, number, std::move(device).value()));
  fn->container_ = fn->group_->container();
  fn->group_number_ = fn->group_->number();
  std::uint32_t num_irqs = 0;
  if (Status st = fn->read_info(num_irqs); !st.ok()) return st.error();
  if (Status st = fn->enable_bus_master(); !st.ok()) return st.error();
  if (Status st = fn->map_bar0(); !st.ok()) return st.error();
  fn->gone_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fn->gone_fd_.valid()) {
    return make_error(Errc::io_error, "eventfd: " + errno_text(errno));
  }
  if (Status st = fn->route_interrupts(num_irqs); !st.ok()) return st.error();
  return fn;
}

Status VfioFunction::read_info(std::uint32_t& num_irqs) {
  vfio_device_info info{};
  info.argsz = sizeof info;
  if (::ioctl(device_.get(), VFIO_DEVICE_GET_INFO, &info) < 0) {
    return make_error(Errc::io_error,
                      "VFIO_DEVICE_GET_INFO for " + address_ + " failed: " + errno_text(errno));
  }
  if ((info.flags & VFIO_DEVICE_FLAGS_PCI) == 0 || info.num_regions <= VFIO_PCI_BAR0_REGION_INDEX) {
    return make_error(Errc::unavailable, address_ + " is not a PCI device with a BAR0 to VFIO");
  }
  can_reset_.store((info.flags & VFIO_DEVICE_FLAGS_RESET) != 0);
  num_irqs = info.num_irqs;
  return {};
}

Status VfioFunction::reopen(std::shared_ptr<Group> group) {
  if (!closed()) return {};
  auto fresh = device_fd(*group, address_, name_);
  if (!fresh.ok()) return fresh.error();
  // The device under the old descriptor number (it held /dev/null since close()).
  if (device_.valid()) {
    if (::dup2(fresh->get(), device_.get()) < 0) {
      return make_error(Errc::io_error, "dup2 of " + address_ + "'s device: " + errno_text(errno));
    }
  } else {
    device_ = std::move(fresh).value();
  }
  fresh = UniqueFd();
  group_ = std::move(group);
  group_number_ = group_->number();
  auto fail = [&](Error e) {
    let_go();
    const std::uint64_t one = 1;
    (void)!::write(gone_fd_.get(), &one, sizeof one);  // still gone, to every waiter
    return e;
  };
  std::uint32_t num_irqs = 0;
  if (Status st = read_info(num_irqs); !st.ok()) return fail(st.error());
  if (num_irqs > VFIO_PCI_MSIX_IRQ_INDEX &&
      irq_count(device_.get(), VFIO_PCI_MSIX_IRQ_INDEX) != irq_fds_.size()) {
    return fail(make_error(Errc::invalid_argument,
                           address_ + " came back with " +
                               std::to_string(irq_count(device_.get(), VFIO_PCI_MSIX_IRQ_INDEX)) +
                               " MSI-X vectors, not " + std::to_string(irq_fds_.size())));
  }
  if (Status st = enable_bus_master(); !st.ok()) return fail(st.error());
  if (Status st = map_bar0(); !st.ok()) return fail(st.error());
  std::uint64_t n = 0;
  (void)!::read(gone_fd_.get(), &n, sizeof n);  // the old removal request and close()'s signal
  if (Status st = route_existing(num_irqs); !st.ok()) return fail(st.error());
  gone_.store(false, std::memory_order_release);
  closed_.store(false, std::memory_order_release);
  return {};
}

VfioFunction::~VfioFunction() { close(); }

Status VfioFunction::enable_bus_master() {
  // vfio-pci leaves the command register as the device came (a VMM sets it when its guest
  // does): without Memory Space and Bus Master the function answers no BAR access and may not
  // DMA, so a device would never fetch a command (QEMU's nvme does not).
  vfio_region_info info{};
  info.argsz = sizeof info;
  info.index = VFIO_PCI_CONFIG_REGION_INDEX;
  if (::ioctl(device_.get(), VFIO_DEVICE_GET_REGION_INFO, &info) < 0) {
    return make_error(Errc::io_error, "VFIO_DEVICE_GET_REGION_INFO (config space) for " + address_ +
                                          " failed: " + errno_text(errno));
  }
  constexpr off_t kCommand = 0x04;
  constexpr std::uint16_t kMemorySpace = 1u << 1, kBusMaster = 1u << 2;
  std::uint16_t cmd = 0;
  const off_t at = static_cast<off_t>(info.offset) + kCommand;
  if (::pread(device_.get(), &cmd, sizeof cmd, at) != sizeof cmd) {
    return make_error(Errc::io_error,
                      "reading the PCI command register of " + address_ + ": " + errno_text(errno));
  }
  if ((cmd & (kMemorySpace | kBusMaster)) == (kMemorySpace | kBusMaster)) return {};
  cmd = static_cast<std::uint16_t>(cmd | kMemorySpace | kBusMaster);
  if (::pwrite(device_.get(), &cmd, sizeof cmd, at) != sizeof cmd) {
    return make_error(Errc::io_error,
                      "enabling bus mastering on " + address_ + ": " + errno_text(errno));
  }
  return {};
}

Status VfioFunction::map_bar0() {
  vfio_region_info info{};
  info.index = VFIO_PCI_BAR0_REGION_INDEX;
  std::vector<std::byte> buf;
  if (!query_with_caps(device_.get(), VFIO_DEVICE_GET_REGION_INFO, info, buf)) {
    return make_error(Errc::io_error, "VFIO_DEVICE_GET_REGION_INFO (BAR0) for " + address_ +
                                          " failed: " + errno_text(errno));
  }
  if (info.size == 0) return make_error(Errc::unavailable, address_ + " has no BAR0");
  return bar_.map(device_.get(), info.offset, info.size, whole_region_mappable(info, buf));
}

Status VfioFunction::route_interrupts(unsigned num_irqs) {
  if (num_irqs > VFIO_PCI_MSIX_IRQ_INDEX) {
    const std::uint32_t count = irq_count(device_.get(), VFIO_PCI_MSIX_IRQ_INDEX);
    for (std::uint32_t i = 0; i < count; ++i) {
      UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!fd.valid()) return make_error(Errc::io_error, "eventfd: " + errno_text(errno));
      irq_fds_.push_back(std::move(fd));
    }
  }
  return route_existing(num_irqs);
}

Status VfioFunction::route_existing(unsigned num_irqs) {
  if (!irq_fds_.empty()) {
    std::vector<int> fds;
    {
      std::lock_guard lock(mask_mu_);
      for (std::size_t v = 0; v < irq_fds_.size(); ++v) {
        const bool masked = v < masked_.size() && masked_[v];
        fds.push_back(masked ? pending_fds_[v].get() : irq_fds_[v].get());
      }
    }
    if (!set_irq_eventfds(device_.get(), VFIO_PCI_MSIX_IRQ_INDEX, fds)) {
      return make_error(Errc::io_error, "cannot route the " + std::to_string(fds.size()) +
                                            " MSI-X vectors of " + address_ +
                                            " to eventfds: " + errno_text(errno));
    }
  }
  // The release request tells us the kernel wants the device back (hot removal). Kernels and
  // devices without it still get gone_fd_ signalled by close().
  if (num_irqs > VFIO_PCI_REQ_IRQ_INDEX && irq_count(device_.get(), VFIO_PCI_REQ_IRQ_INDEX) >= 1) {
    (void)set_irq_eventfds(device_.get(), VFIO_PCI_REQ_IRQ_INDEX, {gone_fd_.get()});
  }
  return {};
}

bool VfioFunction::set_vf_token(const std::array<std::uint8_t, 16>& uuid) {
  vfio_device_feature head{};
  std::vector<std::byte> buf(sizeof head + uuid.size());
  head.argsz = static_cast<std::uint32_t>(buf.size());
  head.flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN;
  std::memcpy(buf.data(), &head, sizeof head);
  std::memcpy(buf.data() + sizeof head, uuid.data(), uuid.size());
  return ::ioctl(device_.get(), VFIO_DEVICE_FEATURE, buf.data()) == 0;
}

bool VfioFunction::gone() noexcept {
  if (gone_.load(std::memory_order_acquire)) return true;
  pollfd p{gone_fd_.get(), POLLIN, 0};
  if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) {
    gone_.store(true, std::memory_order_release);
    return true;
  }
  return false;
}

Error VfioFunction::gone_error() const {
  return make_error(Errc::gone, address_ + " (function " + std::to_string(number_) +
                                    ") is gone: it was removed or the kernel asked for it back");
}

void VfioFunction::close() noexcept {
  if (closed_.exchange(true)) return;
  gone_.store(true, std::memory_order_release);
  if (gone_fd_.valid()) {
    const std::uint64_t one = 1;
    (void)!::write(gone_fd_.get(), &one, sizeof one);  // wakes interrupt waiters
  }
  let_go();
}

void VfioFunction::let_go() noexcept {
  bar_.retire();
  // Closing the device disables its interrupts and lets the kernel have it; the eventfds stay
  // open until destruction so a waiter never polls a reused descriptor. The device's number
  // is kept, pointing at /dev/null, for the same reason (and for reopen()).
  if (device_.valid()) {
    UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!null.valid() || ::dup2(null.get(), device_.get()) < 0) device_.reset();
  }
  group_.reset();
}

Result<DmaBuffer> VfioFunction::alloc_dma(std::size_t bytes) {
  if (gone()) return gone_error();
  return container_->alloc(bytes);
}

Status VfioFunction::map_dma(void* host, std::size_t bytes, Iova iova) {
  if (gone()) return gone_error();
  return container_->map(host, bytes, iova);
}

Status VfioFunction::unmap_dma(Iova iova) { return container_->unmap(iova); }

Result<std::uint32_t> VfioFunction::wait_interrupt(unsigned vector,
                                                   std::chrono::nanoseconds timeout) {
  if (vector >= irq_fds_.size()) {
    return make_error(Errc::invalid_argument, address_ + " has no MSI-X vector " +
                                                  std::to_string(vector) + " (it has " +
                                                  std::to_string(irq_fds_.size()) + ")");
  }
  if (gone()) return gone_error();
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  pollfd fds[2] = {{irq_fds_[vector].get(), POLLIN, 0}, {gone_fd_.get(), POLLIN, 0}};
  for (;;) {
    const auto left = std::max(Clock::duration::zero(), deadline - Clock::now());
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    const int ready = ::ppoll(fds, 2, &ts, nullptr);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return make_error(Errc::io_error, "ppoll: " + errno_text(errno));
    if ((fds[1].revents & POLLIN) != 0) {
      gone_.store(true, std::memory_order_release);  // left signalled: every waiter sees it
      return gone_error();
    }
    if ((fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      if (::read(fds[0].fd, &count, sizeof count) == sizeof count && count != 0) {
        return static_cast<std::uint32_t>(
            std::min<std::uint64_t>(count, std::numeric_limits<std::uint32_t>::max()));
      }
      continue;  // another thread took it
    }
    if (ready == 0) {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
      return make_error(
          Errc::timeout,
          "no interrupt on " + address_ + " vector " + std::to_string(vector) + " within " +
              (us >= 1000 ? std::to_string(us / 1000) + " ms" : std::to_string(us) + " us"));
    }
  }
}

int VfioFunction::interrupt_fd(unsigned vector) {
  return vector < irq_fds_.size() ? irq_fds_[vector].get() : -1;
}

void VfioFunction::set_interrupt_masked(unsigned vector, bool masked) {
  // vfio-pci cannot mask one MSI-X vector (its MASK action is INTx only), so the mask is kept
  // here: a masked vector's trigger is moved to a second eventfd, which collects what fires
  // while it is masked; unmasking moves the trigger back and passes a pending message on.
  if (vector >= irq_fds_.size() || gone()) return;
  std::lock_guard lock(mask_mu_);
  if (masked_.size() < irq_fds_.size()) {
    masked_.resize(irq_fds_.size(), false);
    pending_fds_.resize(irq_fds_.size());
  }
  if (masked_[vector] == masked) return;
  UniqueFd& pending = pending_fds_[vector];
  if (!pending.valid()) pending.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!pending.valid()) return;  // no fd for it: left unmasked
  const int to = masked ? pending.get() : irq_fds_[vector].get();
  if (!set_irq_eventfds(device_.get(), VFIO_PCI_MSIX_IRQ_INDEX, {to}, vector)) return;
  masked_[vector] = masked;
  if (!masked) {
    std::uint64_t n = 0;
    if (::read(pending.get(), &n, sizeof n) == sizeof n && n != 0) {
      const std::uint64_t one = 1;
      (void)!::write(irq_fds_[vector].get(), &one, sizeof one);
    }
  }
}

Status VfioFunction::flr() {
  if (number_ == 0) {
    return make_error(Errc::invalid_argument,
                      "the PF cannot be reset with FLR here; reset VFs individually");
  }
  if (gone()) return gone_error();
  if (!can_reset_.load()) {
    return make_error(Errc::unavailable, address_ + " offers no function-level reset through VFIO");
  }
  if (::ioctl(device_.get(), VFIO_DEVICE_RESET) < 0) {
    return make_error(Errc::io_error,
                      "VFIO_DEVICE_RESET of " + address_ + " failed: " + errno_text(errno));
  }
  return {};
}

}  // namespace keel::fpga::vfio
