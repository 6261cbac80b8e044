// ServiceChannel: the memfd holding one channel's rings, and its eventfds.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "service_impl.h"

namespace keel::vmm::detail {

ServiceChannel::~ServiceChannel() {
  if (map != nullptr) munmap(map, map_bytes);
}

Result<std::unique_ptr<ServiceChannel>> ServiceChannel::create(std::uint32_t entries) {
  auto fail = [](const char* what) {
    return make_error(Errc::io_error, std::string(what) + " failed: " + std::strerror(errno));
  };
  auto ch = std::make_unique<ServiceChannel>();
  const std::uint64_t bytes = ring_bytes(entries);
  ch->ring_fd.reset(memfd_create("keel-host-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!ch->ring_fd.valid()) return fail("memfd_create for a host channel");
  if (ftruncate(ch->ring_fd.get(), static_cast<off_t>(bytes)) != 0) {
    return fail("ftruncate of a host channel's memfd");
  }
  // Sealed: a client can neither shrink the rings under the service's mapping (SIGBUS) nor
  // grow them.
  if (fcntl(ch->ring_fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail("sealing a host channel's memfd");
  }
  // The shared rings: header, SQ and CQ, read and written by both sides.
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ch->ring_fd.get(), 0);
  if (map == MAP_FAILED) return fail("mmap of a host channel's rings");
  ch->map = map;
  ch->map_bytes = bytes;
  // The header is created here (placement new on fresh, zeroed memfd pages) and only accessed
  // through this pointer and the client's mapping of the same pages.
  auto* header = new (map) RingHeader{};
  header->magic = kRingMagic;
  header->version = kRingVersion;
  header->entries = entries;
  header->sqe_size = sizeof(RingSqe);
  header->cqe_size = sizeof(RingCqe);
  header->sq_offset = kSqOffset;
  header->cq_offset = cq_offset(entries);
  header->total_bytes = bytes;
  // The service has not adopted the channel yet: the client's first notify() must kick.
  header->service_needs_wakeup.store(1, std::memory_order_relaxed);
  header->service_state.store(kServiceRunning, std::memory_order_release);
  ch->header = header;
  // reinterpret_cast: the SQ and CQ arrays of trivially copyable entries at their fixed offsets
  // inside the mapping (ring_layout.h); the memfd's pages are zero, a valid state for both.
  ch->sq = reinterpret_cast<RingSqe*>(static_cast<std::byte*>(map) + kSqOffset);
  ch->cq = reinterpret_cast<RingCqe*>(static_cast<std::byte*>(map) + cq_offset(entries));
  ch->entries = entries;
  ch->mask = entries - 1;
  ch->submit_fd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ch->complete_fd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ch->submit_fd.valid() || !ch->complete_fd.valid()) return fail("eventfd for a host channel");
  return ch;
}

}  // namespace keel::vmm::detail
