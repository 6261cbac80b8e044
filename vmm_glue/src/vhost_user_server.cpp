// The vhost-user-blk server: lifecycle, the event loop (own thread or caller-driven), and the
// reports the caller reads from any thread.
#include <poll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "vhost_user_impl.h"

namespace keel::vmm {

namespace vu = vhost_user;

VhostUserBlkServer::VhostUserBlkServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DeviceFactory device_factory(ParavisorFactory factory) {
  if (!factory) return {};
  return [f = std::move(factory)](GuestMemory& memory) -> Result<std::unique_ptr<VhostDevice>> {
    auto made = f(memory);
    if (!made) return made.error();
    return std::unique_ptr<VhostDevice>(std::move(made).value());
  };
}

Result<std::unique_ptr<VhostUserBlkServer>> VhostUserBlkServer::create(
    const VhostUserBlkConfig& config, ParavisorFactory factory) {
  return create_device(config, device_factory(std::move(factory)));
}

Result<std::unique_ptr<VhostUserBlkServer>> VhostUserBlkServer::create_device(
    const VhostUserBlkConfig& config, DeviceFactory factory) {
  if (!factory) return make_error(Errc::invalid_argument, "vhost-user server without a factory");
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->factory = std::move(factory);
  if (Status st = impl->probe_device(); !st.ok()) return st.error();
  if (Status st = impl->listen(); !st.ok()) {
    impl->unlink_socket();
    return st.error();
  }
  impl->reset_connection_state();
  kVhostLog.info("listening on %s (%u queues)", impl->config.socket_path.c_str(), impl->queues);
  return std::unique_ptr<VhostUserBlkServer>(new VhostUserBlkServer(std::move(impl)));
}

Status VhostUserBlkServer::Impl::probe_device() {
  {
    // The messages before SET_MEM_TABLE (features, queue count, config space) need the device:
    // ask a paravisor built over no memory, then let it go.
    auto empty = GuestMemory::empty();
    auto probe = factory(*empty);
    if (!probe) {
      return make_error(probe.error().code, "probing the device: " + probe.error().message);
    }
    std::unique_ptr<VhostDevice> p = std::move(probe).value();
    if (p == nullptr) return make_error(Errc::invalid_argument, "the factory returned no device");
    device_features = p->device_features();
    probe_config = p->config_bytes();
    queues = p->num_queues();
    offered_protocol =
        p->protocol_features(vu::kOfferedProtocolFeatures) & vu::kOfferedProtocolFeatures;
    if (probe_config.size() > vu::kMaxConfigBytes) {
      return make_error(Errc::invalid_argument, "the device's config space is " +
                                                    std::to_string(probe_config.size()) +
                                                    " bytes; vhost-user carries at most " +
                                                    std::to_string(vu::kMaxConfigBytes));
    }
    p.reset();  // before the memory it refers to
  }
  if (queues == 0 || queues > vu::kVringIndexMask + 1) {
    return make_error(Errc::invalid_argument,
                      "the factory's paravisor has " + std::to_string(queues) + " queues");
  }
  wake_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd.valid()) {
    return make_error(Errc::io_error, std::string("eventfd: ") + std::strerror(errno));
  }
  return {};
}

VhostUserBlkServer::~VhostUserBlkServer() {
  stop();
  if (impl_->handed_over) {
    // Another process serves the front end on this connection and path now: let go quietly.
    impl_->conn_fd.reset();
    impl_->listener.release();
    impl_->reset_connection_state();
    return;
  }
  impl_->drop_connection("the server is shutting down");
  impl_->reset_connection_state();
  impl_->unlink_socket();
}

Status VhostUserBlkServer::start() {
  if (impl_->thread_running.exchange(true)) return {};
  impl_->stop_thread.store(false);
  try {
    impl_->thread = std::thread([impl = impl_.get()] {
      while (!impl->stop_thread.load(std::memory_order_acquire)) {
        impl->run_once(std::chrono::milliseconds(1000));  // stop() wakes it at once
      }
    });
  } catch (const std::system_error& e) {
    impl_->thread_running.store(false);
    return make_error(Errc::io_error, std::string("starting the server thread: ") + e.what());
  }
  return {};
}

void VhostUserBlkServer::stop() {
  if (!impl_->thread_running.load()) return;
  impl_->stop_thread.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  (void)!::write(impl_->wake_fd.get(), &one, sizeof one);
  impl_->thread.join();
  impl_->thread_running.store(false);
}

unsigned VhostUserBlkServer::run_once(std::chrono::milliseconds timeout) {
  if (impl_->thread_running.load() && std::this_thread::get_id() != impl_->thread.get_id()) {
    return 0;  // the server's own thread drives it
  }
  return impl_->run_once(timeout);
}

unsigned VhostUserBlkServer::run_paravisor_once() {
  if (impl_->pv == nullptr || !impl_->pv_running) return 0;
  const unsigned n = impl_->pv->run_once();
  impl_->check_broken_rings();
  return n;
}

Paravisor* VhostUserBlkServer::paravisor() noexcept {
  return dynamic_cast<Paravisor*>(impl_->pv.get());
}

