// apps/common/app_log.h - how keel's programs set up logging: the sink and the level are a
// program's choice, never a library's (keel/log.h).
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace keel::apps {

/// Adds `--log-level` (trace, debug, info, warn, error, off; default info) to `app`.
void add_log_option(CLI::App& app, std::string& level);

/// After parsing: sends keel's log to stderr as "<program> <seconds since start> <component>
/// <level>: <message>" and applies the level. Returns false (after saying why on stderr) when
/// the level is not one of the names.
bool start_logging(const char* program, const std::string& level);

}  // namespace keel::apps
