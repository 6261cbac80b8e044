// The virtio-net device of one guest and its failover (keel/vmm/net_paravisor.h). The data
// path is in net_worker.cpp.
#include "keel/vmm/net_paravisor.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>

#include <cstring>

#include <keel/regs/keel_regs.h>

#include "keel/log.h"
#include "keel/wire/fallback_port.h"
#include "keel/wire/vhost_user.h"
#include "net_worker.h"

namespace keel::vmm {

namespace {

constexpr log::Logger kLog{"net"};
namespace vnet = virtio::net;
namespace fp = fallback_port;
namespace f = virtio::feature;

constexpr std::uint64_t bit(unsigned b) { return std::uint64_t{1} << b; }

}  // namespace

Result<std::unique_ptr<NetParavisor>> NetParavisor::create(fpga::Function* vf, const Clock& clock,
                                                           fpga::Stepper& stepper,
                                                           GuestMemory& memory, UniqueFd fallback,
                                                           const NetParavisorConfig& config) {
  if (config.mtu < regs::NIC_MIN_MTU || config.mtu > regs::NIC_MAX_MTU) {
    return make_error(Errc::invalid_argument, "MTU " + std::to_string(config.mtu) + " outside " +
                                                  std::to_string(regs::NIC_MIN_MTU) + ".." +
                                                  std::to_string(regs::NIC_MAX_MTU));
  }
  if (config.queue_pairs == 0 || config.queue_pairs > regs::NIC_MAX_QUEUES) {
    return make_error(Errc::invalid_argument,
                      "queue pairs must be 1.." + std::to_string(regs::NIC_MAX_QUEUES));
  }
  if (knic::is_multicast(config.mac) || knic::is_zero(config.mac)) {
    return make_error(Errc::invalid_argument, "the guest needs a unicast MAC address");
  }
  const bool have_port = fallback.valid();
  if (!have_port && config.redial_fallback) {
    // No switch yet: an unconnected socket holds the port's fd number; maybe_redial() puts the
    // connection behind that number once the switch answers, so workers never see it change.
    fallback = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!fallback.valid()) {
      return make_error(Errc::io_error, std::string("fallback port: socket: ") + strerror(errno));
    }
  }
  std::unique_ptr<NetParavisor> pv(
      new NetParavisor(vf, clock, stepper, memory, std::move(fallback), config));
  if (!have_port) pv->port_lost_.store(true);
  if (have_port) {
    if (Status st = pv->send_hello(); !st.ok()) return st.error();
  }
  // An empty memory table is the vhost-user server's probe: no VF, no traffic.
  if (vf != nullptr && !memory.regions().empty()) {
    if (Status st = pv->bring_up_vf(); !st.ok()) {
      kLog.warn("the VF does not come up (%s): the guest starts on the fallback",
                st.error().message.c_str());
      pv->transition(PathState::fallback, "VF did not come up: " + st.error().message);
    }
  }
  // Nothing is on the VF: a probe may bring it up at any time.
  if (pv->state() != PathState::active) pv->drained_.store(pv->config_.queue_pairs);
  if (pv->state() != PathState::active && pv->port_usable()) {
    if (Status st = pv->send_state(true); !st.ok()) return st.error();
  }
  return pv;
}

NetParavisor::NetParavisor(fpga::Function* vf, const Clock& clock, fpga::Stepper& stepper,
                           GuestMemory& memory, UniqueFd fallback, const NetParavisorConfig& config)
    : vf_(vf),
      clock_(clock),
      stepper_(stepper),
      memory_(memory),
      fallback_(std::move(fallback)),
      config_(config) {
  for (unsigned i = 0; i < config_.queue_pairs; ++i) {
    workers_.push_back(std::make_unique<NetWorker>(*this, i));
  }
}

NetParavisor::~NetParavisor() {
  stop();
  const NetCounters c = net_counters();
  if (c.tx_vf + c.tx_fallback + c.rx_vf + c.rx_fallback > 0) {
    kLog.info("frames: tx %" PRIu64 " VF, %" PRIu64 " fallback; rx %" PRIu64 " VF (%" PRIu64
              " in place, %" PRIu64 " of them moved), %" PRIu64 " fallback; dropped rx %" PRIu64,
              c.tx_vf, c.tx_fallback, c.rx_vf, c.rx_zero_copy, c.rx_moved, c.rx_fallback,
              c.rx_dropped);
  }
  workers_.clear();
  nic_.reset();
  if (vf_mapped_) memory_.unmap_from_device(*vf_);
}

