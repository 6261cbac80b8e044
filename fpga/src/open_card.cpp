// Backend registry: turns "model", "sim", "vfio:BDF", "xrt:N", "vfio-user:SOCKET" into a Card.
#include <charconv>
#include <cstdlib>
#include <string>
#include <system_error>

#include "keel/fpga/card.h"
#include "keel/fpga/model/model_card.h"
#include "keel/fpga/vfio_user/vfio_user_card.h"
#ifdef KEEL_HAVE_SIM
#include "keel/fpga/sim/sim_card.h"
#endif
#include "keel/pci/pci_address.h"
#ifdef KEEL_HAVE_VFIO
#include "keel/fpga/vfio/vfio_card.h"
#endif
#ifdef KEEL_HAVE_XRT
#include "keel/fpga/xrt/xrt_card.h"
#endif

namespace keel::fpga {

namespace {

// "vfio:<PCI address of the PF>". Real boards ignore CardOptions (they are what they are).
Result<std::unique_ptr<Card>> open_vfio(std::string_view spec, std::string_view arg) {
  auto address = pci::parse_pci_address(arg);
  if (!address.ok()) {
    return make_error(Errc::invalid_argument,
                      "card spec '" + std::string(spec) + "': " + address.error().message);
  }
#ifdef KEEL_HAVE_VFIO
  auto card = vfio::VfioCard::open(*address);
  if (!card.ok()) return card.error();
  return std::unique_ptr<Card>(std::move(card).value());
#else
  return make_error(Errc::unavailable,
                    "the 'vfio' backend is not part of this build of keel (linux/vfio.h was "
                    "not found when it was configured)");
#endif
}

// "xrt:<device index>", a decimal number.
Result<std::unique_ptr<Card>> open_xrt(std::string_view spec, std::string_view arg) {
  unsigned index = 0;
  const auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), index);
  if (arg.empty() || ec != std::errc() || end != arg.data() + arg.size()) {
    return make_error(Errc::invalid_argument,
                      "card spec '" + std::string(spec) +
                          "': expected xrt:<device index>, a decimal number such as xrt:0");
  }
#ifdef KEEL_HAVE_XRT
  auto card = xrt::XrtCard::open(index);
  if (!card.ok()) return card.error();
  return std::unique_ptr<Card>(std::move(card).value());
#else
  return make_error(Errc::unavailable,
                    "the 'xrt' backend is not part of this build of keel (XRT was not found "
                    "when it was configured: install libxrt-dev or Xilinx XRT)");
#endif
}

}  // namespace

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
  if (kind == "vfio") return open_vfio(spec, arg);
  if (kind == "vfio-user") {
    // A card served by keel-card: its pf.sock or one of its vf<N>.sock, or a NIC function's
    // nicpf.sock / nicvf<N>.sock (a card whose nic() is that). The card is what it is
    // (CardOptions do not apply).
    if (arg.empty()) {
      return make_error(
          Errc::invalid_argument,
          "card spec '" + std::string(spec) +
              "': expected vfio-user:<socket>, e.g. vfio-user:/run/keel/keel0/vf0.sock");
    }
    auto card = options.adopt_connection >= 0
                    ? vfio_user::VfioUserCard::adopt(std::string(arg), options.adopt_connection)
                    : vfio_user::VfioUserCard::open(std::string(arg));
    if (!card) return card.error();
    return std::unique_ptr<Card>(std::move(card).value());
  }
  if (kind == "xrt") return open_xrt(spec, arg);
  if (kind == "sim") {
#ifdef KEEL_HAVE_SIM
    if (!arg.empty()) {
      return make_error(Errc::invalid_argument,
                        "card spec 'sim' takes no argument, got '" + std::string(spec) + "'");
    }
    sim::SimConfig cfg;
    cfg.card = options;
    auto card = sim::SimCard::create(cfg);
    if (!card) return card.error();
    return std::unique_ptr<Card>(std::move(card).value());
#else
    return make_error(Errc::unavailable,
                      "the '" + std::string(kind) +
                          "' backend is not part of this build of keel (available: model)");
#endif
  }
  return make_error(Errc::invalid_argument,
                    "unknown card spec '" + std::string(spec) +
                        "': use model, sim, vfio:<PCI address>, xrt:<device index> or "
                        "vfio-user:<socket>");
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
#ifdef KEEL_HAVE_SIM
  out.push_back("sim");
#endif
  if (const char* env = std::getenv("KEEL_CARD"); env != nullptr && *env != '\0') {
    const std::string board(env);
    if (board != "model" && board != "sim") out.push_back(board);
  }
  return out;
}

}  // namespace keel::fpga
