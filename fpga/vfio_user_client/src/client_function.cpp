#include "keel/fpga/vfio_user/client_function.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "keel/clock.h"
#include "keel/fpga/vfio/region_info.h"
#include "keel/fpga/vfio_user/config_space.h"
#include "keel/log.h"
#include "keel/unix_listener.h"

namespace keel::vfio_user {
namespace {

constexpr log::Logger kLog{"vfio-user"};

template <typename T>
std::span<const std::byte> bytes(const T& v) {
  return std::as_bytes(std::span(&v, 1));
}

}  // namespace

Result<UniqueFd> ClientFunction::dial(const std::string& socket_path) {
  auto fd = connect_unix(socket_path);
  if (!fd && fd.error().code == Errc::unavailable) {
    return make_error(Errc::unavailable, fd.error().message + " (is keel-card running?)");
  }
  return fd;
}

Result<std::unique_ptr<ClientFunction>> ClientFunction::connect(const std::string& socket_path,
                                                                const ClientConfig& config) {
  auto fd = dial(socket_path);
  if (!fd) return fd.error();
  std::unique_ptr<ClientFunction> f(
      new ClientFunction(std::make_unique<Channel>(std::move(fd).value()), socket_path, config));
  if (Status s = f->setup(); !s.ok()) return s.error();
  f->number_ = f->identity_.number;
  return f;
}

Result<std::unique_ptr<ClientFunction>> ClientFunction::adopt(const std::string& socket_path,
                                                              int connection,
                                                              const ClientConfig& config) {
  UniqueFd fd(::fcntl(connection, F_DUPFD_CLOEXEC, 0));
  if (!fd.valid()) {
    return make_error(Errc::io_error,
                      std::string("dup of the handed-over connection: ") + std::strerror(errno));
  }
  std::unique_ptr<ClientFunction> f(
      new ClientFunction(std::make_unique<Channel>(std::move(fd)), socket_path, config));
  if (Status s = f->setup(false); !s.ok()) return s.error();
  f->number_ = f->identity_.number;
  return f;
}

Result<UniqueFd> ClientFunction::hand_over(std::span<const fpga::Iova> keep) {
  if (gone() || handed_over_.load()) {
    return make_error(Errc::gone, "function " + std::to_string(number_) + " at " + path_ +
                                      " is not connected: nothing to hand over");
  }
  std::vector<fpga::Iova> drop;
  {
    std::lock_guard lock(dma_mu_);
    for (const auto& [iova, w] : windows_) {
      if (std::find(keep.begin(), keep.end(), iova) == keep.end()) drop.push_back(iova);
    }
  }
  for (fpga::Iova iova : drop) {
    if (Status st = unmap_dma(iova); !st.ok()) return st.error();
  }
  std::lock_guard lock(mu_);
  UniqueFd out(::fcntl(channel_->fd(), F_DUPFD_CLOEXEC, 0));
  if (!out.valid()) return make_error(Errc::io_error, std::string("dup: ") + std::strerror(errno));
  handed_over_.store(true, std::memory_order_release);
  gone_.store(true, std::memory_order_release);
  doorbell_base_.store(nullptr, std::memory_order_release);
  {
    std::lock_guard dma(dma_mu_);
    windows_.clear();  // the next process's now: never unmapped from here
  }
  return out;
}

Status ClientFunction::adopt_dma_fd(int fd, std::uint64_t fd_offset, std::size_t bytes,
                                    fpga::Iova iova) {
  UniqueFd kept(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!kept.valid()) return make_error(Errc::io_error, std::string("dup: ") + std::strerror(errno));
  std::lock_guard lock(dma_mu_);
  if (Status s = iova_space_.reserve(iova, bytes); !s.ok()) return s;
  windows_[iova] = Window{bytes, fd_offset, std::move(kept)};
  return {};
}

bool ClientFunction::reconnect() noexcept {
  if (handed_over_.load(std::memory_order_acquire)) return false;  // the next process's
  std::unique_lock attempt(reconnect_mu_, std::try_to_lock);
  if (!attempt.owns_lock()) return false;  // another thread is at it
  const std::uint64_t now = steady_clock().now_ns();
  const auto every = static_cast<std::uint64_t>(config_.reconnect_interval.count()) * 1'000'000u;
  if (config_.reconnect_interval.count() <= 0 ||
      (last_dial_ns_ != 0 && now - last_dial_ns_ < every)) {
    return false;
  }
  last_dial_ns_ = now;
  try {
    auto dialed = dial(path_);
    if (!dialed) return false;
    {
      std::lock_guard lock(mu_);
      channel_ = std::make_unique<Channel>(std::move(dialed).value());
    }
    doorbell_base_.store(nullptr, std::memory_order_release);  // messages until remapped
    gone_.store(false, std::memory_order_release);
    const unsigned was = number_;
    Status s = setup();
    if (s.ok() && identity_.number != was) {
      kLog.warn("%s now serves function %u, not %u: not taken", path_.c_str(), identity_.number,
                was);
      s = make_error(Errc::invalid_argument, "another function");
    }
    if (s.ok()) {
      // The server holds nothing of the old connection: map every window again.
      std::lock_guard lock(dma_mu_);
      for (const auto& [iova, w] : windows_) {
        const DmaMap m{sizeof(DmaMap), kDmaRead | kDmaWrite, w.fd_offset, iova, w.bytes};
        const int fd = w.fd.get();
        if (auto r = call(Command::dma_map, bytes(m), {&fd, 1}); !r) {
          s = r.error();
          break;
        }
      }
    }
    if (!s.ok()) {
      gone_.store(true, std::memory_order_release);
      return false;
    }
    ++reconnects_;
    kLog.info("function %u: reconnected to %s (a reset device)", number_, path_.c_str());
    return true;
  } catch (const std::bad_alloc&) {
    gone_.store(true, std::memory_order_release);
    return false;
  }
}

ClientFunction::~ClientFunction() {
  {
    std::lock_guard lock(dma_mu_);
    for (const auto& [iova, w] : windows_) {
      const DmaUnmap u{sizeof(DmaUnmap), 0, iova, w.bytes};
      (void)call(Command::dma_unmap, bytes(u));
    }
  }
  for (const DoorbellMap& d : doorbell_maps_) ::munmap(d.base, d.bytes);
}

Status ClientFunction::map_doorbells(const Message& region_info) {
  // Nothing mappable: every doorbell stays a message.
  RegionInfo info{};
  std::memcpy(&info, region_info.payload.data(), sizeof info);
  if ((info.flags & kRegionMmap) == 0 || (info.flags & kRegionCaps) == 0 ||
      region_info.fds.size() != 1) {
    return {};
  }
  // The sparse-mmap capability's first area is the doorbells (read with the kernel VFIO
  // backend's parser: the same structs).
  auto areas = fpga::vfio::sparse_mmap_areas(region_info.payload);
  if (!areas) return make_error(Errc::invalid_argument, "REGION_INFO: " + areas.error().message);
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  if (!*areas || (*areas)->empty()) return {};
  const SparseArea area = (*areas)->front();
  if (area.size == 0 || area.size > bar_size_ || area.offset > bar_size_ - area.size ||
      area.offset % page != 0 || area.size % page != 0) {
    return {};  // no usable area: messages
  }
  // The ioeventfd that tells the server the area was written.
  const RegionIoFds q{sizeof(RegionIoFds) + 8 * sizeof(IoFd), 0, kPciBar0Region, 0};
  auto r = call(Command::device_get_region_io_fds, bytes(q));
  if (!r) return {};  // a server without them: messages
  RegionIoFds got{};
  if (r->payload.size() < sizeof got) return {};
  std::memcpy(&got, r->payload.data(), sizeof got);
  int kick = -1;
  for (std::uint32_t i = 0; i < got.count && i < 8; ++i) {
    if (r->payload.size() < sizeof got + (i + 1) * sizeof(IoFd)) break;
    IoFd e{};
    std::memcpy(&e, r->payload.data() + sizeof got + i * sizeof(IoFd), sizeof e);
    if (e.type == kIoFdIoeventfd && e.flags == 0 && e.offset <= area.offset &&
        e.offset + e.size >= area.offset + area.size && e.fd_index < r->fds.size()) {
      kick = ::fcntl(r->fds[e.fd_index].get(), F_DUPFD_CLOEXEC, 0);
      break;
    }
  }
  if (kick < 0) return {};
  // Stores into a page the server could shrink would fault here: only a sealed file that
  // holds the whole area is mapped.
  struct stat st {};
  const int mem = region_info.fds[0].get();
  const int seals = ::fcntl(mem, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0 || ::fstat(mem, &st) != 0 ||
      static_cast<std::uint64_t>(st.st_size) < info.offset + area.offset + area.size) {
    ::close(kick);
    return {};
  }
  void* base = ::mmap(nullptr, area.size, PROT_READ | PROT_WRITE, MAP_SHARED,
                      region_info.fds[0].get(), static_cast<off_t>(info.offset + area.offset));
  if (base == MAP_FAILED) {
    ::close(kick);
    return {};
  }
  // Kept mapped until the function goes: a thread may still be storing into an older one.
  doorbell_maps_.push_back({base, area.size});
  doorbell_kick_.reset(kick);
  doorbell_offset_ = area.offset;
  doorbell_bytes_ = area.size;
  doorbell_base_.store(static_cast<std::uint32_t*>(base), std::memory_order_release);
  return {};
}

bool ClientFunction::store_doorbell(std::uint64_t offset, std::uint32_t value) noexcept {
  std::uint32_t* base = doorbell_base_.load(std::memory_order_acquire);
  if (base == nullptr || gone() || offset < doorbell_offset_ ||
      offset - doorbell_offset_ + 4 > doorbell_bytes_ || offset % 4 != 0) {
    return false;
  }
  // NVMe doorbells are 16 bits (31:16 reserved): the page slot carries the value in 15:0 and
  // a count of writes in 31:16, so every write changes the slot, the same value again too.
  // Another width goes as a message. One thread writes a given doorbell (its queue's owner).
  if (value > 0xffffu) return false;
  std::atomic_ref<std::uint32_t> slot(base[(offset - doorbell_offset_) / 4]);
  const std::uint32_t count = (slot.load(std::memory_order_relaxed) >> 16) + 1;
  slot.store(count << 16 | value, std::memory_order_release);
  const std::uint64_t one = 1;
  if (::write(doorbell_kick_.get(), &one, sizeof one) != sizeof one) return false;
  ++doorbell_stores_;
  return true;
}

Result<Message> ClientFunction::call(Command command, std::span<const std::byte> payload,
                                     std::span<const int> fds, bool no_reply) noexcept {
  if (gone() && !reconnect()) return make_error(Errc::gone, "the vfio-user server is gone");
  std::lock_guard lock(mu_);
  Header h{};
  h.msg_id = ++next_id_;
  h.command = command;
  h.flags = kFlagTypeCommand | (no_reply ? kFlagNoReply : 0);
  auto fail = [&](const Error& e) -> Error {
    if (e.code == Errc::gone || e.code == Errc::io_error || e.code == Errc::timeout ||
        e.code == Errc::invalid_argument) {
      if (!gone_.exchange(true)) kLog.warn("function %u: %s", number_, e.message.c_str());
    }
    return make_error(e.code == Errc::invalid_argument ? Errc::gone : e.code, e.message);
  };
  try {
    if (Status s = channel_->send(h, payload, fds); !s.ok()) return fail(s.error());
    if (no_reply) return Message{};
    auto r = channel_->receive(config_.reply_timeout);
    if (!r) return fail(r.error());
    if (r->header.msg_id != h.msg_id || r->header.command != command ||
        (r->header.flags & kFlagTypeMask) != kFlagTypeReply) {
      return fail(make_error(Errc::invalid_argument,
                             std::string(command_name(static_cast<std::uint16_t>(command))) +
                                 ": the reply does not match the command"));
    }
    if ((r->header.flags & kFlagError) != 0) {
      const int e = static_cast<int>(r->header.error);
      const Errc code = e == ENOENT                   ? Errc::not_found
                        : e == EEXIST || e == ERANGE  ? Errc::out_of_range
                        : e == ENOMEM || e == ENOSPC  ? Errc::no_memory
                        : e == ENODEV                 ? Errc::gone
                        : e == ETIMEDOUT              ? Errc::timeout
                        : e == EBUSY                  ? Errc::busy
                        : e == EINVAL                 ? Errc::invalid_argument
                        : e == ENOTSUP || e == ENOSYS ? Errc::unavailable
                        : e == EFAULT                 ? Errc::dma_fault
                                                      : Errc::device_error;
      return make_error(code, std::string(command_name(static_cast<std::uint16_t>(command))) +
                                  " refused by the server: " + std::strerror(e));
    }
    return std::move(r).value();
  } catch (const std::bad_alloc&) {
    return make_error(Errc::no_memory, "out of memory for a vfio-user message");
  }
}

Status ClientFunction::setup(bool negotiate) {
  if (negotiate) {
    auto v = call(Command::version, encode_version(config_.caps));
    if (!v) return v.error();
    auto agreed = decode_version(v->payload);
    if (!agreed) return agreed.error();
    if (agreed->major != kMajor || agreed->minor > kMinor) {
      return make_error(Errc::invalid_argument, "the server answered VERSION with " +
                                                    std::to_string(agreed->major) + "." +
                                                    std::to_string(agreed->minor));
    }
    agreed_ = agreed->caps;
  } else {
    agreed_ = config_.caps;  // what the process before agreed to (the same binary offers it)
  }
  const DeviceInfo di{sizeof(DeviceInfo), 0, 0, 0};
  auto info_r = call(Command::device_get_info, bytes(di));
  if (!info_r) return info_r.error();
  auto info = payload_as<DeviceInfo>(*info_r, "DEVICE_GET_INFO");
  if (!info) return info.error();
  if (info->num_regions <= kPciBar0Region || info->num_irqs <= kPciMsixIrq) {
    return make_error(Errc::invalid_argument, "the device has no BAR0 or no MSI-X");
  }
  RegionInfo ri{};
  ri.argsz = 256;  // room for the sparse-mmap capability
  ri.index = kPciBar0Region;
  auto bar_r = call(Command::device_get_region_info, bytes(ri));
  if (!bar_r) return bar_r.error();
  auto bar = payload_as<RegionInfo>(*bar_r, "DEVICE_GET_REGION_INFO");
  if (!bar) return bar.error();
  bar_size_ = bar->size;
  if (Status st = map_doorbells(*bar_r); !st.ok()) return st;
  auto irq = irq_info(kPciMsixIrq);
  if (!irq) return irq.error();
  vectors_ = irq->count;
  if (vectors_ > agreed_.max_msg_fds) {
    return make_error(Errc::invalid_argument, std::to_string(vectors_) + " MSI-X vectors but " +
                                                  std::to_string(agreed_.max_msg_fds) +
                                                  " fds per message");
  }
  if (Status s = read_identity(); !s.ok()) return s;
  // The same eventfds across reconnections: whoever waits on interrupt_fd() keeps its fd.
  if (!irq_fds_.empty() && irq_fds_.size() != vectors_) {
    return make_error(Errc::invalid_argument,
                      "the function came back with " + std::to_string(vectors_) +
                          " MSI-X vectors, not " + std::to_string(irq_fds_.size()));
  }
  while (irq_fds_.size() < vectors_) {
    irq_fds_.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!irq_fds_.back().valid()) return make_error(Errc::io_error, "eventfd failed");
  }
  std::vector<int> raw;
  for (const UniqueFd& fd : irq_fds_) raw.push_back(fd.get());
  if (vectors_ > 0) {
    const IrqSet set{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciMsixIrq, 0,
                     vectors_};
    if (auto r = call(Command::device_set_irqs, bytes(set), raw); !r) return r.error();
    if (!negotiate) {
      // An adopted function starts as a fresh one does, every vector unmasked: the process
      // before may have left one masked (it masks while it polls), and this one's driver
      // unmasks only what it masked itself. A pending message fires now, on this eventfd.
      const IrqSet unmask{sizeof(IrqSet), kIrqSetDataNone | kIrqSetActionUnmask, kPciMsixIrq, 0,
                          vectors_};
      if (auto r = call(Command::device_set_irqs, bytes(unmask)); !r) return r.error();
    }
  }
  return setup_request_irq(info->num_irqs);
}