Status NetParavisor::bring_up_vf() {
  drivers::net::NicConfig nc;
  nc.queues = config_.queue_pairs;
  nc.tx_ring_log2 = config_.tx_ring_log2;
  nc.rx_ring_log2 = config_.rx_ring_log2;
  nc.mtu = config_.mtu;
  nc.interrupts = config_.threads;
  nc.rx_buffer_bytes = 2048;
  // Zero-copy receive is the likely mode (Linux merges RX buffers): the queue pairs start
  // with nothing posted, so frames that come before the guest's first RX buffers are dropped
  // (and counted) by the card, not taken into driver buffers a mode switch would discard.
  nc.caller_rx_buffers =
      config_.rx_zero_copy && (features_ == 0 || (features_ & bit(vnet::kMrgRxbuf)) != 0);
  auto nic = drivers::net::Nic::open(*vf_, clock_, stepper_, nc);
  if (!nic) return nic.error();
  if ((*nic)->mac() != config_.mac) {
    return make_error(Errc::invalid_argument,
                      "the VF's MAC is not the guest's: the PF manager gave it another");
  }
  if (Status st = memory_.map_for_device(*vf_); !st.ok()) return st;
  vf_mapped_ = true;
  nic_ = std::move(nic).value();
  transition(PathState::active, "VF up");
  return {};
}

Status NetParavisor::send_hello() {
  std::array<std::uint8_t, sizeof(fp::RecordHeader) + sizeof(fp::Hello)> rec{};
  rec[0] = static_cast<std::uint8_t>(fp::RecordType::hello);
  fp::Hello h{};
  std::memcpy(h.mac, config_.mac.data(), 6);
  h.mtu = static_cast<std::uint16_t>(config_.mtu);
  std::memcpy(rec.data() + sizeof(fp::RecordHeader), &h, sizeof h);
  if (port_send(rec, std::chrono::milliseconds(500)) != PortSend::sent) {
    return make_error(Errc::io_error,
                      std::string("fallback port: HELLO not taken: ") + strerror(errno));
  }
  return {};
}

Status NetParavisor::send_state(bool on_fallback) {
  if (!port_usable()) return {};
  std::array<std::uint8_t, sizeof(fp::RecordHeader) + sizeof(fp::State)> rec{};
  rec[0] = static_cast<std::uint8_t>(fp::RecordType::state);
  rec[sizeof(fp::RecordHeader)] = on_fallback ? 1 : 0;
  // Bounded: a switch that stopped reading must not hold the failover. (A STATE it never gets
  // leaves the guest's frames on the other path until it reads again: logged by the caller.)
  if (port_send(rec, std::chrono::milliseconds(200)) != PortSend::sent) {
    return make_error(Errc::io_error,
                      std::string("fallback port: STATE not taken: ") + strerror(errno));
  }
  return {};
}

void NetParavisor::transition(PathState to, const std::string& reason) {
  std::lock_guard lock(mu_);
  transition_locked(to, reason);
}

void NetParavisor::transition_locked(PathState to, const std::string& reason) {
  const PathState from = state_.load();
  if (from == to) return;
  transitions_.push_back({from, to, reason, clock_.now_ns()});
  state_.store(to, std::memory_order_release);
  kLog.info("%s -> %s: %s", to_string(from), to_string(to), reason.c_str());
}

void NetParavisor::vf_failed(const std::string& reason) {
  {
    // One step: a worker that sees the new epoch finds the state draining already, so the
    // last one's move to fallback cannot be overtaken by this one's move to draining.
    std::lock_guard lock(mu_);
    if (state_.load() != PathState::active) return;
    drained_.store(0);
    drain_target_ = running_workers();
    epoch_.fetch_add(1, std::memory_order_acq_rel);
    transition_locked(PathState::draining, reason);
    if (drain_target_ == 0) transition_locked(PathState::fallback, "no queue pair runs");
  }
  // Frames for the guest's MAC come to the port from now on.
  if (Status st = send_state(true); !st.ok()) kLog.warn("%s", st.error().message.c_str());
  for (auto& w : workers_) w->wake();
}

void NetParavisor::worker_drained(std::uint64_t epoch) {
  std::lock_guard lock(mu_);
  if (epoch != epoch_.load(std::memory_order_acquire) || state_.load() != PathState::draining) {
    return;
  }
  if (drained_.fetch_add(1) + 1 >= drain_target_) {
    transition_locked(PathState::fallback, "every queue pair is off the VF");
  }
}

unsigned NetParavisor::running_workers() const noexcept {
  // Workers whose rings are not set up never run (and never touch the VF).
  unsigned n = 0;
  for (const auto& w : workers_) n += w->configured() ? 1u : 0u;
  return n;
}

bool NetParavisor::port_usable() const noexcept {
  return fallback_.valid() && !port_lost_.load(std::memory_order_acquire);
}

