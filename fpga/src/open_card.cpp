// Backend registry: turns "model", "sim", "vfio:BDF", "xrt:N" into a Card.
#include <cstdlib>
#include <string>

#include "keel/fpga/card.h"
#include "keel/fpga/model/model_card.h"

namespace keel::fpga {

Result<std::unique_ptr<Card>> open_card(std::string_view spec, const CardOptions& options) {
  const auto colon = spec.find(':');
  const std::string_view kind = spec.substr(0, colon);
  const std::string_view arg = colon == std::string_view::npos ? "" : spec.substr(colon + 1);
  if (kind == "model") {
    if (!arg.empty()) {
      return make_error(Errc::invalid_argument,
                        "card spec 'model' takes no argument, got '" + std::string(spec) + "'");
    }
    model::ModelConfig cfg;
    cfg.card = options;
    auto card = model::ModelCard::create(cfg);
    if (!card) return card.error();
    return std::unique_ptr<Card>(std::move(card).value());
  }
  if (kind == "sim" || kind == "vfio" || kind == "xrt") {
    return make_error(Errc::unavailable,
                      "the '" + std::string(kind) +
                          "' backend is not part of this build of keel (available: model)");
  }
  return make_error(Errc::invalid_argument,
                    "unknown card spec '" + std::string(spec) +
                        "': use model, sim, vfio:<PCI address> or xrt:<device index>");
}

std::vector<std::string> test_backends() {
  // KEEL_TEST_BACKENDS=model,sim pins the list (ctest runs one backend per entry).
  if (const char* pinned = std::getenv("KEEL_TEST_BACKENDS"); pinned != nullptr && *pinned) {
    std::vector<std::string> out;
    std::string_view rest(pinned);
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      if (comma != 0) out.emplace_back(rest.substr(0, comma));
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    return out;
  }
  std::vector<std::string> out{"model"};
  if (const char* env = std::getenv("KEEL_CARD"); env != nullptr && *env != '\0') {
    const std::string board(env);
    if (board != "model") out.push_back(board);
  }
  return out;
}

}  // namespace keel::fpga
