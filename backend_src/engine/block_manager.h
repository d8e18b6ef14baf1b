// The paged KV cache's bookkeeping: which fixed-size blocks belong to which
// sequence. It never touches the KV memory itself (the ModelRunner owns that);
// it hands out block ids. A sequence holding n tokens owns ceil(n / block_size)
// blocks, listed in its block table in token order: token t lives in block
// table[t / block_size] at offset t % block_size.
//
//   BlockManager bm(num_blocks, block_size);
//   if (bm.can_allocate(prompt_len)) bm.allocate(seq, prompt_len);
//   if (!bm.append(seq, new_len)) { /* cache full: preempt someone */ }
//   bm.free(seq);
//
// Blocks are reference-counted: fork() lets the choices of one request share the
// full blocks of their prompt (held once); a block returns to the free list when
// the last sequence holding it frees it. num_used() counts physical blocks.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace glm {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_total() const { return num_blocks_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }
  int blocks_for(int num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  // Whether a new sequence of num_tokens tokens fits in the free blocks.
  bool can_allocate(int num_tokens) const;
  // Gives a new sequence the blocks for num_tokens tokens. The caller checked
  // can_allocate; throws std::logic_error otherwise or when seq already has blocks.
  void allocate(uint64_t seq, int num_tokens);
  // Grows seq's table to hold num_tokens tokens in all (a no-op while they fit
  // in the blocks it has). Returns false, changing nothing, when a block is
  // needed and none is free.
  bool append(uint64_t seq, int num_tokens);
  // Releases all of seq's blocks; each returns to the free list when no other
  // sequence holds it (unknown seq: no-op).
  void free(uint64_t seq);

  // Gives the new sequence `child` the blocks covering the first num_tokens tokens
  // of `parent`: every full block is shared (held once, reference-counted); the
  // last, partial one (num_tokens % block_size != 0) gets a fresh private block,
  // whose contents the caller must copy from *copy_src into *copy_dst (both -1
  // when there is no partial block). Returns false, changing nothing, when that
  // fresh block is needed and none is free. Throws std::logic_error when parent
  // is unknown, child already has blocks, or parent holds fewer tokens.
  bool fork(uint64_t parent, uint64_t child, int num_tokens, int32_t* copy_src, int32_t* copy_dst);

  bool has(uint64_t seq) const { return tables_.count(seq) != 0; }
  const std::vector<int32_t>& block_table(uint64_t seq) const;  // throws std::out_of_range

 private:
  int num_blocks_;
  int block_size_;
  int32_t take_free();
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first
  std::vector<int32_t> refs_;  // per block: sequences holding it
  std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
};

}  // namespace glm
