// keel::stack: the composition root. Opening a card from its spec, managing the PF (VFs and
// their resources), starting host storage services and assembling paravisors (on a VF or on
// the host path only) is written here once; the daemons, tools, benchmarks and test fixtures
// call it instead of standing the pieces up by hand.
#pragma once

#include <cassert>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "keel/drivers/nvme/controller.h"
#include "keel/fpga/card.h"
#include "keel/result.h"
#include "keel/sriov/pf_manager.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/paravisor.h"

namespace keel::stack {

/// Which VFs to enable and what each gets.
struct VfPlan {
  /// This many VFs with `queues` queue pairs each and an even split of the storage. Ignored
  /// when `resources` is set; 0 and no `resources`: no VFs.
  unsigned count = 0;
  unsigned queues = 1;
  /// VF i gets resources[i] (slice, queues, QoS) instead of the even split.
  std::vector<sriov::VfResources> resources = {};
  /// Removes the VFs already enabled (a real board keeps them) before enabling these.
  bool disable_first = false;
};

/// What a stack is made of. Every member has a default: the default stack is a lockstep
/// reference card with no VFs enabled.
struct StackConfig {
  /// Card spec: "model", "sim", "vfio:<BDF>", "xrt:<index>" (see fpga::open_card).
  std::string card = "model";
  /// How the card is opened: image, storage size, VF limits, lockstep or free running.
  fpga::CardOptions card_options = {};
  /// The VFs enable_vfs() enables (none by default).
  VfPlan vfs = {};
  /// The settings every host storage service starts from (io_uring depth, timeouts). An empty
  /// image_path means the card's image (card_options.image_path); the slice and the guest RAM
  /// are set per disk (DiskSpec).
  vmm::HostServiceConfig host = {};
  /// The paravisor settings assemble() uses when it is given none.
  vmm::ParavisorConfig paravisor = {};
};

/// How a guest disk's host storage service sees the guest's RAM.
enum class GuestRamView {
  whole,    ///< the memory's first region as guest RAM at GPA 0 (an in-process guest)
  regions,  ///< every region of the memory table (a vhost-user front end's)
  none,     ///< none: a confidential guest's service sees only the pool its paravisor shares
};

/// One guest disk: which VF serves it and which bytes of the image back its fallback path.
struct DiskSpec {
  std::optional<unsigned> vf = std::nullopt;  ///< The serving VF; nullopt: host path only.
  std::uint64_t base_offset = 0;              ///< Byte offset of the disk in the image.
  std::uint64_t length = 0;                   ///< Bytes; 0: to the end of the image.
  GuestRamView ram = GuestRamView::whole;
};

/// A host storage service and the paravisor that uses it. Members are destroyed in reverse:
/// the paravisor stops before its host service goes.
struct GuestDisk {
  std::unique_ptr<vmm::HostStorageService> host;
  std::unique_ptr<vmm::Paravisor> paravisor;
};

/// A card with its PF manager, and the factory of what runs on it. Built in steps so a caller
/// can name the step that failed: open_card() (or attach()), discover_pf(), enable_vfs();
/// open() runs the three. Host services and paravisors made by a stack must be destroyed
/// before it.
///
/// Threading: one thread builds the stack; what it assembles follows its own contracts.
class Stack {
 public:
  /// Opens config.card with config.card_options; the stack owns the card.
  /// Errors: those of fpga::open_card (invalid_argument, unavailable, the backend's).
  static Result<std::unique_ptr<Stack>> open_card(const StackConfig& config);
  /// A stack on a card the caller owns and keeps alive longer (a test fixture's card).
  static std::unique_ptr<Stack> attach(fpga::Card& card, const StackConfig& config);
  /// open_card(), discover_pf() and enable_vfs(); the first error is returned as is.
  static Result<std::unique_ptr<Stack>> open(const StackConfig& config);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;

  /// Finds the card's PF manager. Errors: those of sriov::PfManager::discover.
  Status discover_pf();
  /// Enables the VFs of config().vfs, or of `plan` (after discover_pf()); nothing when the
  /// plan asks for none. Errors: those of PfManager::enable_vfs / enable_vfs_even /
  /// disable_vfs.
  Status enable_vfs();
  Status enable_vfs(const VfPlan& plan);

  fpga::Card& card() noexcept { return *card_; }
  /// The PF manager; discover_pf() must have succeeded.
  sriov::PfManager& pf() noexcept {
    assert(pf_.has_value() && "Stack::pf() before discover_pf()");
    return *pf_;
  }
  const StackConfig& config() const noexcept { return config_; }
  /// VF `index` of the card. Errors: not_found (not enabled).
  Result<fpga::Function*> vf(unsigned index);

  /// The host service settings of one disk: config().host with the image, the slice and the
  /// guest RAM of `spec` filled in.
  vmm::HostServiceConfig host_config(const vmm::GuestMemory& memory, const DiskSpec& spec) const;
  /// Starts a host storage service. Errors: those of HostStorageService::start.
  static Result<std::unique_ptr<vmm::HostStorageService>> start_host_service(
      const vmm::HostServiceConfig& config);
  /// A paravisor for `memory` on `vf` (nullptr: host path only). The one place keel creates a
  /// paravisor. Errors: those of Paravisor::create.
  Result<std::unique_ptr<vmm::Paravisor>> create_paravisor(fpga::Function* vf,
                                                           vmm::GuestMemory& memory,
                                                           vmm::HostStorage& host,
                                                           const vmm::ParavisorConfig& config);
  /// A host service and a paravisor for one guest disk, with config().paravisor or `config`.
  /// Errors: those of start_host_service(), vf() and create_paravisor(), as they are.
  Result<GuestDisk> assemble(vmm::GuestMemory& memory, const DiskSpec& spec);
  Result<GuestDisk> assemble(vmm::GuestMemory& memory, const DiskSpec& spec,
                             const vmm::ParavisorConfig& config);
  /// The NVMe driver on `vf`. The one place keel opens a controller.
  /// Errors: those of drivers::nvme::Controller::open.
  Result<std::unique_ptr<drivers::nvme::Controller>> open_controller(
      fpga::Function& vf, const drivers::nvme::ControllerConfig& config = {});

 private:
  explicit Stack(const StackConfig& config) : config_(config) {}
  StackConfig config_;
  std::unique_ptr<fpga::Card> owned_card_;
  fpga::Card* card_ = nullptr;
  std::optional<sriov::PfManager> pf_;
};

/// Where scratch disk images go: /dev/shm when there is one (benchmarks then measure keel, not
/// the disk under /tmp), else the temp directory.
std::filesystem::path scratch_dir();

/// A fresh disk-image path, "<dir>/keel-<tag>-<pid>-<n>.img": unique in this process and across
/// processes, with any stale file at it removed. The caller removes the file when done, after
/// the card that maps it is gone (or holds a ScratchImage).
std::string scratch_image_path(std::string_view tag, const std::filesystem::path& dir = scratch_dir());

/// A scratch_image_path() whose file is removed when this goes: declare it before (destroy it
/// after) the card or stack that maps the image.
class ScratchImage {
 public:
  explicit ScratchImage(std::string_view tag, const std::filesystem::path& dir = scratch_dir())
      : path_(scratch_image_path(tag, dir)) {}
  ~ScratchImage();
  ScratchImage(const ScratchImage&) = delete;
  ScratchImage& operator=(const ScratchImage&) = delete;
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

}  // namespace keel::stack
