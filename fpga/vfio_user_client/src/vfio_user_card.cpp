#include "keel/fpga/vfio_user/vfio_user_card.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "keel/clock.h"
#include "keel/fpga/absent_function.h"
#include "keel/fpga/nic.h"
#include "keel/fpga/vfio_user/config_space.h"

namespace keel::vfio_user {

static_assert(kNicPfNumber == fpga::kNicPfFunction);

/// The NIC half of a card opened on a NIC socket (see the header comment).
class VfioUserCard::RemoteNic final : public fpga::NicCard {
 public:
  explicit RemoteNic(VfioUserCard& card)
      : card_(card),
        absent_pf_(
            "this process holds one NIC VF of the card; the NIC PF is keel-card's (use "
            "--card vfio-user:<run dir>/nicpf.sock)") {
    if (!single()) vfs_.resize(card_.first_->identity().max_vfs);
  }
  fpga::Function& pf() noexcept override {
    if (single()) return absent_pf_;
    return *card_.first_;
  }
  Result<fpga::Function*> vf(unsigned index) override {
    if (index >= num_vfs()) {
      return make_error(Errc::not_found, "NIC VF " + std::to_string(index) + ": the card has " +
                                             std::to_string(num_vfs()) + " NIC VF(s) here");
    }
    if (single()) return static_cast<fpga::Function*>(card_.first_.get());
    std::lock_guard lock(card_.vfs_mu_);
    return card_.pf_mode_vf(vfs_, "nicvf", index, fpga::nic_vf_function(index));
  }
  unsigned max_vfs() const noexcept override {
    return single() ? 1 : card_.first_->identity().max_vfs;
  }
  unsigned num_vfs() const noexcept override {
    if (single()) return 1;
    (void)card_.first_->refresh_identity();  // changes under this process too
    return card_.first_->identity().num_vfs;
  }
  Status set_num_vfs(unsigned n) override {
    if (single()) {
      return make_error(Errc::unavailable,
                        "this process holds one NIC VF of the card; the NIC's VFs are changed "
                        "through the NIC PF (vfio-user:<run dir>/nicpf.sock)");
    }
    std::lock_guard lock(card_.vfs_mu_);
    return card_.write_num_vfs(vfs_, n, num_vfs());
  }
  Status attach_uplink(UniqueFd) override {
    return make_error(Errc::unavailable,
                      "the NIC's uplink is keel-card's (keel-card --uplink), not a client's");
  }
  Status surprise_remove(unsigned index) override { return pull(FaultOp::surprise_remove, index); }
  Status restore(unsigned index) override { return pull(FaultOp::restore, index); }

 private:
  bool single() const noexcept { return card_.single_vf_; }
  Status pull(FaultOp op, unsigned index) {
    if (single()) {
      return make_error(Errc::unavailable,
                        "faults are injected in keel-card's process: through the NIC PF "
                        "(vfio-user:<run dir>/nicpf.sock)");
    }
    if (index >= num_vfs() || index > 255) {
      return make_error(Errc::not_found, "NIC VF " + std::to_string(index) + ": the card has " +
                                             std::to_string(num_vfs()) + " NIC VF(s)");
    }
    return card_.send_fault(op, index, 0, 0);
  }

  VfioUserCard& card_;
  fpga::AbsentFunction absent_pf_;
  std::vector<std::unique_ptr<ClientFunction>> vfs_;  ///< NIC VF n, once connected.
};

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
    return card_.send_fault(op, vf, count, arg);
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
  const FunctionIdentity& id = card->first_->identity();
  card->single_vf_ = !id.is_pf();
  card->nic_only_ = id.is_nic();
  card->absent_pf_ = std::make_unique<fpga::AbsentFunction>(
      card->nic_only_ ? "this process holds a function of the card's NIC; the NVMe PF is "
                        "keel-card's (use keelctl --card vfio-user:<run dir>/pf.sock)"
                      : "this process holds one VF of the card; its PF is keel-card's (use "
                        "keelctl --card vfio-user:<run dir>/pf.sock)");
  card->faults_ = std::make_unique<RemoteFaults>(*card);
  if (card->nic_only_) {
    card->nic_ = std::make_unique<RemoteNic>(*card);
  } else if (!card->single_vf_) {
    card->vfs_.resize(id.max_vfs);
  }
  return card;
}

VfioUserCard::VfioUserCard(std::string path, const ClientConfig& config)
    : path_(std::move(path)), config_(config) {}

VfioUserCard::~VfioUserCard() = default;

std::string VfioUserCard::describe() const {
  if (nic_only_) {
    if (single_vf_) {
      return "vfio-user card: NIC VF " + std::to_string(first_->identity().vf_index()) + " at " +
             path_;
    }
    return "vfio-user card: NIC PF at " + path_ + ", " + std::to_string(nic_->num_vfs()) + " of " +
           std::to_string(nic_->max_vfs()) + " NIC VFs";
  }
  if (single_vf_) {
    return "vfio-user card: VF " + std::to_string(first_->number() - 1) + " at " + path_;
  }
  return "vfio-user card: PF at " + path_ + ", " + std::to_string(num_vfs()) + " of " +
         std::to_string(max_vfs()) + " VFs";
}

