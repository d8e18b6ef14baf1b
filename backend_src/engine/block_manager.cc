#include "block_manager.h"

#include <stdexcept>
#include <string>

namespace glm {

BlockManager::BlockManager(int num_blocks, int block_size) : num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks < 1) throw std::invalid_argument("BlockManager: num_blocks must be >= 1");
  if (block_size < 1) throw std::invalid_argument("BlockManager: block_size must be >= 1");
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 handed out first
}

bool BlockManager::can_allocate(int num_tokens) const { return blocks_for(num_tokens) <= num_free(); }

void BlockManager::allocate(uint64_t seq, int num_tokens) {
  if (tables_.count(seq)) throw std::logic_error("BlockManager::allocate: sequence " + std::to_string(seq) + " already has blocks");
  if (!can_allocate(num_tokens)) throw std::logic_error("BlockManager::allocate: not enough free blocks");
  std::vector<int32_t>& table = tables_[seq];
  for (int i = blocks_for(num_tokens); i > 0; --i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
}

bool BlockManager::append(uint64_t seq, int num_tokens) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) throw std::logic_error("BlockManager::append: unknown sequence " + std::to_string(seq));
  std::vector<int32_t>& table = it->second;
  const int need = blocks_for(num_tokens) - static_cast<int>(table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  for (int i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockManager::free(uint64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) free_.push_back(*b);
  tables_.erase(it);
}

const std::vector<int32_t>& BlockManager::block_table(uint64_t seq) const { return tables_.at(seq); }

}  // namespace glm
