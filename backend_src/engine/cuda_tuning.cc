// The CudaTuning fields by name (engine.h): one table for every surface that sets
// them from text or keywords, and their range check at engine creation.
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_tuning.h"

namespace glm {

const std::vector<CudaTuningField>& cuda_tuning_fields() {
  using T = CudaTuning;
  static const std::vector<CudaTuningField> fields = {
      {"rotary_fp16", &T::rotary_fp16, nullptr, 0, 1,
       "rotary angle and cos/sin rounded to fp16 as in THUDM's fp16 run (default: fp32 angles)"},
      {"pdl", &T::pdl, nullptr, 0, 1, "programmatic dependent launch on sm_90+ (process-wide)"},
      {"attention_warp", &T::attention_warp, nullptr, 0, 1,
       "warp-per-(token, head) paged attention for >= 2048 pairs (head_dim 64/128)"},
      {"attention_one_pass", nullptr, &T::attention_one_pass, 0, 8,
       "paged attention in one pass, K and V loaded together, online softmax: 2, 4 or 8 keys per lane group "
       "per round (0 = scores, softmax, then V)",
       {0, 2, 4, 8}},
      {"attention_split_min_keys", nullptr, &T::attention_split_min_keys, 0, 1 << 20,
       "decode attention: split-KV from this many keys in steps of < 4 (token, head) pairs per SM (0 = never)"},
      {"gemv_max_tokens", nullptr, &T::gemv_max_tokens, 0, 8,
       "fp16 linears: GEMV up to this many tokens, cuBLAS above (0 = cuBLAS only)"},
      {"gemv_mma_max_tokens", nullptr, &T::gemv_mma_max_tokens, 0, 16,
       "fp16 linears: tensor-core GEMV above gemv_max_tokens up to this many tokens (0 = never)"},
      {"gemm_gelu_epilogue", &T::gemm_gelu_epilogue, nullptr, 0, 1,
       "fp16 linears run by cuBLAS: bias + GeLU in cuBLASLt's GELU_BIAS epilogue (false: a separate pass)"},
      {"int8_lm_head", &T::int8_lm_head, nullptr, 0, 1,
       "int8 and fp8 modes: lm_head int8 weight-only (per channel) too"},
      {"int8_packed", &T::int8_packed, nullptr, 0, 1,
       "int8 mode on Hopper (sm_90a build): packed-layout kernels; false: row-major kernels"},
      {"int8_gemv_max_tokens", nullptr, &T::int8_gemv_max_tokens, -1, 8,
       "int8 linears: GEMV up to this many tokens (-1 = automatic, 0 = never)"},
      {"int8_mma_max_tokens", nullptr, &T::int8_mma_max_tokens, 0, 1 << 30,
       "int8 linears: tensor-core kernel up to this many tokens, dequantize + cuBLAS above"},
      {"int8_w8a8_min_tokens", nullptr, &T::int8_w8a8_min_tokens, 0, 1 << 30,
       "int8 linears: W8A8 (per-token int8 activations, int8 tensor cores) from this many tokens (0 = never)"},
      {"fp8_gemv_max_tokens", nullptr, &T::fp8_gemv_max_tokens, 0, 8,
       "fp8 linears: weight-only GEMV (fp16 activations) up to this many tokens, cuBLASLt FP8 above (0 = never)"},
      {"graphs_at_start", &T::graphs_at_start, nullptr, 0, 1,
       "capture every decode graph bucket at start (false: each on its first decode step)"},
      {"poison", nullptr, &T::poison, 0, 3, "debugging: NaN-fill the KV cache (1), activations (2), both (3)"},
      {"timing", &T::timing, nullptr, 0, 1, "host-side time per step, printed when the engine is destroyed"},
  };
  return fields;
}

namespace {

const CudaTuningField& field_named(const std::string& name) {
  std::string all;
  for (const CudaTuningField& f : cuda_tuning_fields()) {
    if (name == f.name) return f;
    all += (all.empty() ? "" : ", ") + std::string(f.name);
  }
  throw EngineError("engine option cuda." + name + " does not exist (cuda tuning options: " + all + ")");
}

std::string choices_text(const std::vector<int>& choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i)
    out += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + std::to_string(choices[i]);
  return out;
}

bool allowed(const CudaTuningField& f, long long x) {
  if (x < f.min || x > f.max) return false;
  return f.choices.empty() || std::find(f.choices.begin(), f.choices.end(), x) != f.choices.end();
}

[[noreturn]] void bad_value(const CudaTuningField& f, const std::string& value) {
  const std::string range = "an integer in [" + std::to_string(f.min) + ", " + std::to_string(f.max) + "]";
  const std::string want = f.flag ? "true or false" : f.choices.empty() ? range : choices_text(f.choices);
  throw EngineError("engine option cuda." + std::string(f.name) + " must be " + want + ", got \"" + value + "\"");
}

}  // namespace

void set_cuda_tuning(CudaTuning& tuning, const std::string& name, const std::string& value) {
  const CudaTuningField& f = field_named(name);
  if (f.flag) {
    std::string v;
    for (char c : value) v += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    if (v == "1" || v == "true" || v == "yes" || v == "on")
      tuning.*f.flag = true;
    else if (v == "0" || v == "false" || v == "no" || v == "off")
      tuning.*f.flag = false;
    else
      bad_value(f, value);
    return;
  }
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || errno != 0 || *end != '\0' || !allowed(f, x)) bad_value(f, value);
  tuning.*f.number = static_cast<int>(x);
}

void validate_cuda_tuning(const CudaTuning& tuning) {
  for (const CudaTuningField& f : cuda_tuning_fields()) {
    if (f.number && !allowed(f, tuning.*f.number)) bad_value(f, std::to_string(tuning.*f.number));
  }
}

}  // namespace glm
