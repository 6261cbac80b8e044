// The NVMe driver's saved state as a new process reads it after a hand-over (servicing): the
// input is the blob's body; the harness puts a correct header and checksum on it, so the fuzzer
// explores the field parser and the bounds checks rather than the CRC. Invariants: decode never
// reads outside the blob or crashes; whatever decodes passes the bounds checks and encodes back
// to exactly the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "keel/crc32c.h"
#include "keel/drivers/nvme/saved_state.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace drv = keel::drivers::nvme;
  std::vector<std::byte> blob(20 + size);
  std::memcpy(blob.data(), "KEELNVMS", 8);
  const std::uint32_t fields[3] = {drv::kSavedDriverVersion,
                                   static_cast<std::uint32_t>(blob.size()), 0};
  for (int f = 0; f < 3; ++f) {
    for (int i = 0; i < 4; ++i) blob[8 + 4 * f + i] = static_cast<std::byte>(fields[f] >> (8 * i));
  }
  if (size > 0) std::memcpy(blob.data() + 20, data, size);
  const std::uint32_t crc = keel::crc32c(blob);
  for (int i = 0; i < 4; ++i) blob[16 + i] = static_cast<std::byte>(crc >> (8 * i));

  auto d = drv::decode(blob);
  if (!d.ok()) return 0;
  if (!drv::check(d->controller).ok()) std::abort();
  for (const auto& q : d->queue_pairs) {
    if (!drv::check(d->controller, q).ok()) std::abort();
  }
  if (drv::encode(*d) != blob) std::abort();  // one encoding per state
  return 0;
}
