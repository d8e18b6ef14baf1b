// The scheduler on its own: no model, "forward" is simulated by marking the
// scheduled tokens cached and appending a fake sampled token.
#include "scheduler.h"

#include <gtest/gtest.h>

using namespace glm;

namespace {

std::unique_ptr<Sequence> make_seq(uint64_t id, int prompt_len) {
  auto s = std::make_unique<Sequence>();
  s->id = id;
  s->tokens.assign(static_cast<size_t>(prompt_len), 1);
  s->prompt_len = prompt_len;
  s->context_length = prompt_len - 1;
  return s;
}

// Applies a step's results: what was fed is cached, one new token each.
void apply(const SchedulerOutput& out) {
  for (const ScheduledSeq& ss : out.batch) {
    ss.seq->num_cached = ss.num_cached + ss.num_new;
    ss.seq->tokens.push_back(2);
    ++ss.seq->num_generated;
  }
}

}  // namespace

TEST(SchedulerTest, prefill_and_decode_share_a_step) {
  BlockManager bm(100, 4);
  Scheduler sch(&bm, {8, 1000});
  sch.add(make_seq(1, 5));
  auto o1 = sch.schedule();
  EXPECT_EQ(o1.batch.size(), size_t(1));
  EXPECT_TRUE(o1.batch[0].is_prefill);
  EXPECT_EQ(o1.batch[0].num_new, 5);
  apply(o1);
  sch.add(make_seq(2, 3));
  auto o2 = sch.schedule();
  EXPECT_EQ(o2.batch.size(), size_t(2));
  EXPECT_FALSE(o2.batch[0].is_prefill);
  EXPECT_EQ(o2.batch[0].num_new, 1);
  EXPECT_EQ(o2.batch[0].num_cached, 5);
  EXPECT_TRUE(o2.batch[1].is_prefill);
  EXPECT_EQ(bm.block_table(1).size(), size_t(2));  // 6 tokens
  apply(o2);
  sch.remove(1);
  sch.remove(2);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_TRUE(sch.idle());
}

TEST(SchedulerTest, limits_on_running_and_prefill_tokens) {
  BlockManager bm(100, 4);
  Scheduler sch(&bm, {2, 10});
  sch.add(make_seq(1, 8));
  sch.add(make_seq(2, 8));  // 8 + 8 > 10: waits a step
  sch.add(make_seq(3, 2));
  auto o1 = sch.schedule();
  EXPECT_EQ(o1.batch.size(), size_t(1));
  EXPECT_EQ(sch.num_waiting(), 2);
  apply(o1);
  auto o2 = sch.schedule();  // decode 1 + prefill 2; 3 blocked by max_running_seqs 2
  EXPECT_EQ(o2.batch.size(), size_t(2));
  EXPECT_EQ(sch.num_running(), 2);
  EXPECT_EQ(sch.num_waiting(), 1);
  // A single prompt larger than the token budget is still admitted alone.
  BlockManager bm2(100, 4);
  Scheduler big(&bm2, {4, 3});
  big.add(make_seq(9, 20));
  EXPECT_EQ(big.schedule().batch.size(), size_t(1));
}

TEST(SchedulerTest, waits_when_blocks_run_out) {
  BlockManager bm(3, 4);
  Scheduler sch(&bm, {8, 1000});
  sch.add(make_seq(1, 8));  // 2 blocks
  sch.add(make_seq(2, 8));  // 2 more: does not fit
  auto o1 = sch.schedule();
  EXPECT_EQ(o1.batch.size(), size_t(1));
  EXPECT_EQ(sch.num_waiting(), 1);
  apply(o1);
  sch.remove(1);
  auto o2 = sch.schedule();
  EXPECT_EQ(o2.batch.size(), size_t(1));
  EXPECT_EQ(o2.batch[0].seq->id, uint64_t(2));
}

TEST(SchedulerTest, full_cache_preempts_the_newest_and_recomputes) {
  BlockManager bm(4, 4);
  Scheduler sch(&bm, {8, 1000});
  sch.add(make_seq(1, 4));  // 1 block
  sch.add(make_seq(2, 4));
  sch.add(make_seq(3, 4));
  sch.add(make_seq(4, 4));
  apply(sch.schedule());  // all four admitted, cache full
  EXPECT_EQ(bm.num_free(), 0);
  // Each now has 5 tokens: needs a second block. The newest give way.
  auto o = sch.schedule();
  EXPECT_TRUE(o.num_preempted >= 1);
  EXPECT_EQ(o.batch.size(), size_t(2));  // 1 and 2 grow into the blocks of 4 and 3
  EXPECT_EQ(o.batch[0].seq->id, uint64_t(1));
  EXPECT_EQ(o.batch[1].seq->id, uint64_t(2));
  EXPECT_EQ(sch.num_waiting(), 2);
  EXPECT_EQ(sch.waiting().front()->id, uint64_t(3));  // back at the front, in order
  EXPECT_EQ(sch.waiting().front()->num_cached, 0);
  EXPECT_EQ(sch.num_preemptions(), 2);
  apply(o);
  sch.remove(1);
  sch.remove(2);
  // Re-admitted with prompt + generated token, recomputed from scratch.
  auto r = sch.schedule();
  EXPECT_EQ(r.batch.size(), size_t(2));
  EXPECT_TRUE(r.batch[0].is_prefill);
  EXPECT_EQ(r.batch[0].num_new, 5);
  EXPECT_EQ(r.batch[0].num_cached, 0);
}

TEST(SchedulerTest, a_lone_sequence_that_cannot_grow_preempts_itself) {
  BlockManager bm(1, 4);
  Scheduler sch(&bm, {8, 1000});
  sch.add(make_seq(1, 4));
  apply(sch.schedule());
  auto o = sch.schedule();  // needs block 2 of 1: cannot run; goes back to the queue
  EXPECT_TRUE(o.batch.empty());
  EXPECT_EQ(sch.num_waiting(), 1);
  EXPECT_EQ(bm.num_used(), 0);
}
