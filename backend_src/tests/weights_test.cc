#include "weights.h"

#include <cmath>

#include <gtest/gtest.h>

#include "config.h"
#include "e4m3.h"
#include "engine.h"
#include "expect_throw.h"

using namespace glm;

static ModelConfig small_config() {
  return parse_model_config(R"({"vocab_size": 40, "hidden_size": 16, "num_attention_heads": 2, "num_layers": 3,
    "inner_hidden_size": 24, "layernorm_epsilon": 1e-5, "max_sequence_length": 64, "position_encoding_2d": true,
    "bos_token_id": 1, "eos_token_id": 2, "mask_token_id": 3, "gmask_token_id": 4, "pad_token_id": 0})",
                            "test");
}

TEST(WeightsTest, config_fields_and_alpha) {
  ModelConfig c = small_config();
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_FALSE(c.int8);
  EXPECT_TRUE(std::fabs(c.residual_alpha() - std::sqrt(56.0f)) < 1e-6f);
  EXPECT_THROW_MSG(parse_model_config("[]", "cfg.json"), "cfg.json: expected a JSON object");
}

TEST(WeightsTest, random_weights_have_every_tensor_with_its_shape) {
  ModelConfig c = small_config();
  ModelWeights w = random_weights(c, 1, DType::kF32, false);
  auto all = w.by_name();
  EXPECT_EQ(all.size(), size_t(1 + 12 * 3 + 2 + 1));
  EXPECT_TRUE(all.at("transformer.layers.2.attention.query_key_value.weight").shape == (std::vector<int64_t>{48, 16}));
  EXPECT_TRUE(all.at("transformer.layers.0.mlp.dense_4h_to_h.weight").shape == (std::vector<int64_t>{16, 24}));
  EXPECT_TRUE(all.at("lm_head.weight").shape == (std::vector<int64_t>{40, 16}));
  for (const auto& kv : all) EXPECT_FALSE(kv.second.empty());
  // Deterministic in the seed.
  ModelWeights again = random_weights(c, 1, DType::kF32, false);
  ModelWeights other = random_weights(c, 2, DType::kF32, false);
  auto a = to_float(w.layers[1].dense.weight), b = to_float(again.layers[1].dense.weight),
       d = to_float(other.layers[1].dense.weight);
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a != d);
  // Layer norms start at 1.
  EXPECT_EQ(to_float(w.layers[0].input_layernorm_weight)[5], 1.0f);
}

TEST(WeightsTest, random_int8_weights_carry_scales) {
  ModelConfig c = small_config();
  ModelWeights w = random_weights(c, 3, DType::kF16, true);
  auto all = w.by_name();
  EXPECT_EQ(all.size(), size_t(1 + 12 * 3 + 2 + 1 + 4 * 3));
  const TensorView& s = all.at("transformer.layers.1.mlp.dense_h_to_4h.weight_scale");
  EXPECT_TRUE(s.dtype == DType::kF16);
  EXPECT_TRUE(s.shape == std::vector<int64_t>{24});
  EXPECT_TRUE(w.layers[1].dense_h_to_4h.weight.dtype == DType::kI8);
  EXPECT_TRUE(w.lm_head.weight.dtype == DType::kF16);
  auto deq = dequantize(w.layers[1].dense_h_to_4h);
  EXPECT_EQ(deq.size(), size_t(24 * 16));
}

TEST(WeightsTest, quantize_int8_rows_like_the_converter) {
  // Row 0: amax 1.27 -> scale fp16(0.01); row 1 all zero -> scale 1, q 0.
  std::vector<float> w = {1.27f, -0.635f, 0.005f, 0.015f, 0.0f, 0.0f, 0.0f, 0.0f};
  QuantizedRows q = quantize_int8_rows(w.data(), 2, 4);
  const float s0 = f16_to_f32(q.scale[0]);
  EXPECT_EQ(q.scale[0], f32_to_f16(1.27f / 127.0f));
  EXPECT_EQ(q.q[0], int8_t(std::nearbyint(1.27f / s0)));
  EXPECT_EQ(q.q[1], int8_t(std::nearbyint(-0.635f / s0)));
  EXPECT_EQ(q.scale[1], uint16_t(0x3C00));
  EXPECT_EQ(q.q[4], int8_t(0));
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(std::fabs(q.q[static_cast<size_t>(i)] * s0 - w[static_cast<size_t>(i)]) <= s0 / 2 + 1e-7f);
}

