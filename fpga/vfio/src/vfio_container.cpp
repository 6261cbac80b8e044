// VFIO container: API checks, the type-1 IOMMU, DMA map/unmap with IOVA bookkeeping.
#include "vfio_container.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <vector>

#include "mmio.h"

namespace keel::fpga::vfio {

namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

Error gone_error() {
  return make_error(Errc::gone, "the function's IOMMU domain is gone (the function was removed)");
}

// Reads the type-1 IOMMU's smallest page and its usable IOVA ranges (VFIO_IOMMU_GET_INFO and
// its IOVA-range capability). Structures are copied out of the byte buffer, never cast.
Status read_iommu_info(int fd, std::size_t& page, std::vector<IovaSpace::Range>& ranges) {
  std::vector<std::byte> buf(sizeof(vfio_iommu_type1_info));
  vfio_iommu_type1_info info{};
  for (int attempt = 0; attempt < 2; ++attempt) {
    info = {};
    info.argsz = static_cast<std::uint32_t>(buf.size());
    std::memcpy(buf.data(), &info, sizeof info);
    if (::ioctl(fd, VFIO_IOMMU_GET_INFO, buf.data()) < 0) {
      return make_error(Errc::unavailable, "VFIO_IOMMU_GET_INFO failed: " + errno_text(errno));
    }
    std::memcpy(&info, buf.data(), sizeof info);
    if (info.argsz <= buf.size()) break;
    buf.assign(info.argsz, std::byte{0});  // the capabilities need more room: ask again
  }
  const auto host_page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  page = host_page;
  if ((info.flags & VFIO_IOMMU_INFO_PGSIZES) != 0 && info.iova_pgsizes != 0) {
    const std::uint64_t smallest = info.iova_pgsizes & (~info.iova_pgsizes + 1);
    if (smallest > page) page = static_cast<std::size_t>(smallest);
  }
  ranges.clear();
  if ((info.flags & VFIO_IOMMU_INFO_CAPS) == 0 || info.cap_offset == 0) return {};
  std::uint32_t offset = info.cap_offset;
  for (int hops = 0; offset != 0 && hops < 64; ++hops) {
    vfio_info_cap_header header{};
    if (offset + sizeof header > buf.size()) break;
    std::memcpy(&header, buf.data() + offset, sizeof header);
    if (header.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
      vfio_iommu_type1_info_cap_iova_range cap{};
      if (offset + sizeof cap > buf.size()) break;
      std::memcpy(&cap, buf.data() + offset, sizeof cap);
      const std::size_t first = offset + sizeof cap;
      for (std::uint32_t i = 0; i < cap.nr_iovas; ++i) {
        vfio_iova_range r{};
        if (first + (i + 1) * sizeof r > buf.size()) break;
        std::memcpy(&r, buf.data() + first + i * sizeof r, sizeof r);
        ranges.push_back(IovaSpace::Range{r.start, r.end});
      }
    }
    offset = header.next;
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<Container>> Container::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) {
      return make_error(Errc::unavailable,
                        path +
                            " not present: load vfio-pci (modprobe vfio-pci) and bind the "
                            "card to it (docs/boards.md)");
    }
    if (err == EACCES || err == EPERM) {
      return make_error(Errc::unavailable, "permission denied opening " + path +
                                               ": run as root or give your user the VFIO "
                                               "device nodes (docs/boards.md)");
    }
    return make_error(Errc::unavailable, "cannot open " + path + ": " + errno_text(err));
  }
  const int version = ::ioctl(fd.get(), VFIO_GET_API_VERSION);
  if (version < 0) {
    return make_error(Errc::unavailable, path + " is not a VFIO container (VFIO_GET_API_VERSION: " +
                                             errno_text(errno) + ")");
  }
  if (version != VFIO_API_VERSION) {
    return make_error(Errc::unavailable, "the kernel speaks VFIO API version " +
                                             std::to_string(version) + "; keel speaks " +
                                             std::to_string(VFIO_API_VERSION));
  }
  int type = 0;
  if (::ioctl(fd.get(), VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1) {
    type = VFIO_TYPE1v2_IOMMU;
  } else if (::ioctl(fd.get(), VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) == 1) {
    type = VFIO_TYPE1_IOMMU;
  } else {
    return make_error(Errc::unavailable,
                      "the kernel's VFIO offers no type-1 IOMMU: load vfio_iommu_type1 and "
                      "enable the IOMMU (no-IOMMU mode cannot isolate the card and is not "
                      "supported)");
  }
  return std::unique_ptr<Container>(new Container(std::move(fd), type));
}

Status Container::select_iommu(IovaSpace& space) {
  if (::ioctl(fd_.get(), VFIO_SET_IOMMU, iommu_type_) < 0) {
    return make_error(Errc::unavailable, "VFIO_SET_IOMMU failed: " + errno_text(errno));
  }
  std::size_t page = 4096;
  std::vector<IovaSpace::Range> ranges;
  if (Status st = read_iommu_info(fd_.get(), page, ranges); !st.ok()) return st;
  space = IovaSpace(std::move(ranges), page);
  return {};
}

Status Container::set_iommu() {
  std::lock_guard lock(mu_);
  return select_iommu(space_);
}

Status Container::attach(int group_fd) {
  std::lock_guard lock(mu_);
  if (!detached_) return {};
  int container_fd = fd_.get();
  if (::ioctl(group_fd, VFIO_GROUP_SET_CONTAINER, &container_fd) < 0) {
    return make_error(Errc::unavailable,
                      "cannot attach the group to its old VFIO container: " + errno_text(errno));
  }
  // From here on a failure must take the group out again, or the container would stay
  // attached with half its windows.
  auto undo = [&](Error e) {
    (void)::ioctl(group_fd, VFIO_GROUP_UNSET_CONTAINER);
    return e;
  };
  IovaSpace fresh;
  if (Status st = select_iommu(fresh); !st.ok()) return undo(st.error());
  if (fresh.page() != space_.page()) {
    return undo(
        make_error(Errc::unavailable, "the IOMMU came back with " + std::to_string(fresh.page()) +
                                          "-byte pages, not " + std::to_string(space_.page())));
  }
  for (const auto& [iova, host] : hosts_) {
    const auto bytes = space_.size_of(iova);
    if (!bytes.ok()) return undo(bytes.error());
    if (Status st = fresh.reserve(iova, *bytes); !st.ok()) return undo(st.error());
    if (Status st = kernel_map(host, *bytes, iova); !st.ok()) return undo(st.error());
  }
  space_ = std::move(fresh);  // the same windows, in the new domain's usable ranges
  detached_ = false;
  return {};
}

Status Container::kernel_map(void* host, std::size_t bytes, Iova iova) {
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  m.vaddr = user_address(host);
  m.iova = iova;
  m.size = bytes;
  if (::ioctl(fd_.get(), VFIO_IOMMU_MAP_DMA, &m) == 0) return {};
  const int err = errno;
  const std::string what = std::to_string(bytes) + " bytes at IOVA " + hex(iova);
  switch (err) {
    case ENOMEM:
      return make_error(Errc::no_memory, "the IOMMU could not pin " + what +
                                             ": raise the locked-memory limit (ulimit -l, "
                                             "LimitMEMLOCK=) or free memory");
    case ENOSPC:
      return make_error(Errc::no_memory,
                        "too many DMA windows in this IOMMU domain (see "
                        "vfio_iommu_type1 dma_entry_limit) mapping " +
                            what);
    case EEXIST: return make_error(Errc::out_of_range, what + " overlaps an existing mapping");
    case EFAULT:
      return make_error(Errc::invalid_argument,
                        "host memory for " + what + " is not mapped in this process");
    default:
      return make_error(Errc::io_error,
                        "VFIO_IOMMU_MAP_DMA of " + what + " failed: " + errno_text(err));
  }
}

void Container::kernel_unmap(Iova iova, std::size_t bytes) noexcept {
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.iova = iova;
  u.size = bytes;
  (void)::ioctl(fd_.get(), VFIO_IOMMU_UNMAP_DMA, &u);  // nothing to do if it fails
}

Result<DmaBuffer> Container::alloc(std::size_t bytes) {
  if (bytes == 0)
    return make_error(Errc::invalid_argument, "cannot allocate 0 bytes of DMA memory");
  std::lock_guard lock(mu_);
  if (detached_) return gone_error();
  const std::size_t page = space_.page();
  if (bytes > ~std::size_t{0} - page) {
    return make_error(Errc::no_memory, "DMA allocation of " + std::to_string(bytes) + " bytes");
  }
  const std::size_t rounded = (bytes + page - 1) / page * page;
  auto iova = space_.allocate(rounded);
  if (!iova.ok()) return iova.error();
  void* host = alloc_host_pages(rounded);
  if (host == nullptr) {
    (void)space_.release(*iova);
    return make_error(Errc::no_memory,
                      "cannot allocate " + std::to_string(rounded) + " bytes of host memory");
  }
  if (Status st = kernel_map(host, rounded, *iova); !st.ok()) {
    (void)space_.release(*iova);
    free_host_pages(host, rounded);
    return st.error();
  }
  allocated_.insert(*iova);
  hosts_[*iova] = host;
  return DmaBuffer(this, host, rounded, *iova);
}

Status Container::map(void* host, std::size_t bytes, Iova iova) {
  std::lock_guard lock(mu_);
  if (detached_) return gone_error();
  if (host == nullptr || user_address(host) % space_.page() != 0) {
    return make_error(Errc::invalid_argument, "host memory for a DMA window must be aligned to " +
                                                  std::to_string(space_.page()) + " bytes");
  }
  if (Status st = space_.reserve(iova, bytes); !st.ok()) return st;
  if (Status st = kernel_map(host, bytes, iova); !st.ok()) {
    (void)space_.release(iova);
    return st;
  }
  hosts_[iova] = host;
  return {};
}

Status Container::unmap(Iova iova) {
  std::lock_guard lock(mu_);
  if (allocated_.count(iova) != 0) {
    return make_error(Errc::not_found, "the window at IOVA " + hex(iova) +
                                           " belongs to a DmaBuffer from alloc_dma; destroy the "
                                           "buffer instead");
  }
  const auto bytes = space_.release(iova);
  if (!bytes.ok()) return bytes.error();
  hosts_.erase(iova);
  if (!detached_) kernel_unmap(iova, *bytes);
  return {};
}

void Container::release_dma(void* host, std::size_t bytes, Iova iova) noexcept {
  {
    std::lock_guard lock(mu_);
    if (!detached_) kernel_unmap(iova, bytes);
    allocated_.erase(iova);
    hosts_.erase(iova);
    (void)space_.release(iova);
  }
  free_host_pages(host, bytes);
}

void Container::detach() noexcept {
  std::lock_guard lock(mu_);
  detached_ = true;
}

}  // namespace keel::fpga::vfio
