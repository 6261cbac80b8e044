// nbd_request.h - one NBD request the server is working on, from its validated header to its
// reply: the record the connection, the request table and the planner share.
#pragma once

#include <cstdint>
#include <list>

#include "keel/vmm/nbd_server.h"
#include "nbd_buffers.h"
#include "nbd_overlap.h"

namespace keel::vmm::nbd_internal {

class Connection;

/// Where a request is on the device (nbd_planner.h).
enum class Stage : std::uint8_t { edges, main, flush, done };

struct Req {
  Connection* conn = nullptr;
  nbd::Request h{};              // host order
  std::uint64_t a0 = 0, a1 = 0;  // covering sector-aligned byte range of the buffer
  std::uint32_t shift = 0;       // h.offset - a0
  Buffer buf;                    // the data buffer (and an RMW's scratch)
  bool head_edge = false, tail_edge = false;
  Stage stage = Stage::main;
  unsigned ops_left = 0;
  std::uint32_t error = 0;
  bool rmw = false;  // unaligned write / write-zeroes: read-modify-write of edge sectors
  bool fua = false;
  bool admitted = false;  // started on the device (admit() may have queued it first)
  bool queued = false;    // waiting for an overlapping request
  bool device_done = false;
  bool replied = false;  // reply queued (possibly early, for a device timeout)
  std::uint64_t deadline_ns = 0;
  HeldRange range;  // held from admission until the device is done
  std::list<Req>::iterator self;
};

}  // namespace keel::vmm::nbd_internal
