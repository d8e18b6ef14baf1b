// Model weights: a validated, memory-mapped model.safetensors (or seeded random
// weights with the real shapes, for benchmarks).
//
// The safetensors format: 8 bytes little-endian header length N, N bytes of
// JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data; offsets are relative to the first byte after the header.
//
// Layout: PyTorch [out, in], tensor names of the hub checkpoint
// (docs/architecture.md "Converted checkpoint"). Float tensors are F32 or F16
// (one dtype per file); in an int8 checkpoint every quantized linear `X.weight`
// is I8 [out, in] with `X.weight_scale` F16 [out] (w = q * scale).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config.h"

namespace glm {

enum class DType { kF32, kF16, kI8, kF8E4M3 };
const char* dtype_name(DType d);  // "F32", "F16", "I8", "F8_E4M3" (the safetensors spelling)
size_t dtype_size(DType d);

// A view into memory owned elsewhere (the mmap or a random-weights buffer).
// `data` is not necessarily aligned to the element size: copy with memcpy.
struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  bool empty() const { return data == nullptr; }
  std::string shape_str() const;  // "[3, 32]"
};

// A memory-mapped safetensors file with a validated header (offsets inside the
// file, sizes matching dtype x shape, no overlaps). Throws EngineError.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const TensorView* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// One linear layer y = x @ weight^T + bias.
struct LinearWeights {
  TensorView weight;  // [out, in]   F32/F16, or I8 in int8 / F8_E4M3 in fp8 checkpoints
  TensorView scale;   // [out]       F16 (int8) or F32 (fp8); empty otherwise: w = q * scale
  TensorView bias;    // [out]       (empty for lm_head)
};

struct LayerWeights {
  TensorView input_layernorm_weight;           // [hidden]
  TensorView input_layernorm_bias;             // [hidden]
  LinearWeights query_key_value;               // [3*hidden, hidden]; rows per head: q(hd) k(hd) v(hd)
  LinearWeights dense;                         // [hidden, hidden]
  TensorView post_attention_layernorm_weight;  // [hidden]
  TensorView post_attention_layernorm_bias;    // [hidden]
  LinearWeights dense_h_to_4h;                 // [inner, hidden]
  LinearWeights dense_4h_to_h;                 // [hidden, inner]
};

struct ModelWeights {
  DType float_dtype = DType::kF32;  // dtype of every non-quantized tensor
  bool int8 = false;                // layer linears are I8 + scale
  bool int8_lm_head = false;        // lm_head is I8 + scale
  bool fp8 = false;                 // layer linears are F8_E4M3 + F32 scale
  TensorView word_embeddings;       // [vocab, hidden]
  std::vector<LayerWeights> layers; // [num_layers]
  TensorView final_layernorm_weight;  // [hidden]
  TensorView final_layernorm_bias;    // [hidden]
  LinearWeights lm_head;              // [vocab, hidden], no bias

  std::shared_ptr<const void> storage;  // keeps the mmap / buffer alive

  // name -> view, with hub names ("transformer.layers.0.attention.dense.weight", ...,
  // "X.weight_scale" for int8). For uploaders that walk tensors generically.
  std::map<std::string, TensorView> by_name() const;
};

// Opens <dir>/model.safetensors and checks every expected name, shape and
// dtype against cfg (int8 layout when cfg.int8). Throws EngineError with the
// file, the tensor name, and what was expected.
ModelWeights load_weights(const std::string& checkpoint_dir, const ModelConfig& cfg);

// Real shapes from cfg; values from a seeded generator, scaled so activations
// stay finite through all layers (linear weights ~ U(-1,1)/sqrt(in), layer
// norms 1 / 0, small biases). float_dtype F32 or F16; int8 adds I8 + F16 scales
// for the layer linears (and lm_head when int8_lm_head).
ModelWeights random_weights(const ModelConfig& cfg, uint64_t seed, DType float_dtype, bool int8,
                            bool int8_lm_head = false);

// Conversions.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even
float round_to_f16(float f);   // f32 -> f16 -> f32
// Copies a F32/F16 tensor into float (I8 and F8_E4M3 are converted without a scale).
void to_float(const TensorView& t, float* out);
std::vector<float> to_float(const TensorView& t);
// The [out, in] weight as float; for I8 / F8_E4M3 weights multiplies row r by scale[r].
std::vector<float> dequantize(const LinearWeights& w);

// Symmetric per-row INT8, exactly glmserve.convert.quantize_int8:
// scale = fp16(max|w_row| / 127) (1 when that is 0), q = round_half_even(w / scale)
// clamped to [-127, 127]. w is [rows, cols] float32.
struct QuantizedRows {
  std::vector<int8_t> q;        // [rows, cols]
  std::vector<uint16_t> scale;  // [rows], fp16 bits
};
QuantizedRows quantize_int8_rows(const float* w, int64_t rows, int64_t cols);

}  // namespace glm
