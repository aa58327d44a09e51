// SPDX-License-Identifier: MIT
// Tests the contiguous and paged KV caches and decoding through them: prefill-then-decode equals a
// full prefill, paged equals contiguous bit for bit, split-KV equals unsplit, low-precision error
// bounds, and rejected calls that change nothing.
#include "headroom/cache/kv_cache.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/cache/paged_kv_cache.hpp"
#include "expect_error.hpp"
#include "reference.hpp"

namespace headroom {
namespace {

/// Random [1, seq, heads, dim] data with a contiguous view.
struct Tokens {
  std::vector<float> data;
  Index seq, heads, dim;

  Tokens(Index seq_len, Index num_heads, Index head_dim, std::mt19937& rng)
      : data(reference::random_vector(seq_len * num_heads * head_dim, rng)), seq(seq_len),
        heads(num_heads), dim(head_dim) {}

  TensorView<const float> all() const {
    return TensorView<const float>::bshd(data.data(), 1, seq, heads, dim);
  }
  /// Tokens [begin, end) as a [1, end - begin, heads, dim] view.
  TensorView<const float> range(Index begin, Index end) const {
    return TensorView<const float>::bshd(data.data() + begin * heads * dim, 1, end - begin, heads,
                                         dim);
  }
};

template <class Source>
std::vector<float> run_attend_on(const TensorView<const float>& q, const Source& kv,
                                 const AttentionOptions& options, Index head_dim_v) {
  std::vector<float> out(q.batch * q.seq * q.heads * head_dim_v);
  attend(q, kv, TensorView<float>::bshd(out.data(), q.batch, q.seq, q.heads, head_dim_v),
         options);
  return out;
}

template <class T>
class KvCacheTypedTest : public ::testing::Test {};
using Elements = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(KvCacheTypedTest, Elements, );  // the empty name generator: clang -Wpedantic wants an argument for "..."

TYPED_TEST(KvCacheTypedTest, PrefillThenDecodeStepsEqualsOnePrefill) {
  using T = TypeParam;
  std::mt19937 rng(3);
  const Index num_heads = 8, total = 150, prefix = 37;
  // dim 32 takes the vectorised conversions, 24 (not a packet multiple) the element-wise ones.
  for (Index dim : {32, 24})
  for (Index num_kv_heads : {8, 2, 1}) {
    for (const Mask& mask : {Mask::causal(), Mask::sliding_window(20)}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + " kv heads " + std::to_string(num_kv_heads) +
                   " window " + std::to_string(mask.window));
      Tokens q(total, num_heads, dim, rng), k(total, num_kv_heads, dim, rng),
          v(total, num_kv_heads, dim, rng);
      AttentionOptions options;
      options.mask = mask;
      const KvCacheConfig config{num_kv_heads, dim, dim, 1, total, false};

      KvCache<T> whole(config);
      whole.append(0, k.all(), v.all());
      const std::vector<float> expected = run_attend_on(q.all(), whole.view({0}), options, dim);

      // A ring buffer just wide enough for the window and the prefix chunk, for sliding windows.
      KvCacheConfig stepped_config = config;
      if (mask.kind == MaskKind::kSlidingWindow) {
        stepped_config.capacity = mask.window + prefix;
        stepped_config.ring_buffer = true;
      }
      KvCache<T> stepped(stepped_config);
      stepped.append(0, k.range(0, prefix), v.range(0, prefix));
      std::vector<float> got = run_attend_on(q.range(0, prefix), stepped.view({0}), options, dim);
      for (Index t = prefix; t < total; ++t) {
        stepped.append(0, k.range(t, t + 1), v.range(t, t + 1));
        const std::vector<float> row = run_attend_on(q.range(t, t + 1), stepped.view({0}),
                                                     options, dim);
        got.insert(got.end(), row.begin(), row.end());
      }
      // Both paths read the same stored (quantised) values; only the order of f32 sums differs
      // (tiles start at different keys, splits merge), so 1e-5 holds for every element type.
      ASSERT_EQ(got.size(), expected.size());
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-5) << i;
    }
  }
}

