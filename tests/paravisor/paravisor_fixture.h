// Guests on a card: each with its own memory, VF, host-service instance, paravisor and
// in-process virtio-blk driver, assembled by keel::stack. The card is lockstep; every wait
// steps it.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "card_fixture.h"
#include "keel/stack/stack.h"
#include "keel/vmm/guest_driver.h"

namespace keel::testing {

namespace vmm = keel::vmm;
namespace blk = keel::virtio::blk;

struct Guest {
  std::unique_ptr<vmm::GuestMemory> mem;
  std::unique_ptr<vmm::HostStorageService> host;
  std::unique_ptr<vmm::Paravisor> pv;
  std::unique_ptr<vmm::GuestDriver> drv;
  unsigned vf = 0;
  std::uint64_t slice_lbas = 0;
};

/// Card + guests, used by test fixtures of either parameter type.
class ParavisorTest {
 public:
  static constexpr std::uint64_t kSliceLbas = 32768;  // 16 MiB per guest

  /// Opens a lockstep simulated card on a fresh image. False (the test should skip) for a
  /// real board: the host path needs the card's disk image.
  bool open_backend(const std::string& backend) {
    // A card served by keel-card (tests/vfio_user/with_keel_card.py) whose image, which the
    // host path uses, is KEEL_CARD_IMAGE; it belongs to keel-card and stays.
    const char* remote_image = std::getenv("KEEL_CARD_IMAGE");
    const bool remote = backend.rfind("vfio-user:", 0) == 0 && remote_image != nullptr;
    if (backend != "model" && backend != "sim" && !remote) return false;
    image_ = remote ? remote_image
                    : stack::scratch_image_path("pv", std::filesystem::temp_directory_path());
    own_image_ = !remote;
    stack::StackConfig sc;
    sc.card = backend;
    sc.card_options.image_path = image_;
    sc.card_options.storage_bytes = 8 * kSliceLbas * 512;
    sc.card_options.lockstep = true;
    auto s = stack::Stack::open_card(sc);
    EXPECT_TRUE(s.ok()) << to_string(s.error());
    if (!s.ok()) return false;
    stack_ = std::move(s).value();
    card_ = &stack_->card();
    const Status pf = stack_->discover_pf();
    EXPECT_TRUE(pf.ok()) << to_string(pf.error());
    return pf.ok();
  }
  virtual ~ParavisorTest() {
    guests_.clear();
    card_ = nullptr;
    stack_.reset();
    if (own_image_ && !image_.empty()) std::filesystem::remove(image_);
  }

  /// `n` guests on VFs 0..n-1 (VFs enabled with `queues` queue pairs each); guests from
  /// `vf_guests` on start without a VF (fallback only). A confidential guest's host service is
  /// started without guest RAM: it sees only the pool its paravisor shares with it.
  void make_guests(unsigned n, vmm::ParavisorConfig cfg = {}, std::uint64_t mem_bytes = 32u << 20,
                   unsigned vf_guests = ~0u) {
    stack::VfPlan plan;
    plan.disable_first = true;  // a card in another process keeps the last test's VFs
    plan.resources.resize(n);
    for (unsigned i = 0; i < n; ++i) {
      plan.resources[i].queues = std::max(1u, cfg.queues);
      plan.resources[i].slice_base = i * kSliceLbas;
      plan.resources[i].slice_lbas = kSliceLbas;
    }
    KEEL_ASSERT_OK(stack_->enable_vfs(plan));
    for (unsigned i = 0; i < n; ++i) {
      Guest g;
      g.vf = i;
      g.slice_lbas = kSliceLbas;
      auto mem = vmm::GuestMemory::create(mem_bytes);
      KEEL_ASSERT_OK(mem);
      g.mem = std::move(mem).value();
      stack::DiskSpec disk;
      if (i < vf_guests) disk.vf = i;
      disk.base_offset = i * kSliceLbas * 512;
      disk.length = kSliceLbas * 512;
      disk.ram = cfg.confidential ? stack::GuestRamView::none : stack::GuestRamView::whole;
      cfg.capacity_sectors = kSliceLbas;
      auto d = stack_->assemble(*g.mem, disk, cfg);
      KEEL_ASSERT_OK(d);
      g.host = std::move(d->host);
      g.pv = std::move(d->paravisor);
      auto drv = vmm::GuestDriver::attach(*g.pv, *g.mem, cfg.queues, 128, 1u << 20);
      KEEL_ASSERT_OK(drv);
      g.drv = std::move(drv).value();
      guests_.push_back(std::move(g));
    }
  }

  /// Whether g's host service maps any of g's RAM (compares the backing files).
  static bool host_maps_guest_ram(const Guest& g) {
    for (const auto& h : g.host->regions()) {
      for (const auto& r : g.mem->regions()) {
        struct stat st {};
        EXPECT_EQ(fstat(r.fd, &st), 0);
        if (static_cast<std::uint64_t>(st.st_dev) == h.dev &&
            static_cast<std::uint64_t>(st.st_ino) == h.ino) {
          return true;
        }
      }
    }
    return false;
  }

  /// One round: every paravisor once, then one card step. A card in another process runs on
  /// its own: a round there lets it have the CPU a little (the bounds in turns were set for a
  /// lockstep card, where a turn is a card step).
  void turn() {
    for (auto& g : guests_) g.pv->run_once();
    if (card_->lockstep()) {
      card_->step(1);
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  /// Runs until `ids` of guest g (queue q) completed; returns their statuses by id.
  /// Bounded by turns of the lockstep card. A turn after which g's requests wait only on the
  /// host service (io_uring on a real file: a flush is an fsync, seconds on a busy disk)
  /// sleeps until the service completes one (wait_for_host); the kernel gets kHostWait.
  std::map<std::uint16_t, std::uint8_t> await(Guest& g, std::vector<std::uint16_t> ids,
                                              unsigned q = 0, unsigned max_turns = 2'000'000) {
    std::map<std::uint16_t, std::uint8_t> got;
    vmm::GuestCompletion c[64];
    for (unsigned t = 0; got.size() < ids.size() && t < max_turns; ++t) {
      turn();
      const unsigned n = g.drv->reap(q, c);
      for (unsigned i = 0; i < n; ++i) got[c[i].id] = c[i].status;
      if (n == 0 && !host_progressed(g)) break;
    }
    EXPECT_EQ(got.size(), ids.size()) << "requests did not complete";
    return got;
  }

  /// How long one request may stay in the kernel (a real file, a shared machine).
  static constexpr std::chrono::seconds kHostWait{60};

  /// After a turn that completed nothing: false (and a test failure) if g's requests wait only
  /// on the host service and it completed none of them within kHostWait.
  static bool host_progressed(Guest& g) {
    if (g.pv->wait_for_host(kHostWait) != vmm::Paravisor::HostWait::timed_out) return true;
    ADD_FAILURE() << "the host storage service completed nothing in " << kHostWait.count() << " s";
    return false;
  }

  std::uint8_t run(Guest& g, std::uint32_t type, std::uint64_t sector,
                   std::vector<vmm::DataSeg> data, unsigned q = 0) {
    auto id = g.drv->submit(q, type, sector, data);
    EXPECT_TRUE(id.ok());
    if (!id.ok()) return 0xFF;
    g.drv->kick(q);
    auto st = await(g, {*id}, q);
    return st.count(*id) != 0 ? st[*id] : 0xFF;
  }

  std::string image_;
  bool own_image_ = true;
  std::unique_ptr<stack::Stack> stack_;
  fpga::Card* card_ = nullptr;  ///< stack_'s card
  std::vector<Guest> guests_;
};

}  // namespace keel::testing
