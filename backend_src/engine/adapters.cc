#include "adapters.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine.h"
#include "json_util.h"
#include "weights.h"

namespace glm {

namespace fs = std::filesystem;

bool valid_adapter_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-';
  });
}

namespace {

PrefixAdapter load_one(const fs::path& dir, const ModelConfig& cfg) {
  const std::string meta_path = (dir / "adapter.json").string();
  auto bad = [&](const std::string& file, const std::string& what) { return EngineError(file + ": " + what); };
  std::ifstream f(meta_path);
  if (!f) throw bad(meta_path, "cannot open (every adapter directory holds adapter.json)");
  std::ostringstream text;
  text << f.rdbuf();
  Json meta;
  try {
    meta = parse_json(text.str());
  } catch (const std::exception& e) {
    throw bad(meta_path, std::string("not valid JSON: ") + e.what());
  }
  if (!meta.is_object()) throw bad(meta_path, "expected a JSON object");
  auto integer = [&](const char* key) -> int64_t {
    int64_t v = 0;
    const Json* j = json_find(meta, key);
    if (!j || !json_whole_number(*j, &v)) throw bad(meta_path, std::string("field \"") + key + "\" must be an integer");
    return v;
  };
  if (integer("glmserve_adapter_format") != 1)
    throw bad(meta_path, "field \"glmserve_adapter_format\": only format 1 is known");
  const Json* type = json_find(meta, "type");
  if (!type || !type->is_string() || type->get<std::string>() != "prefix")
    throw bad(meta_path, "field \"type\" must be \"prefix\" (a P-Tuning v2 prefix)");
  PrefixAdapter a;
  a.name = dir.filename().string();
  const int64_t P = integer("pre_seq_len");
  if (P < 1 || P > cfg.max_sequence_length)
    throw bad(meta_path, "field \"pre_seq_len\" must be in [1, " + std::to_string(cfg.max_sequence_length) + "]");
  a.prefix_len = static_cast<int>(P);
  const std::pair<const char*, int> sizes[] = {{"num_layers", cfg.num_layers},
                                               {"hidden_size", cfg.hidden_size},
                                               {"num_attention_heads", cfg.num_attention_heads}};
  for (const auto& [key, want] : sizes)
    if (integer(key) != want)
      throw bad(meta_path, std::string("field \"") + key + "\" is " + std::to_string(integer(key)) +
                               " but the model's is " + std::to_string(want));

  const std::string weights_path = (dir / "prefix.safetensors").string();
  std::shared_ptr<SafetensorsFile> st = SafetensorsFile::open(weights_path);
  const std::vector<int64_t> shape = {cfg.num_layers, P, cfg.hidden_size};
  auto read = [&](const char* name, std::vector<float>* out) {
    const TensorView* t = st->find(name);
    if (!t) throw bad(weights_path, std::string("missing tensor \"") + name + "\"");
    if (t->dtype != DType::kF32 || t->shape != shape)
      throw bad(weights_path, std::string("tensor \"") + name + "\" is " + dtype_name(t->dtype) + " " + t->shape_str() +
                                  ", expected F32 [" + std::to_string(cfg.num_layers) + ", " + std::to_string(P) +
                                  ", " + std::to_string(cfg.hidden_size) + "]");
    out->resize(static_cast<size_t>(t->numel()));
    std::memcpy(out->data(), t->data, out->size() * sizeof(float));
  };
  read("prefix.key", &a.key);
  read("prefix.value", &a.value);
  return a;
}

}  // namespace

std::vector<PrefixAdapter> load_adapters(const std::string& dir, const ModelConfig& cfg) {
  std::vector<PrefixAdapter> out;
  if (dir.empty() || !fs::is_directory(dir)) return out;
  std::vector<fs::path> dirs;
  for (const fs::directory_entry& e : fs::directory_iterator(dir))
    if (e.is_directory()) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const fs::path& d : dirs) {
    if (!valid_adapter_name(d.filename().string()))
      throw EngineError(d.string() + ": not a valid adapter name ([A-Za-z0-9_.-]{1,64})");
    out.push_back(load_one(d, cfg));
  }
  return out;
}

}  // namespace glm
