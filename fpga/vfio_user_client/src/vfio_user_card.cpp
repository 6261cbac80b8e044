#include "keel/fpga/vfio_user/vfio_user_card.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "keel/clock.h"
#include "keel/fpga/absent_function.h"
#include "keel/fpga/vfio_user/config_space.h"

namespace keel::vfio_user {

/// keel-card's fault injector, through the PF's configuration space (config_space.h).
class VfioUserCard::RemoteFaults final : public fpga::FaultInjector {
 public:
  explicit RemoteFaults(VfioUserCard& card) : card_(card) {}
  Status drop_completions(unsigned vf, unsigned count) override {
    return send(FaultOp::drop_completions, vf, count, 0);
  }
  Status delay_completions(unsigned vf, unsigned count, std::chrono::nanoseconds delay) override {
    return send(FaultOp::delay_completions, vf, count, ns(delay));
  }
  Status delay_ready(unsigned vf, std::chrono::nanoseconds delay) override {
    return send(FaultOp::delay_ready, vf, 0, ns(delay));
  }
  Status raise_fatal(unsigned vf) override { return send(FaultOp::raise_fatal, vf, 0, 0); }
  Status refuse_dma(unsigned vf, bool on) override {
    return send(FaultOp::refuse_dma, vf, on ? 1 : 0, 0);
  }
  Status surprise_remove(unsigned vf) override { return send(FaultOp::surprise_remove, vf, 0, 0); }
  Status restore(unsigned vf) override { return send(FaultOp::restore, vf, 0, 0); }
  Status corrupt_completions(unsigned vf, fpga::CqeFault fault, unsigned count) override {
    return send(FaultOp::corrupt_completions, vf, count, static_cast<std::uint64_t>(fault));
  }
  Status swallow_aborts(unsigned vf, unsigned count) override {
    return send(FaultOp::swallow_aborts, vf, count, 0);
  }

