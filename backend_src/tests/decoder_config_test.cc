// The chatglm_decoder model configuration (triton/decoder_config.h), without Triton:
// the engine's CUDA tuning options as parameters cuda_<name>.
#include "decoder_config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>

#include "cuda_tuning.h"
#include "expect_throw.h"

using glmtriton::parse_decoder_config;

namespace {

std::string model_config(const std::map<std::string, std::string>& params) {
  std::string p;
  for (const auto& kv : params)
    p += (p.empty() ? "" : ", ") + ("\"" + kv.first + "\": {\"string_value\": \"" + kv.second + "\"}");
  return R"({"name": "chatglm_decoder", "max_batch_size": 8, "model_transaction_policy": {"decoupled": true},
             "parameters": {)" + p + "}}";
}

}  // namespace

TEST(DecoderConfigTest, reads_the_model_config) {
  auto c = parse_decoder_config(model_config({{"checkpoint_dir", "ckpt"}, {"max_queue", "5"}}), {}, "/models/m", nullptr);
  EXPECT_EQ(c.max_batch_size, 8);
  EXPECT_TRUE(c.decoupled);
  EXPECT_EQ(c.engine.checkpoint_dir, "/models/m/ckpt");
  EXPECT_EQ(c.engine.max_queue, 5);
  EXPECT_THROW_MSG(parse_decoder_config(model_config({{"checkpoint_dir", "c"}, {"bogus", "1"}}), {}, ".", nullptr),
                   "unknown parameter 'bogus'");
  EXPECT_THROW_MSG(parse_decoder_config("{\"a\": 1, \"a\": 2}", {}, ".", nullptr),
                   "cannot parse the model configuration: JSON duplicate object key \"a\"");
}

TEST(DecoderConfigTest, cuda_tuning_parameters) {
  const auto& keys = glmtriton::known_parameter_keys();
  for (const glm::CudaTuningField& f : glm::cuda_tuning_fields())
    EXPECT_NE(std::find(keys.begin(), keys.end(), "cuda_" + std::string(f.name)), keys.end()) << f.name;
  auto c = parse_decoder_config(
      model_config({{"checkpoint_dir", "/c"}, {"cuda_rotary_fp16", "true"}, {"cuda_int8_gemv_max_tokens", "2"}}),
      {{"cuda_pdl", "false"}, {"cuda_rotary_fp16", "0"}}, ".", nullptr);
  EXPECT_FALSE(c.engine.cuda.rotary_fp16);  // --backend-config wins over the model config
  EXPECT_FALSE(c.engine.cuda.pdl);
  EXPECT_EQ(c.engine.cuda.int8_gemv_max_tokens, 2);
  EXPECT_TRUE(c.engine.cuda.int8_packed);  // untouched: the default
  EXPECT_THROW_MSG(
      parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"cuda_poison", "9"}}), {}, ".", nullptr),
      "chatglm_decoder parameter 'cuda_poison' = '9': engine option cuda.poison must be an integer in [0, 3]");
  EXPECT_THROW_MSG(
      parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"cuda_mma_variant", "4"}}), {}, ".", nullptr),
      "unknown parameter 'cuda_mma_variant'");
}

TEST(DecoderConfigTest, overlap_steps_parameter) {
  auto on = parse_decoder_config(model_config({{"checkpoint_dir", "/c"}}), {}, ".", nullptr);
  EXPECT_TRUE(on.engine.overlap_steps);  // the default
  auto off = parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"overlap_steps", "false"}}), {}, ".",
                                  nullptr);
  EXPECT_FALSE(off.engine.overlap_steps);
  EXPECT_THROW_MSG(
      parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"overlap_steps", "maybe"}}), {}, ".", nullptr),
      "chatglm_decoder parameter 'overlap_steps' = 'maybe': expected a boolean (true/false/1/0)");
}

TEST(DecoderConfigTest, fp8_parameter) {
  auto off = parse_decoder_config(model_config({{"checkpoint_dir", "/c"}}), {}, ".", nullptr);
  EXPECT_FALSE(off.engine.fp8);  // the default
  auto on = parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"fp8", "true"}}), {}, ".", nullptr);
  EXPECT_TRUE(on.engine.fp8);
  EXPECT_THROW_MSG(parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"fp8", "e4m3"}}), {}, ".", nullptr),
                   "chatglm_decoder parameter 'fp8' = 'e4m3': expected a boolean (true/false/1/0)");
}

TEST(DecoderConfigTest, kv_cache_dtype_parameter) {
  auto def = parse_decoder_config(model_config({{"checkpoint_dir", "/c"}}), {}, ".", nullptr);
  EXPECT_EQ(def.engine.kv_cache_dtype, "auto");
  auto f8 = parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"kv_cache_dtype", "fp8"}}), {}, ".", nullptr);
  EXPECT_EQ(f8.engine.kv_cache_dtype, "fp8");
  EXPECT_THROW_MSG(
      parse_decoder_config(model_config({{"checkpoint_dir", "/c"}, {"kv_cache_dtype", "int4"}}), {}, ".", nullptr),
      "chatglm_decoder parameter 'kv_cache_dtype' = 'int4': expected auto or fp8");
}