TYPED_TEST(KvCacheTypedTest, ValuesInKeysReadValuesFromTheKeyRows) {
  using T = TypeParam;
  std::mt19937 rng(41);
  const Index len = 150, kv_heads = 1;
  // (dk, dv): packet multiples (MLA's absorbed shape, scaled down) and not; 2 query heads stream K
  // and V straight from the cache, 16 pack them into tiles.
  for (const auto& [dk, dv] : {std::pair<Index, Index>{48, 32}, {20, 16}, {24, 24}})
  for (Index heads : {2, 16}) {
    SCOPED_TRACE("dk " + std::to_string(dk) + " dv " + std::to_string(dv) + " heads " +
                 std::to_string(heads));
    Tokens k(len, kv_heads, dk, rng), q(3, heads, dk, rng);
    KvCache<T> cache(KvCacheConfig{kv_heads, dk, dv, 1, len, false, true});
    cache.append(0, k.all());
    PagedKvCache<T> paged(PagedKvCacheConfig{kv_heads, dk, dv, 16, 10, true});
    const Index id = paged.add_sequence();
    paged.append(id, k.range(0, 100));
    paged.append(id, k.range(100, len));
    // The reference reads what the cache stored (so the test is about where V comes from, not
    // about rounding): K back from the cache, V its first dv columns.
    std::vector<float> stored(len * dk);
    const auto view = cache.view({0});
    for (Index j = 0; j < len; ++j) {
      const float scale = view.k_scales(0, j, 0) != nullptr ? *view.k_scales(0, j, 0) : 1.0f;
      for (Index d = 0; d < dk; ++d) stored[j * dk + d] = scale * static_cast<float>(view.k_row(0, j, 0)[d]);
    }
    const auto k_stored = TensorView<const float>::bshd(stored.data(), 1, len, 1, dk);
    auto v_stored = k_stored;
    v_stored.dim = dv;
    AttentionOptions options;
    options.mask = Mask::causal();
    const reference::Result expected = reference::attend(q.all(), k_stored, v_stored, options);
    const std::vector<float> got = run_attend_on(q.all(), view, options, dv);
    const std::vector<float> got_paged = run_attend_on(q.all(), paged.view({id}), options, dv);
    // f32 sums over at most 150 keys of O(1) products: a few ulp of the output scale.
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], expected.out[i], 1e-5) << i;
      ASSERT_EQ(got_paged[i], got[i]) << i;
    }
  }
}

/// The largest output error of attention through a cache of T against the f32 reference, for
/// values and keys uniform in [-1, 1], D = 64, 300 keys.
template <class T>
double low_precision_error() {
  std::mt19937 rng(5);
  const Index heads = 4, kv_heads = 2, len = 300, dim = 64;
  Tokens q(len, heads, dim, rng), k(len, kv_heads, dim, rng), v(len, kv_heads, dim, rng);
  KvCache<T> cache(KvCacheConfig{kv_heads, dim, dim, 1, len, false});
  cache.append(0, k.all(), v.all());
  AttentionOptions options;
  options.mask = Mask::causal();
  const std::vector<float> got = run_attend_on(q.all(), cache.view({0}), options, dim);
  const reference::Result expected = reference::attend(q.all(), k.all(), v.all(), options);
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - expected.out[i]));
  return worst;
}

TEST(KvCacheTest, LowPrecisionErrorAgainstF32IsBounded) {
  // Rounding a value to bf16 errs by at most 2^-9 relative, f16 by 2^-12, int8 by half a step of
  // max|x| / 127 = 2^-8 of the row's scale. An output is a convex combination of values, so its
  // error is at most the value error plus what the key error does to the weights (|dlogit| <=
  // scale * sum |q| |dk|, a few times the element error at D = 64). Measured here: f16 2.4e-4,
  // bf16 2.0e-3, int8 4.1e-3 (max over 300 x 4 x 64 outputs); the bounds leave about 3x headroom.
  EXPECT_LT(low_precision_error<float>(), 1e-5);
  EXPECT_LT(low_precision_error<Eigen::half>(), 1e-3);
  EXPECT_LT(low_precision_error<Eigen::bfloat16>(), 6e-3);
  EXPECT_LT(low_precision_error<std::int8_t>(), 1.2e-2);
}