fpga::Function& VfioUserCard::pf() noexcept {
  if (single_vf_ || nic_only_) return *absent_pf_;
  return *first_;
}

Result<fpga::Function*> VfioUserCard::vf(unsigned index) {
  if (index >= num_vfs()) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) + ": the card has " +
                                           std::to_string(num_vfs()) + " VF(s) here");
  }
  if (single_vf_) return static_cast<fpga::Function*>(first_.get());
  std::lock_guard lock(vfs_mu_);
  return pf_mode_vf(vfs_, "vf", index, index + 1);
}

Result<fpga::Function*> VfioUserCard::pf_mode_vf(std::vector<std::unique_ptr<ClientFunction>>& vfs,
                                                 const char* prefix, unsigned index,
                                                 unsigned number) {
  if (index >= vfs.size()) vfs.resize(index + 1);
  if (vfs[index]) {
    // The same function object for as long as the card is open (a caller may hold it across
    // NumVFs changes, as a PCI function it has a pointer to); one whose VF went and came back
    // dials its new socket now.
    if (vfs[index]->gone()) (void)vfs[index]->reconnect_now();
    return static_cast<fpga::Function*>(vfs[index].get());
  }
  const auto dir = std::filesystem::path(path_).parent_path();
  const std::string at = (dir / (prefix + std::to_string(index) + ".sock")).string();
  auto f = ClientFunction::connect(at, config_);
  if (!f) return f.error();
  if ((*f)->number() != number) {
    return make_error(Errc::invalid_argument, at + " serves function " +
                                                  std::to_string((*f)->number()) + ", not " +
                                                  prefix + std::to_string(index) + " (function " +
                                                  std::to_string(number) + ")");
  }
  vfs[index] = std::move(f).value();
  return static_cast<fpga::Function*>(vfs[index].get());
}

unsigned VfioUserCard::max_vfs() const noexcept {
  if (nic_only_) return 0;  // the NVMe half is not this process's
  return single_vf_ ? 1 : first_->identity().max_vfs;
}

unsigned VfioUserCard::num_vfs() const noexcept {
  if (nic_only_) return 0;
  if (single_vf_) return 1;
  // Read again each time: the PF's NumVFs changes under this process too (keelctl in
  // another one, a write of the PF's NUM_VFS register). Gone: the last count read.
  (void)first_->refresh_identity();
  return first_->identity().num_vfs;
}

Status VfioUserCard::set_num_vfs(unsigned n) {
  if (nic_only_) {
    return make_error(Errc::unavailable,
                      "this process holds a function of the card's NIC; the NVMe VFs are changed "
                      "through the PF (keelctl --card vfio-user:<run dir>/pf.sock vf enable N)");
  }
  if (single_vf_) {
    return make_error(Errc::unavailable,
                      "this process holds one VF of the card; its VFs are changed through the "
                      "PF (keelctl --card vfio-user:<run dir>/pf.sock vf enable N)");
  }
  std::lock_guard lock(vfs_mu_);
  return write_num_vfs(vfs_, n, num_vfs());
}

Status VfioUserCard::write_num_vfs(std::vector<std::unique_ptr<ClientFunction>>& vfs, unsigned n,
                                   unsigned before) {
  const std::uint8_t v[2] = {static_cast<std::uint8_t>(n), static_cast<std::uint8_t>(n >> 8)};
  Status st = first_->write_config(kKeelCapOffset + kKeelCapNumVfs, v);
  if (Status r = first_->refresh_identity(); st.ok() && !r.ok()) st = r;
  // keel-card turned the clients of the VFs it removed or replaced away: ours let go too, and
  // dial the new sockets on their next use (vf() at once).
  if (st.ok() && n != before) {
    for (auto& f : vfs) {
      if (f) f->disconnect();
    }
  }
  return st;
}

Status VfioUserCard::send_fault(FaultOp op, unsigned vf, unsigned count, std::uint64_t arg) {
  const FaultRecord f{op, static_cast<std::uint8_t>(vf), 0, count, arg};
  std::uint8_t b[sizeof f];
  std::memcpy(b, &f, sizeof f);
  Status st = first_->write_config(kKeelCapOffset + kKeelCapFault, b);
  if (Status r = first_->refresh_identity(); st.ok() && !r.ok()) st = r;
  return st;
}

std::uint64_t VfioUserCard::now_ns() const noexcept { return steady_clock().now_ns(); }

fpga::FaultInjector* VfioUserCard::faults() noexcept {
  return single_vf_ || nic_only_ ? nullptr : faults_.get();
}

fpga::NicCard* VfioUserCard::nic() noexcept { return nic_.get(); }

}  // namespace keel::vfio_user