void NetParavisor::port_lost() noexcept {
  if (!port_lost_.exchange(true)) {
    if (config_.redial_fallback) {
      kLog.warn("the software switch closed the fallback port: dialling it again");
    } else {
      kLog.warn(
          "the software switch closed the fallback port: no fallback for this guest until "
          "its front end sets up the device again");
    }
  }
}

void NetParavisor::maybe_redial() {
  if (!config_.redial_fallback || !port_lost_.load(std::memory_order_acquire)) return;
  const std::uint64_t now = clock_.now_ns();
  if (now < next_redial_ns_) return;
  next_redial_ns_ = now + static_cast<std::uint64_t>(config_.probe_interval.count());
  UniqueFd fd = config_.redial_fallback();
  if (!fd.valid()) return;
  {
    // Same fd number, new connection: workers holding the number see the new socket.
    std::lock_guard lock(fallback_mu_);
    if (::dup3(fd.get(), fallback_.get(), O_CLOEXEC) < 0) {
      kLog.warn("fallback port: dup3: %s", strerror(errno));
      return;
    }
  }
  // HELLO first, before any worker may use the port (the switch closes a port whose first
  // record is not HELLO); then it is usable, and STATE follows.
  Status st = send_hello();
  if (st.ok()) {
    port_lost_.store(false, std::memory_order_release);
    st = send_state(state() != PathState::active);
  }
  if (!st.ok()) {
    kLog.warn("%s", st.error().message.c_str());
    port_lost();
    return;
  }
  kLog.info("fallback port: connected to the software switch again");
}

NetParavisor::PortSend NetParavisor::port_send(std::span<const std::uint8_t> record,
                                               std::chrono::milliseconds wait) {
  std::lock_guard lock(fallback_mu_);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    const ssize_t r =
        ::send(fallback_.get(), record.data(), record.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r == static_cast<ssize_t>(record.size())) return PortSend::sent;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      if (errno == EPIPE || errno == ECONNRESET) port_lost();
      return PortSend::failed;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return PortSend::full;
    pollfd p{fallback_.get(), POLLOUT, 0};
    (void)::poll(&p, 1, static_cast<int>(left.count()));
  }
}

void NetParavisor::maybe_probe() {
  const PathState s = state();
  if (vf_ == nullptr || (s != PathState::fallback && s != PathState::absent)) return;
  const std::uint64_t now = clock_.now_ns();
  const bool asked = probe_now_.exchange(false);
  if (!asked && now < next_probe_ns_) return;
  next_probe_ns_ = now + static_cast<std::uint64_t>(config_.probe_interval.count());
  if (memory_.regions().empty()) return;
  if (drivers::net::Nic::status_of(*vf_) == drivers::net::DeviceState::gone) {
    removal_announced_.store(false);  // the announced removal happened: the next return counts
    return;
  }
  // Announced but not yet done: bringing the VF back now would put traffic on a function the
  // host is about to take.
  if (removal_announced_.load()) return;
  // No queue pair is in use on the fallback: the driver may rebuild them.
  Status st;
  if (nic_ != nullptr) {
    st = nic_->recover();
    if (st.ok()) {
      memory_.unmap_from_device(*vf_);
      st = memory_.map_for_device(*vf_);
    }
    if (!st.ok()) return;  // not yet; the next probe tries again
    transition(PathState::ready, "VF answers again");
  } else if (!bring_up_vf().ok()) {
    return;
  }
  // The switch sends the guest's frames to the uplink (the card) again.
  if (Status s2 = send_state(false); !s2.ok()) kLog.warn("%s", s2.error().message.c_str());
  transition(PathState::active, "traffic returns to the VF");
  // A removal announced while the VF was being brought back found the guest not yet active
  // and did nothing: leave again now.
  if (removal_announced_.load()) vf_failed("the host announced the VF's removal");
}

void NetParavisor::vf_removed(const std::string& reason) {
  removal_announced_.store(true);
  vf_failed(reason);
}

void NetParavisor::vf_arrived() {
  removal_announced_.store(false);
  probe_now_.store(true);
  if (!workers_.empty()) workers_[0]->wake();
}

std::uint64_t NetParavisor::device_features() const noexcept {
  std::uint64_t f = bit(f::kVersion1) | bit(vnet::kMac) | bit(vnet::kStatus) | bit(vnet::kMtu) |
                    bit(vnet::kMrgRxbuf) | bit(f::kRingEventIdx);
  if (config_.queue_pairs > 1) f |= bit(vnet::kMq);
  return f;
}

