// Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the record's tracker on its own
// (what a crash at each step leaves, and what start() makes of it, scribbled records included),
// GET/SET_INFLIGHT_FD through the server, and a back-end restart: requests back end A took and
// did not complete are resubmitted by back end B, once and in order, and nothing else is.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "keel/vmm/vhost_user_inflight.h"
#include "vhost_user_fixture.h"

namespace keel::testing {
namespace {

using vmm::InflightQueue;
using vmm::InflightRegion;
using vu::Request;

constexpr std::uint64_t kInflightBit = 1ull << vu::protocol::kInflightShmfd;

// ---- the record, read and written as a front end (or a scribbler) would ----

vu::InflightQueueHeader header_of(const std::byte* q) {
  vu::InflightQueueHeader h;
  std::memcpy(&h, q, sizeof h);
  return h;
}
void put_header(std::byte* q, const vu::InflightQueueHeader& h) { std::memcpy(q, &h, sizeof h); }
vu::InflightDesc desc_of(const std::byte* q, unsigned i) {
  vu::InflightDesc d;
  std::memcpy(&d, q + sizeof(vu::InflightQueueHeader) + i * sizeof d, sizeof d);
  return d;
}
void put_desc(std::byte* q, unsigned i, const vu::InflightDesc& d) {
  std::memcpy(q + sizeof(vu::InflightQueueHeader) + i * sizeof d, &d, sizeof d);
}
unsigned live_count(const std::byte* q, unsigned capacity) {
  unsigned n = 0;
  for (unsigned i = 0; i < capacity; ++i) n += desc_of(q, i).inflight != 0 ? 1 : 0;
  return n;
}

// One queue's record of 16 descriptors, with a tracker on it as the ring's back end keeps one.
class InflightQueueTest : public ::testing::Test {
 protected:
  static constexpr std::uint16_t kCapacity = 16;
  static constexpr std::uint16_t kRing = 8;

  void SetUp() override {
    auto r = InflightRegion::create(1, kCapacity);
    KEEL_ASSERT_OK(r);
    region_ = std::move(r).value();
    q_ = region_->data();
  }
  /// A new back end over the same record (the old one's tracker state is gone).
  InflightQueue restarted() { return InflightQueue(q_, kCapacity); }
  /// A used record: heads taken by a back end in `order`, the first `done` of them completed
  /// (used idx = done).
  void run_a(const std::vector<std::uint16_t>& order, unsigned done) {
    InflightQueue a(q_, kCapacity);
    ASSERT_TRUE(a.start(kRing, 0, 0).rejected.empty());
    for (std::uint16_t h : order) a.taken(h);
    for (unsigned i = 0; i < done; ++i) {
      a.before_used(order[i]);
      a.after_used(order[i], static_cast<std::uint16_t>(i + 1));
    }
  }
  /// After start() refused the record: reset, nothing resubmitted, base kept.
  void expect_rejected(const InflightQueue::Start& s, const InflightQueue& q, std::uint16_t base,
                       const char* what) {
    EXPECT_TRUE(s.tracking) << what;
    EXPECT_FALSE(s.rejected.empty()) << what;
    EXPECT_NE(s.rejected.find(what), std::string::npos) << s.rejected;
    EXPECT_TRUE(q.resubmit().empty()) << what;
    EXPECT_EQ(s.last_avail, base) << what;
    const auto h = header_of(q_);
    EXPECT_EQ(h.version, vu::kInflightVersion);
    EXPECT_EQ(h.desc_num, kCapacity);
    EXPECT_EQ(live_count(q_, kCapacity), 0u) << "the record starts afresh";
  }

