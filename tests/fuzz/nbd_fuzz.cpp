// libFuzzer target: keel's NBD server (vmm_glue/nbd) fed a scripted peer through socketpairs,
// in process, over an in-memory disk whose completions the input controls.
//
// The input is a program for up to two clients: client flags, options (well formed or not),
// transmission requests (any type, flags, offset, length; WRITE payloads), raw bytes, steps of
// the server loop, moves of the server's clock (timeouts), and device completions (in order,
// late, failed). The server runs one loop turn at a time on this thread (NbdServerTestSeam), so
// every run is deterministic and bounded.
//
// Checked:
//   - nothing crashes, nothing reads or writes out of bounds (ASan, UBSan);
//   - every byte the server sends is well formed: the greeting, option replies that answer the
//     options in the order they were sent, the EXPORT_NAME reply, simple replies with a handle
//     that is outstanding, an NBD errno, and a READ's data;
//   - the device never sees two overlapping requests in flight where one writes (the server's
//     range ordering), nor a buffer outside guest memory or a sector past the disk;
//   - once the clients are gone and the device has completed everything, the server winds down
//     within a bounded number of loop turns: no connection, no request, no held range left,
//     every buffer chunk back in the pool.
//
// NBD_FUZZ_DEBUG=1 prints the requests, the replies and the server's counters of a run (to see
// what an input reaches: build-fuzz/nbd_fuzz tests/fuzz/corpus/nbd_fuzz/<file>).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "keel/clock.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/nbd_server.h"
#include "keel/wire/virtio.h"
#include "nbd_seam.h"

namespace {

using namespace keel;
using namespace keel::vmm;
namespace blk = virtio::blk;

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "nbd_fuzz: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                         \
    }                                                                           \
  } while (0)

constexpr std::uint64_t kDiskBytes = 256u << 10;
constexpr std::uint16_t kQueue = 16;

NbdServerConfig config() {
  NbdServerConfig c;
  c.socket_path = "/tmp/keel-nbd-fuzz-" + std::to_string(getpid()) + ".sock";
  c.queue_depth = 8;
  c.max_request_bytes = 64u << 10;
  c.buffer_bytes = 4u << 17;  // 4 chunks: the quota (2 per connection) and the pool both bite
  c.virtqueue_size = kQueue;
  c.max_virtio_bytes = 128u << 10;
  c.max_connections = 2;
  c.handshake_timeout = std::chrono::milliseconds(2000);
  c.io_timeout = std::chrono::milliseconds(1000);
  c.idle_timeout = std::chrono::milliseconds(5000);
  c.log = false;
  return c;
}

GuestMemory& memory() {
  static auto* m = GuestMemory::create(NbdServer::guest_memory_bytes(config())).value().release();
  return *m;
}

using Input = keel::fuzz::FuzzInput;

// ---------------------------------------------------------------- the device

/// An in-memory disk behind a virtqueue of kQueue descriptors. Requests run when completed
/// (auto: at once; otherwise when the input says), so a write can land late.
class FuzzDisk final : public NbdDevice {
 public:
  explicit FuzzDisk(GuestMemory& mem) : mem_(mem), disk_(storage()) {
    for (std::uint16_t i = kQueue; i-- > 0;) ids_.push_back(i);
  }

  bool auto_complete = true;

  std::uint64_t capacity_sectors() const noexcept override { return kDiskBytes / 512; }
  std::uint64_t alloc(std::uint64_t bytes, std::uint64_t align) override {
    next_ = (next_ + align - 1) / align * align;
    const std::uint64_t gpa = next_;
    next_ += bytes;
    return gpa;
  }
  void set_call_fd(int) override {}
  Status start() override { return {}; }
  unsigned free_descriptors() const noexcept override { return free_desc_; }

