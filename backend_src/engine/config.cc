#include "config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "engine.h"
#include "json_util.h"

namespace glm {

// THUDM's ChatGLMModel builds its GLMBlocks without passing num_layers, so every
// block uses the default 28: alpha = sqrt(56) whatever num_layers is (the golden
// one-layer data confirms it; glmserve/config.py ChatGLMConfig.alpha agrees).
float ModelConfig::residual_alpha() const { return static_cast<float>(std::sqrt(2.0 * 28.0)); }

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << "vocab " << vocab_size << ", hidden " << hidden_size << ", heads " << num_attention_heads
     << " (head dim " << head_dim << "), layers " << num_layers << ", inner " << inner_hidden_size
     << ", max_sequence_length " << max_sequence_length << (int8 ? ", int8" : "");
  return os.str();
}

namespace {

struct Reader {
  const Json& root;
  const std::string& origin;

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw EngineError(origin + ": field \"" + field + "\" " + what);
  }
  const Json& get(const std::string& field) const {
    const Json* v = json_find(root, field);
    if (!v) fail(field, "is missing");
    return *v;
  }
  int integer(const std::string& field, long lo, long hi) const {
    const Json& v = get(field);
    if (!v.is_number()) fail(field, std::string("must be an integer, got ") + json_type_name(v));
    int64_t i;
    if (!json_whole_number(v, &i)) fail(field, "must be an integer, got " + v.dump());
    if (i < lo || i > hi)
      fail(field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                      std::to_string(i));
    return static_cast<int>(i);
  }
  int optional_integer(const std::string& field, int dflt, long lo, long hi) const {
    return json_find(root, field) ? integer(field, lo, hi) : dflt;
  }
};

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& origin) {
  Json root;
  try {
    root = parse_json(json_text);
  } catch (const JsonError& e) {
    throw EngineError(origin + ": not valid JSON: " + e.what());
  }
  if (!root.is_object()) throw EngineError(origin + ": expected a JSON object at the top level");
  Reader r{root, origin};
  ModelConfig c;
  const long kMaxDim = 1L << 20;
  c.vocab_size = r.integer("vocab_size", 1, 1L << 24);
  c.hidden_size = r.integer("hidden_size", 1, kMaxDim);
  c.num_attention_heads = r.integer("num_attention_heads", 1, 4096);
  c.num_layers = r.integer("num_layers", 1, 1024);
  c.inner_hidden_size = r.integer("inner_hidden_size", 1, kMaxDim);
  c.max_sequence_length = r.integer("max_sequence_length", 2, 1L << 20);
  if (c.hidden_size % c.num_attention_heads != 0)
    r.fail("hidden_size", "(" + std::to_string(c.hidden_size) + ") must be divisible by num_attention_heads (" +
                              std::to_string(c.num_attention_heads) + ")");
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (c.head_dim % 4 != 0)
    r.fail("hidden_size", "/ num_attention_heads = head dim " + std::to_string(c.head_dim) +
                              " must be a multiple of 4 (2D rotary halves of even size)");
  {
    const Json& eps = r.get("layernorm_epsilon");
    if (!eps.is_number() || !(eps.get<double>() > 0.0) || !(eps.get<double>() < 1.0))
      r.fail("layernorm_epsilon", "must be a number in (0, 1), got " + eps.dump());
    c.layernorm_epsilon = static_cast<float>(eps.get<double>());
  }
  if (const Json* p = json_find(root, "position_encoding_2d")) {
    if (!p->is_boolean()) r.fail("position_encoding_2d", "must be true or false, got " + p->dump());
    c.position_encoding_2d = p->get<bool>();
  }
  if (!c.position_encoding_2d)
    r.fail("position_encoding_2d", "must be true (only ChatGLM's 2D positions are implemented)");
  const long vmax = c.vocab_size - 1;
  c.bos_token_id = r.integer("bos_token_id", 0, vmax);
  c.eos_token_id = r.integer("eos_token_id", 0, vmax);
  c.gmask_token_id = r.integer("gmask_token_id", 0, vmax);
  c.mask_token_id = r.integer("mask_token_id", 0, vmax);
  c.pad_token_id = r.optional_integer("pad_token_id", 0, 0, vmax);
  if (const Json* d = json_find(root, "torch_dtype")) {
    if (d->is_string()) c.torch_dtype = d->get<std::string>();
  }
  if (const Json* q = json_find(root, "quantization")) {
    if (!q->is_null()) {
      if (!q->is_object()) r.fail("quantization", "must be an object like {\"int8\": true, \"lm_head\": false}");
      if (const Json* i8 = json_find(*q, "int8")) {
        if (!i8->is_boolean()) r.fail("quantization.int8", "must be true or false, got " + i8->dump());
        c.int8 = i8->get<bool>();
      }
      if (const Json* f8 = json_find(*q, "fp8")) {
        if (!f8->is_boolean()) r.fail("quantization.fp8", "must be true or false, got " + f8->dump());
        c.fp8 = f8->get<bool>();
        if (c.fp8 && c.int8) r.fail("quantization", "int8 and fp8 are two formats, not both");
      }
      if (const Json* lm = json_find(*q, "lm_head")) {
        if (!lm->is_boolean()) r.fail("quantization.lm_head", "must be true or false, got " + lm->dump());
        c.int8_lm_head = c.int8 && lm->get<bool>();
      }
    }
  }
  return c;
}

ModelConfig load_model_config(const std::string& checkpoint_dir) {
  const std::string path = checkpoint_dir + "/config.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) throw EngineError(path + ": cannot open (is checkpoint_dir a converted checkpoint?)");
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse_model_config(ss.str(), path);
}

}  // namespace glm
