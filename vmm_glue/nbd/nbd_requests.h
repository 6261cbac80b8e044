// nbd_requests.h - the requests the NBD server holds, from a valid header to the last byte of
// their reply: their records, their buffers (granted in turn, within each connection's quota:
// nbd_pool.h), the planner that carries them to the device (nbd_planner.h), their replies, and
// their device timeouts. It stands between the connections (RequestSink) and the planner
// (RequestDone).
//
// Threading: used by the server thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <string>

#include "keel/vmm/nbd_server.h"
#include "nbd_buffers.h"
#include "nbd_clock.h"
#include "nbd_connection.h"
#include "nbd_device_queue.h"
#include "nbd_planner.h"
#include "nbd_request.h"
#include "nbd_stats.h"

namespace keel::vmm::nbd_internal {

class Requests final : public RequestSink, public RequestDone {
 public:
  Requests(const NbdServerConfig& cfg, std::uint64_t export_bytes, DataBuffers& buffers,
           DeviceQueue& queue, const TimeoutClock& clock, Counters& counters, Notes& notes,
           RangeOrder& order)
      : cfg_(cfg),
        export_bytes_(export_bytes),
        buffers_(buffers),
        counters_(counters),
        notes_(notes),
        planner_(cfg, buffers, queue, clock, counters, notes, *this, order) {}

  Planner& planner() noexcept { return planner_; }
  const Planner& planner() const noexcept { return planner_; }

  /// Grants buffers to waiting connections, in order. A connection past its quota waits for its
  /// own requests to give chunks back and holds nobody else up; the first one within its quota
  /// that the pool cannot serve yet stops the round (first come, first served).
  void serve_waiters();
  /// Answers EIO to every request the device has not finished within io_timeout (`now`:
  /// TimeoutClock). One still waiting for an overlapping request is never started; one on the
  /// device keeps its buffers and its range until the device completes it.
  void check_timeouts(std::uint64_t now);

  /// Requests held (in the device, queued, or waiting to be sent).
  std::size_t live() const noexcept { return reqs_.size(); }
  /// One line per live request (type, stage, flags), for failure messages.
  std::string describe() const;

  // RequestSink (the connections)
  std::uint32_t check(const nbd::Request& h) const override;
  bool request(Connection& c, const nbd::Request& h) override;
  void admit(Req& r) override { planner_.admit(r); }
  void release(Req& r) override;
  void forget_waiter(Connection& c) override;

 private:
  // RequestDone (the planner)
  void request_done(Req& r) override;

  Req& new_req(Connection& c, const nbd::Request& h);
  void reply(Req& r, std::uint32_t error);

  const NbdServerConfig& cfg_;
  const std::uint64_t export_bytes_;
  DataBuffers& buffers_;
  Counters& counters_;
  Notes& notes_;
  std::list<Req> reqs_, spare_;
  std::deque<Connection*> waiters_;  // waiting for buffers, in order
  Planner planner_;                  // last: it points back at this
};

}  // namespace keel::vmm::nbd_internal
