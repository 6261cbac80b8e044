// Zero-copy receive of a virtio-net queue pair (net_worker.h): the guest's RX chains on the VF's
// RX ring, frames completed in place, chains taken back when the VF's queue pair stops.
#include <algorithm>
#include <cstring>

#include "net_worker.h"

namespace keel::vmm {

namespace {

namespace vnet = virtio::net;
using drivers::net::NetErrc;

constexpr std::size_t kHdr = sizeof(vnet::Hdr);

}  // namespace

void NetWorker::quiesce_vf_queue(drivers::net::QueuePair& qp) {
  // Frames the card finished are delivered: before the stop, and those it finished while
  // stopping (disable() waits for it and hands them back with their completions).
  if (!qp.caller_rx_buffers()) {
    deliver_driver_buffers(qp);
  } else {
    rx_vf_zero_copy(qp);
  }
  qp.disable();
  if (qp.caller_rx_buffers()) rx_vf_zero_copy(qp);
  // What disable() hands back is taken back here: TX chains by the caller, RX chains by
  // reclaim_posted(). Read and forgotten.
  std::array<drivers::net::RxCompletion, 64> rx;
  while (qp.poll_rx_buffers(rx) == rx.size()) {
  }
  std::array<drivers::net::TxCompletion, 64> tx;
  while (qp.reap(tx) == tx.size()) {
  }
}

void NetWorker::reclaim_posted() {
  if (rx_posted_.empty()) return;
  for (PostedRx& p : rx_posted_) rx_chains_.push_back(std::move(p.chain));
  rx_posted_.clear();
  rx_filled_ = 0;
  rx_frame_bad_ = false;
  std::sort(rx_chains_.begin(), rx_chains_.end(),
            [](const RxChain& a, const RxChain& b) { return a.seq < b.seq; });
}

void NetWorker::post_rx_chains(drivers::net::QueuePair& qp) {
  while (qp.rx_free() > 0) {
    if (rx_chains_.empty() && !take_rx_chain()) break;
    RxChain c = std::move(rx_chains_.front());
    rx_chains_.pop_front();
    // The card writes from chain offset kHdr to the end of the segment holding it (at most
    // 65535 bytes); the chain up to there must be guest RAM (the header goes in front).
    std::size_t skip = kHdr;
    std::uint64_t gpa = 0;
    std::uint32_t room = 0;
    bool ram = true;
    for (const ChainSeg& s : c.segs) {
      if (skip >= s.len) {
        ram = ram && in_guest_memory(pv_.memory_, s.gpa, s.len);
        skip -= s.len;
        continue;
      }
      gpa = s.gpa + skip;
      room = static_cast<std::uint32_t>(std::min<std::uint64_t>(s.len - skip, 0xFFFF));
      ram = ram && in_guest_memory(pv_.memory_, s.gpa, skip + room);
      break;
    }
    if (room == 0 || !ram) {
      c_.rx_bad_chains.fetch_add(1, std::memory_order_relaxed);
      rxq_.push_used(c.head, 0);
      pushed_[0] = true;
      continue;
    }
    const std::uint64_t ck = (epoch_ & 0xFFFFFFFFu) << 32 | std::uint64_t{rx_posts_};
    if (const NetErrc e = qp.post_rx({gpa, room, ck}); e != NetErrc::ok) {
      rx_chains_.push_front(std::move(c));
      if (e == NetErrc::down || e == NetErrc::gone) {
        pv_.vf_failed(std::string("VF refused an RX buffer: ") + drivers::net::to_string(e));
      }
      break;
    }
    rx_posted_.push_back(PostedRx{std::move(c), rx_posts_++, 0});
  }
  qp.flush();
}

unsigned NetWorker::rx_vf_zero_copy(drivers::net::QueuePair& qp) {
  std::array<drivers::net::RxCompletion, 64> done;
  unsigned frames = 0;
  for (;;) {
    const unsigned n = qp.poll_rx_buffers(done);
    for (unsigned i = 0; i < n; ++i) {
      const drivers::net::RxCompletion& c = done[i];
      // Buffers of an older epoch were taken back when the VF was let go; unfilled ones of
      // a stop are taken back by reclaim_posted().
      if ((c.cookie >> 32) != (epoch_ & 0xFFFFFFFFu) || c.status == knic::kFlushed) continue;
      if (rx_filled_ >= rx_posted_.size() ||
          rx_posted_[rx_filled_].id != (c.cookie & 0xFFFFFFFFu)) {
        // The driver returns buffers in posting order: nothing would match from here on.
        pv_.vf_failed("receiveq " + std::to_string(pair_) +
                      ": the VF returned a buffer out of order");
        return frames;
      }
      PostedRx& p = rx_posted_[rx_filled_++];
      p.written = c.len;
      rx_frame_bad_ = rx_frame_bad_ || c.status != knic::kOk;
      if (c.more && rx_filled_ < rx_posted_.size()) continue;
      finish_vf_frame(rx_filled_, c.frame, rx_frame_bad_ || c.more);
      rx_filled_ = 0;
      rx_frame_bad_ = false;
      ++frames;
    }
    if (n < done.size()) break;
  }
  return frames;
}

void NetWorker::finish_vf_frame(std::size_t bufs, std::uint32_t frame_len, bool bad) {
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < bufs; ++i) total += rx_posted_[i].written;
  // A frame in several chains needs MRG_RXBUF (num_buffers); zero-copy runs only with it.
  bad = bad || total != frame_len || total < knic::kEthHeader || (!mrg_ && bufs > 1);
  // In place unless a frame waits in the backlog before it (the order of frames is kept):
  // then it is copied out behind that one, and its chains take frames again.
  bool in_place = !bad && backlog_.empty();
  if (in_place) {
    vnet::Hdr hdr{};
    hdr.num_buffers = static_cast<std::uint16_t>(bufs);
    hdr.gso_type = vnet::kGsoNone;
    in_place =
        write_chain(rx_posted_[0].chain.segs, 0, reinterpret_cast<const std::uint8_t*>(&hdr), kHdr);
    // Later buffers carry no header: their bytes move from offset kHdr to the start.
    for (std::size_t i = 1; i < bufs && in_place; ++i) {
      const PostedRx& p = rx_posted_[i];
      scratch_.clear();
      in_place = gather(p.chain.segs, kHdr, scratch_, p.written) && scratch_.size() >= p.written &&
                 write_chain(p.chain.segs, 0, scratch_.data(), p.written);
    }
    if (in_place) {
      c_.rx_vf.fetch_add(1, std::memory_order_relaxed);
      c_.rx_zero_copy.fetch_add(1, std::memory_order_relaxed);
      if (bufs > 1) c_.rx_moved.fetch_add(1, std::memory_order_relaxed);
      for (std::size_t i = 0; i < bufs; ++i) {
        const PostedRx& p = rx_posted_.front();
        rxq_.push_used(p.chain.head, p.written + (i == 0 ? static_cast<std::uint32_t>(kHdr) : 0));
        rx_posted_.pop_front();
      }
      pushed_[0] = true;
      return;
    }
  }
  std::vector<std::uint8_t> frame;
  if (!bad) {
    for (std::size_t i = 0; i < bufs && !bad; ++i) {
      const PostedRx& p = rx_posted_[i];
      const std::size_t at = frame.size();
      bad = !gather(p.chain.segs, kHdr, frame, p.written) || frame.size() - at < p.written;
      frame.resize(at + p.written);
    }
  }
  for (std::size_t i = 0; i < bufs; ++i) {
    rx_chains_.push_back(std::move(rx_posted_.front().chain));
    rx_posted_.pop_front();
  }
  std::sort(rx_chains_.begin(), rx_chains_.end(),
            [](const RxChain& a, const RxChain& b) { return a.seq < b.seq; });
  if (bad) {
    // The card dropped it (it counts why) or it does not add up.
    c_.rx_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  receive(frame, true);
}

bool NetWorker::write_chain(const std::vector<ChainSeg>& segs, std::size_t off,
                            const std::uint8_t* src, std::size_t len) {
  for (const ChainSeg& s : segs) {
    if (len == 0) break;
    if (off >= s.len) {
      off -= s.len;
      continue;
    }
    std::uint64_t gpa = s.gpa + off;
    std::uint64_t left = std::min<std::uint64_t>(s.len - off, len);
    off = 0;
    while (left > 0) {
      const std::uint64_t run = std::min(left, region_run(pv_.memory_, gpa));
      std::byte* p = pv_.memory_.translate(gpa, run);
      if (run == 0 || p == nullptr) return false;
      std::memcpy(p, src, run);
      src += run;
      len -= run;
      gpa += run;
      left -= run;
    }
  }
  return len == 0;
}

}  // namespace keel::vmm
