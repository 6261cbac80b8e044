// keel/log.h - how keel's libraries say what happened: components and levels, one sink.
//
// Libraries never write to stderr themselves: each names its component once
// (`constexpr log::Logger kLog{"paravisor"};`) and logs through it. Only a program's main()
// chooses where records go (set_sink) and how much is kept (set_level, `--log-level`); tests
// capture records with a sink of their own. State a caller acts on is a counter or a typed
// error, never log text.
//
// Threading: every function may be called from any thread. Records of one call reach the sink
// whole; the sink is called under a lock, one record at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "keel/result.h"

namespace keel::log {

enum class Level : std::uint8_t { trace, debug, info, warn, error, off };

/// "trace", "debug", "info", "warn", "error", "off".
std::string_view level_name(Level level) noexcept;
/// The inverse of level_name() (also "warning"). Errors: invalid_argument, naming the levels.
Result<Level> parse_level(std::string_view text);

struct Record {
  Level level;
  std::string_view component;  ///< "paravisor", "vhost-user", "nbd", ...
  std::string_view message;    ///< One line, no trailing newline.
};
using Sink = std::function<void(const Record&)>;

/// Where records go from now on; an empty function restores the default sink (one line per
/// record on stderr: "keel <component> <level>: <message>").
void set_sink(Sink sink);
/// Records below `level` are dropped before they are formatted. Default: info.
void set_level(Level level) noexcept;
Level level() noexcept;
inline bool enabled(Level level) noexcept { return level >= log::level() && level != Level::off; }

/// Hands one record to the sink when its level is enabled.
void write(Level level, std::string_view component, std::string_view message);

/// A component's logger: printf-style formatting, done only when the level is enabled.
class Logger {
 public:
  explicit constexpr Logger(std::string_view component) noexcept : component_(component) {}
  std::string_view component() const noexcept { return component_; }

  void logf(Level level, const char* format, ...) const __attribute__((format(printf, 3, 4)));
  void trace(const char* format, ...) const __attribute__((format(printf, 2, 3)));
  void debug(const char* format, ...) const __attribute__((format(printf, 2, 3)));
  void info(const char* format, ...) const __attribute__((format(printf, 2, 3)));
  void warn(const char* format, ...) const __attribute__((format(printf, 2, 3)));
  void error(const char* format, ...) const __attribute__((format(printf, 2, 3)));

 private:
  std::string_view component_;
};

}  // namespace keel::log
