#include "keel/result.h"

namespace keel {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument: return "invalid argument";
    case Errc::out_of_range: return "out of range";
    case Errc::not_found: return "not found";
    case Errc::unavailable: return "unavailable";
    case Errc::timeout: return "timeout";
    case Errc::gone: return "device gone";
    case Errc::device_error: return "device error";
    case Errc::dma_fault: return "DMA fault";
    case Errc::no_memory: return "out of memory";
    case Errc::busy: return "busy";
    case Errc::io_error: return "I/O error";
  }
  return "unknown error";
}

std::string to_string(const Error& error) {
  std::string s(errc_name(error.code));
  s += ": ";
  s += error.message;
  return s;
}

}  // namespace keel
