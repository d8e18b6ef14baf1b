#include "block_manager.h"

#include <set>

#include "check.h"

using glm::BlockManager;

TEST(allocate_append_free) {
  BlockManager bm(4, 16);
  CHECK_EQ(bm.num_free(), 4);
  CHECK(bm.can_allocate(64));
  CHECK(!bm.can_allocate(65));
  bm.allocate(1, 17);  // 2 blocks
  CHECK_EQ(bm.num_used(), 2);
  CHECK_EQ(bm.block_table(1).size(), size_t(2));
  CHECK(bm.append(1, 32));  // still fits in 2 blocks
  CHECK_EQ(bm.num_used(), 2);
  CHECK(bm.append(1, 33));  // crosses a block boundary
  CHECK_EQ(bm.num_used(), 3);
  bm.allocate(2, 1);
  CHECK_EQ(bm.num_free(), 0);
  CHECK(!bm.append(2, 17));  // needs a block, none free: unchanged
  CHECK_EQ(bm.block_table(2).size(), size_t(1));
  std::set<int> ids(bm.block_table(1).begin(), bm.block_table(1).end());
  ids.insert(bm.block_table(2)[0]);
  CHECK_EQ(ids.size(), size_t(4));  // no block handed out twice
  bm.free(1);
  CHECK_EQ(bm.num_free(), 3);
  CHECK(!bm.has(1));
  CHECK(bm.append(2, 17));
  bm.free(2);
  bm.free(2);  // idempotent
  CHECK_EQ(bm.num_free(), 4);
  CHECK_EQ(bm.num_used(), 0);
}

TEST(misuse_is_reported) {
  BlockManager bm(2, 4);
  bm.allocate(7, 4);
  CHECK_THROWS(bm.allocate(7, 1), "already has blocks");
  CHECK_THROWS(bm.allocate(8, 5), "not enough free blocks");
  CHECK_THROWS(bm.append(9, 1), "unknown sequence");
  CHECK_THROWS(BlockManager(0, 4), "num_blocks");
}

TEST_MAIN()
