#include "weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <thread>

#include "e4m3.h"
#include "engine.h"
#include "json_util.h"
#include "rng.h"

namespace glm {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kI8: return "I8";
    case DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kI8: return 1;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

static std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

std::string TensorView::shape_str() const { return shape_to_string(shape); }

// ---------------------------------------------------------------- safetensors

SafetensorsFile::~SafetensorsFile() {
  if (map_ && map_size_) munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto fail = [&](const std::string& what) -> EngineError { return EngineError(path + ": " + what); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw fail(std::string("cannot stat: ") + std::strerror(e));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw fail("truncated safetensors file: " + std::to_string(size) + " bytes, the 8-byte header length is missing");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw fail(std::string("mmap failed: ") + std::strerror(map_errno));

  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;
  const unsigned char* bytes = static_cast<const unsigned char*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8)
    throw fail("corrupt or truncated safetensors file: header length " + std::to_string(header_len) +
               " exceeds the file size " + std::to_string(size));
  if (header_len > (100u << 20)) throw fail("corrupt safetensors header: length " + std::to_string(header_len) + " is over 100 MiB");
  Json header;
  try {
    header = parse_json(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(header_len));
  } catch (const JsonError& e) {
    throw fail(std::string("corrupt safetensors header (not valid JSON): ") + e.what());
  }
  if (!header.is_object()) throw fail("corrupt safetensors header: not a JSON object");

  const size_t data_start = 8 + static_cast<size_t>(header_len);
  const size_t data_size = size - data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& kv : header.items()) {
    const std::string& name = kv.key();
    if (name == "__metadata__") continue;
    const Json& info = kv.value();
    auto bad = [&](const std::string& what) { return fail("tensor \"" + name + "\": " + what); };
    if (!info.is_object()) throw bad("header entry is not an object");
    const Json* dt = json_find(info, "dtype");
    const Json* sh = json_find(info, "shape");
    const Json* off = json_find(info, "data_offsets");
    if (!dt || !dt->is_string() || !sh || !sh->is_array() || !off || !off->is_array() || off->size() != 2)
      throw bad("header entry needs \"dtype\" (string), \"shape\" (array), \"data_offsets\" ([begin, end])");
    TensorView t;
    const std::string& d = dt->get_ref<const std::string&>();
    if (d == "F32") t.dtype = DType::kF32;
    else if (d == "F16") t.dtype = DType::kF16;
    else if (d == "I8") t.dtype = DType::kI8;
    else if (d == "F8_E4M3") t.dtype = DType::kF8E4M3;
    else throw bad("unsupported dtype " + d + " (F32, F16, I8 or F8_E4M3)");
    int64_t numel = 1;
    for (const Json& dim : *sh) {
      int64_t n;
      if (!json_integer_literal(dim, &n) || n < 0 || n > (int64_t(1) << 40)) throw bad("bad shape entry " + dim.dump());
      t.shape.push_back(n);
      numel *= n;
      if (numel > (int64_t(1) << 40)) throw bad("shape too large");
    }
    int64_t b, e;
    if (!json_integer_literal((*off)[0], &b) || !json_integer_literal((*off)[1], &e) || b < 0 || e < b)
      throw bad("bad data_offsets " + off->dump());
    const uint64_t begin = static_cast<uint64_t>(b), end = static_cast<uint64_t>(e);
    const uint64_t want = static_cast<uint64_t>(numel) * dtype_size(t.dtype);
    if (end - begin != want)
      throw bad("data_offsets " + off->dump() + " span " + std::to_string(end - begin) + " bytes, but " + d +
                " " + t.shape_str() + " needs " + std::to_string(want));
    if (end > data_size)
      throw bad("data ends at byte " + std::to_string(end) + " but the file has only " + std::to_string(data_size) +
                " data bytes (truncated file?)");
    t.data = bytes + data_start + begin;
    t.nbytes = static_cast<size_t>(want);
    if (want) ranges.emplace_back(begin, end);
    file->tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) throw fail("corrupt safetensors header: tensor data ranges overlap");
  return file;
}

// ---------------------------------------------------------------- model layout

