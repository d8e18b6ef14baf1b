// EngineOptions::cuda (CudaTuning): the fields by name, their text form, ranges.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "cuda_tuning.h"
#include "engine.h"
#include "expect_throw.h"

using namespace glm;

TEST(CudaTuningTest, defaults_are_todays_behaviour) {
  const CudaTuning t;
  EXPECT_FALSE(t.rotary_fp16);
  EXPECT_TRUE(t.pdl);
  EXPECT_FALSE(t.attention_warp);
  EXPECT_EQ(t.attention_one_pass, 0);
  EXPECT_EQ(t.gemv_max_tokens, 4);
  EXPECT_EQ(t.gemv_mma_max_tokens, 16);
  EXPECT_TRUE(t.gemm_gelu_epilogue);
  EXPECT_FALSE(t.int8_lm_head);
  EXPECT_TRUE(t.int8_packed);
  EXPECT_EQ(t.int8_gemv_max_tokens, -1);
  EXPECT_EQ(t.int8_mma_max_tokens, 256);
  EXPECT_EQ(t.int8_w8a8_min_tokens, 0);
  EXPECT_EQ(t.fp8_gemv_max_tokens, 2);
  EXPECT_TRUE(t.graphs_at_start);
  EXPECT_EQ(t.attention_split_min_keys, 64);
  EXPECT_EQ(t.poison, 0);
  EXPECT_FALSE(t.timing);
  EXPECT_NO_THROW(validate_cuda_tuning(t));
}

TEST(CudaTuningTest, every_field_once_and_of_one_kind) {
  std::set<std::string> names;
  for (const CudaTuningField& f : cuda_tuning_fields()) {
    EXPECT_TRUE(names.insert(f.name).second) << f.name;
    EXPECT_TRUE((f.flag == nullptr) != (f.number == nullptr)) << f.name;
    EXPECT_LE(f.min, f.max) << f.name;
    EXPECT_GT(std::string(f.help).size(), 10u) << f.name;
  }
  EXPECT_EQ(names.size(), size_t(17));
}

TEST(CudaTuningTest, set_by_name_from_text) {
  CudaTuning t;
  set_cuda_tuning(t, "rotary_fp16", "true");
  set_cuda_tuning(t, "pdl", "0");
  set_cuda_tuning(t, "attention_warp", "ON");
  set_cuda_tuning(t, "int8_packed", "no");
  set_cuda_tuning(t, "gemv_max_tokens", "0");
  set_cuda_tuning(t, "int8_gemv_max_tokens", "-1");
  set_cuda_tuning(t, "int8_mma_max_tokens", "1048576");
  set_cuda_tuning(t, "poison", "3");
  set_cuda_tuning(t, "attention_one_pass", "8");
  EXPECT_EQ(t.attention_one_pass, 8);
  EXPECT_TRUE(t.rotary_fp16);
  EXPECT_FALSE(t.pdl);
  EXPECT_TRUE(t.attention_warp);
  EXPECT_FALSE(t.int8_packed);
  EXPECT_EQ(t.gemv_max_tokens, 0);
  EXPECT_EQ(t.int8_gemv_max_tokens, -1);
  EXPECT_EQ(t.int8_mma_max_tokens, 1 << 20);
  EXPECT_EQ(t.poison, 3);
}

TEST(CudaTuningTest, bad_names_and_values_are_named) {
  CudaTuning t;
  EXPECT_THROW_MSG(set_cuda_tuning(t, "mma_variant", "4"), "engine option cuda.mma_variant does not exist");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "mma_variant", "4"), "int8_packed");  // lists the real ones
  EXPECT_THROW_MSG(set_cuda_tuning(t, "pdl", "maybe"), "engine option cuda.pdl must be true or false, got \"maybe\"");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "pdl", ""), "cuda.pdl must be true or false");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "gemv_max_tokens", "9"), "cuda.gemv_max_tokens must be an integer in [0, 8]");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "poison", "1.5"), "cuda.poison must be an integer in [0, 3]");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "int8_gemv_max_tokens", "-2"), "in [-1, 8]");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "int8_mma_max_tokens", "99999999999999"), "int8_mma_max_tokens");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "attention_one_pass", "3"),
                   "engine option cuda.attention_one_pass must be 0, 2, 4 or 8, got \"3\"");
  EXPECT_THROW_MSG(set_cuda_tuning(t, "attention_one_pass", "16"), "must be 0, 2, 4 or 8");
  EXPECT_EQ(t.gemv_max_tokens, 4);  // unchanged by the failures
  EXPECT_EQ(t.attention_one_pass, 0);
  t.poison = 4;
  EXPECT_THROW_MSG(validate_cuda_tuning(t), "engine option cuda.poison must be an integer in [0, 3], got \"4\"");
  t.poison = 0;
  t.attention_one_pass = 6;
  EXPECT_THROW_MSG(validate_cuda_tuning(t), "cuda.attention_one_pass must be 0, 2, 4 or 8, got \"6\"");
}

TEST(CudaTuningTest, engine_create_validates_them) {
  EngineOptions o;
  o.checkpoint_dir = "/nonexistent-dir";
  o.cuda.gemv_max_tokens = -3;
  EXPECT_THROW_MSG(Engine::create(o), "engine option cuda.gemv_max_tokens must be an integer in [0, 8]");
  o.cuda.gemv_max_tokens = 2;  // valid: the next complaint is the checkpoint
  EXPECT_THROW_MSG(Engine::create(o), "/nonexistent-dir/config.json: cannot open");
}
