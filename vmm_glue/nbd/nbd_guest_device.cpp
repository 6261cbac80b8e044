// The NBD server's device in production: the paravisor, driven by an in-process virtio-blk
// guest driver exactly as a guest kernel would drive it.
#include "keel/vmm/guest_driver.h"
#include "keel/vmm/nbd_server.h"
#include "nbd_device.h"

namespace keel::vmm {

namespace {

class GuestDevice final : public NbdDevice {
 public:
  GuestDevice(Paravisor& pv, std::unique_ptr<GuestDriver> guest)
      : pv_(pv), guest_(std::move(guest)) {}
  // The guest driver detaches before the server closes the call fd it signals.
  ~GuestDevice() override = default;

  std::uint64_t capacity_sectors() const noexcept override { return pv_.capacity_sectors(); }
  std::uint64_t alloc(std::uint64_t bytes, std::uint64_t align) override {
    return guest_->alloc(bytes, align);
  }
  void set_call_fd(int fd) override { pv_.set_call_fd(0, fd); }
  Status start() override { return pv_.start(); }
  unsigned free_descriptors() const noexcept override { return guest_->free_descriptors(0); }
  Result<std::uint16_t> submit(std::uint32_t type, std::uint64_t sector,
                               std::span<const DataSeg> data) override {
    return guest_->submit(0, type, sector, data);
  }
  unsigned reap(std::span<GuestCompletion> out) override { return guest_->reap(0, out); }
  void kick() override { guest_->kick(0); }

 private:
  Paravisor& pv_;
  std::unique_ptr<GuestDriver> guest_;
};

}  // namespace

Result<std::unique_ptr<NbdServer>> NbdServer::create(const NbdServerConfig& config, Paravisor& pv,
                                                     GuestMemory& memory) {
  if (pv.capacity_sectors() == 0) {
    return make_error(Errc::invalid_argument, "the paravisor's disk has no capacity");
  }
  // Checked before the guest driver attaches: a bad configuration leaves the paravisor alone.
  if (Status s = check_nbd_config(config, memory); !s.ok()) return s.error();
  auto g = GuestDriver::attach(pv, memory, 1, config.virtqueue_size, 0);
  if (!g) return g.error();
  return create(config, std::make_unique<GuestDevice>(pv, std::move(g).value()), memory);
}

}  // namespace keel::vmm
