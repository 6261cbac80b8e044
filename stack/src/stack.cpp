#include "keel/stack/stack.h"

#include <unistd.h>

#include <atomic>
#include <string>
#include <system_error>

namespace keel::stack {

Result<std::unique_ptr<Stack>> Stack::open_card(const StackConfig& config) {
  auto card = fpga::open_card(config.card, config.card_options);
  if (!card) return card.error();
  std::unique_ptr<Stack> s(new Stack(config));
  s->owned_card_ = std::move(card).value();
  s->card_ = s->owned_card_.get();
  return s;
}

std::unique_ptr<Stack> Stack::attach(fpga::Card& card, const StackConfig& config) {
  std::unique_ptr<Stack> s(new Stack(config));
  s->card_ = &card;
  return s;
}

Result<std::unique_ptr<Stack>> Stack::open(const StackConfig& config) {
  auto s = open_card(config);
  if (!s) return s.error();
  if (Status st = (*s)->discover_pf(); !st.ok()) return st.error();
  if (Status st = (*s)->enable_vfs(); !st.ok()) return st.error();
  return s;
}

Stack::~Stack() {
  pf_.reset();
  owned_card_.reset();
}

Status Stack::discover_pf() {
  auto pm = sriov::PfManager::discover(*card_);
  if (!pm) return pm.error();
  pf_.emplace(std::move(pm).value());
  return {};
}

Status Stack::enable_vfs() { return enable_vfs(config_.vfs); }

Status Stack::enable_vfs(const VfPlan& plan) {
  if (plan.disable_first) {
    if (Status st = pf_->disable_vfs(); !st.ok()) return st;
  }
  if (!plan.resources.empty()) return pf_->enable_vfs(plan.resources);
  if (plan.count == 0) return {};
  return pf_->enable_vfs_even(plan.count, plan.queues);
}

Result<fpga::Function*> Stack::vf(unsigned index) { return card_->vf(index); }

vmm::HostServiceConfig Stack::host_config(const vmm::GuestMemory& memory,
                                          const DiskSpec& spec) const {
  vmm::HostServiceConfig hc = config_.host;
  if (hc.image_path.empty() && hc.image_fd < 0) hc.image_path = config_.card_options.image_path;
  hc.base_offset = spec.base_offset;
  hc.length = spec.length;
  switch (spec.ram) {
    case GuestRamView::whole:
      hc.guest_memory_fd = memory.regions()[0].fd;
      hc.guest_memory_bytes = memory.regions()[0].bytes;
      break;
    case GuestRamView::regions:
      for (const auto& r : memory.regions()) {
        hc.regions.push_back({r.fd, r.fd_offset, r.gpa, r.bytes});
      }
      break;
    case GuestRamView::none: break;
  }
  return hc;
}

Result<std::unique_ptr<vmm::HostStorageService>> Stack::start_host_service(
    const vmm::HostServiceConfig& config) {
  return vmm::HostStorageService::start(config);
}

Result<std::unique_ptr<vmm::Paravisor>> Stack::create_paravisor(
    fpga::Function* vf, vmm::GuestMemory& memory, vmm::HostStorage& host,
    const vmm::ParavisorConfig& config) {
  return vmm::Paravisor::create(vf, *card_, *card_, memory, host, config);
}

Result<GuestDisk> Stack::assemble(vmm::GuestMemory& memory, const DiskSpec& spec) {
  return assemble(memory, spec, config_.paravisor);
}

Result<GuestDisk> Stack::assemble(vmm::GuestMemory& memory, const DiskSpec& spec,
                                  const vmm::ParavisorConfig& config) {
  GuestDisk d;
  auto host = start_host_service(host_config(memory, spec));
  if (!host) return host.error();
  d.host = std::move(host).value();
  fpga::Function* fn = nullptr;
  if (spec.vf) {
    auto f = vf(*spec.vf);
    if (!f) return f.error();
    fn = *f;
  }
  auto pv = create_paravisor(fn, memory, *d.host, config);
  if (!pv) return pv.error();
  d.paravisor = std::move(pv).value();
  return d;
}

Result<std::unique_ptr<drivers::nvme::Controller>> Stack::open_controller(
    fpga::Function& vf, const drivers::nvme::ControllerConfig& config) {
  return drivers::nvme::Controller::open(vf, *card_, *card_, config);
}

std::filesystem::path scratch_dir() {
  return std::filesystem::exists("/dev/shm") ? std::filesystem::path("/dev/shm")
                                             : std::filesystem::temp_directory_path();
}

std::string scratch_image_path(std::string_view tag, const std::filesystem::path& dir) {
  static std::atomic<unsigned> counter{0};
  const std::string path = (dir / ("keel-" + std::string(tag) + "-" + std::to_string(getpid()) +
                                   "-" + std::to_string(counter++) + ".img"))
                               .string();
  std::error_code ec;
  std::filesystem::remove(path, ec);  // a stale file of a process that had this pid
  return path;
}

ScratchImage::~ScratchImage() {
  std::error_code ec;
  std::filesystem::remove(path_, ec);
}

}  // namespace keel::stack
