// keel/fpga/vfio_user/client_function.h - a card function reached over vfio-user: the fpga/
// backend for a card served by another process (keel-card; issue 12). Everything a Function
// does becomes a message: BAR0 accesses are REGION_READ/WRITE (writes need no reply, so a
// doorbell costs one send), DMA memory is a memfd the server maps (DMA_MAP with the fd), MSI-X
// vectors are eventfds given to the server (SET_IRQS), FLR is DEVICE_RESET.
//
// The card runs in its own process, so waits are on the host's clock. A function whose socket
// fails is gone: reads return all ones and writes are dropped, as on PCIe.
//
// A function whose server went away (keel-card killed) dials its socket again on its next use
// (ClientConfig::reconnect_interval): a restarted card is found again, as a reset device.
//
// Doorbells: when the server offers BAR0's doorbells as a sparse-mmap area with an ioeventfd,
// a doorbell write is a store into that shared page and an eventfd write, not a message. The
// slot holds the 16-bit NVMe doorbell value and a write count above it (doorbell_page.h).
//
// A function off the bus (keel-card's surprise removal) signals the request IRQ (VFIO's index
// 4, an eventfd this client hands over): interrupt waits, DMA setup and FLR fail with gone
// while it is, as on the kernel's VFIO.
//
// Not yet: memory the caller names only by address (map_dma needs an fd here; use
// map_dma_fd).
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "keel/fpga/dma.h"
#include "keel/fpga/function.h"
#include "keel/fpga/vfio/iova_space.h"
#include "keel/fpga/vfio_user/channel.h"
#include "keel/fpga/vfio_user/config_space.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::vfio_user {

struct ClientConfig {
  /// How long a reply may take (DEVICE_RESET included).
  std::chrono::milliseconds reply_timeout{5000};
  /// What this client offers in VERSION.
  Capabilities caps{64, 1u << 20};
  /// A gone function dials its socket again on its next use, at most this often (0: never).
  std::chrono::milliseconds reconnect_interval{100};
};

class ClientFunction final : public fpga::Function, private fpga::DmaOwner {
 public:
  /// Connects to the function's socket, negotiates the version, reads the device, BAR0, its
  /// configuration space (which function of the card it is: config_space.h) and MSI-X info,
  /// and hands the server one eventfd per vector. Errors: unavailable (nothing listens at the
  /// path), gone (the server turned this client away), invalid_argument (a server that breaks
  /// the protocol or is not a keel function), timeout.
  static Result<std::unique_ptr<ClientFunction>> connect(const std::string& socket_path,
                                                         const ClientConfig& config = {});
  /// A connection another process handed over (Function::hand_over), with its VERSION long
  /// agreed: reads the device, BAR0, configuration space and MSI-X info again and hands the
  /// server this process's eventfds (the server forgets the old ones). The device is left as it
  /// runs; the windows the old process kept are this one's once adopt_dma_fd() names them.
  /// `connection` is duplicated. Errors: as connect(), io_error (dup).
  static Result<std::unique_ptr<ClientFunction>> adopt(const std::string& socket_path,
                                                       int connection,
                                                       const ClientConfig& config = {});
  ~ClientFunction() override;

  unsigned number() const noexcept override { return number_; }
  std::uint64_t bar_size() const noexcept override { return bar_size_; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  Result<fpga::DmaBuffer> alloc_dma(std::size_t bytes) override;
  /// Errors: unavailable (the server can only DMA into memory it can map: use map_dma_fd).
  Status map_dma(void* host, std::size_t bytes, fpga::Iova iova) override;
  Status map_dma_fd(int fd, std::uint64_t fd_offset, void* host, std::size_t bytes,
                    fpga::Iova iova) override;
  Status unmap_dma(fpga::Iova iova) override;
  unsigned num_vectors() const noexcept override { return vectors_; }
  Result<std::uint32_t> wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) override;
  int interrupt_fd(unsigned vector) override;
  void set_interrupt_masked(unsigned vector, bool masked) override;
  Status flr() override;
  /// The connection, duplicated, after every window but `keep` is unmapped; this object then
  /// sends nothing more and never dials again (the next process owns the function).
  Result<UniqueFd> hand_over(std::span<const fpga::Iova> keep) override;
  Status adopt_dma_fd(int fd, std::uint64_t fd_offset, std::size_t bytes, fpga::Iova iova) override;

