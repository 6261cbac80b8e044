// keel/drivers/nvme/io_status.h - the typed outcome of one IO.
#pragma once

#include <cstdint>
#include <string>

#include "keel/fpga/dma.h"
#include "keel/wire/nvme.h"

namespace keel::drivers::nvme {

/// Why an IO did not succeed. Allocation-free, so it can travel on the hot path.
enum class IoErrc : std::uint8_t {
  ok,
  nvme,        ///< The device completed the command with an error status (see IoStatus::nvme).
  timeout,     ///< The command did not complete in time; it was aborted or the controller reset.
  gone,        ///< The device disappeared (surprise removal) or was reset under the queue.
  invalid,     ///< The request cannot be expressed (bad segments, zero length, past the end).
  too_large,   ///< Larger than the controller's maximum transfer size.
  queue_full,  ///< No free command slot; poll for completions first.
};

struct IoStatus {
  IoErrc code = IoErrc::ok;
  keel::nvme::StatusCode nvme = 0;  ///< With IoErrc::nvme: the status as libnvme encodes it.

  constexpr bool ok() const noexcept { return code == IoErrc::ok; }
  static constexpr IoStatus success() noexcept { return {}; }
  static constexpr IoStatus error(IoErrc c) noexcept { return {c, 0}; }
  static constexpr IoStatus device(keel::nvme::StatusCode s) noexcept { return {IoErrc::nvme, s}; }
};

/// "NVMe status 0x0280 (LBA Out of Range): ..." - readable text, libnvme's status strings.
std::string to_string(IoStatus status);

/// One completed request, as process_completions hands it back.
struct Completion {
  std::uint64_t tag;  ///< What the caller passed at submission.
  IoStatus status;
};

/// A piece of a data buffer: device-visible address and length.
struct Segment {
  fpga::Iova iova;
  std::uint32_t bytes;
};

}  // namespace keel::drivers::nvme