Result<IrqInfo> ClientFunction::irq_info(std::uint32_t index) {
  IrqInfo ii{};
  ii.argsz = sizeof ii;
  ii.index = index;
  auto r = call(Command::device_get_irq_info, bytes(ii));
  if (!r) return r.error();
  return payload_as<IrqInfo>(*r, "DEVICE_GET_IRQ_INFO");
}

Status ClientFunction::setup_request_irq(std::uint32_t num_irqs) {
  if (num_irqs <= kPciReqIrq) return {};  // a server without it: removal shows as all ones
  auto info = irq_info(kPciReqIrq);
  if (!info) return info.error();
  if (info->count < 1 || (info->flags & kIrqEventfd) == 0) return {};
  if (!req_fd_.valid()) {
    req_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!req_fd_.valid()) return make_error(Errc::io_error, "eventfd failed");
  }
  std::uint64_t stale = 0;
  (void)!::read(req_fd_.get(), &stale, sizeof stale);  // what the server says now, not before
  const IrqSet set{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciReqIrq, 0, 1};
  const int fd = req_fd_.get();
  if (auto s = call(Command::device_set_irqs, bytes(set), {&fd, 1}); !s) return s.error();
  return {};
}

bool ClientFunction::unplugged() const noexcept {
  if (!req_fd_.valid()) return false;
  pollfd p{req_fd_.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

Error ClientFunction::unplugged_error() const {
  return make_error(Errc::gone, "function " + std::to_string(number_) + " at " + path_ +
                                    " is off the bus (removed by the card's owner)");
}

void ClientFunction::disconnect() noexcept {
  std::lock_guard lock(mu_);
  gone_.store(true, std::memory_order_release);
  doorbell_base_.store(nullptr, std::memory_order_release);
  if (channel_) (void)::shutdown(channel_->fd(), SHUT_RDWR);
}

bool ClientFunction::reconnect_now() noexcept {
  if (!gone()) return true;
  {
    std::lock_guard attempt(reconnect_mu_);
    last_dial_ns_ = 0;
  }
  return reconnect();
}

Status ClientFunction::read_identity() {
  const RegionAccess a{0, kPciConfigRegion, static_cast<std::uint32_t>(kConfigSpaceBytes)};
  auto r = call(Command::region_read, bytes(a));
  if (!r) return r.error();
  if (r->payload.size() != sizeof a + kConfigSpaceBytes) {
    return make_error(Errc::invalid_argument, "configuration space read returned " +
                                                  std::to_string(r->payload.size()) + " bytes");
  }
  auto id = parse_config_space(std::span(
      reinterpret_cast<const std::uint8_t*>(r->payload.data()) + sizeof a, kConfigSpaceBytes));
  if (!id) return id.error();
  identity_ = *id;
  return {};
}

Status ClientFunction::write_config(std::uint32_t offset, std::span<const std::uint8_t> data) {
  std::vector<std::byte> m(sizeof(RegionAccess) + data.size());
  const RegionAccess a{offset, kPciConfigRegion, static_cast<std::uint32_t>(data.size())};
  std::memcpy(m.data(), &a, sizeof a);
  std::memcpy(m.data() + sizeof a, data.data(), data.size());
  if (auto r = call(Command::region_write, m); !r) return r.error();
  return {};
}

std::uint32_t ClientFunction::read32(std::uint64_t offset) noexcept {
  const RegionAccess a{offset, kPciBar0Region, 4};
  auto r = call(Command::region_read, bytes(a));
  if (!r || r->payload.size() < sizeof a + 4) return 0xffffffffu;  // gone, as on PCIe
  std::uint32_t v;
  std::memcpy(&v, r->payload.data() + sizeof a, 4);
  return v;
}

std::uint64_t ClientFunction::read64(std::uint64_t offset) noexcept {
  const RegionAccess a{offset, kPciBar0Region, 8};
  auto r = call(Command::region_read, bytes(a));
  if (!r || r->payload.size() < sizeof a + 8) return ~std::uint64_t{0};
  std::uint64_t v;
  std::memcpy(&v, r->payload.data() + sizeof a, 8);
  return v;
}

void ClientFunction::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (store_doorbell(offset, value)) return;
  std::byte m[sizeof(RegionAccess) + 4];
  const RegionAccess a{offset, kPciBar0Region, 4};
  std::memcpy(m, &a, sizeof a);
  std::memcpy(m + sizeof a, &value, 4);
  (void)call(Command::region_write, m, {}, true);  // posted, as a PCIe write
}

void ClientFunction::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  std::byte m[sizeof(RegionAccess) + 8];
  const RegionAccess a{offset, kPciBar0Region, 8};
  std::memcpy(m, &a, sizeof a);
  std::memcpy(m + sizeof a, &value, 8);
  (void)call(Command::region_write, m, {}, true);
}

