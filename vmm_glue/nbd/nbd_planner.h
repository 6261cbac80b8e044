// nbd_planner.h - turning NBD requests into device IO: which requests the export serves, the
// sectors a request covers (an unaligned read reads the covering sectors; an unaligned write or
// write-zeroes is a read-modify-write of its edge sectors), splitting into virtio-blk requests
// of at most max_virtio_bytes (and write-zeroes of at most kMaxZeroSectors), the stages of a
// request on the device (edge reads, the data, the FUA flush), and the order of overlapping
// requests (nbd_overlap.h). It sees requests and buffers, never a socket.
//
// Threading: used by the server thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

#include "keel/vmm/nbd_server.h"
#include "nbd_buffers.h"
#include "nbd_clock.h"
#include "nbd_device_queue.h"
#include "nbd_overlap.h"
#include "nbd_request.h"
#include "nbd_stats.h"

namespace keel::vmm::nbd_internal {

/// The NBD error a request header gets from an export of `export_bytes` served with `cfg`, or 0.
/// (Magic and NBD_CMD_DISC are the connection's business.)
std::uint32_t check_request(const nbd::Request& h, const NbdServerConfig& cfg,
                            std::uint64_t export_bytes) noexcept;

/// Told when a request is through with the device: it finished (error set when it failed), or it
/// timed out before it could start (error EIO, never run). Its range is released already.
class RequestDone {
 public:
  virtual ~RequestDone() = default;
  virtual void request_done(Req& r) = 0;
};

class Planner final : public OpSink {
 public:
  Planner(const NbdServerConfig& cfg, DataBuffers& buffers, DeviceQueue& queue,
          const TimeoutClock& clock, Counters& counters, Notes& notes, RequestDone& done,
          RangeOrder& order)
      : cfg_(cfg),
        buffers_(buffers),
        queue_(queue),
        clock_(clock),
        counters_(counters),
        notes_(notes),
        done_(done),
        order_(order) {}

  /// Decides the covering range, edges and RMW of a new request, and the range it will hold.
  void plan(Req& r);
  /// Chunks the request's buffer needs (its covering range, plus an RMW's scratch).
  static std::uint64_t needed_chunks(const Req& r) noexcept;

  /// The request is complete (payload received): it holds its range from now on (its device
  /// deadline starts), and starts once nothing admitted before it overlaps it.
  void admit(Req& r);
  /// Starts every waiting request that no longer overlaps an earlier one.
  void pump_admissions();
  /// A request that timed out while waiting for an overlapping one: released from the order and
  /// handed to RequestDone with EIO, never run. Call pump_admissions() afterwards.
  void cancel_queued(Req& r);
  /// Requests wait for an overlapping one (possibly another worker's: pump_admissions() then
  /// has to be called again, as nothing here learns when that one finishes).
  bool waiting() const noexcept { return !admit_q_.empty(); }

  /// Takes the device's completions and moves their requests on; returns how many.
  unsigned reap() { return queue_.reap(*this); }

  /// Admitted requests whose device work is not done.
  unsigned running() const noexcept { return running_; }
  std::size_t held_ranges() const noexcept { return order_.size(); }

 private:
  void op_done(const VOp& op, std::uint8_t status) override;
  void start(Req& r);
  void push_op(Req& r, VKind kind, bool scratch, std::uint32_t pos, std::uint32_t bytes,
               std::uint64_t sector);
  void push_data_ops(Req& r, VKind kind, std::uint64_t from, std::uint64_t to);
  void push_zero_ops(Req& r, std::uint64_t from, std::uint64_t to);
  void main_ops(Req& r);
  void patch_write(Req& r);
  void patch_zeroes(Req& r);
  void advance(Req& r);
  void finish(Req& r);

  const NbdServerConfig& cfg_;
  DataBuffers& buffers_;
  DeviceQueue& queue_;
  const TimeoutClock& clock_;
  Counters& counters_;
  Notes& notes_;
  RequestDone& done_;
  RangeOrder& order_;         // shared by every worker of the server
  std::deque<Req*> admit_q_;  // admitted, waiting for an overlapping request to finish
  unsigned running_ = 0;
  bool pumping_ = false, pump_again_ = false;
};

}  // namespace keel::vmm::nbd_internal
