// The user-mode NVMe driver on every backend: bring-up, identify, verified IO through PRP lists
// with random sizes and alignments, queue pairs per thread, interrupts, request errors.
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "driver_fixture.h"

namespace keel::testing {
namespace {

using drv::IoErrc;

class Driver : public DriverTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    bring_up();
    ASSERT_NE(ctrl_, nullptr);
  }
};

TEST_P(Driver, BringUpAndIdentify) {
  EXPECT_EQ(ctrl_->block_bytes(), 512u);
  EXPECT_EQ(ctrl_->block_count(), pf().read64(regs::pf::STORAGE_LBAS) / 2);
  EXPECT_EQ(ctrl_->max_transfer_bytes(), 128u * 1024);
  EXPECT_EQ(ctrl_->io_queue_count(), 3u);
  EXPECT_EQ(ctrl_->identify().nn, 1u);
  EXPECT_EQ(ctrl_->identify().cntlid, 1);
  EXPECT_EQ(ctrl_->namespace_info().nsze, ctrl_->block_count());
}

TEST_P(Driver, VerifiedIoWithRandomSizesAndAlignments) {
  auto qp = ctrl_->create_queue_pair({.entries = 64});
  KEEL_ASSERT_OK(qp);
  auto buf = vf_->alloc_dma(1 << 20);
  KEEL_ASSERT_OK(buf);
  std::mt19937_64 rng(77);
  for (int i = 0; i < 150; ++i) {
    const std::uint32_t blocks = 1 + static_cast<std::uint32_t>(rng() % 256);
    const std::uint64_t lba = rng() % (ctrl_->block_count() - blocks);
    const std::size_t bytes = std::size_t{blocks} * 512;
    // A scatter-gather list of up to 3 pieces from different parts of the buffer; only the
    // first may start inside a page and only the last may end inside one.
    std::vector<drv::Segment> segs;
    std::vector<std::byte*> hosts;
    std::size_t left = bytes;
    std::size_t region = 0;
    const unsigned pieces = 1 + static_cast<unsigned>(rng() % 3);
    for (unsigned p = 0; p < pieces && left > 0; ++p, region += 256 * 1024) {
      const std::size_t start = p == 0 ? (rng() % 1024) * 4 : 0;
      std::size_t n = left;
      if (p + 1 < pieces) {
        const std::size_t to_page = 4096 - start % 4096;
        n = std::min(left, to_page + 4096 * (rng() % 8));
        if (n < left && (start + n) % 4096 != 0) n = left;
      }
      segs.push_back({buf->iova() + region + start, static_cast<std::uint32_t>(n)});
      hosts.push_back(buf->data() + region + start);
      left -= n;
    }
    std::vector<std::byte> pattern(bytes);
    fill_pattern(pattern.data(), bytes, lba, static_cast<std::uint32_t>(i));
    std::size_t off = 0;
    for (std::size_t k = 0; k < segs.size(); ++k) {
      std::memcpy(hosts[k], pattern.data() + off, segs[k].bytes);
      off += segs[k].bytes;
    }
    drv::IoStatus st = run(**qp, (*qp)->write(lba, blocks, segs, 1));
    ASSERT_TRUE(st.ok()) << drv::to_string(st) << " at " << i;
    for (std::size_t k = 0; k < segs.size(); ++k) std::memset(hosts[k], 0, segs[k].bytes);
    st = run(**qp, (*qp)->read(lba, blocks, segs, 2));
    ASSERT_TRUE(st.ok()) << drv::to_string(st);
    off = 0;
    for (std::size_t k = 0; k < segs.size(); ++k) {
      ASSERT_EQ(std::memcmp(hosts[k], pattern.data() + off, segs[k].bytes), 0)
          << "request " << i << " piece " << k;
      off += segs[k].bytes;
    }
  }
}