Result<fpga::DmaBuffer> ClientFunction::alloc_dma(std::size_t bytes_wanted) {
  if (bytes_wanted == 0) return make_error(Errc::invalid_argument, "alloc_dma of 0 bytes");
  if (unplugged()) return unplugged_error();
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t len = (bytes_wanted + page - 1) / page * page;
  // Sealed at its size: the card maps it and must be able to trust that it stays whole.
  UniqueFd mem(::memfd_create("keel-dma", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!mem.valid() || ::ftruncate(mem.get(), static_cast<off_t>(len)) != 0 ||
      ::fcntl(mem.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    return make_error(Errc::no_memory, std::string("memfd: ") + std::strerror(errno));
  }
  void* host = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
  if (host == MAP_FAILED) return make_error(Errc::no_memory, "mmap of a DMA buffer failed");
  fpga::Iova iova;
  {
    std::lock_guard lock(dma_mu_);
    auto at = iova_space_.allocate(len);
    if (!at) {
      ::munmap(host, len);
      return at.error();
    }
    iova = *at;
  }
  if (Status s = map_window(mem.get(), 0, len, iova); !s.ok()) {
    ::munmap(host, len);
    std::lock_guard lock(dma_mu_);
    (void)iova_space_.release(iova);
    return s.error();
  }
  return fpga::DmaBuffer(this, host, len, iova);
}

Status ClientFunction::map_dma(void*, std::size_t, fpga::Iova) {
  return make_error(Errc::unavailable,
                    "a card in another process DMAs only into memory it can map: use map_dma_fd");
}

Status ClientFunction::map_dma_fd(int fd, std::uint64_t fd_offset, void*, std::size_t len,
                                  fpga::Iova iova) {
  if (unplugged()) return unplugged_error();
  {
    // The caller's window in this client's IOMMU domain: refused here, with why, when it
    // overlaps another or is not whole pages (the server refuses it too).
    std::lock_guard lock(dma_mu_);
    if (Status s = iova_space_.reserve(iova, len); !s.ok()) return s;
  }
  Status s = map_window(fd, fd_offset, len, iova);
  if (!s.ok()) {
    std::lock_guard lock(dma_mu_);
    (void)iova_space_.release(iova);
  }
  return s;
}

Status ClientFunction::map_window(int fd, std::uint64_t fd_offset, std::size_t len,
                                  fpga::Iova iova) {
  UniqueFd kept(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!kept.valid()) return make_error(Errc::io_error, std::string("dup: ") + std::strerror(errno));
  const DmaMap m{sizeof(DmaMap), kDmaRead | kDmaWrite, fd_offset, iova, len};
  if (auto r = call(Command::dma_map, bytes(m), {&fd, 1}); !r) return r.error();
  std::lock_guard lock(dma_mu_);
  windows_[iova] = Window{len, fd_offset, std::move(kept)};
  return {};
}

Status ClientFunction::unmap_dma(fpga::Iova iova) {
  std::uint64_t len;
  {
    std::lock_guard lock(dma_mu_);
    const auto it = windows_.find(iova);
    if (it == windows_.end()) {
      return make_error(Errc::not_found, "no DMA window at IOVA " + std::to_string(iova));
    }
    len = it->second.bytes;
    windows_.erase(it);
    (void)iova_space_.release(iova);
  }
  const DmaUnmap u{sizeof(DmaUnmap), 0, iova, len};
  if (auto r = call(Command::dma_unmap, bytes(u)); !r) return r.error();
  return {};
}

void ClientFunction::release_dma(void* host, std::size_t len, fpga::Iova iova) noexcept {
  (void)unmap_dma(iova);  // the server stops using the pages first
  ::munmap(host, len);
}

Result<std::uint32_t> ClientFunction::wait_interrupt(unsigned vector,
                                                     std::chrono::nanoseconds timeout) {
  if (vector >= vectors_) {
    return make_error(Errc::invalid_argument, "no MSI-X vector " + std::to_string(vector));
  }
  // One poll for both: the request IRQ (level: signalled while the function is off the bus)
  // ends the wait, and wins over a vector that fired too.
  pollfd p[2] = {{irq_fds_[vector].get(), POLLIN, 0}, {req_fd_.get(), POLLIN, 0}};
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  const int n =
      ::poll(p, req_fd_.valid() ? 2 : 1, static_cast<int>(std::clamp<long long>(ms, 0, 1'000'000)));
  if (n > 0 && (p[1].revents & POLLIN) != 0) return unplugged_error();
  if (n <= 0) {
    if (gone()) return make_error(Errc::gone, "the vfio-user server is gone");
    return make_error(Errc::timeout, "MSI-X vector " + std::to_string(vector) + " did not fire");
  }
  std::uint64_t count = 0;
  if (::read(p[0].fd, &count, sizeof count) != sizeof count) count = 0;
  return static_cast<std::uint32_t>(count);
}

int ClientFunction::interrupt_fd(unsigned vector) {
  return vector < vectors_ ? irq_fds_[vector].get() : -1;
}

void ClientFunction::set_interrupt_masked(unsigned vector, bool masked) {
  if (vector >= vectors_) return;
  const IrqSet s{sizeof(IrqSet),
                 kIrqSetDataNone | (masked ? kIrqSetActionMask : kIrqSetActionUnmask), kPciMsixIrq,
                 vector, 1};
  (void)call(Command::device_set_irqs, bytes(s), {}, true);
}

Status ClientFunction::flr() {
  if (unplugged()) return unplugged_error();
  if (auto r = call(Command::device_reset, {}); !r) return r.error();
  return {};
}

}  // namespace keel::vfio_user
