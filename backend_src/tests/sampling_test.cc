#include "sampling.h"

#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "rng.h"
#include "weights.h"

using namespace glm;

TEST(SamplingTest, splitmix64_matches_the_reference_stream) {
  // SplitMix64 seeded with 0: the published first outputs.
  EXPECT_EQ(splitmix64(0, 0), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(splitmix64(0, 1), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(splitmix64(0, 2), 0x06C45D188009454Full);
  const float u = uniform01(0, 0);
  EXPECT_TRUE(u >= 0.0f && u < 1.0f);
  EXPECT_EQ(u, static_cast<float>(0xE220A8397B1DCDAFull >> 40) / 16777216.0f);
}

TEST(SamplingTest, greedy_is_argmax_lowest_id_on_ties) {
  std::vector<float> l = {0.5f, 2.0f, 2.0f, -1.0f};
  SamplingParams p;
  EXPECT_EQ(sample_token(l.data(), 4, p, 0, nullptr, 0), 1);
}

TEST(SamplingTest, repetition_penalty_is_hf) {
  std::vector<float> l = {2.0f, -2.0f, 1.0f};
  std::vector<int32_t> hist = {0, 1, 1};
  apply_repetition_penalty(l.data(), 3, 2.0f, hist.data(), 3);
  EXPECT_EQ(l[0], 1.0f);
  EXPECT_EQ(l[1], -4.0f);  // once, though id 1 appears twice
  EXPECT_EQ(l[2], 1.0f);
  // With the penalty, greedy picks a token it would not have.
  std::vector<float> g = {2.0f, 1.5f};
  std::vector<int32_t> h0 = {0};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  EXPECT_EQ(sample_token(g.data(), 2, p, 0, h0.data(), 1), 1);
}

TEST(SamplingTest, top_k_1_and_tiny_top_p_are_greedy) {
  std::vector<float> l = {0.1f, 3.0f, 2.9f, 0.0f};
  for (uint64_t off = 0; off < 50; ++off) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_k = 1;
    p.seed = 7;
    EXPECT_EQ(sample_token(l.data(), 4, p, off, nullptr, 0), 1);
    p.top_k = 0;
    p.top_p = 1e-6f;
    EXPECT_EQ(sample_token(l.data(), 4, p, off, nullptr, 0), 1);
  }
}

TEST(SamplingTest, top_k_and_top_p_restrict_the_support) {
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  std::map<int, int> seen_k, seen_p;
  for (uint64_t off = 0; off < 2000; ++off) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = 3;
    p.top_k = 2;
    ++seen_k[sample_token(l.data(), 4, p, off, nullptr, 0)];
    p.top_k = 0;
    p.top_p = 0.9f;  // 0.5 + 0.3 < 0.9 <= 0.95: keeps three
    ++seen_p[sample_token(l.data(), 4, p, off, nullptr, 0)];
  }
  EXPECT_EQ(seen_k.size(), size_t(2));
  EXPECT_TRUE(seen_k.count(0) && seen_k.count(1));
  EXPECT_EQ(seen_p.size(), size_t(3));
  EXPECT_FALSE(seen_p.count(3));
  // Frequencies near 0.5/0.8 and 0.3/0.8 (loose: 2000 draws).
  EXPECT_TRUE(std::abs(seen_k[0] / 2000.0 - 0.625) < 0.05);
}

TEST(SamplingTest, draws_depend_only_on_seed_and_offset) {
  std::vector<float> l(50);
  for (int i = 0; i < 50; ++i) l[static_cast<size_t>(i)] = static_cast<float>(i % 7) * 0.3f;
  SamplingParams p;
  p.temperature = 0.8f;
  p.seed = 1234;
  std::vector<int32_t> a, b, c;
  for (uint64_t off = 0; off < 40; ++off) {
    a.push_back(sample_token(l.data(), 50, p, off, nullptr, 0));
    b.push_back(sample_token(l.data(), 50, p, off, nullptr, 0));
  }
  p.seed = 1235;
  for (uint64_t off = 0; off < 40; ++off) c.push_back(sample_token(l.data(), 50, p, off, nullptr, 0));
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a != c);
}

TEST(SamplingTest, f16_conversion_round_trips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    if (((x >> 10) & 0x1F) == 0x1F && (x & 0x3FF)) continue;  // NaN payloads
    EXPECT_EQ(f32_to_f16(f16_to_f32(x)), x);
  }
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f32_to_f16(65520.0f), uint16_t(0x7C00));      // rounds to inf
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 4096.0f), uint16_t(0x3C00));  // tie -> even
  EXPECT_EQ(round_to_f16(1e-8f), 0.0f);
}
