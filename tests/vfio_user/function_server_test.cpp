// fpga/vfio_user_server: a VF of the reference card served over vfio-user, driven by a client
// written against the spec: negotiation, device and region info, BAR0 through messages, MSI-X
// eventfds, DMA windows from a memfd, FLR, and every refusal with its errno.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "keel/fpga/vfio_user/config_space.h"
#include "keel/fpga/vfio_user/function_server.h"
#include "keel/stack/stack.h"

namespace keel::vfio_user {
namespace {

using std::chrono::milliseconds;

class FunctionServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    stack::StackConfig sc;
    sc.card = "model";
    sc.card_options.storage_bytes = 16ull << 20;
    sc.vfs.count = 1;
    auto s = stack::Stack::open(sc);
    ASSERT_TRUE(s.ok()) << s.error().message;
    stack_ = std::move(s).value();
    auto vf = stack_->vf(0);
    ASSERT_TRUE(vf.ok());
    vf_ = vf.value();
    server_ = std::make_unique<FunctionServer>(*vf_);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    client_ = std::make_unique<Channel>(UniqueFd(sv[0]));
    served_ = std::make_unique<Channel>(UniqueFd(sv[1]));
  }

  // One command: send, let the server handle it, return the reply.
  Message call(Command c, std::span<const std::byte> payload, std::span<const int> fds = {}) {
    Header h{};
    h.msg_id = ++id_;
    h.command = c;
    EXPECT_TRUE(client_->send(h, payload, fds).ok());
    auto in = served_->receive(milliseconds(1000));
    EXPECT_TRUE(in.ok());
    if (in.ok()) {
      EXPECT_TRUE(server_->handle(*served_, *in).ok());
    }
    auto out = client_->receive(milliseconds(1000));
    EXPECT_TRUE(out.ok());
    if (!out.ok()) return {};
    EXPECT_EQ(out->header.msg_id, id_);
    EXPECT_EQ(out->header.flags & kFlagTypeMask, kFlagTypeReply);
    return std::move(out).value();
  }
  template <typename T>
  Message call(Command c, const T& v, std::span<const int> fds = {}) {
    return call(c, std::as_bytes(std::span(&v, 1)), fds);
  }
  template <typename T>
  static T as(const Message& m, std::size_t off = 0) {
    T v{};
    EXPECT_GE(m.payload.size(), off + sizeof v);
    if (m.payload.size() >= off + sizeof v) {
      std::memcpy(&v, m.payload.data() + off, sizeof v);
    }
    return v;
  }
  static std::uint32_t err(const Message& m) {
    return (m.header.flags & kFlagError) != 0 ? m.header.error : 0;
  }
  void negotiate_version() {
    Capabilities caps;
    caps.max_msg_fds = 8;
    caps.max_data_xfer_size = 4096;
    const Message r = call(Command::version, std::span<const std::byte>(encode_version(caps)));
    ASSERT_EQ(err(r), 0u);
    auto agreed = decode_version(r.payload);
    ASSERT_TRUE(agreed.ok());
    EXPECT_EQ(agreed->caps.max_msg_fds, 8u);
    EXPECT_EQ(agreed->caps.max_data_xfer_size, 4096u);
  }

  /// SET_IRQS `s` with the write end of a pipe where an eventfd belongs: the reply's errno.
  std::uint32_t set_irqs_with_a_pipe(const IrqSet& s) {
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2 failed";
      return 0;
    }
    const std::uint32_t e = err(call(Command::device_set_irqs, s, {&pipe_fds[1], 1}));
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return e;
  }

  std::unique_ptr<stack::Stack> stack_;
  fpga::Function* vf_ = nullptr;
  std::unique_ptr<FunctionServer> server_;
  std::unique_ptr<Channel> client_, served_;
  std::uint16_t id_ = 0;
};

