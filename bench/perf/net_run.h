// keel-perf-net: the network benchmark. Two in-process guests (net_guest.h) on one free-running
// model card: on their NIC VFs (the accelerated path) or, with no VF, on the host's software
// switch (the fallback). Per path and frame size: a stream A -> B with a window of frames in
// flight (frames/s, Gbit/s, losses, CPU per frame), then ping-pong A -> B -> A (round trips).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "keel/fpga/model/model_card.h"
#include "keel/result.h"
#include "keel/vmm/soft_switch.h"
#include "options.h"  // PathChoice
#include "run.h"      // Histogram

namespace keel::perf {

struct NetConfig {
  PathChoice path = PathChoice::both;
  /// Frame sizes in bytes: Ethernet header and payload, no FCS (14 + 4 .. 1518).
  std::vector<std::uint32_t> sizes{64, 1500};
  std::chrono::milliseconds runtime{3000};      ///< Stream, measured.
  std::chrono::milliseconds ramp{300};          ///< Stream, before measuring.
  std::chrono::milliseconds lat_runtime{1000};  ///< Ping-pong.
  /// Frames A may have sent that B has not received yet (B tells A, as a receive window).
  unsigned window = 64;
  std::string json_path;
  bool card_rt = false;  ///< The card's thread at SCHED_FIFO 1 (as keel-perf --card-rt).
  bool rx_copy = false;  ///< VF path: received frames copied, not written in place.
};

/// Parses argv. --help prints usage and returns not_found with an empty message.
Result<NetConfig> parse_net_options(int argc, const char* const* argv);

/// CPU time of the threads a phase counts, over the phase.
struct NetCpu {
  std::uint64_t paravisors_ns = 0;  ///< The two paravisors' worker threads (host).
  std::uint64_t switch_ns = 0;      ///< The software switch's thread (host).
  std::uint64_t guests_ns = 0;      ///< The two guest threads (the guests' vCPUs, not host).
  std::uint64_t host_ns() const { return paravisors_ns + switch_ns; }
};

struct NetStream {
  double seconds = 0;
  std::uint64_t frames = 0;              ///< Received by B in the measured interval.
  std::uint64_t sent = 0, received = 0;  ///< Whole stream (ramp and drain included).
  std::uint64_t written_off = 0;  ///< Window credit A gave up on after a stall (lost frames).
  std::uint64_t bad_frames = 0;   ///< Received with a wrong length or in several buffers.
  std::uint64_t card_drops = 0, switch_drops = 0, paravisor_drops = 0;
  /// The card's non-zero drop counters (DROP_RX_NO_BUF: "rx_no_buf", ...) over the stream.
  std::vector<std::pair<std::string, std::uint64_t>> card_drop_causes;
  NetCpu cpu;
  std::uint64_t card_run_ns = 0, card_wait_ns = 0;
  std::uint64_t lost() const { return sent > received ? sent - received : 0; }
};

struct NetLatency {
  double seconds = 0;
  Histogram rtt;               ///< Round trips, ns.
  std::uint64_t timeouts = 0;  ///< Pings with no answer within 100 ms.
  NetCpu cpu;
};

struct NetPathResult {
  std::string path;  ///< "vf" or "fallback"
  std::uint32_t bs = 0;
  NetStream stream;
  NetLatency latency;
  double fps() const { return stream.seconds > 0 ? stream.frames / stream.seconds : 0; }
  double gbps() const { return fps() * bs * 8 / 1e9; }
  double host_ns_per_frame() const { return per_frame(stream.cpu.host_ns()); }
  double guest_ns_per_frame() const { return per_frame(stream.cpu.guests_ns); }
  double per_frame(std::uint64_t ns) const {
    return stream.frames > 0 ? static_cast<double>(ns) / static_cast<double>(stream.frames) : 0;
  }
  double host_ns_per_rtt() const {
    const std::uint64_t n = latency.rtt.count();
    return n > 0 ? static_cast<double>(latency.cpu.host_ns()) / static_cast<double>(n) : 0;
  }
};

/// One frame size: its paths (vf first).
struct NetPoint {
  std::uint32_t bs = 0;
  std::vector<NetPathResult> paths;
};

/// The card, the switch and the guests of one run.
class NetBench {
 public:
  static Result<std::unique_ptr<NetBench>> open(const NetConfig& config);
  ~NetBench();
  /// Both phases for frames of `bs` bytes on one path (fresh guests).
  Result<NetPathResult> run(const NetConfig& config, bool vf_path, std::uint32_t bs);
  std::string describe() const { return card_->describe(); }
  const std::string& card_rt() const { return card_rt_; }

 private:
  NetBench() = default;
  std::unique_ptr<fpga::model::ModelCard> card_;
  std::unique_ptr<vmm::SoftSwitch> switch_;
  std::string switch_dir_;
  int switch_tid_ = -1;
  std::string card_rt_;
};

/// The table a person reads, for one frame size.
std::string net_text_report(const NetPoint& p);
/// {"tool", "time", "options", "card", "points": [{"bs", "paths": [...], "ratios"}], "jobs"}.
nlohmann::json net_document(const NetConfig& c, const std::string& card,
                            const std::vector<NetPoint>& points);

}  // namespace keel::perf