namespace {

struct Expect {
  std::string name;
  std::vector<int64_t> shape;
  bool quantized;  // I8 weight + F16 weight_scale, or (fp8 checkpoints) F8_E4M3 + F32
};

// Every tensor the model needs, in a fixed order, with where it goes.
struct Slot {
  Expect e;
  TensorView* view;
  TensorView* scale;  // int8 only
};

std::vector<Slot> model_slots(const ModelConfig& c, ModelWeights& w, bool int8, bool int8_lm_head) {
  const int64_t H = c.hidden_size, I = c.inner_hidden_size, V = c.vocab_size;
  std::vector<Slot> s;
  s.push_back({{"transformer.word_embeddings.weight", {V, H}, false}, &w.word_embeddings, nullptr});
  if (w.layers.size() != static_cast<size_t>(c.num_layers)) w.layers.assign(static_cast<size_t>(c.num_layers), LayerWeights());
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& L = w.layers[static_cast<size_t>(i)];
    const std::string p = "transformer.layers." + std::to_string(i) + ".";
    s.push_back({{p + "input_layernorm.weight", {H}, false}, &L.input_layernorm_weight, nullptr});
    s.push_back({{p + "input_layernorm.bias", {H}, false}, &L.input_layernorm_bias, nullptr});
    s.push_back({{p + "attention.query_key_value.weight", {3 * H, H}, int8}, &L.query_key_value.weight,
                 &L.query_key_value.scale});
    s.push_back({{p + "attention.query_key_value.bias", {3 * H}, false}, &L.query_key_value.bias, nullptr});
    s.push_back({{p + "attention.dense.weight", {H, H}, int8}, &L.dense.weight, &L.dense.scale});
    s.push_back({{p + "attention.dense.bias", {H}, false}, &L.dense.bias, nullptr});
    s.push_back({{p + "post_attention_layernorm.weight", {H}, false}, &L.post_attention_layernorm_weight, nullptr});
    s.push_back({{p + "post_attention_layernorm.bias", {H}, false}, &L.post_attention_layernorm_bias, nullptr});
    s.push_back({{p + "mlp.dense_h_to_4h.weight", {I, H}, int8}, &L.dense_h_to_4h.weight, &L.dense_h_to_4h.scale});
    s.push_back({{p + "mlp.dense_h_to_4h.bias", {I}, false}, &L.dense_h_to_4h.bias, nullptr});
    s.push_back({{p + "mlp.dense_4h_to_h.weight", {H, I}, int8}, &L.dense_4h_to_h.weight, &L.dense_4h_to_h.scale});
    s.push_back({{p + "mlp.dense_4h_to_h.bias", {H}, false}, &L.dense_4h_to_h.bias, nullptr});
  }
  s.push_back({{"transformer.final_layernorm.weight", {H}, false}, &w.final_layernorm_weight, nullptr});
  s.push_back({{"transformer.final_layernorm.bias", {H}, false}, &w.final_layernorm_bias, nullptr});
  s.push_back({{"lm_head.weight", {V, H}, int8_lm_head}, &w.lm_head.weight, &w.lm_head.scale});
  return s;
}

}  // namespace

std::map<std::string, TensorView> ModelWeights::by_name() const {
  ModelConfig c;  // only the layer count matters for the names
  c.num_layers = static_cast<int>(layers.size());
  ModelWeights tmp = *this;  // views are copied; model_slots points into tmp
  std::map<std::string, TensorView> out;
  for (const Slot& s : model_slots(c, tmp, int8 || fp8, int8_lm_head)) {
    out[s.e.name] = *s.view;
    if (s.e.quantized) out[s.e.name + "_scale"] = *s.scale;
  }
  return out;
}