TEST_F(FunctionServerTest, VersionComesFirstThenDeviceAndRegionInfo) {
  const DeviceInfo ask{sizeof(DeviceInfo), 0, 0, 0};
  EXPECT_EQ(err(call(Command::device_get_info, ask)), std::uint32_t{EINVAL});
  negotiate_version();
  const DeviceInfo info = as<DeviceInfo>(call(Command::device_get_info, ask));
  EXPECT_EQ(info.flags, kDeviceReset | kDevicePci);
  EXPECT_EQ(info.num_regions, kPciNumRegions);
  EXPECT_EQ(info.num_irqs, kPciNumIrqs);

  RegionInfo q{};
  q.argsz = sizeof q;
  q.index = kPciBar0Region;
  const RegionInfo bar = as<RegionInfo>(call(Command::device_get_region_info, q));
  EXPECT_EQ(bar.size, vf_->bar_size());
  EXPECT_EQ(bar.flags, kRegionRead | kRegionWrite);
  q.index = kPciNumRegions;
  EXPECT_EQ(err(call(Command::device_get_region_info, q)), std::uint32_t{EINVAL});
}

TEST_F(FunctionServerTest, Bar0ReadsAndWritesReachTheController) {
  negotiate_version();
  const RegionAccess vs{0x8, kPciBar0Region, 4};  // NVMe VS
  const Message r = call(Command::region_read, vs);
  ASSERT_EQ(err(r), 0u);
  EXPECT_EQ(as<std::uint32_t>(r, sizeof vs), vf_->read32(0x8));
  EXPECT_EQ(as<std::uint32_t>(r, sizeof vs), 0x00010400u);  // NVMe 1.4
  const RegionAccess cap{0x0, kPciBar0Region, 8};
  EXPECT_EQ(as<std::uint64_t>(call(Command::region_read, cap), sizeof cap), vf_->read64(0));

  // AQA (0x24): written through a message, read back directly.
  std::vector<std::byte> w(sizeof(RegionAccess) + 4);
  const RegionAccess aqa{0x24, kPciBar0Region, 4};
  const std::uint32_t value = 0x001f001f;
  std::memcpy(w.data(), &aqa, sizeof aqa);
  std::memcpy(w.data() + sizeof aqa, &value, 4);
  EXPECT_EQ(err(call(Command::region_write, std::span<const std::byte>(w))), 0u);
  EXPECT_EQ(vf_->read32(0x24), value);

  const RegionAccess odd{0x8, kPciBar0Region, 3};
  EXPECT_EQ(err(call(Command::region_read, odd)), std::uint32_t{EINVAL});
  const RegionAccess past{vf_->bar_size() - 4, kPciBar0Region, 8};
  EXPECT_EQ(err(call(Command::region_read, past)), std::uint32_t{EINVAL});
  const RegionAccess big{0, kPciBar0Region, 8192};  // over the agreed 4096-byte transfer
  EXPECT_EQ(err(call(Command::region_read, big)), std::uint32_t{EINVAL});
  const RegionAccess rom{0, kPciRomRegion, 4};  // a region with nothing behind it
  EXPECT_EQ(err(call(Command::region_read, rom)), std::uint32_t{EINVAL});
}

TEST_F(FunctionServerTest, MsixTakesOneEventfdPerVector) {
  negotiate_version();
  IrqInfo q{};
  q.argsz = sizeof q;
  q.index = kPciMsixIrq;
  const IrqInfo info = as<IrqInfo>(call(Command::device_get_irq_info, q));
  EXPECT_EQ(info.count, vf_->num_vectors());
  EXPECT_NE(info.flags & kIrqEventfd, 0u);

  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  const IrqSet one{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciMsixIrq, 0, 1};
  EXPECT_EQ(err(call(Command::device_set_irqs, one, {&efd, 1})), 0u);
  const IrqSet two{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciMsixIrq, 0, 2};
  EXPECT_EQ(err(call(Command::device_set_irqs, two, {&efd, 1})), std::uint32_t{EINVAL});
  const IrqSet past{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciMsixIrq,
                    info.count, 1};
  EXPECT_EQ(err(call(Command::device_set_irqs, past, {&efd, 1})), std::uint32_t{EINVAL});
  const IrqSet intx{sizeof(IrqSet), kIrqSetDataNone | kIrqSetActionMask, kPciIntxIrq, 0, 1};
  EXPECT_EQ(err(call(Command::device_set_irqs, intx)), std::uint32_t{EINVAL});
  // The card signals these from its own thread: a pipe in place of an eventfd could stall it.
  EXPECT_EQ(set_irqs_with_a_pipe(one), std::uint32_t{EINVAL});
  ::close(efd);
}