TYPED_TEST(KvCacheTypedTest, PagedEqualsContiguousBitForBit) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const Index num_seqs = 4, kv_heads = 2, heads = 6, dim = 16, capacity = 200;
  for (Index block_size : {1, 3, 16, 32}) {
    SCOPED_TRACE("block_size " + std::to_string(block_size));
    KvCache<T> contiguous(KvCacheConfig{kv_heads, dim, dim, num_seqs, capacity, false});
    PagedKvCache<T> paged(PagedKvCacheConfig{kv_heads, dim, dim, block_size,
                                             num_seqs * capacity / block_size + num_seqs});
    std::vector<Index> paged_ids;
    for (Index s = 0; s < num_seqs; ++s) paged_ids.push_back(paged.add_sequence());
    // Random interleaving: each step appends a random chunk to a random sequence.
    std::uniform_int_distribution<Index> pick(0, num_seqs - 1), chunk(1, 9);
    for (int step = 0; step < 40; ++step) {
      const Index s = pick(rng);
      const Index n = std::min(chunk(rng), capacity - contiguous.length(s));
      if (n == 0) continue;
      Tokens k(n, kv_heads, dim, rng), v(n, kv_heads, dim, rng);
      contiguous.append(s, k.all(), v.all());
      paged.append(paged_ids[s], k.all(), v.all());
    }
    for (Index q_len : {1, 3}) {
      std::vector<float> q_data = reference::random_vector(num_seqs * q_len * heads * dim, rng);
      const auto q = TensorView<const float>::bshd(q_data.data(), num_seqs, q_len, heads, dim);
      AttentionOptions options;
      options.mask = Mask::causal();
      const std::vector<float> a =
          run_attend_on(q, contiguous.view({0, 1, 2, 3}), options, dim);
      const std::vector<float> b = run_attend_on(q, paged.view(paged_ids), options, dim);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
    }
  }
}

TEST(KvCacheTest, SplitKvEqualsUnsplitForAnySplitCount) {
  std::mt19937 rng(11);
  const Index heads = 8, kv_heads = 1, len = 1000, dim = 64;
  Tokens k(len, kv_heads, dim, rng), v(len, kv_heads, dim, rng), q(2, heads, dim, rng);
  KvCache<float> cache(KvCacheConfig{kv_heads, dim, dim, 1, len, false});
  cache.append(0, k.all(), v.all());
  // The same keys in blocks of 16 of a pool with no block to spare: a split that requests the
  // next split's first tile must stay within the block table.
  PagedKvCache<float> paged(PagedKvCacheConfig{kv_heads, dim, dim, 16, (len + 15) / 16});
  const Index paged_id = paged.add_sequence();
  paged.append(paged_id, k.all(), v.all());
  // Splits cut the visible keys: a window of 100 keys is two tiles, so from 3 splits on some
  // splits have no key at all.
  for (const Mask& mask : {Mask::causal(), Mask::sliding_window(100)}) {
    std::vector<float> lse_one(heads * 2), lse_many(heads * 2);
    AttentionOptions options;
    options.mask = mask;
    options.kv_splits = 1;
    options.lse = LseView::bhs(lse_one.data(), 1, heads, 2);
    const std::vector<float> one = run_attend_on(q.all(), cache.view({0}), options, dim);
    for (Index splits : {2, 3, 7, 16, 64, 1000}) {
      SCOPED_TRACE("splits " + std::to_string(splits) + " window " + std::to_string(mask.window));
      options.kv_splits = splits;
      options.lse = LseView::bhs(lse_many.data(), 1, heads, 2);
      const std::vector<float> many = run_attend_on(q.all(), cache.view({0}), options, dim);
      // Merging normalised partial results reorders f32 sums: a few ulp of the output scale.
      for (size_t i = 0; i < one.size(); ++i) ASSERT_NEAR(many[i], one[i], 1e-6) << i;
      for (size_t i = 0; i < lse_one.size(); ++i) ASSERT_NEAR(lse_many[i], lse_one[i], 1e-5);
      const std::vector<float> many_paged =
          run_attend_on(q.all(), paged.view({paged_id}), options, dim);
      EXPECT_EQ(std::memcmp(many_paged.data(), many.data(), many.size() * sizeof(float)), 0);
    }
  }
}

