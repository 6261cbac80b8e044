#include "keel/fpga/pf_function.h"

#include <string>

namespace keel::fpga {

Error pf_raises_no_interrupts(unsigned vector) {
  return make_error(Errc::invalid_argument,
                    "the PF raises no interrupts (vector " + std::to_string(vector) + ")");
}

Error pf_has_no_flr() {
  return make_error(Errc::invalid_argument,
                    "the PF cannot be reset with FLR here; reset VFs individually");
}

}  // namespace keel::fpga
