#include "block_manager.h"

#include <stdexcept>
#include <string>

namespace glm {

BlockManager::BlockManager(int num_blocks, int block_size) : num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks < 1) throw std::invalid_argument("BlockManager: num_blocks must be >= 1");
  if (block_size < 1) throw std::invalid_argument("BlockManager: block_size must be >= 1");
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 handed out first
  refs_.assign(static_cast<size_t>(num_blocks), 0);
}

int32_t BlockManager::take_free() {
  const int32_t b = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(b)] = 1;
  return b;
}

bool BlockManager::can_allocate(int num_tokens) const { return blocks_for(num_tokens) <= num_free(); }

void BlockManager::allocate(uint64_t seq, int num_tokens) {
  if (tables_.count(seq)) throw std::logic_error("BlockManager::allocate: sequence " + std::to_string(seq) + " already has blocks");
  if (!can_allocate(num_tokens)) throw std::logic_error("BlockManager::allocate: not enough free blocks");
  std::vector<int32_t>& table = tables_[seq];
  for (int i = blocks_for(num_tokens); i > 0; --i) table.push_back(take_free());
}

bool BlockManager::append(uint64_t seq, int num_tokens) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) throw std::logic_error("BlockManager::append: unknown sequence " + std::to_string(seq));
  std::vector<int32_t>& table = it->second;
  const int need = blocks_for(num_tokens) - static_cast<int>(table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  for (int i = 0; i < need; ++i) table.push_back(take_free());
  return true;
}

void BlockManager::free(uint64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b)
    if (--refs_[static_cast<size_t>(*b)] == 0) free_.push_back(*b);
  tables_.erase(it);
}

bool BlockManager::fork(uint64_t parent, uint64_t child, int num_tokens, int32_t* copy_src, int32_t* copy_dst) {
  auto it = tables_.find(parent);
  if (it == tables_.end()) throw std::logic_error("BlockManager::fork: unknown sequence " + std::to_string(parent));
  if (tables_.count(child)) throw std::logic_error("BlockManager::fork: sequence " + std::to_string(child) + " already has blocks");
  const int full = num_tokens / block_size_;
  const bool partial = num_tokens % block_size_ != 0;
  if (blocks_for(num_tokens) > static_cast<int>(it->second.size()))
    throw std::logic_error("BlockManager::fork: the parent holds fewer than " + std::to_string(num_tokens) + " tokens");
  *copy_src = *copy_dst = -1;
  if (partial && free_.empty()) return false;
  std::vector<int32_t> table(it->second.begin(), it->second.begin() + full);
  for (int32_t b : table) ++refs_[static_cast<size_t>(b)];
  if (partial) {
    *copy_src = it->second[static_cast<size_t>(full)];
    *copy_dst = take_free();
    table.push_back(*copy_dst);
  }
  tables_.emplace(child, std::move(table));
  return true;
}

const std::vector<int32_t>& BlockManager::block_table(uint64_t seq) const { return tables_.at(seq); }

}  // namespace glm