VhostDevice* VhostUserBlkServer::device() noexcept { return impl_->pv.get(); }
bool VhostUserBlkServer::connected() const noexcept { return impl_->connected.load(); }
std::uint64_t VhostUserBlkServer::device_features() const noexcept {
  return impl_->device_features;
}
unsigned VhostUserBlkServer::num_queues() const noexcept { return impl_->queues; }
const std::string& VhostUserBlkServer::socket_path() const noexcept {
  return impl_->config.socket_path;
}

VhostUserBlkServer::Stats VhostUserBlkServer::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

std::string VhostUserBlkServer::last_error() const {
  std::lock_guard lock(impl_->mu);
  return impl_->last_error;
}

ParavisorCounters VhostUserBlkServer::counters() const {
  std::lock_guard lock(impl_->mu);
  ParavisorCounters c = impl_->retired;
  if (impl_->pv != nullptr) detail::add(c, impl_->pv->counters());
  return c;
}

std::vector<Transition> VhostUserBlkServer::transitions() const {
  std::lock_guard lock(impl_->mu);
  std::vector<Transition> t = impl_->retired_transitions;
  if (impl_->pv != nullptr) {
    for (Transition& x : impl_->pv->transitions()) t.push_back(std::move(x));
  }
  return t;
}

// ---- Impl: the loop ----

unsigned VhostUserBlkServer::Impl::run_once(std::chrono::milliseconds timeout) {
  pollfd p[3];
  nfds_t n = 0;
  p[n++] = {wake_fd.get(), POLLIN, 0};
  const nfds_t conn_at = conn_fd.valid() ? n++ : 0;
  if (conn_at != 0) p[conn_at] = {conn_fd.get(), POLLIN, 0};
  const nfds_t listen_at = n++;
  p[listen_at] = {listener.fd(), POLLIN, 0};
  const int ms = static_cast<int>(std::clamp<long long>(timeout.count(), 0, 60'000));
  if (::poll(p, n, ms) <= 0) return 0;  // timeout, or EINTR: the caller calls again
  if ((p[0].revents & POLLIN) != 0) {
    std::uint64_t v;
    (void)!::read(wake_fd.get(), &v, sizeof v);
  }
  unsigned handled = 0;
  // The connection first: a front end that just closed is noticed before its successor knocks.
  if (conn_at != 0 && p[conn_at].revents != 0) {
    handle_input();
    ++handled;
  } else if ((p[listen_at].revents & POLLIN) != 0) {
    accept_one();
    ++handled;
  }
  check_broken_rings();
  return handled;
}

void VhostUserBlkServer::Impl::handle_input() {
  auto m = std::make_unique<detail::Message>();
  std::string why;
  switch (read_message(*m, why)) {
    case ReadResult::closed: drop_connection(why); return;
    case ReadResult::broken: {
      {
        std::lock_guard lock(mu);
        ++stats.protocol_errors;
      }
      log_failure("protocol error: " + why + "; closing the connection");
      drop_connection("protocol error");
      return;
    }
    case ReadResult::message: break;
  }
  {
    std::lock_guard lock(mu);
    ++stats.messages;
  }
  handle(*m);
  if (close_requested) drop_connection("closed after a failed request");
}

void VhostUserBlkServer::Impl::drop_connection(const std::string& why) {
  if (!conn_fd.valid()) return;
  kVhostLog.info("%s: front end disconnected: %s", config.socket_path.c_str(), why.c_str());
  reset_connection_state();  // rings stop first: in-flight requests complete
  conn_fd.reset();
  connected.store(false);
  std::lock_guard lock(mu);
  ++stats.disconnects;
}

void VhostUserBlkServer::Impl::reset_connection_state() {
  pause();
  retire_paravisor();
  inflight.reset();  // after the paravisor, whose rings recorded into it
  memory.reset();
  reset_rings();
  owner = false;
  features_set = false;
  acked_features = 0;
  protocol_features = 0;
  err_signalled = false;
  close_requested = false;
}

void VhostUserBlkServer::Impl::log_failure(const std::string& what) {
  kVhostLog.warn("%s: %s", config.socket_path.c_str(), what.c_str());
  std::lock_guard lock(mu);
  last_error = what;
}

void VhostUserBlkServer::Impl::check_broken_rings() {
  if (pv == nullptr || !pv_running || err_signalled || !pv->needs_reset()) return;
  err_signalled = true;
  unsigned signalled = 0;
  for (detail::Ring& r : rings) {
    if (!r.running || !r.err.valid()) continue;
    // Non-blocking (SET_VRING_ERR made it so; the poll also covers a front end that cleared
    // O_NONBLOCK on its side since): a counter too full to take one more already tells the
    // front end that something broke.
    pollfd p{r.err.get(), POLLOUT, 0};
    if (::poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0) {
      ++signalled;
      continue;
    }
    const std::uint64_t one = 1;
    const ssize_t k = ::write(r.err.get(), &one, sizeof one);
    if (k == sizeof one || (k < 0 && errno == EAGAIN)) ++signalled;
  }
  log_failure("the driver broke a virtqueue (DEVICE_NEEDS_RESET); signalled " +
              std::to_string(signalled) + " error eventfd(s)");
  std::lock_guard lock(mu);
  ++stats.ring_errors;
}

}  // namespace keel::vmm