 private:
  static std::uint64_t ns(std::chrono::nanoseconds d) {
    return static_cast<std::uint64_t>(std::max<std::int64_t>(d.count(), 0));
  }
  Status send(FaultOp op, unsigned vf, unsigned count, std::uint64_t arg) {
    if (vf >= card_.num_vfs() || vf > 255) {
      return make_error(Errc::not_found, "VF " + std::to_string(vf) + ": the card has " +
                                             std::to_string(card_.num_vfs()) + " VF(s)");
    }
    const FaultRecord f{op, static_cast<std::uint8_t>(vf), 0, count, arg};
    std::uint8_t b[sizeof f];
    std::memcpy(b, &f, sizeof f);
    Status st = card_.first_->write_config(kKeelCapOffset + kKeelCapFault, b);
    if (Status r = card_.first_->refresh_identity(); st.ok() && !r.ok()) st = r;
    return st;
  }
  VfioUserCard& card_;
};

Result<std::unique_ptr<VfioUserCard>> VfioUserCard::open(const std::string& socket_path,
                                                         const ClientConfig& config) {
  auto first = ClientFunction::connect(socket_path, config);
  if (!first) return first.error();
  return around(std::move(first).value(), socket_path, config);
}

Result<std::unique_ptr<VfioUserCard>> VfioUserCard::adopt(const std::string& socket_path,
                                                          int connection,
                                                          const ClientConfig& config) {
  auto first = ClientFunction::adopt(socket_path, connection, config);
  if (!first) return first.error();
  return around(std::move(first).value(), socket_path, config);
}

std::unique_ptr<VfioUserCard> VfioUserCard::around(std::unique_ptr<ClientFunction> first,
                                                   const std::string& socket_path,
                                                   const ClientConfig& config) {
  std::unique_ptr<VfioUserCard> card(new VfioUserCard(socket_path, config));
  card->first_ = std::move(first);
  card->single_vf_ = !card->first_->identity().is_pf();
  card->absent_pf_ = std::make_unique<fpga::AbsentFunction>(
      "this process holds one VF of the card; its PF is keel-card's (use keelctl --card "
      "vfio-user:<run dir>/pf.sock)");
  card->faults_ = std::make_unique<RemoteFaults>(*card);
  if (!card->single_vf_) card->vfs_.resize(card->first_->identity().max_vfs);
  return card;
}

VfioUserCard::VfioUserCard(std::string path, const ClientConfig& config)
    : path_(std::move(path)), config_(config) {}

VfioUserCard::~VfioUserCard() = default;

std::string VfioUserCard::describe() const {
  if (single_vf_) {
    return "vfio-user card: VF " + std::to_string(first_->number() - 1) + " at " + path_;
  }
  return "vfio-user card: PF at " + path_ + ", " + std::to_string(num_vfs()) + " of " +
         std::to_string(max_vfs()) + " VFs";
}

fpga::Function& VfioUserCard::pf() noexcept {
  if (single_vf_) return *absent_pf_;
  return *first_;
}

Result<fpga::Function*> VfioUserCard::vf(unsigned index) {
  if (index >= num_vfs()) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) + ": the card has " +
                                           std::to_string(num_vfs()) + " VF(s) here");
  }
  if (single_vf_) return static_cast<fpga::Function*>(first_.get());
  std::lock_guard lock(vfs_mu_);
  if (index >= vfs_.size()) vfs_.resize(index + 1);
  if (vfs_[index]) {
    // The same function object for as long as the card is open (a caller may hold it across
    // NumVFs changes, as a PCI function it has a pointer to); one whose VF went and came back
    // dials its new socket now.
    if (vfs_[index]->gone()) (void)vfs_[index]->reconnect_now();
    return static_cast<fpga::Function*>(vfs_[index].get());
  }
  const auto dir = std::filesystem::path(path_).parent_path();
  const std::string at = (dir / ("vf" + std::to_string(index) + ".sock")).string();
  auto f = ClientFunction::connect(at, config_);
  if (!f) return f.error();
  if ((*f)->number() != index + 1) {
    return make_error(Errc::invalid_argument, at + " serves function " +
                                                  std::to_string((*f)->number()) + ", not VF " +
                                                  std::to_string(index));
  }
  vfs_[index] = std::move(f).value();
  return static_cast<fpga::Function*>(vfs_[index].get());
}

unsigned VfioUserCard::max_vfs() const noexcept {
  return single_vf_ ? 1 : first_->identity().max_vfs;
}

unsigned VfioUserCard::num_vfs() const noexcept {
  if (single_vf_) return 1;
  // Read again each time: the PF's NumVFs changes under this process too (keelctl in
  // another one, a write of the PF's NUM_VFS register). Gone: the last count read.
  (void)first_->refresh_identity();
  return first_->identity().num_vfs;
}

Status VfioUserCard::set_num_vfs(unsigned n) {
  if (single_vf_) {
    return make_error(Errc::unavailable,
                      "this process holds one VF of the card; its VFs are changed through the "
                      "PF (keelctl --card vfio-user:<run dir>/pf.sock vf enable N)");
  }
  std::lock_guard lock(vfs_mu_);
  const unsigned before = num_vfs();
  const std::uint8_t v[2] = {static_cast<std::uint8_t>(n), static_cast<std::uint8_t>(n >> 8)};
  Status st = first_->write_config(kKeelCapOffset + kKeelCapNumVfs, v);
  if (Status r = first_->refresh_identity(); st.ok() && !r.ok()) st = r;
  // keel-card turned the clients of the VFs it removed or replaced away: ours let go too, and
  // dial the new sockets on their next use (vf() at once).
  if (st.ok() && n != before) {
    for (auto& f : vfs_) {
      if (f) f->disconnect();
    }
  }
  return st;
}

std::uint64_t VfioUserCard::now_ns() const noexcept { return steady_clock().now_ns(); }

fpga::FaultInjector* VfioUserCard::faults() noexcept {
  return single_vf_ ? nullptr : faults_.get();
}

}  // namespace keel::vfio_user
