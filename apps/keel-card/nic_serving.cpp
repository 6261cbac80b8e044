#include "nic_serving.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>

#include <keel/regs/keel_regs.h>
#include "keel/clock.h"
#include "keel/log.h"
#include "uplink.h"

namespace keel::card_app {
namespace {

namespace vu = vfio_user;
namespace np = regs::nicpf;
namespace vc = regs::nicvfcfg;
constexpr log::Logger kLog{"keel-card"};
/// How often a datagram uplink looks at its peer.
constexpr int kUplinkTickMs = 100;

Error sys_error(const std::string& what) {
  return make_error(Errc::io_error, what + ": " + std::strerror(errno));
}

}  // namespace

// ---------------------------------------------------------------- the uplink

/// The uplink as keel-card keeps it: a datagram socket's peer is dialled again while it is not
/// there, and after frames to it failed (a peer that went and came back is a new socket at the
/// same path). The card holds the socket; this is a second descriptor of it.
struct NicServing::Uplink {
  bool dgram = false;
  std::string local;
  std::string remote;
  UniqueFd fd;
  bool connected = false;
  std::uint64_t tx_drops_seen = 0;
  std::uint64_t next_look_ns = 0;
};

// ---------------------------------------------------------------- serving

NicServing::NicServing(fpga::NicCard& nic, const NicOptions& options, std::uint64_t& generation)
    : nic_(nic), options_(options), generation_(generation) {}

NicServing::~NicServing() {
  if (uplink_ && uplink_->dgram) ::unlink(uplink_->local.c_str());
}

Result<std::unique_ptr<NicServing>> NicServing::start(fpga::NicCard& nic, const NicOptions& options,
                                                      std::uint64_t& generation) {
  std::unique_ptr<NicServing> s(new NicServing(nic, options, generation));
  if (options.vfs > nic.max_vfs()) {
    return make_error(Errc::invalid_argument, "--nic-vfs " + std::to_string(options.vfs) +
                                                  ": the card has " +
                                                  std::to_string(nic.max_vfs()) + " NIC VFs");
  }
  if (!options.uplink.empty()) {
    auto u = apps::open_uplink(options.uplink);
    if (!u) return u.error();
    auto up = std::make_unique<Uplink>();
    if (!u->peer.empty()) {  // dgram
      up->dgram = true;
      up->local = u->local;
      up->remote = u->peer;
      up->connected = u->connected;
      up->fd = UniqueFd(::fcntl(u->fd.get(), F_DUPFD_CLOEXEC, 0));
      if (!up->fd.valid()) return sys_error("uplink: dup");
      if (!up->connected) {
        kLog.info("uplink: %s is not there yet; dialling it every %d ms", up->remote.c_str(),
                  kUplinkTickMs);
      }
    }
    s->uplink_ = std::move(up);
    if (Status st = nic.attach_uplink(std::move(u->fd)); !st.ok()) return st.error();
  }
  if (options.vfs > 0) {
    if (Status st = nic.set_num_vfs(options.vfs); !st.ok()) return st.error();
    // keel-card is the NIC's PF manager for the VFs it starts with, as it gives the NVMe VFs
    // their queues and slices: a MAC each and the port in the switch.
    for (unsigned i = 0; i < options.vfs; ++i) {
      if (Status st = s->enable_port(i); !st.ok()) return st.error();
    }
  }
  vu::FunctionServerConfig fc;
  fc.max_vfs = nic.max_vfs();
  NicServing* self = s.get();
  fc.num_vfs = [self] { return self->nic_.num_vfs(); };
  fc.set_num_vfs = [self](unsigned n) -> Status {
    if (n == self->nic_.num_vfs()) return self->nic_.set_num_vfs(n);
    // A change the NIC will take: the VFs' clients go first (their functions stop, then their
    // memory is unmapped). One it refuses it refuses itself (STATUS.NUM_VFS_ERR).
    const bool takes = n <= self->nic_.max_vfs() && (n == 0 || self->nic_.num_vfs() == 0);
    if (takes) self->drop_vf_sockets();
    const Status st = self->nic_.set_num_vfs(n);
    self->follow_num_vfs();
    return st;
  };
  fc.removed_vfs = [self] { return self->removed_; };
  fc.set_removed_vfs = [self](std::uint32_t mask) -> Status {
    const std::uint32_t changed = mask ^ self->removed_;
    for (unsigned i = 0; i < 32; ++i) {
      const std::uint32_t bit = std::uint32_t{1} << i;
      if ((changed & bit) == 0) continue;
      if (Status st = self->pull_vf(i, (mask & bit) != 0); !st.ok()) return st;
    }
    return {};
  };
  // The NIC VFs' faults: what NicCard offers (surprise removal and restore); the NVMe faults
  // have no meaning here.
  fc.inject_fault = [self](const vu::FaultRecord& f) -> Status {
    if (f.op == vu::FaultOp::surprise_remove || f.op == vu::FaultOp::restore) {
      return self->pull_vf(f.vf, f.op == vu::FaultOp::surprise_remove);
    }
    return make_error(Errc::unavailable, "fault " + std::to_string(static_cast<unsigned>(f.op)) +
                                             " is an NVMe fault; a NIC VF takes surprise "
                                             "removal and restore");
  };
  auto pf = serve_function(nic.pf(), options.run_dir, "nicpf", std::move(fc));
  if (!pf) return pf.error();
  s->served_.push_back(std::move(pf).value());
  if (Status st = s->serve_vfs(); !st.ok()) return st.error();
  return s;
}

Status NicServing::enable_port(unsigned vf) {
  fpga::Function& p = nic_.pf();
  const knic::Mac mac = nic_vf_mac(vf);
  p.write32(vc::at(vf, vc::CTRL), 0);
  p.write32(vc::at(vf, vc::MAC_LO), knic::mac_lo(mac));
  p.write32(vc::at(vf, vc::MAC_HI), knic::mac_hi(mac));
  p.write32(vc::at(vf, vc::CTRL), static_cast<std::uint32_t>(vc::CTRL_ENABLE_MASK));
  const std::uint32_t st = p.read32(vc::at(vf, vc::STATUS));
  if ((st & vc::STATUS_ENABLED_MASK) == 0) {
    return make_error(Errc::device_error, "NIC VF " + std::to_string(vf) +
                                              ": the switch port refused (STATUS " +
                                              std::to_string(st) + ")");
  }
  return {};
}

Status NicServing::serve_vfs() {
  for (unsigned i = 0; i < nic_.num_vfs(); ++i) {
    auto vf = nic_.vf(i);
    if (!vf) return vf.error();
    auto s = serve_function(**vf, options_.run_dir, "nicvf" + std::to_string(i), {});
    if (!s) return s.error();
    served_.push_back(std::move(s).value());
  }
  return {};
}

void NicServing::drop_vf_sockets() {
  for (std::size_t i = served_.size(); i-- > 1;) {
    drop_client(*served_[i], "its NIC VF is removed");
    card_app::print_counters(*served_[i]);
    served_.pop_back();
  }
  ++generation_;
  removed_ = 0;  // the VFs that go take their state with them
}

void NicServing::follow_num_vfs() {
  // A read of the PF orders after its earlier (posted) writes, as on PCIe.
  (void)nic_.pf().read32(np::NUM_VFS);
  if (served_.size() - 1 == nic_.num_vfs()) return;
  drop_vf_sockets();
  kLog.info("NIC NUM_VFS = %u", nic_.num_vfs());
  if (Status st = serve_vfs(); !st.ok()) {
    kLog.error("serving the new NIC VFs: %s", st.error().message.c_str());
  }
}

Status NicServing::pull_vf(unsigned vf, bool pull) {
  if (Status st = pull ? nic_.surprise_remove(vf) : nic_.restore(vf); !st.ok()) return st;
  if (vf < 32) removed_ = pull ? removed_ | 1u << vf : removed_ & ~(1u << vf);
  if (vf + 1 < served_.size()) served_[vf + 1]->server->set_unplugged(pull);
  kLog.info("NIC VF %u %s", vf, pull ? "pulled from the bus" : "back on the bus");
  return {};
}

void NicServing::collect(std::vector<Served*>& out) const {
  for (const auto& s : served_) out.push_back(s.get());
}

int NicServing::poll_timeout_ms() const noexcept {
  return uplink_ && uplink_->dgram ? kUplinkTickMs : -1;
}

void NicServing::tick() {
  if (!uplink_ || !uplink_->dgram) return;
  Uplink& u = *uplink_;
  const std::uint64_t now = steady_clock().now_ns();
  if (now < u.next_look_ns) return;
  u.next_look_ns = now + kUplinkTickMs * 1'000'000ull;
  // Frames that could not be written since the last look: the peer went (and may be back).
  const std::uint64_t drops = nic_.pf().read64(np::UPLINK_TX_DROPS);
  const bool failing = drops != u.tx_drops_seen;
  u.tx_drops_seen = drops;
  if (u.connected && !failing) return;
  const int e = apps::dial_unix(u.fd.get(), u.remote);
  if (e == 0 && !u.connected) kLog.info("uplink: connected to %s", u.remote.c_str());
  if (e != 0 && u.connected) {
    kLog.warn("uplink: %s: %s; dialling it again", u.remote.c_str(), std::strerror(e));
  }
  u.connected = e == 0;
}

void NicServing::print_counters() const {
  for (const auto& s : served_) card_app::print_counters(*s);
  if (!uplink_) return;
  fpga::Function& p = nic_.pf();
  std::printf("uplink tx_frames=%" PRIu64 " tx_bytes=%" PRIu64 " rx_frames=%" PRIu64
              " rx_bytes=%" PRIu64 " drops=%" PRIu64 " tx_drops=%" PRIu64 "\n",
              p.read64(np::UPLINK_TX_FRAMES), p.read64(np::UPLINK_TX_BYTES),
              p.read64(np::UPLINK_RX_FRAMES), p.read64(np::UPLINK_RX_BYTES),
              p.read64(np::UPLINK_DROPS), p.read64(np::UPLINK_TX_DROPS));
}

}  // namespace keel::card_app
