// keel/result.h - typed errors and an expected-style result shared by every layer.
//
// C++20 has no std::expected; this is the small subset keel needs. Control-path functions
// return Status / Result<T> carrying an error code and a message that names what was wrong
// and what to do. Hot paths use their own allocation-free status types.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace keel {

/// Error categories. Every public function documents which of these it can return.
enum class Errc {
  invalid_argument,  ///< The caller passed something malformed or out of range.
  out_of_range,      ///< An address, offset or index lies outside what exists.
  not_found,         ///< The named thing (card, VF, queue, file) does not exist.
  unavailable,       ///< The backend cannot run here (no board, no driver, no permission).
  timeout,           ///< A bounded wait ran out.
  gone,              ///< The device disappeared (surprise removal, FLR).
  device_error,      ///< The device reported an error status.
  dma_fault,         ///< A DMA was refused by the IOMMU.
  no_memory,         ///< An allocation or mapping failed.
  busy,              ///< The resource is in use; try again later or release it first.
  io_error,          ///< A host system call failed.
};

/// A short stable name for an error category ("timeout", "gone", ...).
std::string_view errc_name(Errc code) noexcept;

struct Error {
  Errc code;
  std::string message;
};

/// The result of an operation that produces a T or fails with an Error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & {
    assert(ok() && "Result::value() on an error");
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok() && "Result::value() on an error");
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok() && "Result::value() on an error");
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  const Error& error() const {
    assert(!ok() && "Result::error() on a value");
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

/// The result of an operation that produces nothing or fails with an Error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design

  bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const Error& error() const {
    assert(!ok_ && "Status::error() on success");
    return error_;
  }

 private:
  Error error_{Errc::invalid_argument, {}};
  bool ok_ = true;
};

inline Error make_error(Errc code, std::string message) { return Error{code, std::move(message)}; }

/// "timeout: waited 1000 ms for CSTS.RDY" - for logs and CLI output.
std::string to_string(const Error& error);

}  // namespace keel