ModelWeights load_weights(const std::string& checkpoint_dir, const ModelConfig& cfg) {
  const std::string path = checkpoint_dir + "/model.safetensors";
  auto file = SafetensorsFile::open(path);
  ModelWeights w;
  w.int8 = cfg.int8;
  w.int8_lm_head = cfg.int8_lm_head;
  w.fp8 = cfg.fp8;
  w.storage = file;
  auto slots = model_slots(cfg, w, cfg.int8 || cfg.fp8, cfg.int8_lm_head);
  // The quantized format: int8 (I8 + F16 scale) or fp8 (F8_E4M3 + F32 scale).
  const DType qtype = cfg.fp8 ? DType::kF8E4M3 : DType::kI8, stype = cfg.fp8 ? DType::kF32 : DType::kF16;
  const std::string qwhat = cfg.fp8 ? "quantization.fp8" : "quantization.int8";
  bool have_float_dtype = false;
  size_t used = 0;
  for (const Slot& s : slots) {
    const TensorView* t = file->find(s.e.name);
    if (!t)
      throw EngineError(path + ": missing tensor \"" + s.e.name + "\" (expected " + shape_to_string(s.e.shape) +
                        ") — does config.json (" + cfg.summary() + ") match this file?");
    if (t->shape != s.e.shape)
      throw EngineError(path + ": tensor \"" + s.e.name + "\" has shape " + t->shape_str() + ", expected " +
                        shape_to_string(s.e.shape) + " from config.json (" + cfg.summary() + ")");
    ++used;
    if (s.e.quantized) {
      if (t->dtype != qtype)
        throw EngineError(path + ": tensor \"" + s.e.name + "\" has dtype " + dtype_name(t->dtype) + ", expected " +
                          dtype_name(qtype) + " (config.json says " + qwhat + ")");
      const std::string sname = s.e.name + "_scale";
      const std::string swant = std::string(dtype_name(stype)) + " [" + std::to_string(s.e.shape[0]) + "]";
      const TensorView* sc = file->find(sname);
      if (!sc) throw EngineError(path + ": missing tensor \"" + sname + "\" (" + swant + ") for " + qwhat);
      if (sc->dtype != stype || sc->shape != std::vector<int64_t>{s.e.shape[0]})
        throw EngineError(path + ": tensor \"" + sname + "\" is " + dtype_name(sc->dtype) + " " + sc->shape_str() +
                          ", expected " + swant);
      *s.scale = *sc;
      ++used;
    } else {
      if (t->dtype == DType::kI8 || t->dtype == DType::kF8E4M3)
        throw EngineError(path + ": tensor \"" + s.e.name + "\" is " + dtype_name(t->dtype) +
                          " but config.json has no quantization for it (expected F32 or F16)");
      if (!have_float_dtype) {
        w.float_dtype = t->dtype;
        have_float_dtype = true;
      } else if (t->dtype != w.float_dtype) {
        throw EngineError(path + ": tensor \"" + s.e.name + "\" has dtype " + dtype_name(t->dtype) + ", but earlier tensors are " +
                          dtype_name(w.float_dtype) + " (one float dtype per file)");
      }
    }
    *s.view = *t;
  }
  // Anything else in the file means the file and config.json disagree.
  for (const auto& kv : file->tensors()) {
    const std::string& name = kv.first;
    if (name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0) {
      ++used;
      continue;
    }
    bool known = false;
    for (const Slot& s : slots)
      if (name == s.e.name || (s.e.quantized && name == s.e.name + "_scale")) {
        known = true;
        break;
      }
    if (!known)
      throw EngineError(path + ": unexpected tensor \"" + name + "\" " + kv.second.shape_str() +
                        " — does config.json (" + cfg.summary() + ") match this file?");
  }
  (void)used;
  return w;
}

// ---------------------------------------------------------------- random weights

namespace {
// fn(i) for i in [0, n) on all cores (values depend on i only, not on the split).
template <typename Fn>
void parallel_fill(int64_t n, const Fn& fn) {
  const int64_t threads = std::max(1u, std::thread::hardware_concurrency());
  if (n < (int64_t(1) << 20) || threads == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (n + threads - 1) / threads;
  for (int64_t b = 0; b < n; b += chunk)
    pool.emplace_back([&fn, b, e = std::min(n, b + chunk)] {
      for (int64_t i = b; i < e; ++i) fn(i);
    });
  for (auto& t : pool) t.join();
}
}  // namespace

ModelWeights random_weights(const ModelConfig& cfg, uint64_t seed, DType float_dtype, bool int8, bool int8_lm_head) {
  if (float_dtype == DType::kI8) throw EngineError("random_weights: float dtype must be F32 or F16");
  ModelWeights w;
  w.float_dtype = float_dtype;
  w.int8 = int8;
  w.int8_lm_head = int8 && int8_lm_head;
  auto slots = model_slots(cfg, w, w.int8, w.int8_lm_head);
  // One buffer for everything, 64-byte aligned pieces.
  auto align = [](size_t n) { return (n + 63) & ~size_t(63); };
  size_t total = 0;
  for (const Slot& s : slots) {
    int64_t n = 1;
    for (int64_t d : s.e.shape) n *= d;
    total += align(static_cast<size_t>(n) * (s.e.quantized ? 1 : dtype_size(float_dtype)));
    if (s.e.quantized) total += align(static_cast<size_t>(s.e.shape[0]) * 2);
  }
  auto buffer = std::shared_ptr<uint8_t>(new uint8_t[total + 64], std::default_delete<uint8_t[]>());
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buffer.get()) + 63) & ~uintptr_t(63));
  size_t off = 0;
  uint64_t tensor_index = 0;
  for (const Slot& s : slots) {
    ++tensor_index;
    const uint64_t tseed = splitmix64(seed ^ (tensor_index * 0x9E3779B97F4A7C15ull));
    TensorView t;
    t.shape = s.e.shape;
    const int64_t n = t.numel();
    const bool is_norm_weight = s.e.name.find("layernorm.weight") != std::string::npos;
    const bool is_bias = s.e.name.size() > 5 && s.e.name.compare(s.e.name.size() - 5, 5, ".bias") == 0;
    const int64_t fan_in = s.e.shape.size() == 2 ? s.e.shape[1] : 1;
    const float amp = is_bias ? 0.02f : (s.e.name.find("word_embeddings") != std::string::npos ? 1.0f
                                                                                              : 1.0f / std::sqrt(static_cast<float>(fan_in)));
    uint8_t* dst = base + off;
    if (s.e.quantized) {
      t.dtype = DType::kI8;
      t.nbytes = static_cast<size_t>(n);
      int8_t* q = reinterpret_cast<int8_t*>(dst);
      parallel_fill(n, [&](int64_t i) {
        q[i] = static_cast<int8_t>(static_cast<int>(uniform01(tseed, static_cast<uint64_t>(i)) * 255.0f) - 127);
      });
      off += align(t.nbytes);
      TensorView sc;
      sc.dtype = DType::kF16;
      sc.shape = {s.e.shape[0]};
      sc.nbytes = static_cast<size_t>(s.e.shape[0]) * 2;
      uint16_t* sp = reinterpret_cast<uint16_t*>(base + off);
      for (int64_t r = 0; r < s.e.shape[0]; ++r) sp[r] = f32_to_f16(amp / 127.0f);
      sc.data = sp;
      off += align(sc.nbytes);
      *s.scale = sc;
    } else {
      t.dtype = float_dtype;
      t.nbytes = static_cast<size_t>(n) * dtype_size(float_dtype);
      parallel_fill(n, [&](int64_t i) {
        float v = is_norm_weight ? 1.0f : amp * (2.0f * uniform01(tseed, static_cast<uint64_t>(i)) - 1.0f);
        if (float_dtype == DType::kF32)
          reinterpret_cast<float*>(dst)[i] = v;
        else
          reinterpret_cast<uint16_t*>(dst)[i] = f32_to_f16(v);
      });
      off += align(t.nbytes);
    }
    t.data = dst;
    *s.view = t;
  }
  w.storage = buffer;
  return w;
}

