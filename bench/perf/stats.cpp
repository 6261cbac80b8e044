// keel-perf's accounting and pacing: latency histograms, per-direction statistics, the offset
// pattern of each --rw, the --rate_iops pacer and the recorder of a job's completions.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>

#include "run.h"  // (declares everything here)

namespace keel::perf {

// ---------------------------------------------------------------- histogram

void Histogram::add(std::uint64_t ns) noexcept {
  // Values below kSub have a bucket each; above, 64 buckets per power of two.
  std::size_t i = ns;
  if (ns >= kSub) {
    const unsigned shift =
        static_cast<unsigned>(std::bit_width(ns)) - 7;  // ns >> shift in [64, 128)
    i = std::size_t{shift + 1} * kSub + static_cast<std::size_t>((ns >> shift) - kSub);
  }
  ++buckets_[std::min(i, buckets_.size() - 1)];
  ++count_;
  sum_ += ns;
  sumsq_ += static_cast<long double>(ns) * static_cast<long double>(ns);
  min_ = std::min(min_, ns);
  max_ = std::max(max_, ns);
}

void Histogram::merge(const Histogram& o) noexcept {
  for (std::size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += o.buckets_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  sumsq_ += o.sumsq_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
}

double Histogram::stddev() const noexcept {
  if (count_ == 0) return 0;
  const long double n = static_cast<long double>(count_);
  const long double m = static_cast<long double>(sum_) / n;
  const long double var = sumsq_ / n - m * m;
  return var > 0 ? static_cast<double>(std::sqrt(var)) : 0.0;
}

std::uint64_t Histogram::percentile(double p) const noexcept {
  if (count_ == 0) return 0;
  const auto want = static_cast<std::uint64_t>(p * static_cast<double>(count_ - 1)) + 1;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    if (seen < want) continue;
    const std::size_t group = i / kSub, sub = i % kSub;
    // Group g > 0 covers [(kSub + sub) << (g - 1), (kSub + sub + 1) << (g - 1)); group 0 is exact.
    const std::uint64_t hi = group == 0 ? sub : ((kSub + sub + 1) << (group - 1)) - 1;
    return std::clamp(hi, min_, max_);
  }
  return max_;
}

void DirStats::merge(const DirStats& o) noexcept {
  ios += o.ios;
  bytes += o.bytes;
  slat.merge(o.slat);
  clat.merge(o.clat);
  lat.merge(o.lat);
}

// ---------------------------------------------------------------- workload

IoPattern::IoPattern(Rw rw, unsigned rwmixread, std::uint64_t blocks, std::uint64_t seed)
    : rw_(rw), rwmixread_(rwmixread), blocks_(std::max<std::uint64_t>(1, blocks)), rng_(seed) {}

IoPattern::Io IoPattern::next() {
  Io io;
  switch (rw_) {
    case Rw::read:
    case Rw::randread: io.write = false; break;
    case Rw::write:
    case Rw::randwrite: io.write = true; break;
    case Rw::rw:
    case Rw::randrw: io.write = rng_() % 100 >= rwmixread_; break;
  }
  if (is_random(rw_)) {
    io.block = rng_() % blocks_;
  } else {
    std::uint64_t& c = cursor_[io.write ? 1 : 0];
    io.block = c;
    c = c + 1 == blocks_ ? 0 : c + 1;
  }
  return io;
}

std::uint64_t IoPattern::redraw() { return rng_() % blocks_; }

RatePacer::RatePacer(std::uint64_t iops, Clock::time_point start, unsigned burst)
    : iops_(iops), origin_(start), burst_(std::max(1u, burst)) {}

Clock::time_point RatePacer::at(std::uint64_t n) const noexcept {
  const double ns = static_cast<double>(n) * 1e9 / static_cast<double>(iops_);
  return origin_ + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(ns)));
}

Clock::time_point RatePacer::due() const noexcept {
  return capped() ? at(n_) : Clock::time_point::min();
}

void RatePacer::take(Clock::time_point now) noexcept {
  if (!capped()) return;
  // Behind by more than `burst` IOs: move the schedule so that `burst` go now, this one first.
  const Clock::time_point last_of_burst = at(n_ + burst_ - 1);
  if (last_of_burst < now) origin_ += now - last_of_burst;
  ++n_;
}

PaceWait pace_wait(Clock::duration gap, unsigned inflight) noexcept {
  if (gap <= Clock::duration::zero()) return PaceWait::none;
  if (inflight == 0) return PaceWait::sleep;
  return gap >= std::chrono::milliseconds(1) ? PaceWait::interrupt : PaceWait::poll;
}

void Recorder::complete(bool is_write, std::uint32_t bytes, Clock::time_point taken,
                        Clock::time_point submitted, Clock::time_point done) noexcept {
  if (!counts(taken)) {
    ++ramp_ios;
    return;
  }
  auto ns = [](Clock::duration d) {
    return static_cast<std::uint64_t>(
        std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  };
  DirStats& d = is_write ? write : read;
  ++d.ios;
  d.bytes += bytes;
  d.slat.add(ns(submitted - taken));
  d.clat.add(ns(done - submitted));
  d.lat.add(ns(done - taken));
}

}  // namespace keel::perf
