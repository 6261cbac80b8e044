// keel/fpga/vfio_user/function_server.h - one PCI function of a card served over vfio-user:
// what keel-card runs per socket (issue 12). It answers a client's commands with the function:
// BAR0 reads and writes, MSI-X through the client's eventfds, DMA windows from the client's
// memory fds mapped into the function's IOMMU domain, FLR as DEVICE_RESET.
//
// Configuration space (region 7): the header and keel capability of config_space.h. Only the
// PF's NumVFs field is writable (it enables or removes VFs); other writes are accepted and
// ignored, as PCI does for read-only fields.
//
// With a doorbell page (FunctionServerConfig::doorbell_*), the client maps that part of BAR0
// and rings doorbells with stores and an eventfd instead of messages (doorbell_page.h).
//
// The request IRQ (index 4): an eventfd the client hands over, signalled while the function
// is off the bus (set_unplugged) and drained when it is back.
//
// Threading: one thread handles a connection's messages and forwards its interrupts.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "keel/fpga/function.h"
#include "keel/fpga/vfio_user/channel.h"
#include "keel/fpga/vfio_user/config_space.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::vfio_user {

class DoorbellPage;

struct FunctionServerConfig {
  /// What this server offers in VERSION (the smaller of each with the client's is agreed).
  Capabilities caps{64, 1u << 20};
  /// Largest DMA window one DMA_MAP may add, and all windows together (bytes).
  std::uint64_t max_window_bytes = 64ull << 30;
  std::uint64_t max_total_bytes = 256ull << 30;
  /// DMA windows one client may hold (each is a mapping in keel-card: bounded well below
  /// vm.max_map_count with every function's client at its limit).
  unsigned max_windows = 1024;
  /// For the PF's configuration space (config_space.h): the VFs the card can have, how many
  /// it has now, and what changes that (a client's write of the keel capability's NumVFs,
  /// as SR-IOV's NumVFs; its error is the write's reply). Unset: the PF shows 0 VFs and
  /// refuses the write.
  unsigned max_vfs = 0;
  std::function<unsigned()> num_vfs;
  std::function<Status(unsigned)> set_num_vfs;
  /// A part of BAR0 the client may map and write with stores (the doorbells: sparse mmap in
  /// REGION_INFO, one ioeventfd from REGION_IO_FDS); 0 bytes: none, every access a message.
  std::uint64_t doorbell_offset = 0;
  std::uint64_t doorbell_bytes = 0;
  /// Doorbells from doorbell_offset that can be in use (32-bit each; 0: the whole range).
  unsigned doorbell_slots = 0;
  /// The VFs pulled from the bus (bitmap) and what changes it (unset: none, refused).
  std::function<std::uint32_t()> removed_vfs;
  std::function<Status(std::uint32_t)> set_removed_vfs;
  /// Carries out a FaultRecord written to the keel capability (unset: refused).
  std::function<Status(const FaultRecord&)> inject_fault;
};

class FunctionServer {
 public:
  /// A doorbell page that cannot be made (memfd, eventfd) is left out, with a warning: every
  /// access is then a message.
  FunctionServer(fpga::Function& function, FunctionServerConfig config = {});
  ~FunctionServer();
  FunctionServer(const FunctionServer&) = delete;
  FunctionServer& operator=(const FunctionServer&) = delete;

  /// Handles one command and sends its reply (unless it asked for none). A command the server
  /// refuses gets a failed reply with an errno (EINVAL, ENOENT, EEXIST, ENOSPC, EPROTO, ...);
  /// only failing to send is an error here (the connection is then done).
  Status handle(Channel& channel, Message& message);

  /// Forwards the function's interrupts to the client's eventfds: every vector that fired
  /// since the last call and has a client eventfd gets one signal. Returns how many were sent.
  /// Vectors whose function signals the client's eventfd itself (Function::
  /// set_interrupt_target) need none of this.
  unsigned forward_interrupts();
  /// The function's interrupt eventfds (for an epoll loop around forward_interrupts()).
  std::vector<int> interrupt_fds() const;
  /// The doorbell page's kick (readable: call apply_doorbells()), or -1 without a page.
  int doorbell_fd() const noexcept;
  /// Writes the doorbells the client stored since the last look to the function. handle()
  /// does it first too, so a store before a message reaches the function before it.
  unsigned apply_doorbells();

  /// What the client did, for keel-card's per-function counters.
  struct Counters {
    std::uint64_t commands = 0, refused = 0, region_reads = 0, region_writes = 0;
    std::uint64_t dma_maps = 0, dma_unmaps = 0, interrupts_forwarded = 0, resets = 0;
    std::uint64_t config_writes = 0;    ///< Ignored writes to configuration space.
    std::uint64_t released = 0;         ///< Clients gone (a VF is reset at each).
    std::uint64_t doorbell_stores = 0;  ///< Doorbell writes taken from the page.
    /// NVMe controller enables: writes of CC with EN set over EN clear. A controller taken
    /// over running (servicing's keepalive) adds none; every bring-up or reset adds one.
    std::uint64_t enables = 0;
  };
  const Counters& counters() const noexcept { return counters_; }
  bool negotiated() const noexcept { return negotiated_; }
  /// DMA windows the client has mapped now.
  std::size_t windows() const noexcept { return windows_.size(); }

  /// The function is off the bus (surprise removal) or back: the level of the request IRQ
  /// (VFIO's index 4, "give the device back"), an eventfd the client handed over with
  /// SET_IRQS: signalled while the function is off, drained when it is back. A client that
  /// sets its eventfd later while the function is off finds it signalled.
  void set_unplugged(bool off_the_bus) noexcept;

  /// A client disconnected: resets a VF (FLR; the PF keeps the card's VF setup) and drops
  /// what the client set up (its DMA windows, its eventfds), as VFIO does when a process
  /// closes a device.
  void client_gone();

 private:
  struct Window {
    void* host = nullptr;
    std::uint64_t bytes = 0;
  };
  Result<std::vector<std::byte>> dispatch(Message& m);
  Result<std::vector<std::byte>> region_io_fds(const Message& m);
  Result<std::vector<std::byte>> version(const Message& m);
  Result<std::vector<std::byte>> region_info(const Message& m);
  Result<std::vector<std::byte>> region_access(const Message& m, bool write);
  Result<std::vector<std::byte>> config_access(const RegionAccess& a, const Message& m, bool write);
  Result<std::vector<std::byte>> irq_info(const Message& m);
  Status set_irqs(Message& m);
  Status set_request_irq(Message& m, const IrqSet& s);
  static Status check_eventfds(const std::vector<UniqueFd>& fds);
  void drop_interrupts();
  Status dma_map(Message& m);
  Result<std::vector<std::byte>> dma_unmap(const Message& m);

  fpga::Function& fn_;
  FunctionServerConfig config_;
  std::unique_ptr<DoorbellPage> doorbells_;
  std::vector<int> reply_fds_;  ///< Sent with the reply of the command being handled.
  Capabilities agreed_;
  bool negotiated_ = false;
  std::map<std::uint64_t, Window> windows_;  ///< By IOVA.
  std::uint64_t mapped_bytes_ = 0;
  std::vector<UniqueFd> irq_fds_;  ///< The client's eventfd per MSI-X vector (or none).
  std::vector<bool> direct_;       ///< Vector v's eventfd is signalled by the function itself.
  UniqueFd req_fd_;                ///< The client's request-IRQ eventfd (or none).
  bool unplugged_ = false;         ///< Off the bus (set_unplugged).
  Counters counters_;
};

}  // namespace keel::vfio_user
