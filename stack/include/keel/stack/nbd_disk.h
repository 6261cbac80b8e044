// keel/stack/nbd_disk.h - one keel guest disk behind an NBD server, stood up whole by the
// stack: what keel-nbd serves and the NBD tests run against.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "keel/fpga/card.h"
#include "keel/result.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/nbd_server.h"
#include "keel/vmm/paravisor.h"

namespace keel::stack {

class Stack;

/// One keel guest disk behind an NBD server, stood up whole: a free-running card, its PF
/// manager and one VF, a host storage service on the same image, a paravisor (worker threads)
/// on the VF or on the fallback, and the server. keel-nbd and the tests use it. The paravisor
/// and the VF get one queue (pair) per server worker (server.queues).
struct NbdDiskOptions {
  std::string card = "model";  ///< Card spec ("model", "sim", ...).
  /// Disk image (created if missing). Empty: a temporary image in /dev/shm (or the temp
  /// directory), removed when the disk goes away.
  std::string image;
  std::uint64_t size_bytes = 64ull << 20;  ///< Disk size (a multiple of 1 MiB).
  bool vf_path = true;  ///< false: the guest has no VF; everything takes the fallback.
  vmm::NbdServerConfig server;
};

class NbdDisk {
 public:
  /// Stands everything up and starts serving. Errors: from every layer, with what failed.
  /// Nothing stays tied to the calling thread: tearing the disk down never interrupts a
  /// blocking call of that thread (see HostStorageService::start).
  static Result<std::unique_ptr<NbdDisk>> create(const NbdDiskOptions& options);
  /// Stops the server, then the paravisor, then tears everything down in order.
  ~NbdDisk();
  NbdDisk(const NbdDisk&) = delete;
  NbdDisk& operator=(const NbdDisk&) = delete;

  vmm::NbdServer& server() noexcept { return *server_; }
  vmm::Paravisor& paravisor() noexcept { return *pv_; }
  vmm::HostStorageService& host() noexcept { return *host_; }
  fpga::Card& card() noexcept;
  const std::string& image() const noexcept { return image_; }
  /// Host-side CPU of the data path: paravisor worker threads + host service thread + its
  /// io_uring workers, in nanoseconds (keel_bench_paravisor's cpu_ns_per_io numerator).
  std::uint64_t host_cpu_ns() const;
  /// Stops serving (server, then paravisor); idempotent. Counters stay readable.
  void stop();

 private:
  NbdDisk() = default;
  std::string image_;
  bool remove_image_ = false;
  std::unique_ptr<Stack> stack_;
  std::unique_ptr<vmm::GuestMemory> memory_;
  std::unique_ptr<vmm::HostStorageService> host_;
  std::unique_ptr<vmm::Paravisor> pv_;
  std::unique_ptr<vmm::NbdServer> server_;
  bool stopped_ = false;
  std::uint64_t stopped_cpu_ns_ = 0;
};

}  // namespace keel::stack
