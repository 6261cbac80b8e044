// NIC VF bring-up, device state and recovery.
#include "keel/drivers/net/nic.h"

#include <string>

#include <keel/regs/keel_regs.h>

#include "keel/drivers/net/queue_pair.h"

namespace keel::drivers::net {

namespace rn = regs::nic;

namespace {

constexpr std::uint32_t kAllOnes = 0xFFFFFFFFu;

}  // namespace

const char* to_string(DeviceState s) noexcept {
  switch (s) {
    case DeviceState::ready: return "ready";
    case DeviceState::not_ready: return "not ready";
    case DeviceState::fatal: return "fatal (STATUS.FATAL)";
    case DeviceState::gone: return "gone";
  }
  return "unknown";
}

const char* to_string(NetErrc e) noexcept {
  switch (e) {
    case NetErrc::ok: return "ok";
    case NetErrc::full: return "TX ring full";
    case NetErrc::invalid: return "invalid frame";
    case NetErrc::too_large: return "frame larger than the MTU allows";
    case NetErrc::down: return "device not ready (recover it)";
    case NetErrc::gone: return "device gone";
  }
  return "unknown";
}

Nic::Nic(fpga::Function& fn, const Clock& clock, fpga::Stepper& stepper, const NicConfig& config)
    : fn_(fn), clock_(clock), stepper_(stepper), config_(config) {}

Nic::~Nic() {
  if (status_of(fn_) == DeviceState::gone) return;  // queues_ free their memory only
  for (auto& q : queues_) q->stop();
  fn_.write32(rn::CTRL, 0);
}

Result<fpga::DmaBuffer> Nic::dma(std::size_t bytes) {
  if (config_.arena != nullptr) return config_.arena->alloc(bytes);
  return fn_.alloc_dma(bytes);
}

DeviceState Nic::status_of(fpga::Function& fn) noexcept {
  const std::uint32_t st = fn.read32(rn::STATUS);
  if (st == kAllOnes && fn.read32(rn::ID) == kAllOnes) return DeviceState::gone;
  if ((st & rn::STATUS_FATAL_MASK) != 0) return DeviceState::fatal;
  if ((st & rn::STATUS_READY_MASK) != 0) return DeviceState::ready;
  return DeviceState::not_ready;
}

DeviceState Nic::state() noexcept {
  const DeviceState s = status_of(fn_);
  // A device that reads ready after it was seen down has been reset under the driver: its
  // queue pairs stay refused until recover() rebuilds them.
  if (s != DeviceState::ready || seen() == DeviceState::ready) note(s);
  return s;
}

bool Nic::link_up() noexcept {
  const std::uint32_t st = fn_.read32(rn::STATUS);
  return st != kAllOnes && (st & rn::STATUS_LINK_MASK) != 0;
}

Result<std::unique_ptr<Nic>> Nic::open(fpga::Function& vf, const Clock& clock,
                                       fpga::Stepper& stepper, const NicConfig& config) {
  if (config.queues == 0) return make_error(Errc::invalid_argument, "a NIC needs a queue pair");
  if (config.tx_ring_log2 < regs::NIC_MIN_RING_LOG2 ||
      config.rx_ring_log2 < regs::NIC_MIN_RING_LOG2) {
    return make_error(Errc::invalid_argument, "rings need at least 2 entries");
  }
  if (config.rx_buffer_bytes < 64 || config.rx_buffer_bytes > 65535 ||
      config.rx_buffer_bytes % 64 != 0) {
    return make_error(Errc::invalid_argument,
                      "rx_buffer_bytes must be a multiple of 64 in 64..65535");
  }
  if (config.mtu < regs::NIC_MIN_MTU || config.mtu > regs::NIC_MAX_MTU) {
    return make_error(Errc::invalid_argument, "MTU " + std::to_string(config.mtu) + " outside " +
                                                  std::to_string(regs::NIC_MIN_MTU) + ".." +
                                                  std::to_string(regs::NIC_MAX_MTU));
  }
  std::unique_ptr<Nic> nic(new Nic(vf, clock, stepper, config));
  const std::uint32_t id = vf.read32(rn::ID);
  if (id == kAllOnes) return make_error(Errc::gone, "the NIC VF reads all ones (removed)");
  if (id != regs::NIC_MAGIC) {
    return make_error(Errc::device_error,
                      "not a keel NIC VF: ID reads " + std::to_string(id) + ", not 'KNIC'");
  }
  const std::uint32_t caps = vf.read32(rn::CAPS);
  const auto max_q = regs::field_get(caps, rn::CAPS_QUEUES_MASK, rn::CAPS_QUEUES_SHIFT);
  const auto max_log2 = regs::field_get(caps, rn::CAPS_RING_LOG2_MASK, rn::CAPS_RING_LOG2_SHIFT);
  const auto max_mtu = regs::field_get(caps, rn::CAPS_MAX_MTU_MASK, rn::CAPS_MAX_MTU_SHIFT);
  if (config.queues > max_q) {
    return make_error(Errc::invalid_argument, std::to_string(config.queues) +
                                                  " queue pairs asked, the VF offers " +
                                                  std::to_string(max_q));
  }
  if (config.tx_ring_log2 > max_log2 || config.rx_ring_log2 > max_log2) {
    return make_error(Errc::invalid_argument,
                      "ring larger than the VF's 2^" + std::to_string(max_log2) + " entries");
  }
  if (max_mtu != 0 && config.mtu > max_mtu) {
    return make_error(Errc::invalid_argument, "MTU above the VF's " + std::to_string(max_mtu));
  }
  if (config.interrupts && vf.num_vectors() < 2 * config.queues) {
    return make_error(Errc::invalid_argument, "interrupt mode needs 2 MSI-X vectors per queue");
  }
  for (unsigned q = 0; q < config.queues; ++q) {
    nic->queues_.push_back(std::unique_ptr<QueuePair>(new QueuePair(*nic, q)));
  }
  if (Status st = nic->bring_up(); !st.ok()) return st.error();
  return nic;
}

Status Nic::bring_up() {
  note(DeviceState::not_ready);
  const std::uint32_t id = fn_.read32(rn::ID);
  if (id == kAllOnes) {
    note(DeviceState::gone);
    return make_error(Errc::gone, "the NIC VF reads all ones (removed)");
  }
  if (id != regs::NIC_MAGIC) {
    return make_error(Errc::device_error, "NIC VF ID reads " + std::to_string(id));
  }
  // Start from a stopped VF (clears a fatal status, stops every queue pair on the device).
  for (auto& q : queues_) q->stop();
  fn_.write32(rn::CTRL, 0);
  fn_.write32(rn::CTRL, static_cast<std::uint32_t>(rn::CTRL_ENABLE_MASK));
  std::uint32_t st = 0;
  const bool ready = fpga::poll_until(clock_, stepper_, config_.enable_timeout, [&] {
    st = fn_.read32(rn::STATUS);
    return st == kAllOnes || (st & (rn::STATUS_READY_MASK | rn::STATUS_FATAL_MASK)) != 0;
  });
  if (st == kAllOnes) {
    note(DeviceState::gone);
    return make_error(Errc::gone, "the NIC VF reads all ones (removed)");
  }
  if ((st & rn::STATUS_FATAL_MASK) != 0) {
    return make_error(Errc::device_error, "NIC VF reports STATUS.FATAL after enable");
  }
  if (!ready) return make_error(Errc::timeout, "waited for NIC STATUS.READY");
  fn_.write32(rn::MTU, config_.mtu);
  if ((fn_.read32(rn::STATUS) & rn::STATUS_MTU_ERR_MASK) != 0 ||
      (fn_.read32(rn::MTU) & rn::MTU_BYTES_MASK) != config_.mtu) {
    return make_error(Errc::device_error,
                      "NIC VF refused MTU " + std::to_string(config_.mtu) + " (STATUS.MTU_ERR)");
  }
  mac_ = knic::mac_from_regs(fn_.read32(rn::MAC_LO), fn_.read32(rn::MAC_HI));
  for (auto& q : queues_) {
    if (Status qs = q->build(); !qs.ok()) return qs;
  }
  note(DeviceState::ready);
  return {};
}

Status Nic::recover() {
  // The queue pairs first learn that their rings are void (bring_up() marks the device
  // not ready until it is done), then are rebuilt.
  for (auto& q : queues_) q->flush_in_flight();
  return bring_up();
}

Status Nic::reset() {
  note(DeviceState::not_ready);
  if (Status st = fn_.flr(); !st.ok()) {
    if (st.error().code == Errc::gone) note(DeviceState::gone);
    return st;
  }
  return recover();
}

Nic::Stats Nic::stats() const noexcept {
  Stats sum;
  for (const auto& q : queues_) {
    const Stats& s = q->stats();
    sum.tx_frames += s.tx_frames;
    sum.tx_bytes += s.tx_bytes;
    sum.rx_frames += s.rx_frames;
    sum.rx_bytes += s.rx_bytes;
    for (std::size_t i = 0; i < sum.tx_errors.size(); ++i) sum.tx_errors[i] += s.tx_errors[i];
    sum.rx_errors += s.rx_errors;
    sum.device_errors += s.device_errors;
    sum.tx_doorbells += s.tx_doorbells;
    sum.rx_doorbells += s.rx_doorbells;
  }
  return sum;
}

}  // namespace keel::drivers::net