TEST(KvCacheTest, BatchOfSequencesWithDifferentLengthsDecodesInOneCall) {
  std::mt19937 rng(13);
  const Index kv_heads = 2, heads = 4, dim = 32;
  const std::vector<Index> lengths = {1, 70, 300};
  KvCache<float> cache(KvCacheConfig{kv_heads, dim, dim, 3, 300, false});
  std::vector<Tokens> keys, values;
  for (Index s = 0; s < 3; ++s) {
    keys.emplace_back(lengths[s], kv_heads, dim, rng);
    values.emplace_back(lengths[s], kv_heads, dim, rng);
    cache.append(s, keys[s].all(), values[s].all());
  }
  std::vector<float> q_data = reference::random_vector(3 * heads * dim, rng);
  const auto q = TensorView<const float>::bshd(q_data.data(), 3, 1, heads, dim);
  AttentionOptions options;
  options.mask = Mask::causal();
  const std::vector<float> batched = run_attend_on(q, cache.view({2, 0, 1}), options, dim);
  const Index order[] = {2, 0, 1};
  for (Index b = 0; b < 3; ++b) {
    const auto q_b = TensorView<const float>::bshd(q_data.data() + b * heads * dim, 1, 1, heads, dim);
    const reference::Result expected = reference::attend(q_b, keys[order[b]].all(),
                                                         values[order[b]].all(), options);
    for (Index i = 0; i < heads * dim; ++i) {
      ASSERT_NEAR(batched[b * heads * dim + i], expected.out[i], 1e-5) << "b " << b;
    }
  }
}

TEST(KvCacheTest, BytesPerTokenAreExact) {
  const KvCacheConfig config{8, 128, 64, 2, 100, false};
  EXPECT_EQ(KvCache<float>(config).bytes_per_token(), 8 * (128 + 64) * 4);
  EXPECT_EQ(KvCache<Eigen::bfloat16>(config).bytes_per_token(), 8 * (128 + 64) * 2);
  EXPECT_EQ(KvCache<Eigen::half>(config).bytes_per_token(), 8 * (128 + 64) * 2);
  EXPECT_EQ(KvCache<std::int8_t>(config).bytes_per_token(), 8 * (128 + 64) + 8 * 2 * 4);
  EXPECT_EQ(KvCache<float>(config).bytes_total(), 8 * (128 + 64) * 4 * 2 * 100);
  PagedKvCache<std::int8_t> paged(PagedKvCacheConfig{8, 128, 64, 16, 10});
  EXPECT_EQ(paged.bytes_total(), (8 * (128 + 64) + 8 * 2 * 4) * 16 * 10);
  // Values in keys: K alone, and one int8 scale per token and head.
  const KvCacheConfig in_keys{8, 128, 64, 2, 100, false, true};
  EXPECT_EQ(KvCache<float>(in_keys).bytes_per_token(), 8 * 128 * 4);
  EXPECT_EQ(KvCache<std::int8_t>(in_keys).bytes_per_token(), 8 * 128 + 8 * 4);
  EXPECT_EQ(PagedKvCache<Eigen::half>(PagedKvCacheConfig{8, 128, 64, 16, 10, true}).bytes_total(),
            8 * 128 * 2 * 16 * 10);
}

TEST(KvCacheTest, TruncateRollsBackSpeculativeTokens) {
  std::mt19937 rng(17);
  const Index dim = 16;
  Tokens k(20, 1, dim, rng), v(20, 1, dim, rng), q(1, 2, dim, rng);
  KvCache<float> cache(KvCacheConfig{1, dim, dim, 1, 20, false});
  cache.append(0, k.range(0, 12), v.range(0, 12));
  AttentionOptions options;
  options.mask = Mask::causal();
  const std::vector<float> before = run_attend_on(q.all(), cache.view({0}), options, dim);
  cache.append(0, k.range(12, 16), v.range(12, 16));  // four draft tokens, rejected
  cache.truncate(0, 12);
  EXPECT_EQ(cache.length(0), 12);
  EXPECT_EQ(run_attend_on(q.all(), cache.view({0}), options, dim), before);
}

