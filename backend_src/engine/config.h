// glm::ModelConfig: the model hyper-parameters and special ids, read once from
// a converted checkpoint's config.json (docs/architecture.md) and validated.
#pragma once

#include <string>

namespace glm {

struct ModelConfig {
  int vocab_size = 0;              // 130528 for ChatGLM-6B
  int hidden_size = 0;             // 4096
  int num_attention_heads = 0;     // 32
  int head_dim = 0;                // hidden_size / num_attention_heads (128)
  int num_layers = 0;              // 28
  int inner_hidden_size = 0;       // 16384
  float layernorm_epsilon = 1e-5f;
  int max_sequence_length = 0;     // 2048: prompt + generated tokens never exceed this
  bool position_encoding_2d = true;
  int bos_token_id = 0;            // <sop>, 130004
  int eos_token_id = 0;            // <eop>, 130005
  int mask_token_id = 0;           // [MASK], 130000
  int gmask_token_id = 0;          // [gMASK], 130001
  int pad_token_id = 0;            // 3
  std::string torch_dtype;         // informational ("float16", "float32")
  bool int8 = false;               // "quantization": {"int8": true}: linear layers are I8 + F16 scale
  bool int8_lm_head = false;       // "quantization": {"lm_head": true}: lm_head is I8 too
  bool fp8 = false;                // "quantization": {"fp8": true}: linear layers are F8_E4M3 + F32 scale
  int max_prefix_len = 0;          // not in config.json: the longest loaded adapter prefix (engine)

  float residual_alpha() const;    // sqrt(2 * 28) for every model size (THUDM default; see config.cc)
  std::string summary() const;     // one line for logs
};

// Parses and validates config.json text. `origin` (a path) prefixes error
// messages. Throws glm::EngineError naming the field and the allowed range.
ModelConfig parse_model_config(const std::string& json_text, const std::string& origin);
// Reads <checkpoint_dir>/config.json.
ModelConfig load_model_config(const std::string& checkpoint_dir);

}  // namespace glm
