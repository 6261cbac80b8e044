// Counters and the last error of the NBD server (nbd_stats.h).
#include "nbd_stats.h"
#include "keel/log.h"

#include <cstdio>

namespace keel::vmm::nbd_internal {

namespace {
constexpr log::Logger kLog{"nbd"};
}  // namespace

NbdServerStats Counters::snapshot() const noexcept {
  NbdServerStats s;
  auto ld = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  s.connections = ld(connections);
  s.turned_away = ld(turned_away);
  s.transmissions = ld(transmissions);
  s.disconnects = ld(disconnects);
  s.protocol_errors = ld(protocol_errors);
  s.options = ld(options);
  s.requests = ld(requests);
  s.reads = ld(reads);
  s.writes = ld(writes);
  s.flushes = ld(flushes);
  s.trims = ld(trims);
  s.write_zeroes = ld(write_zeroes);
  s.bytes_read = ld(bytes_read);
  s.bytes_written = ld(bytes_written);
  s.error_replies = ld(error_replies);
  s.unaligned = ld(unaligned);
  s.device_timeouts = ld(device_timeouts);
  s.send_timeouts = ld(send_timeouts);
  s.idle_timeouts = ld(idle_timeouts);
  s.quota_waits = ld(quota_waits);
  s.overlap_waits = ld(overlap_waits);
  s.virtio_requests = ld(virtio_requests);
  s.virtio_errors = ld(virtio_errors);
  return s;
}

void Notes::note(const std::string& what) {
  {
    std::lock_guard lock(mu_);
    last_ = what;
  }
  if (log_) kLog.warn("%s", what.c_str());
}

std::string Notes::last() const {
  std::lock_guard lock(mu_);
  return last_;
}

}  // namespace keel::vmm::nbd_internal
