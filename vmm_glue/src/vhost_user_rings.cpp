// The vhost-user server's device side: the memory table, the paravisor built over it, and which
// rings run. A ring runs while it is started, enabled and fully described; any change to a
// running ring stops the paravisor's workers (in-flight requests complete), applies the change
// and starts them again.
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "vhost_user_impl.h"

namespace keel::vmm {

namespace vu = vhost_user;

namespace {

constexpr std::uint64_t kProtocolFeaturesBit = std::uint64_t{1} << vu::kFeatureProtocolFeatures;

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

bool wraps(std::uint64_t base, std::uint64_t bytes) { return base + bytes < base; }

// Checks one region's addresses. Its fd (a regular file sealed with F_SEAL_SHRINK and holding
// mmap_offset + memory_size bytes, so that no mapping of it can ever fault) is checked by
// GuestMemory::add_region before it maps anything.
Status check_region(const vu::MemoryRegion& g, unsigned i) {
  const std::string what = "region " + std::to_string(i) + " (GPA " + hex(g.guest_phys_addr) +
                           ", " + std::to_string(g.memory_size) + " bytes)";
  if (g.memory_size == 0 || wraps(g.guest_phys_addr, g.memory_size) ||
      wraps(g.userspace_addr, g.memory_size) || wraps(g.mmap_offset, g.memory_size)) {
    return make_error(Errc::invalid_argument, what + ": empty, or an address range wraps");
  }
  return {};
}

}  // namespace

Status VhostUserBlkServer::Impl::set_mem_table(detail::Message& m) {
  if (m.hdr.size < offsetof(vu::MemoryTable, regions)) {
    return make_error(Errc::invalid_argument, "payload of " + std::to_string(m.hdr.size) +
                                                  " bytes, shorter than a memory table header");
  }
  vu::MemoryTable t{};
  std::memcpy(&t, m.payload.data(), std::min<std::size_t>(m.hdr.size, sizeof t));
  const unsigned n = t.nregions;
  if (n == 0 || n > vu::kMaxRegions) {
    return make_error(Errc::out_of_range, std::to_string(n) + " memory regions; keel takes 1 to " +
                                              std::to_string(vu::kMaxRegions) +
                                              " (CONFIGURE_MEM_SLOTS is not offered)");
  }
  const std::size_t want = offsetof(vu::MemoryTable, regions) + n * sizeof(vu::MemoryRegion);
  if (m.hdr.size < want || m.hdr.size > sizeof t) {
    return make_error(Errc::invalid_argument,
                      "payload of " + std::to_string(m.hdr.size) + " bytes for " +
                          std::to_string(n) + " regions (expected " + std::to_string(want) + ")");
  }
  if (m.fds.size() != n) {
    return make_error(
        Errc::invalid_argument,
        std::to_string(n) + " regions but " + std::to_string(m.fds.size()) + " file descriptors");
  }
  auto mem = GuestMemory::empty();
  for (unsigned i = 0; i < n; ++i) {
    const vu::MemoryRegion& g = t.regions[i];
    if (Status st = check_region(g, i); !st.ok()) return st;
    for (unsigned j = 0; j < i; ++j) {
      const vu::MemoryRegion& o = t.regions[j];
      if (g.userspace_addr < o.userspace_addr + o.memory_size &&
          o.userspace_addr < g.userspace_addr + g.memory_size) {
        return make_error(Errc::invalid_argument, "regions " + std::to_string(j) + " and " +
                                                      std::to_string(i) +
                                                      " overlap in the front end's addresses");
      }
    }
    // add_region owns the fd from here (and closes it on failure).
    if (Status st = mem->add_region(m.fds[i].release(), g.mmap_offset, g.guest_phys_addr,
                                    g.memory_size, g.userspace_addr);
        !st.ok()) {
      return make_error(st.error().code, "region " + std::to_string(i) + " (GPA " +
                                             hex(g.guest_phys_addr) + "): " + st.error().message);
    }
  }
  // The old paravisor refers to the old table: it goes first.
  pause();
  retire_paravisor();
  memory = std::move(mem);
  for (detail::Ring& r : rings) ++r.gen;
  if (Status st = create_paravisor(); !st.ok()) return st;
  return apply_rings();
}

namespace {

Status inflight_negotiated(std::uint64_t protocol_features) {
  if ((protocol_features & (std::uint64_t{1} << vu::protocol::kInflightShmfd)) != 0) return {};
  return make_error(Errc::invalid_argument,
                    "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD was not negotiated");
}

// The request's payload; its queue count must be one the device has.
Result<vu::Inflight> inflight_payload(const detail::Message& m, unsigned queues) {
  if (m.hdr.size != sizeof(vu::Inflight)) {
    return make_error(Errc::invalid_argument, "payload of " + std::to_string(m.hdr.size) +
                                                  " bytes; this request takes " +
                                                  std::to_string(sizeof(vu::Inflight)));
  }
  vu::Inflight d;
  std::memcpy(&d, m.payload.data(), sizeof d);
  if (d.num_queues == 0 || d.num_queues > queues) {
    return make_error(
        Errc::out_of_range,
        std::to_string(d.num_queues) + " queues (the device has " + std::to_string(queues) + ")");
  }
  if (d.queue_size == 0 || d.queue_size > vu::kMaxRingSize ||
      (d.queue_size & (d.queue_size - 1)) != 0) {
    return make_error(Errc::invalid_argument, "queue size " + std::to_string(d.queue_size) +
                                                  " is not a power of two up to " +
                                                  std::to_string(vu::kMaxRingSize));
  }
  return d;
}

}  // namespace

Status VhostUserBlkServer::Impl::get_inflight_fd(const detail::Message& m) {
  if (Status st = inflight_negotiated(protocol_features); !st.ok()) return st;
  auto asked = inflight_payload(m, queues);
  if (!asked) return asked.error();
  auto made = InflightRegion::create(asked->num_queues, asked->queue_size);
  if (!made) return made.error();
  const vu::Inflight out = (*made)->description();
  const int fd = (*made)->fd();
  replace_inflight(std::move(made).value());  // keel records into the one it hands out
  reply(m.hdr.request, &out, sizeof out, {&fd, 1});
  return {};
}

Status VhostUserBlkServer::Impl::set_inflight_fd(detail::Message& m) {
  if (Status st = inflight_negotiated(protocol_features); !st.ok()) return st;
  auto given = inflight_payload(m, queues);
  if (!given) return given.error();
  if (m.fds.size() != 1) {
    return make_error(Errc::invalid_argument,
                      "needs exactly one file descriptor; got " + std::to_string(m.fds.size()));
  }
  auto mapped = InflightRegion::map(std::move(m.fds[0]), *given);
  if (!mapped) return mapped.error();
  // A back end that starts with a record (after a restart) resubmits from it: worth a line.
  kVhostLog.info("inflight record from the front end: %u queues of %u descriptors",
                 static_cast<unsigned>(given->num_queues),
                 static_cast<unsigned>(given->queue_size));
  replace_inflight(std::move(mapped).value());
  return apply_rings();
}

void VhostUserBlkServer::Impl::replace_inflight(std::unique_ptr<InflightRegion> r) {
  // The paravisor's rings record into the old record (quiesce still writes to it): it goes
  // first, and each ring is set up again with the new one.
  pause();
  retire_paravisor();
  inflight = std::move(r);
  for (detail::Ring& ring : rings) ++ring.gen;
}

Result<Virtqueue::Layout> VhostUserBlkServer::Impl::layout_from(std::uint32_t num,
                                                                std::uint64_t desc,
                                                                std::uint64_t avail,
                                                                std::uint64_t used) const {
  if (memory == nullptr) return make_error(Errc::invalid_argument, "no memory table");
  struct Area {
    const char* name;
    std::uint64_t uaddr;
    std::uint64_t bytes;
  };
  const Area areas[3] = {{"descriptor table", desc, virtio::desc_bytes(num)},
                         {"available ring", avail, virtio::avail_bytes(num)},
                         {"used ring", used, virtio::used_bytes(num)}};
  std::uint64_t gpa[3];
  for (int i = 0; i < 3; ++i) {
    const Area& a = areas[i];
    if (memory->translate_user(a.uaddr, a.bytes) == nullptr) {
      return make_error(Errc::out_of_range, std::string(a.name) + " at user address " +
                                                hex(a.uaddr) + " (" + std::to_string(a.bytes) +
                                                " bytes) lies outside the memory table");
    }
    gpa[i] = memory->user_to_gpa(a.uaddr);
  }
  return Virtqueue::Layout{static_cast<std::uint16_t>(num), gpa[0], gpa[1], gpa[2]};
}

void VhostUserBlkServer::Impl::pause(bool keep_vf) {
  if (!pv_running) return;
  pv->stop(keep_vf);  // in-flight requests complete first; the used rings are then up to date
  for (unsigned q = 0; q < rings.size(); ++q) {
    if (!rings[q].running) continue;
    rings[q].base = pv->last_avail(q);
    rings[q].running = false;
  }
  pv_running = false;
}

Status VhostUserBlkServer::Impl::apply_rings() {
  if (memory == nullptr) return {};  // nothing runs before a memory table
  // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled from the start (spec).
  const bool protocol = features_set && (acked_features & kProtocolFeaturesBit) != 0;
  auto wanted = [&](const detail::Ring& r) {
    return r.started && (r.enabled || !protocol) && r.num != 0 && r.has_addr;
  };
  bool any = false;
  bool unchanged = pv_running;
  bool stale = false;  // set up in this paravisor but not to run: its worker would serve it
  for (const detail::Ring& r : rings) {
    const bool w = wanted(r);
    any = any || w;
    if (w != r.running || (w && r.gen != r.applied_gen)) unchanged = false;
    if (r.configured && !w) stale = true;
  }
  if (unchanged) return {};
  pause();
  if (!any) return {};
  if (pv == nullptr || stale) {  // (no paravisor: the factory failed before; try again)
    retire_paravisor();
    if (Status st = create_paravisor(); !st.ok()) return st;
  }
  for (unsigned q = 0; q < rings.size(); ++q) {
    detail::Ring& r = rings[q];
    if (!wanted(r)) continue;
    auto layout = layout_from(r.num, r.desc_user, r.avail_user, r.used_user);
    if (!layout) {
      return make_error(layout.error().code,
                        "ring " + std::to_string(q) + ": " + layout.error().message);
    }
    layout->inflight = inflight != nullptr ? inflight->queue(q) : nullptr;
    if (Status st = pv->set_queue(q, *layout, r.base); !st.ok()) {
      return make_error(st.error().code, "ring " + std::to_string(q) + ": " + st.error().message);
    }
    pv->set_kick_fd(q, r.kick.get());  // -1: the worker polls the ring
    pv->set_call_fd(q, r.call.get());  // -1: no notifications
    r.configured = true;
    r.applied_gen = r.gen;
  }
  if (Status st = pv->start(); !st.ok()) return st;
  for (detail::Ring& r : rings) r.running = wanted(r);
  pv_running = true;
  err_signalled = false;
  return {};
}

Status VhostUserBlkServer::Impl::create_paravisor() {
  if (memory == nullptr) return make_error(Errc::invalid_argument, "no memory table");
  auto made = factory(*memory);
  if (!made) {
    return make_error(made.error().code, "creating the paravisor: " + made.error().message);
  }
  std::unique_ptr<VhostDevice> p = std::move(made).value();
  if (p == nullptr) return make_error(Errc::invalid_argument, "the factory returned no device");
  if (p->num_queues() != queues) {
    return make_error(Errc::invalid_argument,
                      "the factory's device has " + std::to_string(p->num_queues()) +
                          " queues; the device announced " + std::to_string(queues));
  }
  if (features_set) {
    if (Status st = p->set_features(acked_features & ~kProtocolFeaturesBit); !st.ok()) return st;
  }
  for (detail::Ring& r : rings) r.configured = r.running = false;
  pv_running = false;
  std::lock_guard lock(mu);
  pv = std::move(p);
  ++stats.paravisors;
  return {};
}

void VhostUserBlkServer::Impl::retire_paravisor() {
  if (pv == nullptr) return;
  pause();
  pv->stop();
  std::unique_ptr<VhostDevice> old;
  {
    std::lock_guard lock(mu);
    detail::add(retired, pv->counters());
    for (Transition& t : pv->transitions()) retired_transitions.push_back(std::move(t));
    old = std::move(pv);
  }
  old.reset();  // outside the lock: unmapping and the controller's shutdown take a while
  for (detail::Ring& r : rings) r.configured = r.running = false;
  pv_running = false;
}

void VhostUserBlkServer::Impl::reset_rings() {
  rings.clear();
  rings.resize(queues);
}

}  // namespace keel::vmm
