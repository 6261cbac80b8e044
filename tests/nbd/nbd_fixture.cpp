// The NBD server tests run on both paths: every TEST_P(NbdTest, ...) of nbd_*_test.cpp, once
// with a VF and once on the fallback.
#include "nbd_fixture.h"

namespace keel::test {

INSTANTIATE_TEST_SUITE_P(Paths, NbdTest, ::testing::Values("vf", "fallback"),
                         [](const auto& p) { return std::string(p.param); });

}  // namespace keel::test
