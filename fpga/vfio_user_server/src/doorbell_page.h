// The doorbell page of a function served over vfio-user: a part of BAR0 the client maps
// (sparse mmap) and writes with plain stores, then signals on an eventfd (an ioeventfd of
// DEVICE_GET_REGION_IO_FDS), so a doorbell costs no message. The server applies what changed
// since it last looked, in slot order, to the function.
//
// A slot holds an NVMe doorbell's 16-bit value in bits 15:0 (NVMe: 31:16 are reserved) and the
// client's count of writes to it in 31:16, so a write of the same value again still changes the
// slot (a plain store could not show it, and an NVMe queue deleted and created again may well
// ring the same tail). The server applies a slot when it changed since it last looked, with
// its value; writes to one doorbell between two looks coalesce into the last, as the device
// needs only the newest tail or head. Server-side: one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "keel/fpga/function.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::vfio_user {

class DoorbellPage {
 public:
  /// `offset` and `bytes` (page multiples) in BAR0. The memfd is offset + bytes long (the
  /// client maps it at the BAR offset, as the sparse-mmap capability says); only the doorbell
  /// range is ever touched. Errors: io_error (memfd, mmap, eventfd).
  /// `slots`: how many 32-bit doorbells from the start of the range can be in use (the rest
  /// of the page is never looked at); 0: all of it.
  static Result<std::unique_ptr<DoorbellPage>> create(std::uint64_t offset, std::uint64_t bytes,
                                                      unsigned slots = 0);
  ~DoorbellPage();
  DoorbellPage(const DoorbellPage&) = delete;
  DoorbellPage& operator=(const DoorbellPage&) = delete;

  std::uint64_t offset() const noexcept { return offset_; }
  std::uint64_t bytes() const noexcept { return bytes_; }
  int memfd() const noexcept { return memfd_.get(); }
  int kick_fd() const noexcept { return kick_.get(); }
  bool covers(std::uint64_t off, std::uint32_t count) const noexcept {
    return off >= offset_ && off - offset_ + count <= bytes_;
  }
  /// Takes the kick and writes every 32-bit slot whose value changed to the function. Returns
  /// how many it wrote.
  unsigned apply(fpga::Function& fn) noexcept;
  /// A new client: the page and what was applied start from zero.
  void reset() noexcept;

 private:
  DoorbellPage() = default;
  std::uint64_t offset_ = 0, bytes_ = 0;
  UniqueFd memfd_, kick_;
  std::uint32_t* slots_ = nullptr;   ///< The shared range (bytes_ / 4 slots).
  std::vector<std::uint32_t> seen_;  ///< The page's value per slot when last looked at.
};

}  // namespace keel::vfio_user
