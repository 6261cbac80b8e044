// The simulated card's NIC half (sim_nic.h): BAR accesses of functions 65.. become AXI4-Lite
// transactions to keel_nic; the uplink is read by a thread of its own into NicLink.
#include "sim_nic.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include <keel/regs/keel_regs.h>

#include "keel/log.h"
#include "sim_impl.h"

namespace keel::fpga::sim {
namespace {

constexpr log::Logger kLog{"sim-nic"};
namespace np = regs::nicpf;
namespace nv = regs::nicvfcfg;

std::uint32_t half(std::uint64_t word, std::uint64_t offset) {
  return static_cast<std::uint32_t>((offset & 4) != 0 ? word >> 32 : word);
}
std::uint8_t strobes32(std::uint64_t offset) { return (offset & 4) != 0 ? 0xF0 : 0x0F; }
std::uint64_t place32(std::uint32_t value, std::uint64_t offset) {
  return std::uint64_t{value} << ((offset & 4) != 0 ? 32 : 0);
}

}  // namespace

// ---------------------------------------------------------------- PF

SimNicPf::SimNicPf(SimCard::Impl& card)
    : PfFunctionBase(*card.iommu, kNicPfFunction), card_(card) {}

std::uint64_t SimNicPf::bar_size() const noexcept { return nv::BASE + kSimNicVfs * nv::STRIDE; }

std::uint32_t SimNicPf::read32(std::uint64_t offset) noexcept {
  if (offset >= bar_size()) return 0;
  return half(card_.mmio_read(kNicPfFunction, offset), offset);
}

std::uint64_t SimNicPf::read64(std::uint64_t offset) noexcept {
  if (offset >= bar_size()) return 0;
  return card_.mmio_read(kNicPfFunction, offset);
}

void SimNicPf::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (offset >= bar_size()) return;
  if (offset == np::NUM_VFS) {
    (void)card_.nic->set_num_vfs(value & static_cast<std::uint32_t>(np::NUM_VFS_COUNT_MASK));
    return;
  }
  card_.mmio_write(kNicPfFunction, offset, place32(value, offset), strobes32(offset));
}

void SimNicPf::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  write32(offset, static_cast<std::uint32_t>(value));
  write32(offset + 4, static_cast<std::uint32_t>(value >> 32));
}

// ---------------------------------------------------------------- VFs

SimNicVf::SimNicVf(SimCard::Impl& card, unsigned index)
    : IommuFunction(*card.iommu, nic_vf_function(index)), card_(card), index_(index) {}

bool SimNicVf::gone() const noexcept {
  return index_ >= card_.shell->nic_num_vfs() ||
         ((card_.nic_link.removed.load(std::memory_order_acquire) >> index_) & 1u) != 0;
}

std::uint32_t SimNicVf::read32(std::uint64_t offset) noexcept {
  if (offset >= bar_size() || gone()) return 0xFFFFFFFFu;
  return half(card_.mmio_read(nic_vf_function(index_), offset), offset);
}

std::uint64_t SimNicVf::read64(std::uint64_t offset) noexcept {
  if (offset >= bar_size() || gone()) return ~std::uint64_t{0};
  return card_.mmio_read(nic_vf_function(index_), offset);
}

void SimNicVf::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (offset >= bar_size() || gone()) return;
  card_.mmio_write(nic_vf_function(index_), offset, place32(value, offset), strobes32(offset));
}

void SimNicVf::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (offset >= bar_size() || gone()) return;
  card_.mmio_write(nic_vf_function(index_), offset, value, 0xFF);
}

unsigned SimNicVf::num_vectors() const noexcept { return card_.nic_irqs[index_]->vectors(); }

Result<std::uint32_t> SimNicVf::wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) {
  return card_.nic_irqs[index_]->wait(
      index_, vector, timeout, card_.lockstep(), [&] { return card_.now_ns(); },
      [&] {
        std::lock_guard lock(card_.mu);
        card_.run_locked(card_.config.cycles_per_step);
      },
      [&] { return gone(); });
}

int SimNicVf::interrupt_fd(unsigned vector) { return card_.nic_irqs[index_]->fd(vector); }

Status SimNicVf::set_interrupt_target(unsigned vector, int eventfd) {
  return card_.nic_irqs[index_]->set_target(vector, eventfd);
}

void SimNicVf::set_interrupt_masked(unsigned vector, bool masked) {
  card_.nic_irqs[index_]->set_masked(vector, masked);
}

// The VF's FLR goes to the card as the PF's NICVFCFG FLR.GO (the same reset in keel_nic).
Status SimNicVf::flr() {
  if (gone()) return make_error(Errc::gone, "NIC VF " + std::to_string(index_) + " is gone");
  const std::uint64_t at = nv::at(index_, nv::FLR);
  card_.mmio_write(kNicPfFunction, at, place32(1, at), strobes32(at));
  (void)card_.mmio_read(kNicPfFunction, np::ID);  // orders after the write
  MsixInterrupts& irq = *card_.nic_irqs[index_];
  irq.clear();
  for (unsigned v = 0; v < irq.vectors(); ++v) irq.set_masked(v, false);
  irq.wake_all();
  return {};
}

// ---------------------------------------------------------------- the NIC