Status NetParavisor::set_features(std::uint64_t features) {
  if ((features & ~device_features()) != 0) {
    return make_error(Errc::invalid_argument, "driver accepted features the device does not offer");
  }
  if ((features & bit(f::kVersion1)) == 0) {
    return make_error(Errc::invalid_argument,
                      "VIRTIO_F_VERSION_1 is required (no legacy interface)");
  }
  features_ = features;
  return {};
}

std::uint64_t NetParavisor::protocol_features(std::uint64_t offered) const noexcept {
  namespace p = vhost_user::protocol;
  return offered & ~(bit(p::kConfig) | bit(p::kInflightShmfd));
}

std::vector<std::byte> NetParavisor::config_bytes() const {
  vnet::Config c{};
  std::memcpy(c.mac, config_.mac.data(), 6);
  c.status = vnet::kStatusLinkUp;
  c.max_virtqueue_pairs = static_cast<std::uint16_t>(config_.queue_pairs);
  c.mtu = static_cast<std::uint16_t>(config_.mtu);
  std::vector<std::byte> out(sizeof c);
  std::memcpy(out.data(), &c, sizeof c);
  return out;
}

Status NetParavisor::set_queue(unsigned q, const Virtqueue::Layout& layout,
                               std::uint16_t last_avail) {
  if (q >= num_queues()) {
    return make_error(Errc::invalid_argument, "queue " + std::to_string(q) + " does not exist (" +
                                                  std::to_string(num_queues()) + " queues)");
  }
  return workers_[q / 2]->setup(q % 2, layout, (features_ & bit(f::kRingEventIdx)) != 0,
                                last_avail);
}

void NetParavisor::set_call_fd(unsigned q, int fd) {
  if (q < num_queues()) workers_[q / 2]->set_call_fd(q % 2, fd);
}

void NetParavisor::set_kick_fd(unsigned q, int fd) {
  if (q < num_queues()) workers_[q / 2]->set_kick_fd(q % 2, fd);
}

void NetParavisor::set_notifier(std::function<void(unsigned)> notify) {
  notify_ = std::move(notify);
}

Status NetParavisor::start() {
  if (!config_.threads) return {};
  for (auto& w : workers_) {
    if (!w->configured()) continue;
    if (Status st = w->start_thread(); !st.ok()) return st;
  }
  return {};
}

void NetParavisor::stop(bool keep_vf_queues) {
  (void)keep_vf_queues;  // no servicing hand-over for the NIC yet: its queues stop
  for (auto& w : workers_) w->stop();
}

bool NetParavisor::needs_reset() const noexcept {
  for (const auto& w : workers_) {
    if (w->broken()) return true;
  }
  return false;
}

std::uint16_t NetParavisor::last_avail(unsigned q) const noexcept {
  return q < num_queues() ? workers_[q / 2]->last_avail(q % 2) : 0;
}

unsigned NetParavisor::run_once() {
  unsigned n = 0;
  for (auto& w : workers_) {
    if (w->configured()) n += w->pass();
  }
  return n;
}

std::vector<Transition> NetParavisor::transitions() const {
  std::lock_guard lock(mu_);
  return transitions_;
}

ParavisorCounters NetParavisor::counters() const {
  ParavisorCounters total;
  for (const auto& w : workers_) {
    const ParavisorCounters c = w->paravisor_counters();
    total.requests += c.requests;
    total.vf_ios += c.vf_ios;
    total.fallback_ios += c.fallback_ios;
    total.reissued += c.reissued;
    total.bad_requests += c.bad_requests;
    total.errors += c.errors;
    total.notifications += c.notifications;
  }
  std::lock_guard lock(mu_);
  for (const Transition& t : transitions_) {
    if (t.to == PathState::draining) ++total.to_fallback;
    if (t.to == PathState::active && t.from != PathState::absent) ++total.to_vf;
  }
  return total;
}

NetCounters NetParavisor::net_counters() const {
  NetCounters t;
  for (const auto& w : workers_) {
    const NetCounters c = w->counters();
    t.tx_vf += c.tx_vf;
    t.tx_fallback += c.tx_fallback;
    t.tx_resent += c.tx_resent;
    t.rx_vf += c.rx_vf;
    t.rx_fallback += c.rx_fallback;
    t.tx_bad += c.tx_bad;
    t.tx_dropped += c.tx_dropped;
    t.rx_dropped += c.rx_dropped;
    t.rx_bad_chains += c.rx_bad_chains;
    t.tx_vf_errors += c.tx_vf_errors;
    t.notifications += c.notifications;
    t.rx_zero_copy += c.rx_zero_copy;
    t.rx_moved += c.rx_moved;
  }
  return t;
}

std::uint64_t NetParavisor::worker_cpu_ns() const {
  std::uint64_t t = 0;
  for (const auto& w : workers_) t += w->cpu_ns();
  return t;
}

}  // namespace keel::vmm
