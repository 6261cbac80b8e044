// The request table of the NBD server (nbd_requests.h).
#include "nbd_requests.h"

#include <algorithm>
#include <iterator>

namespace keel::vmm::nbd_internal {

std::uint32_t Requests::check(const nbd::Request& h) const {
  return check_request(h, cfg_, export_bytes_);
}

bool Requests::request(Connection& c, const nbd::Request& h) {
  Req& r = new_req(c, h);
  planner_.plan(r);
  const std::uint64_t n = Planner::needed_chunks(r);
  if (n > 0) {
    // In line for buffers; granted at once when the quota and the pool allow (then
    // start_receiving() has run and parsing goes on).
    c.wait_for_buffers(r);
    waiters_.push_back(&c);
    serve_waiters();
    if (c.buffer_waiter() != nullptr) {
      if (!buffers_.within_quota(c.pool_account(), n)) bump(counters_.quota_waits);
      return false;
    }
    return true;
  }
  c.start_receiving(r);
  return true;
}

void Requests::serve_waiters() {
  for (std::size_t i = 0; i < waiters_.size();) {
    Connection& c = *waiters_[i];
    Req& r = *c.buffer_waiter();
    const std::uint64_t n = Planner::needed_chunks(r);
    if (!buffers_.within_quota(c.pool_account(), n)) {
      ++i;
      continue;
    }
    if (buffers_.free_count() < n) return;
    waiters_.erase(waiters_.begin() + static_cast<std::ptrdiff_t>(i));
    c.end_buffer_wait();
    buffers_.take(r.buf, c.pool_account(), r.rmw ? n - 1 : n, r.rmw);
    c.start_receiving(r);  // may start device work; never closes a connection
    c.mark_resume();
  }
}

void Requests::forget_waiter(Connection& c) {
  waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), &c), waiters_.end());
}

Req& Requests::new_req(Connection& c, const nbd::Request& h) {
  if (spare_.empty()) spare_.emplace_back();
  reqs_.splice(reqs_.end(), spare_, spare_.begin());
  Req& r = reqs_.back();
  r.self = std::prev(reqs_.end());
  r.conn = &c;
  r.h = h;
  r.a0 = r.a1 = 0;
  r.shift = 0;
  r.buf.chunks.clear();
  r.buf.scratch = -1;
  r.head_edge = r.tail_edge = false;
  r.stage = Stage::main;
  r.ops_left = 0;
  r.error = 0;
  r.rmw = false;
  r.fua = (h.flags & nbd::kCmdFlagFua) != 0;
  r.admitted = r.queued = r.device_done = r.replied = false;
  r.deadline_ns = 0;
  r.range = {};
  c.attach();
  return r;
}

void Requests::release(Req& r) {
  Connection* c = r.conn;
  if (c != nullptr) buffers_.give(r.buf, c->pool_account());
  r.conn = nullptr;
  spare_.splice(spare_.end(), reqs_, r.self);
  if (c != nullptr) c->detach();
}

void Requests::request_done(Req& r) {
  if (r.replied || r.conn == nullptr || !r.conn->open()) {
    release(r);
  } else {
    reply(r, r.error);
  }
}

void Requests::reply(Req& r, std::uint32_t error) {
  Connection& c = *r.conn;
  r.replied = true;
  if (!c.open()) return;
  const std::uint64_t handle = r.h.handle;
  bump(counters_.requests);
  if (error != 0) {
    bump(counters_.error_replies);
  } else if (r.h.type == nbd::kCmdRead) {
    bump(counters_.bytes_read, r.h.length);
  } else if (r.h.type == nbd::kCmdWrite) {
    bump(counters_.bytes_written, r.h.length);
  }
  Req* data = nullptr;
  if (error == 0 && r.h.type == nbd::kCmdRead) {
    data = &r;  // released once sent
  } else if (r.device_done) {
    release(r);
  }
  c.queue_reply(handle, error, data);
}

void Requests::check_timeouts(std::uint64_t now) {
  // Replying (or releasing) changes reqs_: step past each entry first, and start nothing inside
  // the loop (a start can finish and release other entries at once).
  bool cancelled = false;
  for (auto it = reqs_.begin(); it != reqs_.end();) {
    Req& r = *it++;
    if (r.deadline_ns == 0 || r.device_done || r.replied || now <= r.deadline_ns) continue;
    bump(counters_.device_timeouts);
    if (!r.admitted) {
      // Still waiting for an overlapping request: it never reaches the device.
      notes_.note(std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) +
                  " (+" + std::to_string(r.h.length) + ") waited " +
                  std::to_string(cfg_.io_timeout.count()) +
                  " ms for an overlapping request: replying EIO, not started");
      planner_.cancel_queued(r);
      cancelled = true;
      continue;
    }
    // On the device: answered now, but its buffers and its range stay held until the device
    // completes it (RequestDone), so nothing overlapping can start before its write has landed.
    notes_.note(std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) +
                " (+" + std::to_string(r.h.length) + ") not done by the device after " +
                std::to_string(cfg_.io_timeout.count()) + " ms: replying EIO");
    reply(r, nbd::kEio);
  }
  if (cancelled) planner_.pump_admissions();
}

std::string Requests::describe() const {
  std::string s;
  for (const Req& r : reqs_) {
    s += std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) + " +" +
         std::to_string(r.h.length) + " stage " + std::to_string(static_cast<int>(r.stage)) +
         " ops " + std::to_string(r.ops_left) + (r.admitted ? " admitted" : "") +
         (r.queued ? " queued" : "") + (r.device_done ? " done" : "") +
         (r.replied ? " replied" : "") + (r.range.linked ? " holds-range" : "") +
         (r.conn == nullptr ? " no-conn"
          : !r.conn->open() ? " conn-closed"
                            : "") +
         "\n";
  }
  return s;
}

}  // namespace keel::vmm::nbd_internal
