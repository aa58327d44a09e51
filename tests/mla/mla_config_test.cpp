// SPDX-License-Identifier: MIT
// Tests MLA's config (DeepSeek-V2 presets, softmax scale, RoPE), weight shape checks, the latent
// cache (one stored copy, bytes per token) and the errors of bad input, which change no state.
#include "headroom/mla/mla_config.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "headroom/mla/latent_cache.hpp"
#include "headroom/mla/mla_attention.hpp"
#include "headroom/mla/mla_weights.hpp"
#include "expect_error.hpp"
#include "reference.hpp"

namespace headroom {
namespace {

using testing::expect_error;

MlaConfig tiny_config() {
  MlaConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  c.max_position_embeddings = 64;
  c.rope_scaling = RopeScaling::yarn(4.0, 16, 0.707, 0.707);
  return c;
}

TEST(MlaConfigTest, DefaultsAndLitePresetReproduceDeepSeekV2) {
  const MlaConfig v2;
  EXPECT_EQ(v2.hidden_size, 5120);
  EXPECT_EQ(v2.num_attention_heads, 128);
  EXPECT_EQ(v2.q_lora_rank, 1536);
  EXPECT_EQ(v2.kv_lora_rank, 512);
  EXPECT_EQ(v2.qk_nope_head_dim, 128);
  EXPECT_EQ(v2.qk_rope_head_dim, 64);
  EXPECT_EQ(v2.v_head_dim, 128);
  EXPECT_EQ(v2.latent_dim(), 576);
  EXPECT_EQ(v2.rope_scaling.kind, RopeScaling::Kind::kYarn);
  EXPECT_EQ(v2.rope_scaling.factor, 40.0);
  EXPECT_EQ(v2.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(v2.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(v2.rope_scaling.beta_slow, 1.0);
  EXPECT_EQ(v2.rope_scaling.mscale, 0.707);
  EXPECT_EQ(v2.rope_scaling.mscale_all_dim, 0.707);
  EXPECT_NO_THROW(v2.validate());
  const MlaConfig lite = MlaConfig::deepseek_v2_lite();
  EXPECT_EQ(lite.hidden_size, 2048);
  EXPECT_EQ(lite.num_attention_heads, 16);
  EXPECT_EQ(lite.q_lora_rank, 0);
  EXPECT_EQ(lite.latent_dim(), 576);
  EXPECT_NO_THROW(lite.validate());
}

TEST(MlaConfigTest, SoftmaxScaleCarriesYarnsMscaleSquared) {
  // DeepSeek-V2: mscale = 0.1 * 0.707 * ln(40) + 1 = 1.26080; 1.26080^2 / sqrt(192) = 0.114722.
  const double mscale = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(MlaConfig{}.softmax_scale(), mscale * mscale / std::sqrt(192.0), 1e-15);
  EXPECT_NEAR(MlaConfig{}.softmax_scale(), 0.114722, 1e-6);
  // The cos/sin factor is the ratio of the two mscales: 1 when they are equal.
  EXPECT_DOUBLE_EQ(MlaConfig{}.rope_attention_factor(), 1.0);
  EXPECT_DOUBLE_EQ(RopeTable(MlaConfig::deepseek_v2_lite().rope_config()).attention_factor(), 1.0);
  MlaConfig uneven;
  uneven.rope_scaling.mscale = 1.0;
  uneven.rope_scaling.mscale_all_dim = 0.0;  // DeepSeek: the ratio is taken anyway
  EXPECT_NEAR(uneven.rope_attention_factor(), 0.1 * std::log(40.0) + 1.0, 1e-15);
  EXPECT_NEAR(uneven.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-15);  // mscale_all_dim 0: no change
  MlaConfig plain;
  plain.rope_scaling = RopeScaling::none();
  EXPECT_NEAR(plain.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-15);
  const RopeConfig rope = MlaConfig{}.rope_config();
  EXPECT_EQ(rope.layout, RopeLayout::kInterleaved);
  EXPECT_EQ(rope.head_dim, 64);
  EXPECT_EQ(rope.base, 10000.0);
}

TEST(MlaConfigTest, DimsThatDoNotFitAreRejectedByName) {
  MlaConfig c = tiny_config();
  c.qk_rope_head_dim = 5;
  expect_error([&] { c.validate(); },
               "headroom::MlaConfig: qk_rope_head_dim (5) must be even: RoPE rotates dims in pairs");
  c = tiny_config();
  c.kv_lora_rank = 0;
  expect_error([&] { c.validate(); }, "kv_lora_rank (0) must be in [1, 16777216]");
  c = tiny_config();
  c.q_lora_rank = -3;
  expect_error([&] { c.validate(); }, "q_lora_rank (-3) must be in [1, 16777216], or 0 for no");
  c = tiny_config();
  c.num_attention_heads = 1 << 20;
  expect_error([&] { c.validate(); }, "num_attention_heads (1048576) x (qk_nope_head_dim");
  c = tiny_config();
  c.rms_norm_eps = 0.0;
  expect_error([&] { c.validate(); }, "rms_norm_eps (0) must be a finite number > 0");
  c = tiny_config();
  c.rope_scaling = RopeScaling::dynamic_ntk(2.0, 16);
  expect_error([&] { c.validate(); }, "rope_scaling.kind (dynamic) is not one DeepSeek-V2");
  c = tiny_config();
  c.rope_scaling.attention_factor = 1.5;
  expect_error([&] { c.validate(); }, "rope_scaling.attention_factor (1.5) is not a DeepSeek-V2");
  c = tiny_config();
  c.rope_scaling.mscale_all_dim = -1.0;
  expect_error([&] { c.validate(); }, "rope_scaling.mscale_all_dim (-1) must be a finite number");
  c = tiny_config();
  c.rope_scaling.original_max_position_embeddings = 0;
  expect_error([&] { c.validate(); }, "rope_scaling.original_max_position_embeddings (0)");
  c = tiny_config();
  expect_error([&] { static_cast<void>(MlaAttention(c, MlaWeights{})); }, "headroom::MlaWeights: q_proj is [0, 0]");
}

TEST(MlaWeightsTest, ShapeErrorsNameTheTensorAndBothShapes) {
  MlaConfig c = tiny_config();
  MlaWeights w = MlaWeights::random(c, 1);
  EXPECT_NO_THROW(w.validate(c));
  w.kv_b_proj.resize(30, 16);
  expect_error([&] { w.validate(c); },
               "headroom::MlaWeights: kv_b_proj is [30, 16] but the config needs [32, 16] "
               "(num_attention_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank)");
  w = MlaWeights::random(c, 1);
  w.kv_a_proj_with_mqa.resize(16, 32);  // forgot the rope outputs
  expect_error([&] { w.validate(c); },
               "kv_a_proj_with_mqa is [16, 32] but the config needs [20, 32] (kv_lora_rank + "
               "qk_rope_head_dim, hidden_size)");
  w = MlaWeights::random(c, 1);
  w.kv_a_layernorm.resize(20);  // the norm covers c_kv only
  expect_error([&] { w.validate(c); }, "kv_a_layernorm is [20] but the config needs [16]");
  w = MlaWeights::random(c, 1);
  w.o_proj.resize(32, 24);
  expect_error([&] { w.validate(c); }, "o_proj is [32, 24] but the config needs [32, 16]");
  w = MlaWeights::random(c, 1);
  w.q_a_proj.resize(8, 32);  // q_lora_rank is 0: q_a_proj must not be there
  expect_error([&] { w.validate(c); },
               "q_a_proj is [8, 32] but the config needs [0, 0] (empty: q_lora_rank is 0");
  c.q_lora_rank = 8;
  w = MlaWeights::random(c, 1);
  EXPECT_NO_THROW(w.validate(c));
  w.q_b_proj.resize(24, 9);
  expect_error([&] { w.validate(c); },
               "q_b_proj is [24, 9] but the config needs [24, 8] (num_attention_heads * "
               "(qk_nope_head_dim + qk_rope_head_dim), q_lora_rank)");
  w = MlaWeights::random(c, 1);
  w.q_proj.resize(24, 32);
  expect_error([&] { w.validate(c); }, "q_proj is [24, 32] but the config needs [0, 0]");
}

template <class T>
class LatentCacheTypedTest : public ::testing::Test {};
using Elements = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(LatentCacheTypedTest, Elements, );  // the empty name generator: clang -Wpedantic wants an argument for "..."

TYPED_TEST(LatentCacheTypedTest, StoresOneCopyOfTheLatentPerToken) {
  using T = TypeParam;
  const MlaConfig v2;
  // (kv_lora_rank + qk_rope_head_dim) elements, plus int8's one f32 scale, shared by key and value.
  const Index expected = 576 * static_cast<Index>(sizeof(T)) + (kHasScale<T> ? 4 : 0);
  const LatentCache<T> cache(latent_cache_config(v2, 2, 8));
  EXPECT_EQ(cache.bytes_per_token(), expected);
  EXPECT_EQ(cache.bytes_total(), expected * 2 * 8);
  const PagedLatentCache<T> paged(paged_latent_cache_config(v2, 3, 16));
  EXPECT_EQ(paged.bytes_per_token(), expected);
  EXPECT_EQ(paged.bytes_total(), expected * 3 * 16);
  // 576 f32 elements per token is 2304 bytes; bf16 and f16 1152; int8 580.
  EXPECT_EQ(expected, (std::is_same_v<T, float> ? 2304 : kHasScale<T> ? 580 : 1152));
}

TYPED_TEST(LatentCacheTypedTest, ValuesAreAViewOfTheKeyRows) {
  using T = TypeParam;
  const MlaConfig c = tiny_config();
  std::mt19937 rng(3);
  const std::vector<float> rows = reference::random_vector(5 * c.latent_dim(), rng);
  LatentCache<T> cache(latent_cache_config(c, 1, 5));
  cache.append(0, TensorView<const float>::bshd(rows.data(), 1, 5, 1, c.latent_dim()));
  PagedLatentCache<T> paged(paged_latent_cache_config(c, 3, 2));
  const Index id = paged.add_sequence();
  paged.append(id, TensorView<const float>::bshd(rows.data(), 1, 5, 1, c.latent_dim()));
  const auto check = [&](const auto& view) {
    EXPECT_EQ(view.head_dim_k(), 20);
    EXPECT_EQ(view.head_dim_v(), 16);
    EXPECT_EQ(view.v_row_stride(), view.k_row_stride());
    for (Index j = 0; j < 5; ++j) {
      EXPECT_EQ(view.v_row(0, j, 0), view.k_row(0, j, 0));
      EXPECT_EQ(view.v_scales(0, j, 0), view.k_scales(0, j, 0));
    }
  };
  check(cache.view({0}));
  check(paged.view({id}));
}

TEST(LatentCacheTest, RejectedAppendsLeaveTheCacheUnchanged) {
  const MlaConfig c = tiny_config();
  std::mt19937 rng(5);
  std::vector<float> rows = reference::random_vector(6 * c.latent_dim(), rng);
  const auto tokens = [&](Index n) {
    return TensorView<const float>::bshd(rows.data(), 1, n, 1, c.latent_dim());
  };
  LatentCache<Eigen::half> cache(latent_cache_config(c, 1, 4));
  cache.append(0, tokens(3));
  const Eigen::half first = cache.view({0}).k_row(0, 0, 0)[0];
  expect_error([&] { cache.append(0, tokens(2)); },
               "KvCache::append: appending 2 tokens to sequence 0 of length 3 exceeds the "
               "capacity (4 tokens)");
  expect_error([&] { cache.append(0, tokens(1), tokens(1)); },
               "this cache keeps each value inside its key row (values_in_keys = true), so it "
               "takes keys alone");
  rows[5] = 1e6f;  // beyond f16
  expect_error([&] { cache.append(0, tokens(1)); },
               "k[0, 0, 0, 5] (1e+06) is outside the range of the f16 cache");
  EXPECT_EQ(cache.length(0), 3);
  EXPECT_EQ(cache.view({0}).k_row(0, 0, 0)[0], first);

  PagedLatentCache<std::int8_t> paged(paged_latent_cache_config(c, 2, 2));
  const Index id = paged.add_sequence();
  rows[5] = 0.5f;
  paged.append(id, tokens(3));
  expect_error([&] { paged.append(id, tokens(2)); }, "needs 1 free blocks but the pool has 0 of 2");
  EXPECT_EQ(paged.length(id), 3);
  // An ordinary cache takes keys and values.
  KvCache<float> plain(KvCacheConfig{1, 20, 16, 1, 4, false});
  expect_error([&] { plain.append(0, tokens(1)); },
               "append(sequence_ids, k) without values needs a cache with values_in_keys = true");
  expect_error([&] { KvCache<float>(KvCacheConfig{1, 16, 20, 1, 4, false, true}); },
               "KvCache: head_dim_v (20) exceeds head_dim_k (16): with values_in_keys");
  expect_error([&] { PagedKvCache<float>(PagedKvCacheConfig{1, 16, 20, 4, 4, true}); },
               "PagedKvCache: head_dim_v (20) exceeds head_dim_k (16)");
}

TEST(MlaAttentionTest, RejectedCallsChangeNothing) {
  const MlaConfig c = tiny_config();
  const MlaAttention layer(c, MlaWeights::random(c, 2));
  std::mt19937 rng(7);
  const Index width = c.hidden_size;
  const std::vector<float> hidden = reference::random_vector(8 * width, rng);
  LatentCache<float> cache(latent_cache_config(c, 2, 6));
  std::vector<float> out(8 * width, 0.0f);
  const auto x = [&](Index batch, Index n) {
    return TensorView<const float>::bshd(hidden.data(), batch, n, 1, width);
  };
  const auto y = [&](Index batch, Index n) {
    return TensorView<float>::bshd(out.data(), batch, n, 1, width);
  };
  layer.forward(x(1, 4), cache, {0}, y(1, 4));
  const std::vector<float> before = out;
  std::fill(out.begin(), out.end(), 7.0f);
  const std::vector<float> sentinel = out;
  const auto unchanged = [&] {
    EXPECT_EQ(cache.length(0), 4);
    EXPECT_EQ(cache.length(1), 0);
    EXPECT_EQ(out, sentinel);
  };

  expect_error([&] { layer.forward(x(1, 3), cache, {0}, y(1, 3)); },
               "KvCache::append: appending 3 tokens to sequence 0 of length 4 exceeds the "
               "capacity (6 tokens)");
  unchanged();
  expect_error([&] { layer.forward(x(2, 3), cache, {1, 0}, y(2, 3)); }, "exceeds the capacity");
  unchanged();
  expect_error([&] {
    layer.forward(TensorView<const float>::bshd(hidden.data(), 1, 1, 2, width / 2), cache, {0},
                  y(1, 1));
  }, "headroom::MlaAttention::forward: hidden is [1, 1, 2, 16] but must be [batch, q_len, 1, "
     "hidden_size (32)]");
  expect_error([&] { layer.forward(x(1, 1), cache, {0}, y(1, 2)); },
               "out is [1, 2, 1, 32] but must be [1, 1, 1, 32] like hidden");
  expect_error([&] { layer.forward(x(1, 1), cache, {0, 1}, y(1, 1)); },
               "sequence_ids has 2 entries but hidden.batch is 1");
  expect_error([&] { layer.forward(x(1, 1), cache, {3}, y(1, 1)); },
               "sequence id 3 (at 0) does not exist in this cache");
  const Index far[] = {64};
  MlaOptions options;
  options.positions = PositionView::bs(far, 1, 1);
  expect_error([&] { layer.forward(x(1, 1), cache, {0}, y(1, 1), options); },
               "MlaAttention::forward: positions[0, 0] (64) is outside [0, 64)");
  options = MlaOptions{};
  options.expanded_chunk = -1;
  expect_error([&] { layer.forward(x(1, 1), cache, {0}, y(1, 1), options); },
               "options.expanded_chunk (-1) must be >= 0");
  LatentCache<float> wrong(KvCacheConfig{1, 20, 16, 1, 8, false, false});
  expect_error([&] { layer.forward(x(1, 1), wrong, {0}, y(1, 1)); },
               "the cache has num_kv_heads 1, head_dim_k 20, head_dim_v 16, values_in_keys false "
               "but the layer's latent cache needs 1, kv_lora_rank + qk_rope_head_dim (20), "
               "kv_lora_rank (16), true");
  KvCacheConfig ring = latent_cache_config(c, 1, 8);
  ring.ring_buffer = true;
  LatentCache<float> ring_cache(ring);
  expect_error([&] { layer.forward(x(1, 1), ring_cache, {0}, y(1, 1)); },
               "the cache is a ring buffer, but MLA attends to every cached token");
  MlaConfig short_rope = c;
  short_rope.max_position_embeddings = 5;
  const MlaAttention short_layer(short_rope, MlaWeights::random(short_rope, 2));
  expect_error([&] { short_layer.forward(x(1, 2), cache, {0}, y(1, 2)); },
               "sequence 0 reaches position 5 but the RoPE table covers "
               "max_position_embeddings (5) positions");
  unchanged();

  // And the layer still continues where it was.
  std::vector<float> again(2 * width);
  layer.forward(x(1, 2), cache, {1}, TensorView<float>::bshd(again.data(), 1, 2, 1, width));
  // The first token of either sequence sees only itself: the same output, up to the rounding of
  // projections over a different number of rows.
  for (Index d = 0; d < width; ++d) EXPECT_NEAR(again[d], before[d], 1e-6) << d;
}

}  // namespace
}  // namespace headroom