  bool gone() const noexcept { return gone_.load(std::memory_order_acquire); }
  /// The function is off the bus: its request IRQ (VFIO's index 4) is signalled, as keel-card
  /// does while a VF is surprise-removed. Reads are all ones then, and DMA setup, FLR and
  /// interrupt waits fail with gone; it ends when the card puts the function back.
  bool unplugged() const noexcept;
  /// Lets go of the connection (the function is about to go: its VF is being removed); the
  /// next use dials again, as after the server went away.
  void disconnect() noexcept;
  /// A gone function dials its socket now, not waiting for the reconnect interval. True when
  /// it is connected.
  bool reconnect_now() noexcept;
  /// Which function of the card this is, and for the PF its VF counts (as last read).
  const FunctionIdentity& identity() const noexcept { return identity_; }
  /// Reads the configuration space again (the PF's VF count changes). Errors: gone, those of
  /// parse_config_space.
  Status refresh_identity() { return read_identity(); }
  /// Writes `data` at `offset` of configuration space; the server's refusal is the error
  /// (the PF's NumVFs: invalid_argument, busy, unavailable).
  Status write_config(std::uint32_t offset, std::span<const std::uint8_t> data);
  /// Times the function came back after it was gone (a restarted keel-card). What comes back
  /// is a reset device (no queue of before) with this client's DMA windows mapped again and
  /// the same MSI-X eventfds.
  std::uint64_t reconnects() const noexcept { return reconnects_; }
  /// Doorbell writes that were stores into the mapped doorbell page (no message).
  std::uint64_t doorbell_stores() const noexcept { return doorbell_stores_; }

 private:
  ClientFunction(std::unique_ptr<Channel> channel, std::string path, const ClientConfig& config)
      : channel_(std::move(channel)), path_(std::move(path)), config_(config) {}
  static Result<UniqueFd> dial(const std::string& socket_path);
  /// Gone: dials the socket again (rate-limited) and redoes setup(). True when it is back.
  bool reconnect() noexcept;
  Status read_identity();
  /// Maps BAR0's sparse-mmap area (the doorbells) and takes its ioeventfd, if the server
  /// offers both; otherwise every write stays a message.
  Status map_doorbells(const Message& region_info);
  /// A doorbell write as a store into the mapped page and a kick; false: send it as a message
  /// (no page, gone, outside it, or wider than 16 bits).
  bool store_doorbell(std::uint64_t offset, std::uint32_t value) noexcept;
  /// Sends a command and, unless `no_reply`, waits for its reply (an errno reply is an error).
  Result<Message> call(Command command, std::span<const std::byte> payload,
                       std::span<const int> fds = {}, bool no_reply = false) noexcept;
  /// `negotiate`: send VERSION first (a connection of this process's own, not an adopted one).
  Status setup(bool negotiate = true);
  Status setup_request_irq(std::uint32_t num_irqs);
  Result<IrqInfo> irq_info(std::uint32_t index);
  /// DMA_MAP of a window whose IOVA is already taken in iova_space_, and its record.
  Status map_window(int fd, std::uint64_t fd_offset, std::size_t len, fpga::Iova iova);
  Error unplugged_error() const;
  void release_dma(void* host, std::size_t bytes, fpga::Iova iova) noexcept override;

  std::mutex mu_;  // one command and its reply at a time
  std::unique_ptr<Channel> channel_;
  const std::string path_;
  unsigned number_ = 0;
  const ClientConfig config_;
  FunctionIdentity identity_;
  std::mutex reconnect_mu_;
  std::uint64_t last_dial_ns_ = 0;
  std::atomic<std::uint64_t> reconnects_{0};
  struct DoorbellMap {
    void* base;
    std::uint64_t bytes;
  };
  std::vector<DoorbellMap> doorbell_maps_;  ///< Every page mapped (reconnections add one).
  std::atomic<std::uint32_t*> doorbell_base_{nullptr};
  std::uint64_t doorbell_offset_ = 0, doorbell_bytes_ = 0;
  UniqueFd doorbell_kick_;
  std::atomic<std::uint64_t> doorbell_stores_{0};
  Capabilities agreed_;
  std::uint64_t bar_size_ = 0;
  unsigned vectors_ = 0;
  std::vector<UniqueFd> irq_fds_;
  UniqueFd req_fd_;  ///< The request IRQ's eventfd: signalled while the function is off the bus.
  std::uint16_t next_id_ = 0;
  std::atomic<bool> gone_{false};
  std::atomic<bool> handed_over_{false};  ///< The next process owns the function.
  std::mutex dma_mu_;
  /// A DMA window: what DMA_MAP said, and its memory (a duplicate of the caller's fd), kept so
  /// a reconnection maps it again: the windows are this client's IOMMU domain, which outlives
  /// a reset of the device (as a VFIO container outlives an FLR).
  struct Window {
    std::uint64_t bytes = 0;
    std::uint64_t fd_offset = 0;
    UniqueFd fd;
  };
  std::map<fpga::Iova, Window> windows_;
  /// Which IOVAs the windows take, and where alloc_dma() puts its buffers: the kernel VFIO
  /// backend's bookkeeping (from 2^52, aligned, a guard page after each).
  fpga::vfio::IovaSpace iova_space_;
};

}  // namespace keel::vfio_user