// The request IRQ (index 4): one eventfd, signalled while the function is off the bus and
// drained when it is back; a client that hands it over while the function is off finds it
// signalled at once.
TEST_F(FunctionServerTest, TheRequestIrqIsSignalledWhileTheFunctionIsOffTheBus) {
  negotiate_version();
  IrqInfo q{};
  q.argsz = sizeof q;
  q.index = kPciReqIrq;
  const IrqInfo info = as<IrqInfo>(call(Command::device_get_irq_info, q));
  EXPECT_EQ(info.count, 1u);
  EXPECT_NE(info.flags & kIrqEventfd, 0u);
  auto level = [](int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  };

  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  const IrqSet set{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciReqIrq, 0, 1};
  EXPECT_EQ(err(call(Command::device_set_irqs, set, {&efd, 1})), 0u);
  EXPECT_FALSE(level(efd));
  server_->set_unplugged(true);
  EXPECT_TRUE(level(efd)) << "off the bus";
  EXPECT_TRUE(level(efd)) << "a level: looking does not clear it";
  server_->set_unplugged(false);
  EXPECT_FALSE(level(efd)) << "back";

  server_->set_unplugged(true);
  const int late = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  EXPECT_EQ(err(call(Command::device_set_irqs, set, {&late, 1})), 0u);
  EXPECT_TRUE(level(late)) << "handed over while the function is off";
  server_->set_unplugged(false);
  EXPECT_FALSE(level(late));

  // One vector, eventfds only, TRIGGER only.
  const IrqSet two{sizeof(IrqSet), kIrqSetDataEventfd | kIrqSetActionTrigger, kPciReqIrq, 0, 2};
  const int both[2] = {efd, late};
  EXPECT_EQ(err(call(Command::device_set_irqs, two, both)), std::uint32_t{EINVAL});
  const IrqSet mask{sizeof(IrqSet), kIrqSetDataNone | kIrqSetActionMask, kPciReqIrq, 0, 1};
  EXPECT_EQ(err(call(Command::device_set_irqs, mask)), std::uint32_t{EINVAL});
  EXPECT_EQ(set_irqs_with_a_pipe(set), std::uint32_t{EINVAL});
  // None: dropped; the function going off the bus then signals nothing.
  const IrqSet none{sizeof(IrqSet), kIrqSetDataNone | kIrqSetActionTrigger, kPciReqIrq, 0, 0};
  EXPECT_EQ(err(call(Command::device_set_irqs, none)), 0u);
  server_->set_unplugged(true);
  EXPECT_FALSE(level(late));
  ::close(efd);
  ::close(late);
}

