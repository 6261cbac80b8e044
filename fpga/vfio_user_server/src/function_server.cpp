#include "keel/fpga/vfio_user/function_server.h"

#include "doorbell_page.h"
#include "keel/fpga/vfio_user/config_space.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <string>
#include <string_view>

#include "keel/fpga/nic.h"
#include "keel/log.h"
#include "keel/regs/keel_regs.h"

namespace keel::vfio_user {
namespace {

constexpr log::Logger kLog{"vfio-user"};
static_assert(kNicPfNumber == fpga::kNicPfFunction && kNicPfNumber + 1 == fpga::nic_vf_function(0));

/// Which function of the card `fn` is (config_space.h's numbering).
FunctionIdentity identity_of(const fpga::Function& fn) {
  FunctionIdentity id;
  id.number = fn.number();
  return id;
}

std::uint32_t errno_of(const Error& e) {
  switch (e.code) {
    case Errc::invalid_argument: return EINVAL;
    case Errc::out_of_range: return ERANGE;
    case Errc::not_found: return ENOENT;
    case Errc::unavailable: return ENOTSUP;
    case Errc::timeout: return ETIMEDOUT;
    case Errc::gone: return ENODEV;
    case Errc::device_error: return EIO;
    case Errc::dma_fault: return EFAULT;
    case Errc::no_memory: return ENOMEM;
    case Errc::busy: return EBUSY;
    case Errc::io_error: return EIO;
  }
  return EIO;
}

template <typename T>
std::vector<std::byte> bytes_of(const T& v) {
  std::vector<std::byte> out(sizeof v);
  std::memcpy(out.data(), &v, sizeof v);
  return out;
}

}  // namespace

FunctionServer::FunctionServer(fpga::Function& function, FunctionServerConfig config)
    : fn_(function), config_(std::move(config)) {
  if (config_.doorbell_bytes == 0) return;
  auto page =
      DoorbellPage::create(config_.doorbell_offset, config_.doorbell_bytes, config_.doorbell_slots);
  if (!page) {
    kLog.warn("function %u: no doorbell page (%s); doorbells are messages", fn_.number(),
              page.error().message.c_str());
    return;
  }
  doorbells_ = std::move(page).value();
}

FunctionServer::~FunctionServer() { client_gone(); }

int FunctionServer::doorbell_fd() const noexcept { return doorbells_ ? doorbells_->kick_fd() : -1; }

unsigned FunctionServer::apply_doorbells() {
  if (!doorbells_) return 0;
  const unsigned n = doorbells_->apply(fn_);
  counters_.doorbell_stores += n;
  return n;
}

void FunctionServer::client_gone() {
  // As VFIO does when a process lets go of a device: a VF is reset (its queues stop, no DMA
  // of the old client's reaches anything), then its windows are unmapped, so the next client
  // finds a clean function and the other functions notice nothing. The PF is not: it holds
  // the card's VF setup, which outlives the tool that made it (keelctl), as it does behind a
  // PF driver.
  if (!identity_of(fn_).is_pf() && (negotiated_ || !windows_.empty())) {
    ++counters_.released;
    if (Status s = fn_.flr(); !s.ok()) kLog.warn("reset at release: %s", s.error().message.c_str());
  }
  for (auto& [iova, w] : windows_) {
    (void)fn_.unmap_dma(iova);
    ::munmap(w.host, w.bytes);
  }
  windows_.clear();
  mapped_bytes_ = 0;
  drop_interrupts();
  req_fd_ = UniqueFd();
  negotiated_ = false;
  if (doorbells_) doorbells_->reset();
}

Status FunctionServer::handle(Channel& channel, Message& message) {
  ++counters_.commands;
  apply_doorbells();  // stores the client made before it sent this come first
  reply_fds_.clear();
  auto r = dispatch(message);
  if ((message.header.flags & kFlagNoReply) != 0) {
    if (!r.ok()) ++counters_.refused;
    return {};
  }
  if (!r.ok()) {
    ++counters_.refused;
    kLog.info("%s refused: %s", command_name(static_cast<std::uint16_t>(message.header.command)),
              r.error().message.c_str());
    // The spec's answer to a DMA_MAP over an existing window is EEXIST.
    const bool exists = message.header.command == Command::dma_map && r.error().code == Errc::busy;
    return channel.reply(message.header, {}, {}, exists ? EEXIST : errno_of(r.error()));
  }
  return channel.reply(message.header, r.value(), reply_fds_);
}

Result<std::vector<std::byte>> FunctionServer::dispatch(Message& m) {
  if ((m.header.flags & kFlagTypeMask) != kFlagTypeCommand) {
    return make_error(Errc::invalid_argument, "a reply where a command was expected");
  }
  if (m.header.command != Command::version && !negotiated_) {
    return make_error(Errc::invalid_argument, "VERSION must come first");
  }
  switch (m.header.command) {
    case Command::version: return version(m);
    case Command::device_get_info: {
      auto req = payload_as<DeviceInfo>(m, "DEVICE_GET_INFO");
      if (!req) return req.error();
      const DeviceInfo info{sizeof(DeviceInfo), kDeviceReset | kDevicePci, kPciNumRegions,
                            kPciNumIrqs};
      return bytes_of(info);
    }
    case Command::device_get_region_info: return region_info(m);
    case Command::region_read: return region_access(m, false);
    case Command::region_write: return region_access(m, true);
    case Command::device_get_irq_info: return irq_info(m);
    case Command::device_set_irqs: {
      if (Status s = set_irqs(m); !s.ok()) return s.error();
      return std::vector<std::byte>{};
    }
    case Command::dma_map: {
      if (Status s = dma_map(m); !s.ok()) return s.error();
      return std::vector<std::byte>{};
    }
    case Command::dma_unmap: return dma_unmap(m);
    case Command::device_reset: {
      ++counters_.resets;
      if (Status s = fn_.flr(); !s.ok()) return s.error();
      return std::vector<std::byte>{};
    }
    case Command::device_get_region_io_fds: return region_io_fds(m);
    case Command::dma_read:
    case Command::dma_write: break;
  }
  return make_error(
      Errc::unavailable,
      std::string(command_name(static_cast<std::uint16_t>(m.header.command))) + " is not served");
}

Result<std::vector<std::byte>> FunctionServer::region_io_fds(const Message& m) {
  auto req = payload_as<RegionIoFds>(m, "DEVICE_GET_REGION_IO_FDS");
  if (!req) return req.error();
  if (req->index >= kPciNumRegions) {
    return make_error(Errc::invalid_argument,
                      "region " + std::to_string(req->index) + " does not exist");
  }
  RegionIoFds reply{sizeof(RegionIoFds), 0, req->index, 0};
  if (req->index != kPciBar0Region || !doorbells_) return bytes_of(reply);  // none here
  reply.count = 1;
  reply.argsz = sizeof(RegionIoFds) + sizeof(IoFd);
  if (req->argsz < reply.argsz) {
    reply.count = 0;  // the header alone says how much room the answer needs
    return bytes_of(reply);
  }
  std::vector<std::byte> out = bytes_of(reply);
  const IoFd fd{doorbells_->offset(), doorbells_->bytes(), 0, kIoFdIoeventfd, 0, 0, 0};
  const auto b = bytes_of(fd);
  out.insert(out.end(), b.begin(), b.end());
  reply_fds_.push_back(doorbells_->kick_fd());
  return out;
}

Result<std::vector<std::byte>> FunctionServer::version(const Message& m) {
  auto offer = decode_version(m.payload);
  if (!offer) return offer.error();
  auto agreed = negotiate(*offer, config_.caps);
  if (!agreed) return agreed.error();
  agreed_ = agreed->caps;
  negotiated_ = true;
  return encode_version(agreed_, agreed->major, agreed->minor);
}

Result<std::vector<std::byte>> FunctionServer::region_info(const Message& m) {
  auto req = payload_as<RegionInfo>(m, "DEVICE_GET_REGION_INFO");
  if (!req) return req.error();
  if (req->index >= kPciNumRegions) {
    return make_error(Errc::invalid_argument,
                      "region " + std::to_string(req->index) + " does not exist");
  }
  RegionInfo info{};
  info.argsz = sizeof(RegionInfo);
  info.index = req->index;
  if (req->index == kPciBar0Region) {
    info.flags = kRegionRead | kRegionWrite;
    info.size = fn_.bar_size();
    if (doorbells_) {
      // The doorbells as a sparse-mmap area of the region's fd (mapped at their BAR offset).
      const std::uint32_t whole =
          sizeof(RegionInfo) + sizeof(CapHeader) + sizeof(SparseMmap) + sizeof(SparseArea);
      info.argsz = whole;
      if (req->argsz < whole) return bytes_of(info);  // the client asks again with room
      info.flags |= kRegionMmap | kRegionCaps;
      info.cap_offset = sizeof(RegionInfo);
      info.offset = 0;
      std::vector<std::byte> out = bytes_of(info);
      const auto add = [&out](const auto& v) {
        const auto b = bytes_of(v);
        out.insert(out.end(), b.begin(), b.end());
      };
      add(CapHeader{kCapSparseMmap, 1, 0});
      add(SparseMmap{1, 0});
      add(SparseArea{doorbells_->offset(), doorbells_->bytes()});
      reply_fds_.push_back(doorbells_->memfd());
      return out;
    }
  } else if (req->index == kPciConfigRegion) {
    info.flags = kRegionRead | kRegionWrite;
    info.size = kConfigSpaceBytes;
  }
  return bytes_of(info);
}

Result<std::vector<std::byte>> FunctionServer::config_access(const RegionAccess& a,
                                                             const Message& m, bool write) {
  const char* what = write ? "REGION_WRITE" : "REGION_READ";
  if (a.count == 0 || a.count > kConfigSpaceBytes || a.offset > kConfigSpaceBytes - a.count) {
    return make_error(Errc::invalid_argument, std::string(what) + ": " + std::to_string(a.count) +
                                                  " bytes at " + std::to_string(a.offset) +
                                                  " is not inside configuration space (256 "
                                                  "bytes)");
  }
  std::vector<std::byte> reply = bytes_of(a);
  if (write) {
    ++counters_.config_writes;
    const bool pf = identity_of(fn_).is_pf();
    if (pf && a.offset == kKeelCapOffset + kKeelCapNumVfs && (a.count == 2 || a.count == 4)) {
      const auto* v = reinterpret_cast<const std::uint8_t*>(m.payload.data() + sizeof a);
      const unsigned n = static_cast<unsigned>(v[0]) | static_cast<unsigned>(v[1]) << 8;
      if (!config_.set_num_vfs) {
        return make_error(Errc::unavailable, "this card's VFs cannot be changed");
      }
      if (n > config_.max_vfs) {
        return make_error(Errc::invalid_argument, "NumVFs " + std::to_string(n) + " over the " +
                                                      std::to_string(config_.max_vfs) +
                                                      " the card has");
      }
      if (Status st = config_.set_num_vfs(n); !st.ok()) return st.error();
    } else if (pf && a.offset == kKeelCapOffset + kKeelCapRemovedVfs && a.count == 4) {
      std::uint32_t mask;
      std::memcpy(&mask, m.payload.data() + sizeof a, 4);
      if (!config_.set_removed_vfs) {
        return make_error(Errc::unavailable,
                          "this card's VFs cannot be pulled (no fault "
                          "injection on it)");
      }
      if (Status st = config_.set_removed_vfs(mask); !st.ok()) return st.error();
    } else if (pf && a.offset == kKeelCapOffset + kKeelCapFault && a.count == sizeof(FaultRecord)) {
      FaultRecord f;
      std::memcpy(&f, m.payload.data() + sizeof a, sizeof f);
      if (!config_.inject_fault) {
        return make_error(Errc::unavailable, "this card takes no fault injection");
      }
      if (Status st = config_.inject_fault(f); !st.ok()) return st.error();
    }
    return reply;  // every other field is read-only: ignored, as PCI does
  }
  ++counters_.region_reads;
  FunctionIdentity id = identity_of(fn_);
  if (id.is_pf()) {
    id.max_vfs = config_.max_vfs;
    id.num_vfs = config_.num_vfs ? config_.num_vfs() : 0;
    id.removed_vfs = config_.removed_vfs ? config_.removed_vfs() : 0;
  }
  const auto space = build_config_space(id);
  const auto* from = reinterpret_cast<const std::byte*>(space.data()) + a.offset;
  reply.insert(reply.end(), from, from + a.count);
  return reply;
}

Result<std::vector<std::byte>> FunctionServer::region_access(const Message& m, bool write) {
  const char* what = write ? "REGION_WRITE" : "REGION_READ";
  auto req = payload_as<RegionAccess>(m, what);
  if (!req) return req.error();
  const RegionAccess a = *req;
  if (write && m.payload.size() != sizeof(RegionAccess) + a.count) {
    return make_error(Errc::invalid_argument,
                      "REGION_WRITE: " + std::to_string(a.count) + " bytes announced, " +
                          std::to_string(m.payload.size() - sizeof a) + " sent");
  }
  if (a.region == kPciConfigRegion) return config_access(a, m, write);
  if (a.region != kPciBar0Region) {
    return make_error(Errc::invalid_argument, std::string(what) + ": region " +
                                                  std::to_string(a.region) + " has no registers");
  }
  // Registers are 32 or 64 bits wide and naturally aligned; longer accesses are runs of
  // 32-bit ones (up to the agreed transfer size).
  const bool width_ok = a.count == 8 ? a.offset % 8 == 0 : a.count % 4 == 0 && a.offset % 4 == 0;
  if (a.count == 0 || !width_ok || a.count > agreed_.max_data_xfer_size ||
      a.offset > fn_.bar_size() || a.count > fn_.bar_size() - a.offset) {
    return make_error(Errc::invalid_argument, std::string(what) + ": " + std::to_string(a.count) +
                                                  " bytes at " + std::to_string(a.offset) +
                                                  " is not an aligned access inside BAR0 (" +
                                                  std::to_string(fn_.bar_size()) + " bytes)");
  }
  std::vector<std::byte> reply = bytes_of(a);
  if (write) {
    ++counters_.region_writes;
    const std::byte* src = m.payload.data() + sizeof a;
    if (a.offset == regs::nvme::CC && a.count == 4 && !identity_of(fn_).is_nic()) {
      std::uint32_t cc;
      std::memcpy(&cc, src, 4);
      if ((cc & 1u) != 0 && (fn_.read32(regs::nvme::CC) & 1u) == 0) {
        ++counters_.enables;
        const std::string who =
            fn_.number() == 0 ? std::string("pf") : "vf" + std::to_string(fn_.number() - 1);
        kLog.info("%s: NVMe controller enabled (%llu in all)", who.c_str(),
                  static_cast<unsigned long long>(counters_.enables));
      }
    }
    if (a.count == 8) {
      std::uint64_t v;
      std::memcpy(&v, src, 8);
      fn_.write64(a.offset, v);
    } else {
      for (std::uint32_t i = 0; i < a.count; i += 4) {
        std::uint32_t v;
        std::memcpy(&v, src + i, 4);
        fn_.write32(a.offset + i, v);
      }
    }
    return reply;
  }
  ++counters_.region_reads;
  reply.resize(sizeof a + a.count);
  std::byte* dst = reply.data() + sizeof a;
  if (a.count == 8) {
    const std::uint64_t v = fn_.read64(a.offset);
    std::memcpy(dst, &v, 8);
  } else {
    for (std::uint32_t i = 0; i < a.count; i += 4) {
      const std::uint32_t v = fn_.read32(a.offset + i);
      std::memcpy(dst + i, &v, 4);
    }
  }
  return reply;
}

Result<std::vector<std::byte>> FunctionServer::irq_info(const Message& m) {
  auto req = payload_as<IrqInfo>(m, "DEVICE_GET_IRQ_INFO");
  if (!req) return req.error();
  if (req->index >= kPciNumIrqs) {
    return make_error(Errc::invalid_argument,
                      "IRQ index " + std::to_string(req->index) + " does not exist");
  }
  IrqInfo info{};
  info.argsz = sizeof(IrqInfo);
  info.index = req->index;
  if (req->index == kPciMsixIrq) {
    info.flags = kIrqEventfd | kIrqMaskable | kIrqNoresize;
    info.count = fn_.num_vectors();
  } else if (req->index == kPciReqIrq) {
    info.flags = kIrqEventfd | kIrqNoresize;
    info.count = 1;
  }
  return bytes_of(info);
}

Status FunctionServer::check_eventfds(const std::vector<UniqueFd>& fds) {
  // Only eventfds, never blocking: the card signals them from its own thread, and a pipe or
  // a file in their place could stall it (every function's) or fill a disk.
  for (const UniqueFd& fd : fds) {
    char link[64] = {};
    const std::string self = "/proc/self/fd/" + std::to_string(fd.get());
    if (::readlink(self.c_str(), link, sizeof link - 1) < 0 ||
        std::string_view(link) != "anon_inode:[eventfd]") {
      return make_error(Errc::invalid_argument, "SET_IRQS: an fd that is not an eventfd");
    }
    (void)::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
  }
  return {};
}

Status FunctionServer::set_request_irq(Message& m, const IrqSet& s) {
  const std::uint32_t data = s.flags & kIrqSetDataMask, action = s.flags & kIrqSetActionMaskBits;
  if (action != kIrqSetActionTrigger || (data != kIrqSetDataEventfd && data != kIrqSetDataNone)) {
    return make_error(Errc::invalid_argument,
                      "SET_IRQS: the request IRQ (index 4) takes an eventfd, or none to drop it");
  }
  if (data == kIrqSetDataNone || m.fds.empty()) {
    if (s.start != 0 || s.count > 1) {
      return make_error(Errc::invalid_argument, "SET_IRQS: the request IRQ has one vector");
    }
    req_fd_ = UniqueFd();
    return {};
  }
  if (s.start != 0 || s.count != 1 || m.fds.size() != 1) {
    return make_error(Errc::invalid_argument, "SET_IRQS: the request IRQ takes one eventfd");
  }
  if (Status st = check_eventfds(m.fds); !st.ok()) return st;
  req_fd_ = std::move(m.fds[0]);
  set_unplugged(unplugged_);  // a function already off the bus says so at once
  return {};
}

void FunctionServer::set_unplugged(bool off_the_bus) noexcept {
  unplugged_ = off_the_bus;
  if (!req_fd_.valid()) return;
  std::uint64_t n = 1;
  if (off_the_bus) {
    (void)!::write(req_fd_.get(), &n, sizeof n);
  } else {
    (void)!::read(req_fd_.get(), &n, sizeof n);  // back: the level drops (non-blocking)
  }
}

Status FunctionServer::set_irqs(Message& m) {
  auto req = payload_as<IrqSet>(m, "DEVICE_SET_IRQS");
  if (!req) return req.error();
  const IrqSet s = *req;
  const std::uint32_t data = s.flags & kIrqSetDataMask, action = s.flags & kIrqSetActionMaskBits;
  const unsigned vectors = fn_.num_vectors();
  if (s.index == kPciReqIrq) return set_request_irq(m, s);
  if (s.index != kPciMsixIrq) {
    return make_error(Errc::invalid_argument,
                      "SET_IRQS: only MSI-X (index 2) and the request IRQ (index 4) are served");
  }
  if (std::popcount(data) != 1 || std::popcount(action) != 1) {
    return make_error(Errc::invalid_argument, "SET_IRQS: flags " + std::to_string(s.flags) +
                                                  " name not exactly one data kind and one action");
  }
  if (data == kIrqSetDataNone && action == kIrqSetActionTrigger && s.start == 0 && s.count == 0) {
    drop_interrupts();  // disable the whole index
    return {};
  }
  if (s.count == 0 || s.start >= vectors || s.count > vectors - s.start) {
    return make_error(Errc::invalid_argument, "SET_IRQS: vectors " + std::to_string(s.start) + "+" +
                                                  std::to_string(s.count) + " are not within the " +
                                                  std::to_string(vectors) + " this function has");
  }
  if (data == kIrqSetDataEventfd) {
    if (action != kIrqSetActionTrigger) {
      return make_error(Errc::invalid_argument, "SET_IRQS: eventfds are served for TRIGGER only");
    }
    if (!m.fds.empty() && m.fds.size() != s.count) {
      return make_error(Errc::invalid_argument, "SET_IRQS: " + std::to_string(s.count) +
                                                    " vectors but " + std::to_string(m.fds.size()) +
                                                    " eventfds");
    }
    if (Status st = check_eventfds(m.fds); !st.ok()) return st;
    if (irq_fds_.size() < vectors) irq_fds_.resize(vectors);
    if (direct_.size() < vectors) direct_.resize(vectors, false);
    for (std::uint32_t i = 0; i < s.count; ++i) {
      const unsigned v = s.start + i;
      irq_fds_[v] = m.fds.empty() ? UniqueFd() : std::move(m.fds[i]);  // none: de-assign
      // The function signals the client's eventfd itself when it can (no hop through the
      // server's loop); otherwise forward_interrupts() does.
      direct_[v] = irq_fds_[v].valid() && fn_.set_interrupt_target(v, irq_fds_[v].get()).ok();
      if (!irq_fds_[v].valid()) (void)fn_.set_interrupt_target(v, -1);
    }
    return {};
  }
  if (action == kIrqSetActionTrigger) {
    return make_error(Errc::invalid_argument, "SET_IRQS: a client cannot trigger MSI-X here");
  }
  // MASK / UNMASK, for every vector in range (DATA_NONE) or those whose bool is set.
  if (data == kIrqSetDataBool && m.payload.size() < sizeof s + s.count) {
    return make_error(Errc::invalid_argument, "SET_IRQS: fewer bools than vectors");
  }
  for (std::uint32_t i = 0; i < s.count; ++i) {
    if (data == kIrqSetDataBool && m.payload[sizeof s + i] == std::byte{0}) continue;
    fn_.set_interrupt_masked(s.start + i, action == kIrqSetActionMask);
  }
  return {};
}

Status FunctionServer::dma_map(Message& m) {
  auto req = payload_as<DmaMap>(m, "DMA_MAP");
  if (!req) return req.error();
  const DmaMap d = *req;
  if (m.fds.size() != 1) {
    return make_error(Errc::invalid_argument,
                      "DMA_MAP: the card DMAs only into memory it can map: send one fd");
  }
  const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  if (d.size == 0 || d.size % page != 0 || d.address % page != 0 || d.offset % page != 0 ||
      (d.flags & ~(kDmaRead | kDmaWrite)) != 0 || (d.flags & (kDmaRead | kDmaWrite)) == 0) {
    return make_error(Errc::invalid_argument,
                      "DMA_MAP: address, size and offset must be page aligned, size non-zero, "
                      "flags readable and/or writeable");
  }
  if (d.size > config_.max_window_bytes || windows_.size() >= config_.max_windows ||
      d.size > config_.max_total_bytes - mapped_bytes_) {
    return make_error(Errc::no_memory, "DMA_MAP: over the server's limits on DMA windows");
  }
  // The card DMAs into these pages from its own thread: a file shorter than the window, or one
  // the client could shrink later, would kill the card with SIGBUS. As for guest memory over
  // vhost-user, the fd must hold the window and be sealed against shrinking.
  struct stat st {};
  if (::fstat(m.fds[0].get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<std::uint64_t>(st.st_size) < d.offset ||
      static_cast<std::uint64_t>(st.st_size) - d.offset < d.size) {
    return make_error(Errc::invalid_argument,
                      "DMA_MAP: the fd is not a regular file holding the whole window");
  }
  const int seals = ::fcntl(m.fds[0].get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return make_error(Errc::invalid_argument,
                      "DMA_MAP: the fd is not sealed against shrinking (F_SEAL_SHRINK)");
  }
  const int prot =
      ((d.flags & kDmaRead) ? PROT_READ : 0) | ((d.flags & kDmaWrite) ? PROT_WRITE : 0);
  void* host =
      ::mmap(nullptr, d.size, prot, MAP_SHARED, m.fds[0].get(), static_cast<off_t>(d.offset));
  if (host == MAP_FAILED) {
    return make_error(Errc::invalid_argument,
                      std::string("DMA_MAP: the fd cannot be mapped: ") + std::strerror(errno));
  }
  if (Status s = fn_.map_dma(host, d.size, d.address); !s.ok()) {
    ::munmap(host, d.size);
    if (s.error().code == Errc::out_of_range) {
      return make_error(Errc::busy, "DMA_MAP: overlaps a window already mapped");  // EEXIST
    }
    return s;
  }
  windows_[d.address] = Window{host, d.size};
  mapped_bytes_ += d.size;
  ++counters_.dma_maps;
  return {};
}

Result<std::vector<std::byte>> FunctionServer::dma_unmap(const Message& m) {
  auto req = payload_as<DmaUnmap>(m, "DMA_UNMAP");
  if (!req) return req.error();
  const auto it = windows_.find(req->address);
  if (it == windows_.end() || it->second.bytes != req->size) {
    return make_error(Errc::not_found, "DMA_UNMAP: no window of " + std::to_string(req->size) +
                                           " bytes at " + std::to_string(req->address));
  }
  (void)fn_.unmap_dma(req->address);
  ::munmap(it->second.host, it->second.bytes);
  mapped_bytes_ -= it->second.bytes;
  windows_.erase(it);
  ++counters_.dma_unmaps;
  return bytes_of(*req);
}

void FunctionServer::drop_interrupts() {
  for (unsigned v = 0; v < direct_.size(); ++v) {
    if (direct_[v]) (void)fn_.set_interrupt_target(v, -1);
  }
  direct_.clear();
  irq_fds_.clear();
}

unsigned FunctionServer::forward_interrupts() {
  unsigned sent = 0;
  for (unsigned v = 0; v < irq_fds_.size(); ++v) {
    if (v < direct_.size() && direct_[v]) continue;  // the function signals it itself
    const int from = fn_.interrupt_fd(v);
    if (from < 0) continue;
    std::uint64_t n = 0;
    if (::read(from, &n, sizeof n) != sizeof n || n == 0) continue;
    if (!irq_fds_[v].valid()) continue;  // fired with no eventfd: dropped, as a masked-off MSI
    const std::uint64_t one = 1;
    if (::write(irq_fds_[v].get(), &one, sizeof one) == sizeof one) ++sent;
  }
  counters_.interrupts_forwarded += sent;
  return sent;
}

std::vector<int> FunctionServer::interrupt_fds() const {
  std::vector<int> fds;
  for (unsigned v = 0; v < fn_.num_vectors(); ++v) fds.push_back(fn_.interrupt_fd(v));
  return fds;
}

}  // namespace keel::vfio_user
