// ChatGLM's 2D positions and attention mask, in one place (docs/architecture.md
// "Positions and mask"). A prompt of n ids ends with <sop> and contains
// [gMASK] (or [MASK]) before it:
//   c = n - 1                       context length (index of the final <sop>)
//   g = index of the first [gMASK], else of the first [MASK]
//   token t <  c: position t, block position 0
//   token t >= c: position g, block position t - c + 1   (<sop> and generated tokens)
//   query t sees key s  iff  s < c  or  s <= t
#pragma once

#include <cstdint>

namespace glm {

inline int context_length_of_prompt(int prompt_len) { return prompt_len - 1; }

// g, searched in the context ids[0, c); -1 when neither mask token is there.
inline int find_mask_position(const int32_t* ids, int c, int32_t gmask_id, int32_t mask_id) {
  for (int t = 0; t < c; ++t)
    if (ids[t] == gmask_id) return t;
  for (int t = 0; t < c; ++t)
    if (ids[t] == mask_id) return t;
  return -1;
}

inline int position_id(int t, int c, int g) { return t < c ? t : g; }
inline int block_position_id(int t, int c) { return t < c ? 0 : t - c + 1; }
inline bool can_attend(int query, int key, int c) { return key < c || key <= query; }

}  // namespace glm
