// The NBD server's device in production: the paravisor, driven by an in-process virtio-blk
// guest driver exactly as a guest kernel would drive it.
#include "keel/vmm/guest_driver.h"
#include "keel/vmm/nbd_server.h"
#include "nbd_device.h"

namespace keel::vmm {

namespace {

class GuestDevice final : public NbdDevice {
 public:
  /// Queue `q` of the guest driver (shared by the server's workers, one queue each).
  GuestDevice(Paravisor& pv, std::shared_ptr<GuestDriver> guest, unsigned q)
      : pv_(pv), guest_(std::move(guest)), q_(q) {}
  // The guest driver detaches before the server closes the call fd it signals.
  ~GuestDevice() override = default;

  std::uint64_t capacity_sectors() const noexcept override { return pv_.capacity_sectors(); }
  std::uint64_t alloc(std::uint64_t bytes, std::uint64_t align) override {
    return guest_->alloc(bytes, align);
  }
  void set_call_fd(int fd) override { pv_.set_call_fd(q_, fd); }
  /// Starts the paravisor (every queue): the server calls it on its first device only.
  Status start() override { return pv_.start(); }
  unsigned free_descriptors() const noexcept override { return guest_->free_descriptors(q_); }
  Result<std::uint16_t> submit(std::uint32_t type, std::uint64_t sector,
                               std::span<const DataSeg> data) override {
    return guest_->submit(q_, type, sector, data);
  }
  unsigned reap(std::span<GuestCompletion> out) override { return guest_->reap(q_, out); }
  void kick() override { guest_->kick(q_); }

 private:
  Paravisor& pv_;
  std::shared_ptr<GuestDriver> guest_;
  unsigned q_;
};

}  // namespace

Result<std::unique_ptr<NbdServer>> NbdServer::create(const NbdServerConfig& config, Paravisor& pv,
                                                     GuestMemory& memory) {
  if (pv.capacity_sectors() == 0) {
    return make_error(Errc::invalid_argument, "the paravisor's disk has no capacity");
  }
  // Checked before the guest driver attaches: a bad configuration leaves the paravisor alone.
  if (Status s = check_nbd_config(config, memory); !s.ok()) return s.error();
  const unsigned queues = config.queues;
  auto g = GuestDriver::attach(pv, memory, queues, config.virtqueue_size, 0);
  if (!g) return g.error();
  std::shared_ptr<GuestDriver> guest = std::move(g).value();
  std::vector<std::unique_ptr<NbdDevice>> devices;
  for (unsigned q = 0; q < queues; ++q)
    devices.push_back(std::make_unique<GuestDevice>(pv, guest, q));
  return create(config, std::move(devices), memory);
}

}  // namespace keel::vmm
