// A VFIO group and a VFIO device: one PCIe function of a real card behind vfio-pci.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "keel/fpga/function.h"
#include "keel/unique_fd.h"
#include "mmio.h"
#include "vfio_container.h"

namespace keel::fpga::vfio {

/// An open /dev/vfio/<N> attached to its own container. Shared by the functions in the group;
/// when the last one lets go, the group closes and its container is detached (the kernel drops
/// the IOMMU domain). The container itself lives on as long as someone holds it: DmaBuffers
/// point at it, so VfioCard keeps every container until the card is destroyed.
class Group {
 public:
  /// Opens the group node `path`, checks it is viable, attaches it to a new container opened
  /// from `container_path` and selects the IOMMU. Errors: unavailable (missing node, no
  /// permission, not viable: other devices of the group are bound to host drivers), busy (the
  /// group is open in another process).
  static Result<std::shared_ptr<Group>> open(const std::string& path, unsigned number,
                                             const std::string& container_path);
  /// Opens the group node `path` of a function back on the bus and attaches it to the
  /// container its function had (Container::attach: every window mapped again at its IOVA).
  /// Errors: those of open(), and of Container::attach.
  static Result<std::shared_ptr<Group>> rejoin(const std::string& path, unsigned number,
                                               std::shared_ptr<Container> container);
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  ~Group();

  unsigned number() const noexcept { return number_; }
  int fd() const noexcept { return fd_.get(); }
  const std::shared_ptr<Container>& container() const noexcept { return container_; }

 private:
  Group(unsigned number, UniqueFd fd, std::shared_ptr<Container> container)
      : number_(number), fd_(std::move(fd)), container_(std::move(container)) {}
  /// Opens the node and checks it is viable.
  static Result<UniqueFd> open_node(const std::string& path, unsigned number);

  unsigned number_;
  UniqueFd fd_;
  std::shared_ptr<Container> container_;
};

/// One function (the PF or a VF) opened through VFIO.
class VfioFunction final : public Function {
 public:
  /// Opens `address` in `group`. `name` is what VFIO_GROUP_GET_DEVICE_FD gets: the address,
  /// plus " vf_token=<uuid>" for a VF whose PF is held by vfio-pci. Maps BAR0, routes every
  /// MSI-X vector to an eventfd and listens for the kernel's release request.
  /// Errors: unavailable, busy (the device is open elsewhere), io_error.
  static Result<std::unique_ptr<VfioFunction>> open(std::shared_ptr<Group> group,
                                                    const std::string& address,
                                                    const std::string& name, unsigned number);
  ~VfioFunction() override;

  const std::string& address() const noexcept { return address_; }
  unsigned group_number() const noexcept { return group_number_.load(); }
  /// Sets the VF token (a UUID, 16 bytes) VFs of this PF must present. False when the kernel
  /// or device has no VF token (kernels before 5.7, or a function that is not an SR-IOV PF).
  bool set_vf_token(const std::array<std::uint8_t, 16>& uuid);
  /// Leaves the bus: BAR reads return all ones, writes are dropped, DMA and interrupt waits
  /// fail with gone (waits in progress wake up), the device and its group are released. The
  /// object stays valid, so pointers callers still hold never dangle. Idempotent.
  void close() noexcept;
  /// After close(): the function is back on the bus (its VF re-enabled) and `group` (from
  /// Group::rejoin, so the DMA windows are mapped again) holds it. Opens the device again
  /// under the same descriptor number, maps BAR0 at the same address and routes its vectors
  /// to the same eventfds, so whoever holds this function, its interrupt fds or its DMA
  /// buffers goes on as before; the device itself comes back as from a reset. Errors:
  /// unavailable (VFIO refused it), busy (another process has it), io_error, invalid_argument
  /// (it came back different: BAR size, vector count); then it stays closed.
  Status reopen(std::shared_ptr<Group> group);
  const std::shared_ptr<Container>& container() const noexcept { return container_; }
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  /// Readable once the kernel asked for the device back (its request IRQ) or close() ran.
  int gone_fd() const noexcept { return gone_fd_.get(); }

  unsigned number() const noexcept override { return number_; }
  std::uint64_t bar_size() const noexcept override { return bar_.size(); }
  std::uint32_t read32(std::uint64_t offset) noexcept override { return bar_.read32(offset); }
  std::uint64_t read64(std::uint64_t offset) noexcept override { return bar_.read64(offset); }
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override {
    bar_.write32(offset, value);
  }
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override {
    bar_.write64(offset, value);
  }
  Result<DmaBuffer> alloc_dma(std::size_t bytes) override;
  Status map_dma(void* host, std::size_t bytes, Iova iova) override;
  Status unmap_dma(Iova iova) override;
  unsigned num_vectors() const noexcept override { return static_cast<unsigned>(irq_fds_.size()); }
  Result<std::uint32_t> wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) override;
  int interrupt_fd(unsigned vector) override;
  void set_interrupt_masked(unsigned vector, bool masked) override;
  Status flr() override;

 private:
  VfioFunction(std::shared_ptr<Group> group, std::string address, std::string name, unsigned number,
               UniqueFd device)
      : group_(std::move(group)),
        address_(std::move(address)),
        name_(std::move(name)),
        number_(number),
        device_(std::move(device)) {}
  /// Reads the device's info: PCI, BAR0 present, FLR offered. Errors: io_error, unavailable.
  Status read_info(std::uint32_t& num_irqs);
  /// Lets the kernel have the device: BAR retired, the device descriptor's number kept (it
  /// then refers to /dev/null), the group released.
  void let_go() noexcept;
  Status enable_bus_master();
  Status map_bar0();
  Status route_interrupts(unsigned num_irqs);
  /// Routes the vectors of irq_fds_ (masked ones to their pending fds) and the release
  /// request to gone_fd_ on the current device.
  Status route_existing(unsigned num_irqs);
  /// True once the function was closed or the kernel asked for it back (hot removal).
  bool gone() noexcept;
  Error gone_error() const;

  std::shared_ptr<Group> group_;
  std::shared_ptr<Container> container_;  // kept after close(): DmaBuffers still point at it
  std::string address_;
  std::string name_;  // what VFIO_GROUP_GET_DEVICE_FD is given
  unsigned number_;
  // Its number never changes once open (close() points it at /dev/null, reopen() at the
  // device again), so other threads' ioctls never see a descriptor closed under them.
  UniqueFd device_;
  Bar bar_;  // declared after device_: unmapped before the device closes
  std::vector<UniqueFd> irq_fds_;
  // Signalled by the kernel when it wants the device back (hot removal) and by close(); every
  // interrupt wait polls it too.
  UniqueFd gone_fd_;
  std::atomic<unsigned> group_number_{0};
  std::atomic<bool> can_reset_{false};
  std::mutex mask_mu_;
  std::vector<bool> masked_;           ///< Per vector: its trigger is pending_fds_[v].
  std::vector<UniqueFd> pending_fds_;  ///< What fires while masked.
  std::atomic<bool> gone_{false};
  std::atomic<bool> closed_{false};
};

}  // namespace keel::fpga::vfio