TEST(PagedKvCacheTest, ForkSharesBlocksAndCopiesOnWrite) {
  std::mt19937 rng(19);
  const Index dim = 8;
  PagedKvCache<float> cache(PagedKvCacheConfig{1, dim, dim, 4, 8});
  const Index a = cache.add_sequence();
  Tokens prompt(6, 1, dim, rng), ka(1, 1, dim, rng), kb(1, 1, dim, rng);
  cache.append(a, prompt.all(), prompt.all());
  EXPECT_EQ(cache.free_blocks(), 6);
  const Index b = cache.fork(a);
  EXPECT_EQ(cache.free_blocks(), 6);  // shared, not copied
  cache.append(b, kb.all(), kb.all());  // writes into the shared half-full block: copies it
  EXPECT_EQ(cache.free_blocks(), 5);
  cache.append(a, ka.all(), ka.all());  // a's last block is its own again
  EXPECT_EQ(cache.free_blocks(), 5);
  EXPECT_EQ(cache.block_table(a)[0], cache.block_table(b)[0]);
  EXPECT_NE(cache.block_table(a)[1], cache.block_table(b)[1]);
  // Token 6 of each sequence is its own; tokens 0..5 are the prompt in both.
  const auto view = cache.view({a, b});
  EXPECT_EQ(view.k_row(0, 6, 0)[0], ka.data[0]);
  EXPECT_EQ(view.k_row(1, 6, 0)[0], kb.data[0]);
  EXPECT_EQ(view.k_row(1, 5, 0)[3], prompt.data[5 * dim + 3]);
  cache.remove_sequence(a);
  cache.remove_sequence(b);
  EXPECT_EQ(cache.free_blocks(), 8);
}

using testing::expect_error;

TEST(KvCacheTest, RejectedCallsLeaveTheCacheUnchanged) {
  std::mt19937 rng(23);
  const Index dim = 16;
  KvCache<std::int8_t> cache(KvCacheConfig{2, dim, dim, 2, 10, false});
  Tokens k(8, 2, dim, rng), v(8, 2, dim, rng), q(1, 4, dim, rng);
  cache.append(0, k.all(), v.all());
  AttentionOptions options;
  options.mask = Mask::causal();
  const std::vector<float> before = run_attend_on(q.all(), cache.view({0}), options, dim);
  const auto unchanged = [&] {
    EXPECT_EQ(cache.length(0), 8);
    EXPECT_EQ(cache.length(1), 0);
    EXPECT_EQ(run_attend_on(q.all(), cache.view({0}), options, dim), before);
  };

  Tokens three(3, 2, dim, rng);
  expect_error([&] { cache.append(0, three.all(), three.all()); },
               "KvCache::append: appending 3 tokens to sequence 0 of length 8 exceeds the "
               "capacity (10 tokens)");
  unchanged();
  // Both sequences in one call: sequence 1 fits, sequence 0 does not; neither is written.
  std::vector<float> two_seqs = reference::random_vector(2 * 3 * 2 * dim, rng);
  const auto batch_of_two = TensorView<const float>::bshd(two_seqs.data(), 2, 3, 2, dim);
  expect_error([&] { cache.append({1, 0}, batch_of_two, batch_of_two); }, "exceeds the capacity");
  unchanged();
  Tokens wrong_heads(1, 3, dim, rng);
  expect_error([&] { cache.append(0, wrong_heads.all(), wrong_heads.all()); },
               "k.heads (3) differs from the cache's num_kv_heads (2)");
  Tokens wrong_dim(1, 2, 8, rng);
  expect_error([&] { cache.append(0, wrong_dim.all(), wrong_dim.all()); },
               "k.dim (8) differs from the cache's head_dim_k (16)");
  expect_error([&] { cache.append(5, three.all(), three.all()); },
               "sequence id 5 (at 0) does not exist in this cache");
  expect_error([&] { cache.append({1, 1}, batch_of_two, batch_of_two); },
               "sequence id 1 appears twice");
  Tokens bad(1, 2, dim, rng);
  bad.data[7] = std::numeric_limits<float>::infinity();
  expect_error([&] { cache.append(1, bad.all(), bad.all()); },
               "k[0, 0, 0, 7] (inf) is outside the range of the int8 cache");
  expect_error([&] { cache.truncate(0, 9); }, "new_length (9) is outside [0, 8]");
  expect_error([&] { static_cast<void>(cache.view({2})); }, "sequence id 2 (at 0) does not exist");
  unchanged();
}