TEST(WeightsTest, missing_files_are_named) {
  EXPECT_THROW_MSG(load_weights("/nonexistent-dir", small_config()), "/nonexistent-dir/model.safetensors: cannot open");
  EXPECT_THROW_MSG(load_model_config("/nonexistent-dir"), "/nonexistent-dir/config.json: cannot open");
}

TEST(WeightsTest, fp8_quantization_in_the_config) {
  const std::string base = R"({"vocab_size": 40, "hidden_size": 16, "num_attention_heads": 2, "num_layers": 3,
    "inner_hidden_size": 24, "layernorm_epsilon": 1e-5, "max_sequence_length": 64, "position_encoding_2d": true,
    "bos_token_id": 1, "eos_token_id": 2, "mask_token_id": 3, "gmask_token_id": 4, "pad_token_id": 0, )";
  ModelConfig c = parse_model_config(base + R"("quantization": {"fp8": true}})", "test");
  EXPECT_TRUE(c.fp8);
  EXPECT_FALSE(c.int8);
  EXPECT_THROW_MSG(parse_model_config(base + R"("quantization": {"fp8": 1}})", "cfg.json"),
                   "quantization.fp8");
  EXPECT_THROW_MSG(parse_model_config(base + R"("quantization": {"fp8": true, "int8": true}})", "cfg.json"),
                   "int8 and fp8 are two formats");
}

TEST(WeightsTest, e4m3_values) {
  EXPECT_EQ(e4m3_to_f32(0x00), 0.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_f32(0xB8), -1.0f);
  EXPECT_EQ(e4m3_to_f32(0x7E), 448.0f);  // largest finite
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xFF)));
}

TEST(WeightsTest, e4m3_encoding_rounds_to_nearest_even_and_saturates) {
  EXPECT_EQ(f32_to_e4m3(1.0f), 0x38);
  EXPECT_EQ(f32_to_e4m3(-1.0f), 0xB8);
  EXPECT_EQ(f32_to_e4m3(448.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(1000.0f), 0x7E);   // saturates
  EXPECT_EQ(f32_to_e4m3(-1e30f), 0xFE);
  EXPECT_EQ(f32_to_e4m3(1.0625f), 0x38);   // halfway 1 .. 1.125: the even code
  EXPECT_EQ(f32_to_e4m3(1.1875f), 0x3A);   // halfway 1.125 .. 1.25: the even code
  EXPECT_EQ(f32_to_e4m3(1.07f), 0x39);
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.0f, -10)), 0x00);  // halfway 0 .. smallest subnormal
  EXPECT_EQ(f32_to_e4m3(std::nanf("")), 0x7F);
  for (int c = 0; c < 256; ++c) {  // every finite code encodes to itself
    if ((c & 0x7F) == 0x7F) continue;
    const float v = e4m3_to_f32(static_cast<uint8_t>(c));
    if (v == 0.0f) continue;  // -0 and +0
    EXPECT_EQ(f32_to_e4m3(v), c) << c;
  }
  const float zeros[3] = {0, 0, 0}, row[3] = {2.0f, -0.5f, 0.0f};
  uint8_t codes[3];
  EXPECT_EQ(quantize_e4m3_row(zeros, 3, codes), 1.0f);
  EXPECT_EQ(codes[0], 0);
  EXPECT_EQ(quantize_e4m3_row(row, 3, codes), 2.0f / 448.0f);
  EXPECT_EQ(codes[0], 0x7E);
}