SimNic::SimNic(SimCard::Impl& card) : card_(card), pf_(card) {
  for (unsigned i = 0; i < kSimNicVfs; ++i) vfs_.push_back(std::make_unique<SimNicVf>(card, i));
  card_.nic_link.send = [this](std::span<const std::uint8_t> f) {
    return uplink_.valid() && ::write(uplink_.get(), f.data(), f.size()) >= 0;
  };
}

SimNic::~SimNic() { stop_uplink(); }

unsigned SimNic::max_vfs() const noexcept { return kSimNicVfs; }
unsigned SimNic::num_vfs() const noexcept { return card_.shell->nic_num_vfs(); }

Result<Function*> SimNic::vf(unsigned index) {
  if (index >= num_vfs()) {
    return make_error(Errc::not_found, "NIC VF " + std::to_string(index) + " is not present (" +
                                           std::to_string(num_vfs()) + " NIC VFs enabled)");
  }
  return static_cast<Function*>(vfs_[index].get());
}

void SimNic::reset_irqs(unsigned index) {
  MsixInterrupts& irq = *card_.nic_irqs[index];
  irq.clear();
  for (unsigned v = 0; v < irq.vectors(); ++v) irq.set_masked(v, false);
  irq.wake_all();
}

Status SimNic::set_num_vfs(unsigned n) {
  const unsigned cur = num_vfs();
  const std::uint32_t count = std::min(n, 255u);  // any count above max_vfs() is refused
  card_.mmio_write(kNicPfFunction, np::NUM_VFS, place32(count, np::NUM_VFS),
                   strobes32(np::NUM_VFS));
  (void)card_.mmio_read(kNicPfFunction, np::ID);
  if (n > max_vfs()) {
    return make_error(Errc::invalid_argument, "the card has " + std::to_string(max_vfs()) +
                                                  " NIC VFs; cannot enable " + std::to_string(n));
  }
  if (cur != 0 && n != 0 && n != cur) {
    return make_error(Errc::busy, std::to_string(cur) + " NIC VFs are enabled; set the count " +
                                      "to 0 before changing it to " + std::to_string(n));
  }
  if (n != cur) {
    for (unsigned i = 0; i < std::max(n, cur); ++i) {
      if (n == 0) card_.iommu->unmap_all(nic_vf_function(i));
      card_.nic_link.removed.fetch_and(~(1u << i));
      reset_irqs(i);
    }
  }
  if (num_vfs() != n) {
    return make_error(Errc::unavailable, "the card did not take NIC NUM_VFS=" + std::to_string(n));
  }
  return {};
}

Status SimNic::surprise_remove(unsigned index) {
  if (index >= num_vfs()) return make_error(Errc::not_found, "no NIC VF " + std::to_string(index));
  card_.nic_link.removed.fetch_or(1u << index);
  (void)card_.mmio_read(kNicPfFunction, np::ID);  // the card sees it
  card_.nic_irqs[index]->wake_all();
  return {};
}

Status SimNic::restore(unsigned index) {
  if (index >= num_vfs()) return make_error(Errc::not_found, "no NIC VF " + std::to_string(index));
  card_.nic_link.removed.fetch_and(~(1u << index));
  (void)card_.mmio_read(kNicPfFunction, np::ID);  // the card resets the VF as after an FLR
  reset_irqs(index);
  return {};
}

// ---------------------------------------------------------------- uplink

Status SimNic::attach_uplink(UniqueFd fd) {
  if (!fd.valid()) return make_error(Errc::invalid_argument, "uplink: no fd");
  stop_uplink();
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    return make_error(Errc::invalid_argument, std::string("uplink fd: ") + strerror(errno));
  }
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) return make_error(Errc::io_error, std::string("eventfd: ") + strerror(errno));
  {
    std::lock_guard lock(card_.mu);
    uplink_ = std::move(fd);
    stop_ = std::move(stop);
    card_.nic_link.on.store(true);
    card_.nic_link.up.store(true);
  }
  thread_ = std::thread([this, ufd = uplink_.get(), sfd = stop_.get()] { reader(ufd, sfd); });
  return {};
}

void SimNic::stop_uplink() noexcept {
  if (thread_.joinable()) {
    const std::uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof one);
    thread_.join();
  }
  std::lock_guard lock(card_.mu);
  uplink_.reset();
  stop_.reset();
  card_.nic_link.on.store(false);
  card_.nic_link.up.store(false);
}

void SimNic::reader(int fd, int stop_fd) noexcept {
  NicLink& link = card_.nic_link;
  std::vector<std::uint8_t> buf(65536);
  for (;;) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      kLog.error("uplink: poll: %s", strerror(errno));
      link.up.store(false);
      return;
    }
    if (p[1].revents != 0) return;
    bool got = false;
    for (;;) {
      const ssize_t r = ::read(fd, buf.data(), buf.size());
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
        if (errno == ECONNREFUSED) continue;
        kLog.error("uplink: read: %s; the uplink stops receiving", strerror(errno));
        link.up.store(false);
        return;
      }
      if (r == 0 && (p[0].revents & POLLHUP) != 0) {
        kLog.info("uplink: peer closed; the uplink stops receiving");
        link.up.store(false);
        return;
      }
      std::lock_guard lock(link.mu);
      if (link.rx.size() >= kUplinkQueue) {
        link.overflow.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      link.rx.emplace_back(buf.begin(), buf.begin() + r);
      link.has_rx.store(true, std::memory_order_release);
      got = true;
    }
    if (got) card_.req_cv.notify_one();
  }
}

}  // namespace keel::fpga::sim