// ---------------------------------------------------------------- conversions

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FF;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 : 0));  // inf/nan
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to >= 65520 -> inf
  if (ax < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (ax < 0x33000000u) return sign;  // < 2^-25 rounds to 0
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 + (113 - e) - ... yields the half subnormal mantissa
    uint32_t half_m = m >> (shift);
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1))) ++half_m;
    return static_cast<uint16_t>(sign | half_m);
  }
  uint32_t r = ax + 0xC8000000u;  // rebias exponent: -(127-15) << 23
  r += 0x0FFF + ((r >> 13) & 1);  // round to nearest even
  return static_cast<uint16_t>(sign | (r >> 13));
}

float round_to_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

void to_float(const TensorView& t, float* out) {
  const int64_t n = t.numel();
  switch (t.dtype) {
    case DType::kF32: std::memcpy(out, t.data, static_cast<size_t>(n) * 4); break;
    case DType::kF16: {
      const unsigned char* p = static_cast<const unsigned char*>(t.data);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      break;
    }
    case DType::kI8: {
      const int8_t* p = static_cast<const int8_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    case DType::kF8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) out[i] = e4m3_to_f32(p[i]);
      break;
    }
  }
}


std::vector<float> to_float(const TensorView& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_float(t, v.data());
  return v;
}

std::vector<float> dequantize(const LinearWeights& w) {
  std::vector<float> v = to_float(w.weight);
  if (w.weight.dtype == DType::kI8 || w.weight.dtype == DType::kF8E4M3) {
    if (w.scale.empty()) throw EngineError(std::string("dequantize: ") + dtype_name(w.weight.dtype) + " weight without a scale");
    const std::vector<float> s = to_float(w.scale);
    const int64_t rows = w.weight.shape[0], cols = w.weight.shape[1];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[static_cast<size_t>(r * cols + c)] *= s[static_cast<size_t>(r)];
  }
  return v;
}

QuantizedRows quantize_int8_rows(const float* w, int64_t rows, int64_t cols) {
  QuantizedRows out;
  out.q.resize(static_cast<size_t>(rows * cols));
  out.scale.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
    uint16_t s = f32_to_f16(amax / 127.0f);
    if (!(f16_to_f32(s) > 0.0f)) s = 0x3C00;  // 1.0
    out.scale[static_cast<size_t>(r)] = s;
    const float sf = f16_to_f32(s);
    for (int64_t c = 0; c < cols; ++c) {
      const float v = std::nearbyint(row[c] / sf);  // half to even, as torch.round
      out.q[static_cast<size_t>(r * cols + c)] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
  return out;
}

}  // namespace glm