  Result<std::uint16_t> submit(std::uint32_t type, std::uint64_t sector,
                               std::span<const DataSeg> data) override {
    const unsigned need = static_cast<unsigned>(data.size()) + 2;
    if (need > free_desc_ || ids_.empty()) {
      return make_error(Errc::busy, "ring full");
    }
    Op op;
    op.type = type;
    op.descs = need;
    CHECK(data.size() <= op.segs.size());
    std::uint64_t bytes = 0;
    for (std::size_t i = 0; i < data.size(); ++i) {
      CHECK(data[i].len > 0);
      CHECK(mem_.translate(data[i].gpa, data[i].len) != nullptr);  // inside guest memory
      op.segs[i] = data[i];
      bytes += data[i].len;
    }
    op.nsegs = data.size();
    switch (type) {
      case blk::kIn:
      case blk::kOut:
        CHECK(bytes % 512 == 0 && bytes > 0);
        op.begin = sector * 512;
        op.end = op.begin + bytes;
        break;
      case blk::kWriteZeroes: {
        CHECK(data.size() == 1 && data[0].len == sizeof(blk::DiscardWriteZeroes));
        blk::DiscardWriteZeroes wz;
        std::memcpy(&wz, mem_.translate(data[0].gpa, sizeof wz), sizeof wz);
        CHECK(wz.num_sectors > 0);
        op.begin = wz.sector * 512;
        op.end = op.begin + std::uint64_t{wz.num_sectors} * 512;
        break;
      }
      case blk::kFlush: CHECK(data.empty()); break;
      default: CHECK(false);
    }
    CHECK(op.end <= kDiskBytes);  // the server checked the range
    // The server's ordering: nothing in flight overlaps this where one of the two writes.
    const bool writes = type == blk::kOut || type == blk::kWriteZeroes;
    for (const Op& o : flight_) {
      const bool o_writes = o.type == blk::kOut || o.type == blk::kWriteZeroes;
      CHECK(!(o.begin < op.end && op.begin < o.end && (writes || o_writes)));
    }
    op.id = ids_.back();
    ids_.pop_back();
    free_desc_ -= need;
    flight_.push_back(op);
    if (auto_complete) complete(1, false, flight_.size() - 1);
    return op.id;
  }

  unsigned reap(std::span<GuestCompletion> out) override {
    unsigned n = 0;
    while (n < out.size() && !done_.empty()) {
      // As a virtqueue's: the id and its descriptors are free once the driver has reaped.
      const Done d = done_.front();
      done_.pop_front();
      out[n++] = d.c;
      ids_.push_back(d.c.id);
      free_desc_ += d.descs;
    }
    return n;
  }
  void kick() override {}

  /// Runs and completes `count` in-flight requests from `first` (in submission order).
  void complete(unsigned count, bool fail, std::size_t first = 0) {
    while (count-- > 0 && first < flight_.size()) {
      const Op op = flight_[first];
      flight_.erase(flight_.begin() + static_cast<std::ptrdiff_t>(first));
      std::uint8_t status = blk::kStatusOk;
      if (fail) {
        status = blk::kStatusIoErr;
      } else if (op.type == blk::kIn || op.type == blk::kOut) {
        std::uint64_t pos = op.begin;
        for (std::size_t i = 0; i < op.nsegs; ++i) {
          std::byte* p = mem_.translate(op.segs[i].gpa, op.segs[i].len);
          if (op.type == blk::kIn) {
            std::memcpy(p, disk_.data() + pos, op.segs[i].len);
          } else {
            std::memcpy(disk_.data() + pos, p, op.segs[i].len);
          }
          pos += op.segs[i].len;
        }
      } else if (op.type == blk::kWriteZeroes) {
        std::memset(disk_.data() + op.begin, 0, op.end - op.begin);
      }
      done_.push_back(Done{GuestCompletion{op.id, status, 0}, op.descs});
    }
  }
  std::size_t in_flight() const { return flight_.size(); }

