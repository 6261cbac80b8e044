// Per-module testbenches of the RTL, Verilated on their own: random valid/ready stalls against
// a C++ reference of what the module must do.
#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <random>
#include <vector>

#include "Vkeel_fifo.h"
#include "Vkeel_qos_arbiter.h"
#include "verilated.h"

namespace {

// One testbench: a context and a model, reset for a few cycles.
template <typename Top>
struct Bench {
  Bench() : ctx(std::make_unique<VerilatedContext>()), top(std::make_unique<Top>(ctx.get())) {
    top->clk = 0;
    top->rst = 1;
    top->eval();
    for (int i = 0; i < 4; ++i) edge();
    top->rst = 0;
    top->eval();
  }
  ~Bench() { top->final(); }
  void edge() {
    top->clk = 1;
    top->eval();
    top->clk = 0;
    top->eval();
  }
  std::unique_ptr<VerilatedContext> ctx;
  std::unique_ptr<Top> top;
};

// keel_fifo (WIDTH 16, DEPTH 8): pushes, pops and double pops at random against a deque.
TEST(RtlModules, FifoUnderRandomStalls) {
  Bench<Vkeel_fifo> b;
  auto& t = *b.top;
  std::mt19937 rng(7);
  std::deque<std::uint16_t> model;
  std::uint16_t next = 1;
  unsigned pushes = 0, pops = 0, double_pops = 0;
  for (int cycle = 0; cycle < 200000; ++cycle) {
    t.s_valid = rng() % 3 != 0;
    t.s_data = next;
    t.m_ready = rng() % 2;
    t.m_pop2 = model.size() >= 2 && rng() % 5 == 0;
    t.eval();
    ASSERT_EQ(t.count, model.size()) << "cycle " << cycle;
    ASSERT_EQ(t.s_ready != 0, model.size() < 8);
    ASSERT_EQ(t.m_valid != 0, !model.empty());
    if (!model.empty()) {
      ASSERT_EQ(t.m_data, model[0]) << "cycle " << cycle;
    }
    if (model.size() >= 2) {
      ASSERT_EQ(t.m_data1, model[1]) << "cycle " << cycle;
    }
    const bool push = t.s_valid && t.s_ready;
    const unsigned pop = t.m_pop2 ? 2 : (t.m_valid && t.m_ready ? 1 : 0);
    b.edge();
    for (unsigned i = 0; i < pop; ++i) model.pop_front();
    if (push) {
      model.push_back(next++);
      ++pushes;
    }
    pops += pop;
    double_pops += pop == 2;
  }
  EXPECT_GT(pushes, 50000u);
  EXPECT_GT(double_pops, 5000u);
  EXPECT_LE(pops, pushes);
}

// keel_qos_arbiter (4 VFs): grants only requesting VFs, never idles while one requests, and
// with every VF requesting gives each exactly its weight per round.
TEST(RtlModules, QosArbiterSharesAndWorkConservation) {
  Bench<Vkeel_qos_arbiter> b;
  auto& t = *b.top;
  std::mt19937 rng(11);
  const unsigned weights[4] = {3, 1, 5, 2};
  t.weight = weights[0] | (weights[1] << 8) | (weights[2] << 16) | (weights[3] << 24);
  // Phase 1: random requests and random acceptance.
  for (int cycle = 0; cycle < 100000; ++cycle) {
    t.req = rng() % 16;
    t.take = rng() % 3 != 0;
    t.eval();
    ASSERT_EQ(t.grant_valid != 0, t.req != 0) << "work conserving, cycle " << cycle;
    if (t.grant_valid) {
      ASSERT_NE((t.req >> t.grant_vf) & 1u, 0u) << "cycle " << cycle;
    }
    b.edge();
  }
  // Phase 2: everyone always requests; count grants over whole rounds.
  std::vector<unsigned> grants(4, 0);
  t.req = 0xF;
  for (int cycle = 0; cycle < 11 * 1000; ++cycle) {
    t.take = 1;
    t.eval();
    ASSERT_TRUE(t.grant_valid);
    ++grants[t.grant_vf];
    b.edge();
  }
  for (unsigned v = 0; v < 4; ++v) {
    EXPECT_NEAR(static_cast<double>(grants[v]) / 11000.0, weights[v] / 11.0, 0.002) << "VF " << v;
  }
  // Phase 3: stalls (no take) never move the grant.
  t.req = 0x5;
  t.take = 0;
  t.eval();
  const unsigned held = t.grant_vf;
  for (int i = 0; i < 100; ++i) {
    b.edge();
    t.eval();
    ASSERT_EQ(t.grant_vf, held);
  }
}

}  // namespace