TEST(KvCacheTest, RingBufferRejectsMasksThatReachOverwrittenKeys) {
  std::mt19937 rng(29);
  const Index dim = 8;
  KvCache<float> cache(KvCacheConfig{1, dim, dim, 1, 8, true});
  Tokens k(20, 1, dim, rng), q(1, 2, dim, rng);
  cache.append(0, k.range(0, 8), k.range(0, 8));
  cache.append(0, k.range(8, 12), k.range(8, 12));
  EXPECT_EQ(cache.first_readable(0), 4);
  AttentionOptions options;
  options.mask = Mask::causal();
  std::vector<float> out(2 * dim);
  const auto out_view = TensorView<float>::bshd(out.data(), 1, 1, 2, dim);
  expect_error([&] { attend(q.all(), cache.view({0}), out_view, options); },
               "sequence 0: the mask reaches key 0 but the cache only holds keys from 4 on");
  options.mask = Mask::sliding_window(8);
  EXPECT_NO_THROW(attend(q.all(), cache.view({0}), out_view, options));
  expect_error([&] { cache.truncate(0, 3); }, "new_length (3) is outside [4, 12]");
  Tokens nine(9, 1, dim, rng);
  expect_error([&] { cache.append(0, nine.all(), nine.all()); },
               "appending 9 tokens to sequence 0 of length 12 exceeds the capacity (8 tokens at "
               "once in a ring buffer)");
}

TEST(PagedKvCacheTest, RejectedCallsLeaveTheCacheUnchanged) {
  std::mt19937 rng(31);
  const Index dim = 8;
  PagedKvCache<Eigen::bfloat16> cache(PagedKvCacheConfig{1, dim, dim, 4, 3});
  const Index a = cache.add_sequence();
  Tokens k(10, 1, dim, rng);
  cache.append(a, k.range(0, 9), k.range(0, 9));
  const std::vector<Index> table = cache.block_table(a);
  expect_error([&] { cache.append(a, k.range(0, 4), k.range(0, 4)); },
               "needs 1 free blocks but the pool has 0 of 3");
  EXPECT_EQ(cache.length(a), 9);
  EXPECT_EQ(cache.block_table(a), table);
  expect_error([&] { static_cast<void>(cache.view({a + 1})); }, "does not exist");
  expect_error([&] { cache.truncate(a + 7, 0); }, "sequence id 7 does not exist");
  // Block tables a caller builds are checked against the pool when attention reads them.
  PagedKvView<Eigen::bfloat16> bad_view(cache, {{0, 3}}, {6});
  std::vector<float> q_data(dim), out(dim);
  expect_error([&] {
    attend(TensorView<const float>::bshd(q_data.data(), 1, 1, 1, dim), bad_view,
           TensorView<float>::bshd(out.data(), 1, 1, 1, dim));
  }, "block_tables[0][1] (3) is outside the pool [0, 3)");
  PagedKvView<Eigen::bfloat16> short_view(cache, {{0}}, {6});
  expect_error([&] {
    attend(TensorView<const float>::bshd(q_data.data(), 1, 1, 1, dim), short_view,
           TensorView<float>::bshd(out.data(), 1, 1, 1, dim));
  }, "sequence 0 has length 6 but its block table holds 1 blocks of 4 tokens");
  // Regressions: the blocks a length needs were counted before its sign was checked, and
  // rounding the largest length up to whole blocks overflowed.
  for (const auto& [length, message] :
       {std::pair<Index, const char*>{-1, "lengths[0] (-1) is negative"},
        {std::numeric_limits<Index>::max(),
         "sequence 0 has length 9223372036854775807 but its block table holds 1 blocks"}}) {
    PagedKvView<Eigen::bfloat16> lying_view(cache, {{0}}, {length});
    expect_error([&] {
      attend(TensorView<const float>::bshd(q_data.data(), 1, 1, 1, dim), lying_view,
             TensorView<float>::bshd(out.data(), 1, 1, 1, dim));
    }, message);
  }
  // More tokens than the whole pool holds are refused before any block is counted.
  const Index many = 100;
  const std::vector<float> rows(static_cast<size_t>(many * dim), 0.5f);
  const auto many_rows = TensorView<const float>::bshd(rows.data(), 1, many, 1, dim);
  expect_error([&] { cache.append(a, many_rows, many_rows); },
               "appending 100 tokens exceeds the pool's 12 tokens (3 blocks of 4)");
  EXPECT_EQ(cache.length(a), 9);
  EXPECT_EQ(cache.block_table(a), table);
}