TEST_P(Driver, FlushAndWriteZeroes) {
  auto qp = ctrl_->create_queue_pair();
  KEEL_ASSERT_OK(qp);
  auto buf = vf_->alloc_dma(8192);
  KEEL_ASSERT_OK(buf);
  std::memset(buf->data(), 0x5C, 8192);
  const drv::Segment seg{buf->iova(), 8192};
  ASSERT_TRUE(run(**qp, (*qp)->write(10, 16, {&seg, 1}, 1)).ok());
  ASSERT_TRUE(run(**qp, (*qp)->write_zeroes(12, 4, 2)).ok());
  ASSERT_TRUE(run(**qp, (*qp)->flush(3)).ok());
  ASSERT_TRUE(run(**qp, (*qp)->read(10, 16, {&seg, 1}, 4)).ok());
  for (std::size_t i = 0; i < 8192; ++i) {
    const std::byte want = (i >= 1024 && i < 3072) ? std::byte{0} : std::byte{0x5C};
    ASSERT_EQ(buf->data()[i], want) << i;
  }
}

TEST_P(Driver, BatchedDoorbellsAndDeepQueue) {
  auto qp = ctrl_->create_queue_pair({.entries = 128});
  KEEL_ASSERT_OK(qp);
  auto buf = vf_->alloc_dma(4096);
  KEEL_ASSERT_OK(buf);
  const drv::Segment seg{buf->iova(), 4096};
  for (int i = 0; i < 127; ++i) ASSERT_TRUE((*qp)->read(0, 8, {&seg, 1}, i).ok());
  EXPECT_EQ((*qp)->read(0, 8, {&seg, 1}, 999).code, IoErrc::queue_full);
  (*qp)->commit();
  (*qp)->commit();  // nothing new: no second doorbell
  EXPECT_EQ((*qp)->stats().doorbells, 1u);
  std::vector<drv::Completion> done(128);
  unsigned total = 0;
  while (total < 127) {
    const unsigned n = (*qp)->wait(std::span(done).subspan(total), std::chrono::seconds(1));
    ASSERT_GT(n, 0u);
    total += n;
  }
  std::vector<bool> seen(127);
  for (unsigned i = 0; i < 127; ++i) {
    ASSERT_TRUE(done[i].status.ok());
    seen[done[i].tag] = true;
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), 127);
  EXPECT_EQ((*qp)->outstanding(), 0u);
}

