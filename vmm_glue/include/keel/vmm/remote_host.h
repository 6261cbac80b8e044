// keel/vmm/remote_host.h - the host storage service in a process of its own (keel-hostd), so
// that "the host cannot see a confidential guest's memory" is enforced by the OS: the service
// process maps only what a paravisor sends it, and a confidential guest's paravisor sends only
// its shared bounce pool, never a guest-RAM fd.
//
// A paravisor connects to keel-hostd's unix socket (SOCK_SEQPACKET, one message per record,
// fds by SCM_RIGHTS), names a disk the daemon was configured with (the host decides which
// images exist, not the guest), and gets channels whose rings and eventfds the daemon's
// HostStorageService serves, exactly as in one process. The session ends with the connection:
// the service stops and everything it mapped goes.
//
// Messages (little-endian; each starts with RemoteHeader; a reply has the request's type):
//   OPEN         disk name, guest RAM regions + one fd each (none: confidential)
//                -> u64 disk bytes
//   ADD_SHARED   u64 fd_offset, u64 bytes + one fd -> u64 address
//   OPEN_CHANNEL u32 entries -> u32 entries + 3 fds (ring memfd, submit, complete eventfd)
//   REGIONS      -> RemoteRegion[]
// A refused request's reply has status = 1 + Errc and the error text as payload.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/vmm/host_service.h"

namespace keel::vmm {

namespace remote {
enum class Type : std::uint32_t { open = 1, add_shared = 2, open_channel = 3, regions = 4 };
struct Header {
  Type type;
  std::uint32_t status;  ///< Replies: 0 ok, else 1 + Errc.
};
inline constexpr std::size_t kDiskNameBytes = 64;
struct Open {
  char disk[kDiskNameBytes];  ///< NUL-terminated.
  std::uint32_t regions;      ///< OpenRegion entries that follow, one fd each.
  std::uint32_t reserved;
};
struct OpenRegion {
  std::uint64_t gpa, bytes, fd_offset;
};
struct Region {
  std::uint64_t gpa, bytes, dev, ino;
  std::uint32_t shared, reserved;
};
inline constexpr std::size_t kMaxMessageBytes = 4096;
inline constexpr std::size_t kMaxRegions = 32;
}  // namespace remote

/// A disk keel-hostd serves: bytes [offset, offset + length) of an image (length 0: to its end).
struct HostDisk {
  std::string image_path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

/// The paravisor's side: a HostStorage in keel-hostd.
class RemoteHostStorage final : public HostStorage {
 public:
  /// Connects to keel-hostd at `socket_path` and opens `disk` with `regions` of guest RAM
  /// (empty: a confidential guest; the service gets only what add_shared_region() sends).
  /// Errors: unavailable (nothing listens), not_found (no such disk), those of the service's
  /// start, timeout, invalid_argument (a reply that breaks the protocol).
  static Result<std::unique_ptr<RemoteHostStorage>> connect(
      const std::string& socket_path, const std::string& disk,
      const std::vector<HostMemoryRegion>& regions,
      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~RemoteHostStorage() override;

  Result<HostChannel> open_channel(unsigned entries = 256) override;
  Result<std::uint64_t> add_shared_region(int fd, std::uint64_t fd_offset,
                                          std::uint64_t bytes) override;
  std::vector<HostRegionInfo> regions() const override;
  /// The size of the disk the daemon serves.
  std::uint64_t disk_bytes() const noexcept { return disk_bytes_; }
  /// The daemon's process (SO_PEERCRED).
  pid_t server_pid() const noexcept { return server_pid_; }

 private:
  RemoteHostStorage(UniqueFd sock, std::chrono::milliseconds timeout)
      : sock_(std::move(sock)), timeout_(timeout) {}
  struct Reply {
    std::vector<std::byte> payload;
    std::vector<UniqueFd> fds;
  };
  Result<Reply> call(remote::Type type, std::span<const std::byte> payload,
                     std::span<const int> fds = {}) const;

  UniqueFd sock_;
  std::chrono::milliseconds timeout_;
  std::uint64_t disk_bytes_ = 0;
  pid_t server_pid_ = -1;
  std::vector<UniqueFd> channel_fds_;  ///< The fds of every channel opened, kept while we live.
};

/// keel-hostd's side of one connection: its HostStorageService, started by OPEN.
class RemoteHostSession {
 public:
  /// `disks`: what may be opened, by name; `base`: the service settings (image and memory are
  /// set per OPEN).
  RemoteHostSession(UniqueFd conn, const std::map<std::string, HostDisk>& disks,
                    HostServiceConfig base);
  ~RemoteHostSession();
  int fd() const noexcept { return conn_.get(); }
  /// Handles one message (call when fd() is readable). False: the session is over (the peer
  /// closed, or sent what is not this protocol); the caller destroys it.
  bool handle();
  /// The disk opened, or "" before OPEN.
  const std::string& disk() const noexcept { return disk_; }
  const HostStorageService* service() const noexcept { return service_.get(); }

 private:
  Result<std::vector<std::byte>> dispatch(const remote::Header& h, std::span<const std::byte> p,
                                          std::vector<UniqueFd>& fds,
                                          std::vector<UniqueFd>& out_fds);
  Result<std::vector<std::byte>> open(std::span<const std::byte> p, std::vector<UniqueFd>& fds);

  UniqueFd conn_;
  const std::map<std::string, HostDisk>& disks_;
  HostServiceConfig base_;
  std::string disk_;
  std::unique_ptr<HostStorageService> service_;
};

}  // namespace keel::vmm