  std::unique_ptr<InflightRegion> region_;
  std::byte* q_ = nullptr;
};

TEST_F(InflightQueueTest, AFreshRecordIsInitialisedAndEachRequestIsRecordedInTheSpecsOrder) {
  InflightQueue q(q_, kCapacity);
  const auto s = q.start(kRing, 5, 5);
  EXPECT_TRUE(s.tracking);
  EXPECT_TRUE(s.rejected.empty()) << s.rejected;
  EXPECT_EQ(s.last_avail, 5);
  auto h = header_of(q_);
  EXPECT_EQ(h.version, vu::kInflightVersion);
  EXPECT_EQ(h.desc_num, kCapacity);
  EXPECT_EQ(h.used_idx, 5);

  q.taken(3);
  q.taken(6);
  EXPECT_EQ(desc_of(q_, 3).inflight, 1);
  EXPECT_EQ(desc_of(q_, 3).counter, 0u);
  EXPECT_EQ(desc_of(q_, 6).counter, 1u);
  q.before_used(6);
  EXPECT_EQ(header_of(q_).last_batch_head, 6);
  EXPECT_EQ(desc_of(q_, 6).inflight, 1) << "still inflight until after the used ring";
  q.after_used(6, 6);
  EXPECT_EQ(desc_of(q_, 6).inflight, 0);
  EXPECT_EQ(header_of(q_).used_idx, 6);
  EXPECT_EQ(desc_of(q_, 3).inflight, 1);
  q.given_back(3);
  EXPECT_EQ(desc_of(q_, 3).inflight, 0);
}

TEST_F(InflightQueueTest, TakenAndNotCompletedAreResubmittedInTheOrderTheyWereTaken) {
  run_a({5, 2, 7, 0}, 1);  // 5 completed; 2, 7 and 0 were taken after it, in that order
  InflightQueue b = restarted();
  // QEMU, its connection lost, sends the used idx as base: the ring goes on after the taken.
  const auto s = b.start(kRing, 1, 1);
  EXPECT_TRUE(s.rejected.empty()) << s.rejected;
  EXPECT_EQ(b.resubmit(), (std::vector<std::uint16_t>{2, 7, 0}));
  EXPECT_EQ(s.last_avail, 4);
  // New requests count on from the old ones: a second crash keeps the order.
  b.taken(4);
  EXPECT_GT(desc_of(q_, 4).counter, desc_of(q_, 0).counter);
  // A base that already accounts for them (a clean stop) is the same place.
  InflightQueue c = restarted();
  const auto s2 = c.start(kRing, 1, 5);
  EXPECT_TRUE(s2.rejected.empty()) << s2.rejected;
  EXPECT_EQ(c.resubmit(), (std::vector<std::uint16_t>{2, 7, 0, 4}));
  EXPECT_EQ(s2.last_avail, 5);
}

TEST_F(InflightQueueTest, OrderIsTheCountersNotTheHeads) {
  run_a({1, 2, 3}, 0);
  auto d = desc_of(q_, 1);
  d.counter = 50;
  put_desc(q_, 1, d);  // head 1 taken last
  InflightQueue b = restarted();
  const auto s = b.start(kRing, 0, 0);
  EXPECT_TRUE(s.rejected.empty()) << s.rejected;
  EXPECT_EQ(b.resubmit(), (std::vector<std::uint16_t>{2, 3, 1}));
}

TEST_F(InflightQueueTest, AHeadOnTheUsedRingWhoseFlagWasNotClearedIsNotResubmitted) {
  run_a({1, 4}, 0);
  {
    InflightQueue a(q_, kCapacity);  // (the same back end, continuing: counters do not matter)
    a.before_used(4);
    // ... used element and used->idx = 1 written, then the back end dies before after_used.
  }
  EXPECT_EQ(desc_of(q_, 4).inflight, 1);
  InflightQueue b = restarted();
  const auto s = b.start(kRing, 1, 1);
  EXPECT_TRUE(s.rejected.empty()) << s.rejected;
  EXPECT_EQ(b.resubmit(), (std::vector<std::uint16_t>{1}));
  EXPECT_EQ(s.last_avail, 2);
  EXPECT_EQ(desc_of(q_, 4).inflight, 0) << "resolved in the record too";
  EXPECT_EQ(header_of(q_).used_idx, 1);
}

TEST_F(InflightQueueTest, CompletedRequestsAreNotResubmitted) {
  run_a({0, 1, 2}, 3);
  InflightQueue b = restarted();
  const auto s = b.start(kRing, 3, 3);
  EXPECT_TRUE(s.rejected.empty()) << s.rejected;
  EXPECT_TRUE(b.resubmit().empty());
  EXPECT_EQ(s.last_avail, 3);
}

TEST_F(InflightQueueTest, ScribbledRecordsAreRejectedAndReset) {
  struct Case {
    const char* what;  // expected in the reason
    std::function<void(std::byte*)> scribble;
    std::uint16_t used_idx = 1;
  };
  const std::vector<Case> cases = {
      {"version 9",
       [](std::byte* q) {
         auto h = header_of(q);
         h.version = 9;
         put_header(q, h);
       }},
      {"desc_num 4096",
       [](std::byte* q) {
         auto h = header_of(q);
         h.desc_num = 4096;
         put_header(q, h);
       }},
      {"head 12 is marked inflight",
       [](std::byte* q) {
         auto d = desc_of(q, 12);  // within the record, beyond the 8-entry ring
         d.inflight = 1;
         put_desc(q, 12, d);
       }},
      {"inflight byte 7",
       [](std::byte* q) {
         auto d = desc_of(q, 3);
         d.inflight = 7;
         put_desc(q, 3, d);
       }},
      {"share counter",
       [](std::byte* q) {
         auto d = desc_of(q, 3);
         d.counter = desc_of(q, 2).counter;
         put_desc(q, 3, d);
       }},
      {"maximum",
       [](std::byte* q) {
         auto d = desc_of(q, 3);
         d.counter = UINT64_MAX;
         put_desc(q, 3, d);
       }},
      {"last batch",
       [](std::byte* q) {
         auto h = header_of(q);
         h.last_batch_head = 9000;
         put_header(q, h);
       },
       2},  // one entry past the record's used_idx: the batch is walked from 9000
      {"entries past the record", [](std::byte*) {},
       200},  // the used ring claims 199 completions the record never saw
      {"unknown feature", [](std::byte* q) {
         auto h = header_of(q);
         h.features = 1;
         put_header(q, h);
       }}};
  for (const Case& c : cases) {
    std::memset(q_, 0, region_->description().mmap_size);
    run_a({1, 2, 3}, 1);
    c.scribble(q_);
    InflightQueue b = restarted();
    const auto s = b.start(kRing, c.used_idx, c.used_idx);
    expect_rejected(s, b, c.used_idx, c.what);
    // The reset record tracks from here on.
    b.taken(5);
    EXPECT_EQ(desc_of(q_, 5).inflight, 1);
  }
}

TEST_F(InflightQueueTest, ABaseThatFitsNeitherCaseRejectsTheRecord) {
  run_a({1, 2}, 0);
  InflightQueue b = restarted();
  const auto s = b.start(kRing, 0, 7);
  expect_rejected(s, b, 7, "neither");
}

TEST_F(InflightQueueTest, ARingLargerThanTheRecordIsNotTracked) {
  InflightQueue q(q_, kCapacity);
  const auto s = q.start(32, 0, 3);
  EXPECT_FALSE(s.tracking);
  EXPECT_EQ(s.last_avail, 3);
  EXPECT_NE(s.rejected.find("more than the record"), std::string::npos);
}

TEST(InflightRegionTest, MapChecksTheDescriptionAndTheFile) {
  auto made = InflightRegion::create(2, 128);
  KEEL_ASSERT_OK(made);
  const vu::Inflight good = (*made)->description();
  EXPECT_EQ(good.mmap_size, 2 * vu::inflight_queue_bytes(128));
  EXPECT_EQ(good.mmap_offset, 0u);
  auto dup = [&] { return UniqueFd(::fcntl((*made)->fd(), F_DUPFD_CLOEXEC, 0)); };
  EXPECT_TRUE(InflightRegion::map(dup(), good).ok());

  vu::Inflight d = good;
  d.mmap_size += 64;
  EXPECT_EQ(InflightRegion::map(dup(), d).error().code, Errc::invalid_argument);
  d = good;
  d.queue_size = 100;
  EXPECT_EQ(InflightRegion::map(dup(), d).error().code, Errc::invalid_argument);
  d = good;
  d.num_queues = 3;  // the file holds two
  d.mmap_size = 3 * vu::inflight_queue_bytes(128);
  EXPECT_EQ(InflightRegion::map(dup(), d).error().code, Errc::out_of_range);
  d = good;
  d.mmap_offset = 100;
  EXPECT_EQ(InflightRegion::map(dup(), d).error().code, Errc::out_of_range);
  d = good;
  d.mmap_offset = UINT64_MAX - 4095;
  EXPECT_EQ(InflightRegion::map(dup(), d).error().code, Errc::out_of_range);

  // Not sealed: the front end could shrink it under keel's mapping.
  UniqueFd loose(memfd_create("loose", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(loose.get(), static_cast<off_t>(good.mmap_size)), 0);
  EXPECT_EQ(InflightRegion::map(std::move(loose), good).error().code, Errc::invalid_argument);
  UniqueFd ev(eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(InflightRegion::map(std::move(ev), good).error().code, Errc::invalid_argument);
  EXPECT_FALSE(InflightRegion::create(0, 128).ok());
  EXPECT_FALSE(InflightRegion::create(1, 96).ok());
}

// ---- through the server ----

class VhostUserInflightTest : public VhostUserTest {
 protected:
  static constexpr std::uint64_t kRbuf = 2 << 20, kWbuf = 1 << 20;

  /// QEMU's vhost-user-blk before its rings start, with INFLIGHT_SHMFD: features, protocol
  /// features, owner.
  bool negotiate(FrontEnd& fe) {
    const auto features = fe.get_u64(Request::get_features);
    const auto proto = fe.get_u64(Request::get_protocol_features);
    EXPECT_TRUE(features.has_value() && proto.has_value());
    if (!features || !proto) return false;
    EXPECT_NE(*proto & kInflightBit, 0u) << "INFLIGHT_SHMFD is offered";
    const std::uint64_t p =
        *proto & ((1ull << vu::protocol::kMq) | (1ull << vu::protocol::kReplyAck) |
                  (1ull << vu::protocol::kConfig) | kInflightBit);
    EXPECT_EQ(fe.ack_u64(Request::set_protocol_features, p), 0u);
    EXPECT_EQ(fe.ack(Request::set_owner, nullptr, 0), 0u);
    EXPECT_EQ(fe.ack_u64(Request::set_features, *features), 0u);
    return !HasFailure();
  }
  std::optional<std::uint64_t> set_inflight(FrontEnd& fe, const vu::Inflight& d, int fd) {
    if (fd < 0) return fe.ack(Request::set_inflight_fd, &d, sizeof d);
    return fe.ack(Request::set_inflight_fd, &d, sizeof d, {&fd, 1});
  }
  /// Memory table, then the ring from `base`.
  bool start_ring(FrontEnd& fe, GuestRam& ram, DriverRing& ring, std::uint16_t base) {
    const vu::MemoryTable t = ram.table();
    const int fds[2] = {ram.fd(), ram.fd()};
    EXPECT_EQ(fe.ack(Request::set_mem_table, &t, 8 + 2 * sizeof(vu::MemoryRegion), fds), 0u);
    return fe.start_ring(ram, 0, ring, base);
  }
  /// A new server on the same socket path (a restarted back end).
  void restart_server(const std::string& path) {
    vmm::VhostUserBlkConfig vc;
    vc.socket_path = path;
    vc.message_timeout = std::chrono::milliseconds(200);
    auto s = vmm::VhostUserBlkServer::create(vc, factory());
    KEEL_ASSERT_OK(s);
    server_ = std::move(s).value();
  }
};

TEST_F(VhostUserInflightTest, GetAndSetInflightFdRoundTrip) {
  start(2);
  auto fe = connect();
  ASSERT_TRUE(negotiate(*fe));
  auto rec = fe->get_inflight_fd(2, kRingSize);
  ASSERT_TRUE(rec.has_value());
  ASSERT_TRUE(rec->fd.valid()) << "the record's fd comes with the reply";
  EXPECT_EQ(rec->desc.num_queues, 2);
  EXPECT_EQ(rec->desc.queue_size, kRingSize);
  EXPECT_EQ(rec->desc.mmap_offset, 0u);
  EXPECT_EQ(rec->desc.mmap_size, 2 * vu::inflight_queue_bytes(kRingSize));
  struct stat st {};
  ASSERT_EQ(fstat(rec->fd.get(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), rec->desc.mmap_size);
  const int seals = fcntl(rec->fd.get(), F_GET_SEALS);
  EXPECT_NE(seals & F_SEAL_SHRINK, 0);
  EXPECT_NE(seals & F_SEAL_GROW, 0);
  void* p = mmap(nullptr, rec->desc.mmap_size, PROT_READ, MAP_SHARED, rec->fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  const auto* bytes = static_cast<const std::byte*>(p);
  EXPECT_TRUE(std::all_of(bytes, bytes + rec->desc.mmap_size, [](std::byte b) {
    return b == std::byte{0};
  })) << "a fresh record is zero";
  munmap(p, rec->desc.mmap_size);

  EXPECT_EQ(set_inflight(*fe, rec->desc, rec->fd.get()), 0u) << server_->last_error();
  vu::Inflight bad = rec->desc;
  bad.mmap_size -= 64;
  EXPECT_NE(set_inflight(*fe, bad, rec->fd.get()).value_or(0), 0u);
  EXPECT_NE(server_->last_error().find("mmap_size"), std::string::npos);
  EXPECT_NE(set_inflight(*fe, rec->desc, -1).value_or(0), 0u) << "no fd";
  bad = rec->desc;
  bad.num_queues = 3;  // the device has 2
  EXPECT_NE(set_inflight(*fe, bad, rec->fd.get()).value_or(0), 0u);
  auto too_many = fe->get_inflight_fd(3, kRingSize);
  ASSERT_TRUE(too_many.has_value());
  EXPECT_EQ(too_many->desc.mmap_size, 0u) << "a failed GET answers with an empty record";
  EXPECT_FALSE(too_many->fd.valid());
  EXPECT_EQ(server_->stats().failed_requests, 4u);
  EXPECT_TRUE(server_->connected());
}

TEST_F(VhostUserInflightTest, NotNegotiatedGetAnswersWithAnEmptyRecord) {
  start(1);
  auto fe = connect();
  auto rec = fe->get_inflight_fd(1, kRingSize);
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->desc.mmap_size, 0u);
  EXPECT_FALSE(rec->fd.valid());
  EXPECT_NE(server_->last_error().find("not negotiated"), std::string::npos);
}

// Back end A takes four reads, and completes a request taken after them, then dies before any
// of the reads completes; QEMU reconnects to back end B and hands it A's record, with the used
// idx as the ring's base. B serves the four, once each, in the order A took them, then new
// requests; the requests A completed are not served again.
TEST_F(VhostUserInflightTest, ARestartedBackEndResubmitsWhatTheOldOneTookExactlyOnce) {
  start(1);
  const std::string path = server_->socket_path();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  auto fe = connect();
  ASSERT_TRUE(negotiate(*fe));
  auto rec = fe->get_inflight_fd(1, kRingSize);  // QEMU keeps it across reconnects
  ASSERT_TRUE(rec.has_value() && rec->fd.valid());
  ASSERT_EQ(set_inflight(*fe, rec->desc, rec->fd.get()), 0u);
  ASSERT_TRUE(start_ring(*fe, ram, ring, 0));

  // Completed by A: a write of the pattern the reads below expect, and two reads.
  fill_pattern(ram.at(kWbuf, 8 * 512), 8 * 512, 200, 42);
  ASSERT_EQ(io(ring, blk::kOut, 200, {{kWbuf, 8 * 512}}), blk::kStatusOk);
  ASSERT_EQ(io(ring, blk::kIn, 0, {{kRbuf + 0x10000, 512}}), blk::kStatusOk);
  ASSERT_EQ(io(ring, blk::kIn, 1, {{kRbuf + 0x10000, 512}}), blk::kStatusOk);
  const std::uint16_t completed = ring.used_idx();
  ASSERT_EQ(completed, 3);

  // Taken by A, not completed: one pass takes them to the VF; the lockstep card does not run.
  std::vector<std::uint16_t> heads;
  for (std::uint32_t i = 0; i < 4; ++i) {
    std::memset(ram.at(kRbuf + i * 4096, 2 * 512), 0, 2 * 512);
    heads.push_back(ring.submit(blk::kIn, 200 + 2 * i,
                                std::vector<DriverRing::Seg>{{kRbuf + i * 4096, 2 * 512}}));
  }
  // Taken after them and completed at once (GET_ID, answered without the device): the ring
  // is now out of order, and the used idx no longer says where the taken entries end.
  const std::uint16_t get_id =
      ring.submit(blk::kGetId, 0, std::vector<DriverRing::Seg>{{kRbuf + 0x20000, 20}});
  ring.kick();
  server_->run_paravisor_once();
  const auto early = ring.reap();
  ASSERT_TRUE(early.has_value());
  EXPECT_EQ(early->first, get_id);
  ASSERT_EQ(ring.used_idx(), completed + 1) << "none of the reads completed yet";
  void* m =
      mmap(nullptr, rec->desc.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, rec->fd.get(), 0);
  ASSERT_NE(m, MAP_FAILED);
  auto* record = static_cast<std::byte*>(m);
  ASSERT_EQ(live_count(record, kRingSize), 4u) << "recorded before they reached the device";

  // A dies here. Its destructor would finish the four (a clean stop): what it leaves in guest
  // RAM and in the record is put back to this moment, as after a crash.
  const std::uint64_t half = ram.region_bytes();
  std::vector<std::byte> low(ram.at(0, half), ram.at(0, half) + half);
  std::vector<std::byte> high(ram.at(GuestRam::kHighGpa, half),
                              ram.at(GuestRam::kHighGpa, half) + half);
  std::vector<std::byte> saved(record, record + rec->desc.mmap_size);
  const auto stats_a = server_->counters();
  server_.reset();
  fe.reset();
  std::memcpy(ram.at(0, half), low.data(), half);
  std::memcpy(ram.at(GuestRam::kHighGpa, half), high.data(), half);
  std::memcpy(record, saved.data(), saved.size());
  EXPECT_EQ(ring.used_idx(), completed + 1);

  // B, and QEMU reconnecting: its record back before the rings start; the base is the used idx
  // (GET_VRING_BASE failed on the broken connection), which is not where A stopped taking.
  restart_server(path);
  fe = connect();
  ASSERT_TRUE(negotiate(*fe));
  ASSERT_EQ(set_inflight(*fe, rec->desc, rec->fd.get()), 0u) << server_->last_error();
  ASSERT_TRUE(start_ring(*fe, ram, ring, ring.used_idx()));

  std::vector<std::uint16_t> served;
  ASSERT_TRUE(drive([&] {
    while (auto u = ring.reap()) {
      EXPECT_EQ(u->second, blk::kStatusOk);
      served.push_back(u->first);
    }
    return served.size() >= heads.size();
  }));
  EXPECT_EQ(served, heads) << "each once, in the order A took them";
  for (std::uint32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(check_pattern(ram.at(kRbuf + i * 4096, 1024), 1024, 200 + 2 * i, 42), -1)
        << "read " << i;
  }
  // Nothing more: the completed four (GET_ID too) are not served again, the four reads not
  // twice.
  for (int t = 0; t < 2000; ++t) {
    server_->run_paravisor_once();
    card_->step(1);
  }
  EXPECT_FALSE(ring.reap().has_value());
  EXPECT_EQ(ring.used_idx(), completed + 5);
  EXPECT_EQ(server_->counters().requests, 4u);
  EXPECT_EQ(live_count(record, kRingSize), 0u);

  // New requests after them, from the avail index after all A took.
  ASSERT_EQ(io(ring, blk::kIn, 200, {{kRbuf, 512}}), blk::kStatusOk);
  EXPECT_EQ(ring.used_idx(), completed + 6);
  EXPECT_EQ(server_->stats().failed_requests, 0u) << server_->last_error();
  EXPECT_GE(stats_a.requests, 3u);
  munmap(m, rec->desc.mmap_size);
}

// A record scribbled on between the back ends resubmits nothing and breaks nothing: the ring
// starts from the front end's base and serves what is available.
TEST_F(VhostUserInflightTest, AScribbledRecordIsIgnoredAndTheRingRuns) {
  start(1);
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  auto fe = connect();
  ASSERT_TRUE(negotiate(*fe));
  auto rec = fe->get_inflight_fd(1, kRingSize);
  ASSERT_TRUE(rec.has_value() && rec->fd.valid());
  void* m =
      mmap(nullptr, rec->desc.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, rec->fd.get(), 0);
  ASSERT_NE(m, MAP_FAILED);
  auto* record = static_cast<std::byte*>(m);
  vu::InflightQueueHeader h{};
  h.version = 1;
  h.desc_num = kRingSize;
  put_header(record, h);
  for (unsigned i = 0; i < kRingSize; i += 3) {
    put_desc(record, i, vu::InflightDesc{1, {}, 0xFFFF, 7});  // every third head, one counter
  }
  ASSERT_EQ(set_inflight(*fe, rec->desc, rec->fd.get()), 0u);
  ASSERT_TRUE(start_ring(*fe, ram, ring, 0));
  EXPECT_EQ(live_count(record, kRingSize), 0u) << "reset";
  round_trip(ram, ring, 10, 8, kWbuf, kRbuf, 3);
  EXPECT_EQ(ring.used_idx(), 2);
  EXPECT_EQ(server_->counters().requests, 2u);
  EXPECT_EQ(server_->stats().failed_requests, 0u);
  munmap(m, rec->desc.mmap_size);
}

}  // namespace
}  // namespace keel::testing