 private:
  struct Op {
    std::uint16_t id = 0;
    std::uint32_t type = 0;
    unsigned descs = 0;
    std::uint64_t begin = 0, end = 0;
    std::array<DataSeg, 72> segs{};
    std::size_t nsegs = 0;
  };
  /// The disk's bytes, kept from run to run (their content does not steer the server).
  static std::vector<std::uint8_t>& storage() {
    static auto* d = new std::vector<std::uint8_t>(kDiskBytes);
    return *d;
  }
  GuestMemory& mem_;
  std::vector<std::uint8_t>& disk_;
  std::vector<std::uint16_t> ids_;
  std::vector<Op> flight_;
  struct Done {
    GuestCompletion c;
    unsigned descs;
  };
  std::deque<Done> done_;
  unsigned free_desc_ = kQueue;
  std::uint64_t next_ = 0;
};

// ---------------------------------------------------------------- a client

std::uint32_t be32(std::uint32_t v) { return __builtin_bswap32(v); }

class Client {
 public:
  explicit Client(int fd) : fd_(fd) {}
  ~Client() { close_now(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool open() const { return fd_ >= 0; }
  void close_now() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  void shut_write() {
    if (fd_ >= 0) shutdown(fd_, SHUT_WR);
  }
  /// The stream no longer follows what this client meant to send (raw bytes, a payload cut
  /// short): stop checking replies against it.
  void lose_track() { tracking_ = false; }

  /// Sends what fits; returns false (and stops tracking) when the server did not take it all.
  template <typename Step>
  bool send(const std::string& s, Step&& step) {
    std::size_t off = 0;
    for (int tries = 0; off < s.size() && fd_ >= 0 && tries < 64; ++tries) {
      const ssize_t k = ::send(fd_, s.data() + off, s.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (k > 0) {
        off += static_cast<std::size_t>(k);
        tries = 0;
        continue;
      }
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        step();
        continue;
      }
      break;  // the server closed
    }
    if (off < s.size()) lose_track();
    return off == s.size();
  }

  /// Call before send(): only the first 4 bytes a client sends are its flags; anything else
  /// first, or flags again later, is read by the server as something else.
  void sending(bool flags_message, std::uint32_t flags = 0) {
    if (flags_message && !started_) no_zeroes_ = (flags & nbd::kFlagCNoZeroes) != 0;
    if (flags_message == started_) lose_track();
    started_ = true;
  }
  void sent_option(std::uint32_t option) { opts_.push_back(option); }
  void sent_request(std::uint64_t handle, std::uint16_t type, std::uint32_t length) {
    outstanding_[handle] = {type, length};
  }

  /// Reads what the server sent and checks it.
  void drain() {
    if (fd_ < 0) return;
    for (;;) {
      char b[65536];
      const ssize_t k = recv(fd_, b, sizeof b, MSG_DONTWAIT);
      if (k > 0) {
        in_.append(b, static_cast<std::size_t>(k));
        continue;
      }
      break;
    }
    parse();
  }

 private:
  enum class Phase { greeting, handshake, export_reply, transmission, read_data, done };

  template <typename M>
  bool take(M& m) {
    if (in_.size() - pos_ < sizeof m) return false;
    std::memcpy(&m, in_.data() + pos_, sizeof m);
    pos_ += sizeof m;
    m = nbd::from_wire(m);
    return true;
  }

  void parse() {
    for (;;) {
      const std::size_t left = in_.size() - pos_;
      // Out of step with the server (see lose_track): only the greeting can still be checked.
      if (!tracking_ && phase_ != Phase::greeting) phase_ = Phase::done;
      switch (phase_) {
        case Phase::greeting: {
          nbd::Greeting g;
          if (!take(g)) return compact();
          CHECK(g.passwd == nbd::kInitPasswd && g.magic == nbd::kOptMagic);
          CHECK(g.flags == (nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes));
          phase_ = Phase::handshake;
          break;
        }
        case Phase::handshake: {
          if (!opts_.empty() && opts_.front() == nbd::kOptExportName) {
            phase_ = Phase::export_reply;
            break;
          }
          if (left < sizeof(nbd::OptionReply)) return compact();
          nbd::OptionReply r;
          std::memcpy(&r, in_.data() + pos_, sizeof r);
          r = nbd::from_wire(r);
          CHECK(r.magic == nbd::kOptReplyMagic);
          CHECK(r.length <= 3 * nbd::kMaxString);
          if (left < sizeof r + r.length) return compact();
          pos_ += sizeof r + r.length;
          CHECK(!opts_.empty());
          CHECK(r.option == opts_.front());
          const bool final = r.type == nbd::kRepAck || (r.type & nbd::kRepFlagError) != 0;
          CHECK(final || r.type == nbd::kRepInfo || r.type == nbd::kRepServer);
          if (!final) break;
          opts_.pop_front();
          if (r.option == nbd::kOptGo && r.type == nbd::kRepAck) phase_ = Phase::transmission;
          if (r.option == nbd::kOptAbort) phase_ = Phase::done;
          break;
        }
        case Phase::export_reply: {
          const std::size_t need = sizeof(nbd::ExportNameReply) + (no_zeroes_ ? 0 : 124);
          if (left < need) return compact();
          nbd::ExportNameReply r;
          std::memcpy(&r, in_.data() + pos_, sizeof r);
          r = nbd::from_wire(r);
          CHECK(r.size == kDiskBytes);
          CHECK((r.flags & nbd::kFlagHasFlags) != 0);
          for (std::size_t i = sizeof r; i < need; ++i) CHECK(in_[pos_ + i] == 0);
          pos_ += need;
          opts_.pop_front();
          phase_ = Phase::transmission;
          break;
        }
        case Phase::transmission: {
          nbd::SimpleReply r;
          if (!take(r)) return compact();
          if (std::getenv("NBD_FUZZ_DEBUG") != nullptr) {
            std::fprintf(stderr, "reply magic %x error %u handle %lu\n", r.magic, r.error,
                         static_cast<unsigned long>(r.handle));
          }
          CHECK(r.magic == nbd::kSimpleReplyMagic);
          CHECK(r.error == 0 || r.error == nbd::kEperm || r.error == nbd::kEio ||
                r.error == nbd::kEinval || r.error == nbd::kEnospc);
          auto it = outstanding_.find(r.handle);
          CHECK(it != outstanding_.end());
          if (r.error == 0 && it->second.type == nbd::kCmdRead) {
            data_left_ = it->second.length;
            phase_ = Phase::read_data;
          }
          outstanding_.erase(it);
          break;
        }
        case Phase::read_data: {
          const std::size_t n = std::min<std::size_t>(left, data_left_);
          pos_ += n;
          data_left_ -= n;
          if (data_left_ > 0) return compact();
          phase_ = Phase::transmission;
          break;
        }
        case Phase::done: pos_ = in_.size(); return compact();
      }
    }
  }
  void compact() {
    in_.erase(0, pos_);
    pos_ = 0;
  }

  struct Pending {
    std::uint16_t type;
    std::uint32_t length;
  };
  int fd_;
  bool tracking_ = true;
  bool started_ = false;
  bool no_zeroes_ = false;
  Phase phase_ = Phase::greeting;
  std::string in_;
  std::size_t pos_ = 0;
  std::uint64_t data_left_ = 0;
  std::deque<std::uint32_t> opts_;
  std::map<std::uint64_t, Pending> outstanding_;
};

// ---------------------------------------------------------------- messages

template <typename M>
void put(std::string& s, const M& m) {
  const M w = nbd::to_wire(m);
  s.append(reinterpret_cast<const char*>(&w), sizeof w);
}

std::string info_request(const std::string& name, Input& in) {
  std::string d;
  const std::uint32_t n = be32(static_cast<std::uint32_t>(name.size()));
  d.append(reinterpret_cast<const char*>(&n), 4);
  d += name;
  const std::uint16_t k = in.u8() % 4;
  const std::uint16_t kb = __builtin_bswap16(k);
  d.append(reinterpret_cast<const char*>(&kb), 2);
  for (std::uint16_t i = 0; i < k; ++i) {
    const std::uint16_t t = __builtin_bswap16(static_cast<std::uint16_t>(in.u8() % 5));
    d.append(reinterpret_cast<const char*>(&t), 2);
  }
  return d;
}

std::string option_data(std::uint32_t option, Input& in) {
  switch (in.u8() % 4) {
    case 0: return {};
    case 1: return info_request(in.u8() % 2 == 0 ? "keel" : "", in);
    case 2: return option == nbd::kOptExportName ? "keel" : info_request("nope", in);
    default: return in.bytes(in.u8());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  GuestMemory& mem = memory();
  auto disk_owned = std::make_unique<FuzzDisk>(mem);
  FuzzDisk& disk = *disk_owned;
  auto clock = std::make_shared<keel::ManualClock>(1'000'000'000);
  NbdServerConfig cfg = config();
  cfg.clock = clock;
  auto made = NbdServerTestSeam::create(cfg, std::move(disk_owned), mem);
  CHECK(made.ok());
  NbdServer& server = **made;

  std::array<std::unique_ptr<Client>, 2> clients;
  for (auto& c : clients) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    NbdServerTestSeam::adopt(server, sv[1]);
    c = std::make_unique<Client>(sv[0]);
  }
  auto step = [&] {
    NbdServerTestSeam::step(server);
    CHECK(NbdServerTestSeam::free_chunks(server) <= NbdServerTestSeam::total_chunks(server));
    for (auto& c : clients) c->drain();
  };
  std::uint64_t handle = 1;

  for (unsigned ops = 0; ops < 256 && !in.empty(); ++ops) {
    Client& c = *clients[in.u8() & 1];
    std::string m;
    switch (in.u8() % 12) {
      case 0: {  // client flags
        const std::uint8_t pick = in.u8() % 4;
        const std::uint32_t f = pick == 0   ? nbd::kFlagCFixedNewstyle
                                : pick == 3 ? in.u32()
                                            : nbd::kFlagCFixedNewstyle | nbd::kFlagCNoZeroes;
        const std::uint32_t w = be32(f);
        m.append(reinterpret_cast<const char*>(&w), 4);
        c.sending(true, f);
        c.send(m, step);
        break;
      }
      case 1: {  // an option
        static constexpr std::uint32_t kOpts[] = {
            nbd::kOptExportName, nbd::kOptAbort, nbd::kOptList,     nbd::kOptInfo,
            nbd::kOptGo,         nbd::kOptGo,    nbd::kOptStartTls, nbd::kOptStructuredReply};
        const std::uint8_t pick = in.u8();
        const std::uint32_t opt = pick < 240 ? kOpts[pick % 8] : in.u32();
        const std::string d = option_data(opt, in);
        put(m, nbd::OptionHeader{nbd::kOptMagic, opt, static_cast<std::uint32_t>(d.size())});
        m += d;
        c.sending(false);
        c.sent_option(opt);
        c.send(m, step);
        break;
      }
      case 2:
      case 3:
      case 4: {  // a request
        const std::uint16_t type = in.u8() % 9;
        const std::uint8_t fpick = in.u8();
        const std::uint16_t flags = fpick < 128 ? 0 : fpick < 224 ? nbd::kCmdFlagFua : in.u16();
        const std::uint8_t opick = in.u8() % 4;
        const std::uint64_t offset = opick == 0   ? (in.u16() % (kDiskBytes / 512)) * 512
                                     : opick == 3 ? in.u64()
                                                  : in.u32() % kDiskBytes;
        const std::uint8_t lpick = in.u8() % 4;
        const std::uint32_t length = lpick == 0   ? (in.u8() % 16 + 1) * 512
                                     : lpick == 3 ? in.u32()
                                                  : in.u16() % (80u << 10);
        const std::uint64_t h = handle++;
        if (std::getenv("NBD_FUZZ_DEBUG") != nullptr) {
          std::fprintf(stderr, "request %lu type %u flags %x offset %lu length %u\n",
                       static_cast<unsigned long>(h), type, flags,
                       static_cast<unsigned long>(offset), length);
        }
        put(m, nbd::Request{nbd::kRequestMagic, flags, type, h, offset, length});
        bool whole = true;
        if (type == nbd::kCmdWrite) {
          if (length <= (160u << 10)) {
            m.append(length, static_cast<char>(h));
          } else {
            m.append(in.u8(), 'x');  // a payload cut short: the stream goes out of step
            whole = false;
          }
        }
        if (type != nbd::kCmdDisc) c.sent_request(h, type, length);
        if (!whole) c.lose_track();
        c.sending(false);
        c.send(m, step);
        break;
      }
      case 5:  // raw bytes
        c.sending(false);
        c.lose_track();
        c.send(in.bytes(in.u8()), step);
        break;
      case 6:
      case 7:  // the server loop
        for (unsigned i = in.u8() % 8 + 1; i-- > 0;) step();
        break;
      case 8: {  // time passes (the server's clock)
        static constexpr std::int64_t kSteps[] = {1'000'000, 600'000'000, 1'500'000'000,
                                                  10'000'000'000};
        clock->advance(std::chrono::nanoseconds(kSteps[in.u8() % 4]));
        step();
        break;
      }
      case 9: {  // the device
        const std::uint8_t pick = in.u8();
        if (pick < 64) {
          disk.auto_complete = !disk.auto_complete;
        } else if (disk.in_flight() > 0) {
          disk.complete(pick % 3 + 1, pick > 240, pick % disk.in_flight());
        }
        step();
        break;
      }
      case 10:
        c.shut_write();
        step();
        break;
      default:
        c.close_now();
        step();
        break;
    }
  }

  // Wind down: the device finishes everything, the clients leave, and the server must be
  // left with nothing within a bounded number of turns.
  disk.auto_complete = true;
  disk.complete(static_cast<unsigned>(disk.in_flight()), false);
  for (int i = 0; i < 4; ++i) step();
  for (auto& c : clients) c->close_now();
  bool clean = false;
  for (int i = 0; i < 256 && !clean; ++i) {
    disk.complete(static_cast<unsigned>(disk.in_flight()), false);
    NbdServerTestSeam::step(server);
    clean = NbdServerTestSeam::open_connections(server) == 0 &&
            NbdServerTestSeam::live_requests(server) == 0 && disk.in_flight() == 0;
  }
  if (!clean && std::getenv("NBD_FUZZ_DEBUG") != nullptr) {
    std::fprintf(stderr, "open %zu live %zu in flight %zu ranges %zu free %lu/%lu\n",
                 NbdServerTestSeam::open_connections(server),
                 NbdServerTestSeam::live_requests(server), disk.in_flight(),
                 NbdServerTestSeam::held_ranges(server),
                 static_cast<unsigned long>(NbdServerTestSeam::free_chunks(server)),
                 static_cast<unsigned long>(NbdServerTestSeam::total_chunks(server)));
    std::fprintf(stderr, "%s", NbdServerTestSeam::describe(server).c_str());
  }
  CHECK(clean);
  if (std::getenv("NBD_FUZZ_DEBUG") != nullptr) {
    const NbdServerStats st = server.stats();
    std::fprintf(
        stderr,
        "transmissions %lu options %lu requests %lu reads %lu writes %lu errors %lu "
        "unaligned %lu quota waits %lu overlap waits %lu device timeouts %lu drops %lu\n",
        static_cast<unsigned long>(st.transmissions), static_cast<unsigned long>(st.options),
        static_cast<unsigned long>(st.requests), static_cast<unsigned long>(st.reads),
        static_cast<unsigned long>(st.writes), static_cast<unsigned long>(st.error_replies),
        static_cast<unsigned long>(st.unaligned), static_cast<unsigned long>(st.quota_waits),
        static_cast<unsigned long>(st.overlap_waits),
        static_cast<unsigned long>(st.device_timeouts),
        static_cast<unsigned long>(st.protocol_errors));
  }
  CHECK(NbdServerTestSeam::held_ranges(server) == 0);
  CHECK(NbdServerTestSeam::free_chunks(server) == NbdServerTestSeam::total_chunks(server));
  made->reset();
  return 0;
}