TEST_F(FunctionServerTest, DmaWindowsComeFromTheClientsMemory) {
  negotiate_version();
  const int mem = ::memfd_create("vfio-user-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_EQ(::ftruncate(mem, 4 << 20), 0);
  const DmaMap map{sizeof(DmaMap), kDmaRead | kDmaWrite, 0, 0x200000, 2 << 20};
  // Not sealed: the client could shrink it under the card.
  EXPECT_EQ(err(call(Command::dma_map, map, {&mem, 1})), std::uint32_t{EINVAL});
  ASSERT_EQ(::fcntl(mem, F_ADD_SEALS, F_SEAL_SHRINK), 0);
  // Longer than the file: the card would fault on the tail.
  const DmaMap past_end{sizeof(DmaMap), kDmaRead | kDmaWrite, 2 << 20, 0x800000, 4 << 20};
  EXPECT_EQ(err(call(Command::dma_map, past_end, {&mem, 1})), std::uint32_t{EINVAL});
  EXPECT_EQ(err(call(Command::dma_map, map, {&mem, 1})), 0u);
  EXPECT_EQ(err(call(Command::dma_map, map, {&mem, 1})), std::uint32_t{EEXIST});  // same window
  EXPECT_EQ(err(call(Command::dma_map, map)), std::uint32_t{EINVAL});             // no fd
  const DmaMap odd{sizeof(DmaMap), kDmaRead, 0, 0x1234, 4096};
  EXPECT_EQ(err(call(Command::dma_map, odd, {&mem, 1})), std::uint32_t{EINVAL});

  const DmaUnmap wrong{sizeof(DmaUnmap), 0, 0x200000, 4096};
  EXPECT_EQ(err(call(Command::dma_unmap, wrong)), std::uint32_t{ENOENT});
  const DmaUnmap right{sizeof(DmaUnmap), 0, 0x200000, 2 << 20};
  const Message r = call(Command::dma_unmap, right);
  EXPECT_EQ(err(r), 0u);
  EXPECT_EQ(as<DmaUnmap>(r).address, 0x200000u);
  EXPECT_EQ(server_->counters().dma_maps, 1u);
  EXPECT_EQ(server_->counters().dma_unmaps, 1u);
  EXPECT_EQ(server_->windows(), 0u);
  EXPECT_EQ(err(call(Command::dma_map, map, {&mem, 1})), 0u);
  server_->client_gone();  // a client that goes leaves nothing mapped
  EXPECT_EQ(server_->windows(), 0u);
  ::close(mem);
}

TEST_F(FunctionServerTest, ConfigurationSpaceSaysWhichFunctionThisIs) {
  negotiate_version();
  RegionInfo ri{};
  ri.argsz = sizeof ri;
  ri.index = kPciConfigRegion;
  const Message info = call(Command::device_get_region_info, ri);
  ASSERT_EQ(err(info), 0u);
  EXPECT_EQ(as<RegionInfo>(info).size, kConfigSpaceBytes);
  const RegionAccess all{0, kPciConfigRegion, static_cast<std::uint32_t>(kConfigSpaceBytes)};
  const Message r = call(Command::region_read, all);
  ASSERT_EQ(err(r), 0u);
  ASSERT_EQ(r.payload.size(), sizeof all + kConfigSpaceBytes);
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(r.payload.data()) + sizeof all;
  EXPECT_EQ(bytes[0x0B], 0x01);  // mass storage
  EXPECT_EQ(bytes[0x0A], 0x08);  // NVM
  EXPECT_EQ(bytes[0x09], 0x02);  // NVM Express
  auto id = parse_config_space(std::span(bytes, kConfigSpaceBytes));
  ASSERT_TRUE(id.ok()) << id.error().message;
  EXPECT_EQ(id->number, 1u) << "VF 0 is function 1";
  EXPECT_FALSE(id->is_pf());
  // Read-only: a write is taken and changes nothing; past the end is refused.
  std::byte w[sizeof(RegionAccess) + 2];
  const RegionAccess cmd{0x04, kPciConfigRegion, 2};
  std::memcpy(w, &cmd, sizeof cmd);
  w[sizeof cmd] = std::byte{0xff};
  w[sizeof cmd + 1] = std::byte{0xff};
  EXPECT_EQ(err(call(Command::region_write, std::span<const std::byte>(w))), 0u);
  EXPECT_EQ(server_->counters().config_writes, 1u);
  const Message again = call(Command::region_read, all);
  EXPECT_EQ(std::memcmp(again.payload.data(), r.payload.data(), r.payload.size()), 0);
  const RegionAccess past{250, kPciConfigRegion, 8};
  EXPECT_EQ(err(call(Command::region_read, past)), std::uint32_t{EINVAL});
}

TEST(ConfigSpace, OnlyAKeelFunctionParses) {
  FunctionIdentity pf;
  pf.number = 0;
  pf.max_vfs = 8;
  pf.num_vfs = 3;
  auto c = build_config_space(pf);
  auto id = parse_config_space(c);
  ASSERT_TRUE(id.ok());
  EXPECT_TRUE(id->is_pf());
  EXPECT_EQ(id->max_vfs, 8u);
  EXPECT_EQ(id->num_vfs, 3u);
  auto other = c;
  other[0] = 0x86;  // another vendor
  EXPECT_EQ(parse_config_space(other).error().code, Errc::invalid_argument);
  auto no_cap = c;
  no_cap[0x34] = 0;
  EXPECT_EQ(parse_config_space(no_cap).error().code, Errc::invalid_argument);
  auto loop = c;
  loop[kKeelCapOffset] = 0x05;                // not the keel capability...
  loop[kKeelCapOffset + 1] = kKeelCapOffset;  // ...pointing at itself
  EXPECT_EQ(parse_config_space(loop).error().code, Errc::invalid_argument);
  auto liar = c;
  liar[0x02] = static_cast<std::uint8_t>(kPciDeviceVf);  // a VF's ID with the PF's number
  liar[0x03] = static_cast<std::uint8_t>(kPciDeviceVf >> 8);
  EXPECT_EQ(parse_config_space(liar).error().code, Errc::invalid_argument);
  EXPECT_EQ(parse_config_space(std::span(c.data(), 64)).error().code, Errc::invalid_argument);
}

// The NIC's functions: an Ethernet controller with the NIC's device IDs and function numbers
// (the NIC PF 65, NIC VF n 66 + n); an ID that contradicts the number does not parse.
TEST(ConfigSpace, NicFunctionsAreEthernetControllers) {
  FunctionIdentity pf;
  pf.number = kNicPfNumber;
  pf.max_vfs = 8;
  pf.num_vfs = 2;
  const auto c = build_config_space(pf);
  EXPECT_EQ(c[0x0B], 0x02);  // network controller
  EXPECT_EQ(c[0x0A], 0x00);  // Ethernet
  EXPECT_EQ(c[0x02] | c[0x03] << 8, kPciDeviceNicPf);
  auto id = parse_config_space(c);
  ASSERT_TRUE(id.ok()) << id.error().message;
  EXPECT_TRUE(id->is_pf());
  EXPECT_TRUE(id->is_nic());
  EXPECT_EQ(id->num_vfs, 2u);
  FunctionIdentity vf;
  vf.number = kNicPfNumber + 1 + 3;
  const auto v = build_config_space(vf);
  EXPECT_EQ(v[0x02] | v[0x03] << 8, kPciDeviceNicVf);
  auto vid = parse_config_space(v);
  ASSERT_TRUE(vid.ok()) << vid.error().message;
  EXPECT_FALSE(vid->is_pf());
  EXPECT_TRUE(vid->is_nic());
  EXPECT_EQ(vid->vf_index(), 3u);
  FunctionIdentity nvme_vf;
  nvme_vf.number = 4;
  EXPECT_FALSE(nvme_vf.is_nic());
  EXPECT_EQ(nvme_vf.vf_index(), 3u);
  auto liar = v;  // an NVMe VF's ID with a NIC VF's number
  liar[0x02] = static_cast<std::uint8_t>(kPciDeviceVf);
  liar[0x03] = static_cast<std::uint8_t>(kPciDeviceVf >> 8);
  EXPECT_EQ(parse_config_space(liar).error().code, Errc::invalid_argument);
}

// A client that goes (its process died) leaves a reset function: an enabled controller is
// disabled, as VFIO resets a device a process lets go of.
TEST_F(FunctionServerTest, AClientThatGoesLeavesAResetFunction) {
  negotiate_version();
  fpga::Card& card = stack_->card();
  vf_->write32(0x14, 1);  // CC.EN with an unset admin queue: the controller still comes up
  const bool up = fpga::poll_until(card, std::chrono::milliseconds(100),
                                   [&] { return (vf_->read32(0x1C) & 1u) != 0; });
  server_->client_gone();
  EXPECT_EQ(server_->counters().released, 1u);
  if (up) {
    EXPECT_TRUE(fpga::poll_until(card, std::chrono::milliseconds(100), [&] {
      return (vf_->read32(0x1C) & 1u) == 0;
    })) << "CSTS.RDY still set: the function was not reset";
  }
  EXPECT_EQ(vf_->read32(0x14) & 1u, 0u) << "CC.EN still set: the function was not reset";
}

TEST_F(FunctionServerTest, ResetIsAnFlr) {
  negotiate_version();
  EXPECT_EQ(err(call(Command::device_reset, std::span<const std::byte>())), 0u);
  EXPECT_EQ(server_->counters().resets, 1u);
  EXPECT_EQ(err(call(Command::dma_read, std::span<const std::byte>())), std::uint32_t{ENOTSUP});
}

}  // namespace
}  // namespace keel::vfio_user
