#include "block_manager.h"

#include <set>

#include <gtest/gtest.h>

#include "expect_throw.h"

using glm::BlockManager;

TEST(BlockManagerTest, allocate_append_free) {
  BlockManager bm(4, 16);
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_TRUE(bm.can_allocate(64));
  EXPECT_FALSE(bm.can_allocate(65));
  bm.allocate(1, 17);  // 2 blocks
  EXPECT_EQ(bm.num_used(), 2);
  EXPECT_EQ(bm.block_table(1).size(), size_t(2));
  EXPECT_TRUE(bm.append(1, 32));  // still fits in 2 blocks
  EXPECT_EQ(bm.num_used(), 2);
  EXPECT_TRUE(bm.append(1, 33));  // crosses a block boundary
  EXPECT_EQ(bm.num_used(), 3);
  bm.allocate(2, 1);
  EXPECT_EQ(bm.num_free(), 0);
  EXPECT_FALSE(bm.append(2, 17));  // needs a block, none free: unchanged
  EXPECT_EQ(bm.block_table(2).size(), size_t(1));
  std::set<int> ids(bm.block_table(1).begin(), bm.block_table(1).end());
  ids.insert(bm.block_table(2)[0]);
  EXPECT_EQ(ids.size(), size_t(4));  // no block handed out twice
  bm.free(1);
  EXPECT_EQ(bm.num_free(), 3);
  EXPECT_FALSE(bm.has(1));
  EXPECT_TRUE(bm.append(2, 17));
  bm.free(2);
  bm.free(2);  // idempotent
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.num_used(), 0);
}

TEST(BlockManagerTest, misuse_is_reported) {
  BlockManager bm(2, 4);
  bm.allocate(7, 4);
  EXPECT_THROW_MSG(bm.allocate(7, 1), "already has blocks");
  EXPECT_THROW_MSG(bm.allocate(8, 5), "not enough free blocks");
  EXPECT_THROW_MSG(bm.append(9, 1), "unknown sequence");
  EXPECT_THROW_MSG(BlockManager(0, 4), "num_blocks");
}
