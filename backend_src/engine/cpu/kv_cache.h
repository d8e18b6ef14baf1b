// The CPU back-end's paged KV cache: per layer, K and V of every slot
// (slot = block * block_size + offset) and head, either as float or as FP8 E4M3
// codes with one float scale per (slot, head) (kv_cache_dtype=fp8: e4m3.h's rule,
// quantized at write, dequantized at read; the reference of the CUDA kernels).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace glm {

class CpuKvCache {
 public:
  struct Shape {
    int layers = 0, heads = 0, head_dim = 0, block_size = 0;
    bool fp8 = false;
  };
  // Bytes one block takes over all layers, K and V.
  static int64_t block_bytes(const Shape& s);
  // Left uninitialized: a slot is always written before it is read.
  void allocate(const Shape& s, int num_blocks);
  bool empty() const { return k_.empty(); }
  int num_blocks() const { return num_blocks_; }
  // One head's K and V (head_dim floats each) into a slot.
  void write(int layer, int64_t slot, int head, const float* k, const float* v);
  // One head's K or V of a slot: a pointer into the cache (float), or the values
  // decoded into buf (head_dim floats; fp8).
  const float* key(int layer, int64_t slot, int head, float* buf) const { return read(k_, ks_, layer, slot, head, buf); }
  const float* value(int layer, int64_t slot, int head, float* buf) const {
    return read(v_, vs_, layer, slot, head, buf);
  }
  void copy_block(int src, int dst);

 private:
  const float* read(const std::vector<std::unique_ptr<uint8_t[]>>& data,
                    const std::vector<std::unique_ptr<float[]>>& scales, int layer, int64_t slot, int head,
                    float* buf) const;
  Shape s_;
  int num_blocks_ = 0;
  const float* e4m3_ = nullptr;  // fp8: the codes' values (e4m3_values())
  // per layer: float [slots, heads, head_dim] (as bytes), or E4M3 codes [slots, heads, head_dim]
  std::vector<std::unique_ptr<uint8_t[]>> k_, v_;
  std::vector<std::unique_ptr<float[]>> ks_, vs_;  // fp8: per layer [slots, heads]
};

}  // namespace glm