TEST_P(Driver, RequestErrorsAreTyped) {
  auto qp = ctrl_->create_queue_pair();
  KEEL_ASSERT_OK(qp);
  auto buf = vf_->alloc_dma(256 * 1024);
  KEEL_ASSERT_OK(buf);
  const drv::Segment one{buf->iova(), 4096};
  EXPECT_EQ((*qp)->read(0, 0, {&one, 1}, 0).code, IoErrc::invalid);
  EXPECT_EQ((*qp)->read(0, 4, {&one, 1}, 0).code, IoErrc::invalid) << "length mismatch";
  EXPECT_EQ((*qp)->read(ctrl_->block_count() - 4, 8, {&one, 1}, 0).code, IoErrc::invalid);
  const drv::Segment big{buf->iova(), 256 * 1024};
  EXPECT_EQ((*qp)->read(0, 512, {&big, 1}, 0).code, IoErrc::too_large);
  const drv::Segment gap[2] = {{buf->iova(), 2048}, {buf->iova() + 8192, 2048}};
  EXPECT_EQ((*qp)->read(0, 8, gap, 0).code, IoErrc::invalid) << "hole inside a page";
  const drv::Segment odd{buf->iova() + 2, 4096};
  EXPECT_EQ((*qp)->read(0, 8, {&odd, 1}, 0).code, IoErrc::invalid);
  // A device error: a buffer the VF cannot reach.
  const drv::Segment unmapped{0x4000'0000, 4096};
  const drv::IoStatus st = run(**qp, (*qp)->read(0, 8, {&unmapped, 1}, 0));
  EXPECT_EQ(st.code, IoErrc::nvme);
  EXPECT_EQ(keel::nvme::status_base(st.nvme), keel::nvme::sc::kDataTransferError);
  EXPECT_NE(drv::to_string(st).find("Transfer"), std::string::npos) << drv::to_string(st);
  EXPECT_TRUE(run(**qp, (*qp)->read(0, 8, {&one, 1}, 0)).ok()) << "still serving";
}

TEST_P(Driver, QueuePairsAreLimitedToTheGrant) {
  std::vector<std::unique_ptr<drv::QueuePair>> qps;
  for (int i = 0; i < 3; ++i) {
    auto qp = ctrl_->create_queue_pair({.entries = 16});
    KEEL_ASSERT_OK(qp);
    qps.push_back(std::move(qp).value());
  }
  auto extra = ctrl_->create_queue_pair();
  ASSERT_FALSE(extra.ok());
  EXPECT_EQ(extra.error().code, Errc::busy);
  qps.pop_back();  // deleting one frees its queue id
  EXPECT_TRUE(ctrl_->create_queue_pair().ok());
}

TEST_P(Driver, InterruptMode) {
  auto qp = ctrl_->create_queue_pair({.entries = 32, .interrupts = true});
  KEEL_ASSERT_OK(qp);
  auto buf = vf_->alloc_dma(4096);
  KEEL_ASSERT_OK(buf);
  const drv::Segment seg{buf->iova(), 4096};
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(run(**qp, (*qp)->read(i, 8, {&seg, 1}, i)).ok());
}

// Interrupt mode as a paravisor worker uses it: the queue pair's MSI-X eventfd is signalled by a
// completion while the vector is armed, stays quiet while it is masked (the polling phase), and
// gets the pending message when it is armed again.
TEST_P(Driver, InterruptFdFiresWhenArmedOnly) {
  auto qp = ctrl_->create_queue_pair({.entries = 32, .interrupts = true});
  KEEL_ASSERT_OK(qp);
  const int efd = (*qp)->interrupt_fd();
  const bool simulated = card_->backend() == "model" || card_->backend() == "sim";
  if (efd < 0 && !simulated) GTEST_SKIP() << card_->backend() << " offers no MSI-X eventfd";
  ASSERT_GE(efd, 0) << "a simulated card gives an interrupt-mode queue pair an eventfd";
  auto no_irq = ctrl_->create_queue_pair({.entries = 32});
  KEEL_ASSERT_OK(no_irq);
  EXPECT_EQ((*no_irq)->interrupt_fd(), -1) << "polled queue pairs have none";
  // A free-running card may raise the MSI-X message a little after the completion is
  // visible (as hardware does): a signal that is due is waited for, a bounded while.
  auto signals = [&](bool due = false) -> std::uint64_t {
    if (due && !card_->lockstep()) {
      pollfd p{efd, POLLIN, 0};
      (void)::poll(&p, 1, 1000);
    }
    std::uint64_t v = 0;
    return read(efd, &v, sizeof v) == sizeof v ? v : 0;
  };
  auto buf = vf_->alloc_dma(4096);
  KEEL_ASSERT_OK(buf);
  const drv::Segment seg{buf->iova(), 4096};

  // Completions are polled, not waited for: a wait on an interrupt may itself read the
  // eventfd (VFIO and vfio-user have only that one signal), and this test reads it.
  auto complete = [&](drv::IoStatus submitted) {
    if (!submitted.ok()) return submitted;
    (*qp)->commit();  // the doorbell
    drv::Completion c[1];
    const bool done =
        fpga::poll_until(*card_, std::chrono::seconds(1), [&] { return (*qp)->poll(c) == 1; });
    EXPECT_TRUE(done) << "no completion within the timeout";
    return done ? c[0].status : drv::IoStatus::error(drv::IoErrc::timeout);
  };
  (*qp)->arm_interrupt(true);
  ASSERT_TRUE(complete((*qp)->read(0, 8, {&seg, 1}, 1)).ok());
  EXPECT_GE(signals(true), 1u) << "armed: the completion signals the eventfd";

  (*qp)->arm_interrupt(false);
  ASSERT_TRUE(complete((*qp)->read(8, 8, {&seg, 1}, 2)).ok());
  EXPECT_EQ(signals(), 0u) << "masked while polling: no signal";
  (*qp)->arm_interrupt(true);
  EXPECT_EQ(signals(true), 1u) << "arming delivers the message that came while masked";
}

// One queue pair per thread on a free-running card: three threads, disjoint LBA ranges.
// reset() re-creates the admin queue; another thread's admin commands meanwhile must neither be
// lost (the controller disabled under them) nor land in a queue being reset: the reset takes
// the admin queue's lock for its whole bring-up.
TEST_P(Driver, ResetsRacingAdminCommandsLoseNone) {
  FixtureOptions o;
  o.lockstep = false;
  ctrl_.reset();
  bring_up(2, 3, o);
  if (IsSkipped()) return;
  ASSERT_NE(ctrl_, nullptr);
  std::atomic<bool> resetting{true};
  std::string admin_error;
  std::atomic<unsigned> admin_done{0};
  std::atomic<bool> admin_failed{false};
  std::thread admin([&] {
    keel::nvme::Sqe get{};
    get.opc = keel::nvme::admin::kGetFeatures;
    get.cdw10 = keel::nvme::feature::kNumberOfQueues;
    // Bounded: ends with the resets, at the first failure, or after a minute.
    const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    while (resetting.load() && std::chrono::steady_clock::now() < until) {
      auto r = ctrl_->admin(get);
      if (!r.ok() || keel::nvme::cqe_status(*r) != 0) {
        admin_error = r.ok() ? "NVMe status " + std::to_string(keel::nvme::cqe_status(*r))
                             : to_string(r.error());
        admin_failed.store(true);
        return;
      }
      ++admin_done;
    }
  });
  // Each reset waits for an admin command after the previous one, so the two interleave on a
  // loaded host too (once, 20 resets ran before the admin thread was first scheduled).
  bool interleaved = true;
  for (int i = 0; i < 20 && interleaved; ++i) {
    const unsigned seen = admin_done.load();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (admin_done.load() == seen && !admin_failed.load() &&
           std::chrono::steady_clock::now() < deadline) {
      // Sleeps rather than spins: on two cores a spinning waiter starves the card's thread.
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (admin_failed.load()) break;
    interleaved = admin_done.load() != seen;
    const Status st = ctrl_->reset();
    EXPECT_TRUE(st.ok()) << "reset " << i << ": " << (st.ok() ? "" : to_string(st.error()));
  }
  resetting.store(false);
  admin.join();
  EXPECT_EQ(admin_error, "") << "after " << admin_done.load() << " admin commands";
  EXPECT_TRUE(interleaved) << "no admin command completed in 10 s between two resets";
  EXPECT_GT(admin_done.load(), 0u);
}

TEST_P(Driver, QueuePairPerThread) {
  FixtureOptions o;
  o.lockstep = false;
  ctrl_.reset();
  bring_up(2, 3, o);
  if (IsSkipped()) return;
  ASSERT_NE(ctrl_, nullptr);
  std::vector<std::string> errors(3);
  auto worker = [&](unsigned t) {
    auto qp = ctrl_->create_queue_pair({.entries = 64});
    if (!qp) {
      errors[t] = to_string(qp.error());
      return;
    }
    auto buf = vf_->alloc_dma(16 * 8192);
    if (!buf) {
      errors[t] = to_string(buf.error());
      return;
    }
    const std::uint64_t base = t * 4096;
    for (int round = 0; round < 2; ++round) {
      const bool write = round == 0;
      for (unsigned i = 0; i < 256; i += 16) {
        for (unsigned k = 0; k < 16; ++k) {
          const std::uint64_t lba = base + (i + k) * 16;
          std::byte* mem = buf->data() + k * 8192;
          if (write) fill_pattern(mem, 8192, lba, t);
          const drv::Segment seg{buf->iova() + k * 8192, 8192};
          const drv::IoStatus st =
              write ? (*qp)->write(lba, 16, {&seg, 1}, k) : (*qp)->read(lba, 16, {&seg, 1}, k);
          if (!st.ok()) {
            errors[t] = drv::to_string(st);
            return;
          }
        }
        drv::Completion c[16];
        unsigned got = 0;
        while (got < 16) {
          const unsigned n = (*qp)->wait(std::span(c).subspan(got), std::chrono::seconds(5));
          if (n == 0) {
            errors[t] = "timed out";
            return;
          }
          got += n;
        }
        for (const auto& done : c) {
          if (!done.status.ok()) {
            errors[t] = drv::to_string(done.status);
            return;
          }
          const std::uint64_t lba = base + (i + done.tag) * 16;
          if (!write && check_pattern(buf->data() + done.tag * 8192, 8192, lba, t) != -1) {
            errors[t] = "mismatch at LBA " + std::to_string(lba);
            return;
          }
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 3; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  for (unsigned t = 0; t < 3; ++t) EXPECT_EQ(errors[t], "") << "thread " << t;
}

KEEL_INSTANTIATE_CARD_SUITE(Driver);

}  // namespace
}  // namespace keel::testing