TEST(KvCacheTest, Int8QuantisesRowsNearTheSmallestFloats) {
  // Regression: 1 / scale overflowed to inf for such rows, turning 0 into NaN (UB when cast).
  const float row[4] = {1e-38f, 2.5e-39f, 0.0f, -1.25e-39f};
  KvCache<std::int8_t> cache(KvCacheConfig{1, 4, 4, 1, 2, false});
  const auto view = TensorView<const float>::bshd(row, 1, 1, 1, 4);
  cache.append(0, view, view);
  const auto source = cache.view({0});
  const std::int8_t* stored = source.k_row(0, 0, 0);
  EXPECT_EQ(stored[0], 127);
  EXPECT_EQ(stored[1], 32);
  EXPECT_EQ(stored[2], 0);
  EXPECT_EQ(stored[3], -16);
}

TEST(KvCacheTest, HalfCacheRejectsValuesBeyondItsRange) {
  KvCache<Eigen::half> cache(KvCacheConfig{1, 2, 2, 1, 4, false});
  const float row[2] = {1.0f, 70000.0f};
  const auto view = TensorView<const float>::bshd(row, 1, 1, 1, 2);
  expect_error([&] { cache.append(0, view, view); },
               "k[0, 0, 0, 1] (70000) is outside the range of the f16 cache");
  EXPECT_EQ(cache.length(0), 0);
}

TEST(KvCacheTest, BfloatCacheRejectsValuesItWouldRoundToInfinity) {
  // Regression: bf16 keeps f32's exponent range but rounds 3.3961e38 and up to inf, which the
  // cache stored, and attention then returned NaN.
  KvCache<Eigen::bfloat16> cache(KvCacheConfig{1, 2, 2, 1, 4, false});
  const float largest = static_cast<float>(Eigen::NumTraits<Eigen::bfloat16>::highest());
  const float row[2] = {largest, std::numeric_limits<float>::max()};
  const auto view = TensorView<const float>::bshd(row, 1, 1, 1, 2);
  expect_error([&] { cache.append(0, view, view); },
               "k[0, 0, 0, 1] (3.40282e+38) is outside the range of the bf16 cache");
  EXPECT_EQ(cache.length(0), 0);
  const float fits[2] = {largest, -largest};
  const auto fits_view = TensorView<const float>::bshd(fits, 1, 1, 1, 2);
  cache.append(0, fits_view, fits_view);
  EXPECT_EQ(static_cast<float>(cache.view({0}).k_row(0, 0, 0)[1]), -largest);
}

TEST(KvCacheTest, SizesThatOverflowAreRejected) {
  expect_error([&] { KvCache<float>(KvCacheConfig{1, 16, 16, 2, Index{1} << 59, false}); },
               "is too large to address");
  // Regression: heads x dims overflowed before they were checked.
  expect_error([&] { KvCache<float>(KvCacheConfig{Index{1} << 40, Index{1} << 30, 16, 1, 1, false}); },
               "is too large to address");
  const Index most = std::numeric_limits<Index>::max();
  expect_error([&] { KvCache<float>(KvCacheConfig{1, most, most, 1, 1, false}); },
               "is too large to address");
  expect_error([&] { PagedKvCache<float>(PagedKvCacheConfig{1, 16, 16, Index{1} << 40, 1 << 30}); },
               "overflows");
}

TEST(PagedKvCacheTest, SharersAppendingTogetherCopyTheSharedBlockOnce) {
  std::mt19937 rng(37);
  const Index dim = 4;
  PagedKvCache<float> cache(PagedKvCacheConfig{1, dim, dim, 16, 2});
  const Index a = cache.add_sequence();
  Tokens prompt(10, 1, dim, rng);
  cache.append(a, prompt.all(), prompt.all());
  const Index b = cache.fork(a);
  ASSERT_EQ(cache.free_blocks(), 1);
  // One of the two sharers copies the half-full block, the other keeps it: one block is enough.
  std::vector<float> next = reference::random_vector(2 * dim, rng);
  const auto two = TensorView<const float>::bshd(next.data(), 2, 1, 1, dim);
  cache.append({a, b}, two, two);
  EXPECT_EQ(cache.free_blocks(), 0);
  EXPECT_EQ(cache.length(a), 11);
  EXPECT_EQ(cache.length(b), 11);
  EXPECT_NE(cache.block_table(a)[0], cache.block_table(b)[0]);
}

}  // namespace
}  // namespace headroom
