#include "keel/drivers/nvme/io_status.h"

extern "C" {  // libnvme 1.3 headers carry no C++ linkage guards
#include <nvme/util.h>
}

#include <cstdio>

namespace keel::drivers::nvme {

std::string to_string(IoStatus status) {
  switch (status.code) {
    case IoErrc::ok: return "success";
    case IoErrc::nvme: {
      char buf[48];
      std::snprintf(buf, sizeof buf, "NVMe status 0x%04x (SCT %u, SC 0x%02x): ", status.nvme,
                    keel::nvme::status_sct(status.nvme), keel::nvme::status_sc(status.nvme));
      return buf + std::string(nvme_status_to_string(keel::nvme::status_base(status.nvme), false));
    }
    case IoErrc::timeout: return "timed out (aborted, or the controller was reset)";
    case IoErrc::gone: return "device gone (removed or reset under the queue)";
    case IoErrc::invalid: return "invalid request (bad buffer segments, length or LBA range)";
    case IoErrc::too_large: return "larger than the controller's maximum transfer size";
    case IoErrc::queue_full: return "queue full: reap completions before submitting more";
  }
  return "unknown";
}

}  // namespace keel::drivers::nvme
