#include "kv_cache.h"

#include <algorithm>
#include <cstring>

#include "e4m3.h"

namespace glm {

int64_t CpuKvCache::block_bytes(const Shape& s) {
  const int64_t per_slot = s.fp8 ? int64_t(s.heads) * s.head_dim + int64_t(s.heads) * 4  // codes + scales
                                 : int64_t(s.heads) * s.head_dim * 4;
  return 2 * int64_t(s.layers) * s.block_size * per_slot;
}

void CpuKvCache::allocate(const Shape& s, int num_blocks) {
  s_ = s;
  num_blocks_ = num_blocks;
  e4m3_ = s.fp8 ? e4m3_values() : nullptr;
  const size_t slots = static_cast<size_t>(num_blocks) * s.block_size;
  const size_t elems = slots * s.heads * s.head_dim;
  k_.clear();
  v_.clear();
  ks_.clear();
  vs_.clear();
  for (int l = 0; l < s.layers; ++l) {
    k_.emplace_back(new uint8_t[elems * (s.fp8 ? 1 : 4)]);
    v_.emplace_back(new uint8_t[elems * (s.fp8 ? 1 : 4)]);
    if (s.fp8) {
      ks_.emplace_back(new float[slots * s.heads]);
      vs_.emplace_back(new float[slots * s.heads]);
    }
  }
}

void CpuKvCache::write(int layer, int64_t slot, int head, const float* k, const float* v) {
  const int64_t row = slot * s_.heads + head;
  const size_t l = static_cast<size_t>(layer);
  if (s_.fp8) {
    ks_[l][row] = quantize_e4m3_row(k, s_.head_dim, k_[l].get() + row * s_.head_dim);
    vs_[l][row] = quantize_e4m3_row(v, s_.head_dim, v_[l].get() + row * s_.head_dim);
    return;
  }
  std::memcpy(reinterpret_cast<float*>(k_[l].get()) + row * s_.head_dim, k, static_cast<size_t>(s_.head_dim) * 4);
  std::memcpy(reinterpret_cast<float*>(v_[l].get()) + row * s_.head_dim, v, static_cast<size_t>(s_.head_dim) * 4);
}

const float* CpuKvCache::read(const std::vector<std::unique_ptr<uint8_t[]>>& data,
                              const std::vector<std::unique_ptr<float[]>>& scales, int layer, int64_t slot, int head,
                              float* buf) const {
  const int64_t row = slot * s_.heads + head;
  const size_t l = static_cast<size_t>(layer);
  if (!s_.fp8) return reinterpret_cast<const float*>(data[l].get()) + row * s_.head_dim;
  const uint8_t* c = data[l].get() + row * s_.head_dim;
  const float sc = scales[l][row];
  for (int d = 0; d < s_.head_dim; ++d) buf[d] = e4m3_[c[d]] * sc;
  return buf;
}

void CpuKvCache::copy_block(int src, int dst) {
  const size_t rows = static_cast<size_t>(s_.block_size) * s_.heads;
  const size_t bytes = rows * s_.head_dim * (s_.fp8 ? 1 : 4);
  for (size_t l = 0; l < k_.size(); ++l) {
    std::memcpy(k_[l].get() + dst * bytes, k_[l].get() + src * bytes, bytes);
    std::memcpy(v_[l].get() + dst * bytes, v_[l].get() + src * bytes, bytes);
    if (s_.fp8) {
      std::copy_n(ks_[l].get() + src * rows, rows, ks_[l].get() + dst * rows);
      std::copy_n(vs_[l].get() + src * rows, rows, vs_[l].get() + dst * rows);
    }
  }
}

}  // namespace glm
