// SPDX-License-Identifier: MIT
// ReRoPE and Leaky ReRoPE (Su Jianlin, "Rectified Rotary Position Embeddings", 2023): RoPE whose
// relative positions are clamped beyond a window, applied inside the attention kernel to raw
// (un-rotated) queries and keys.
//
// For a query at position i and a key at j <= i, the relative position RoPE sees is
//
//   i - j                      if i - j < w   (inside the window: ordinary RoPE)
//   w                          otherwise      (ReRoPE)
//   w + (i - j - w) / k        otherwise      (Leaky ReRoPE, k > 1)
//
// so no logit sees a relative position beyond what the model was trained on. RoPE only depends on
// differences: rotating q by a and k by b gives q . R(b - a) k. So each part is one rotation of q
// and one of k:
//   inside:  q at i, k at j (ordinary RoPE);
//   ReRoPE:  q at w, k at 0, for every (i, j): w - 0 = w;
//   Leaky:   q at i / k + w (1 - 1/k), k at j / k: their difference is w + (i - j - w) / k.
// The key rotations are shared by every query and every head of a kv group; the query rotations
// are formed once per query row. Leaky positions are fractions, so their cos and sin are composed
// from two small tables (see LeakyAngles) rather than read from the RoPE table.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {

/// The ReRoPE settings on top of a RopeConfig. The defaults are those of the published reference
/// (bojone/rerope: window 512, leak 16, training length 4096), with plain ReRoPE (no leak) and no
/// log-n scaling.
struct ReRopeConfig {
  /// w: relative positions below it are ordinary; it is also the clamp. >= 1.
  Index window = 512;
  /// k: the slope 1/k of Leaky ReRoPE beyond the window; infinity means plain ReRoPE. > 1.
  double leak = std::numeric_limits<double>::infinity();
  /// Multiplies the query at position i by max(1, log(i + 1) / log(training_length)), as the
  /// reference does (the log-n scaling of Su's "entropy-invariant" attention).
  bool log_n_scaling = false;
  /// The context the model was trained on (HF max_position_embeddings): the window may not exceed
  /// it, and the log-n scaling is relative to it.
  Index training_length = 4096;

  /// Returns plain ReRoPE with window w.
  static ReRopeConfig rerope(Index window) {
    ReRopeConfig config;
    config.window = window;
    return config;
  }
  /// Returns Leaky ReRoPE with window w and leak k.
  static ReRopeConfig leaky(Index window, double leak) {
    ReRopeConfig config;
    config.window = window;
    config.leak = leak;
    return config;
  }
  bool is_leaky() const { return leak != std::numeric_limits<double>::infinity(); }

  /// Returns the relative position used for a query at i and a key at j <= i (see the header).
  double relative_position(Index i, Index j) const {
    const Index distance = i - j;
    if (distance < window) return static_cast<double>(distance);
    if (!is_leaky()) return static_cast<double>(window);
    return static_cast<double>(window) + static_cast<double>(distance - window) / leak;
  }
  /// Returns the factor the query at position `pos` is multiplied by: the log-n scaling, else 1.
  double query_scale(Index pos) const {
    if (!log_n_scaling) return 1.0;
    return std::max(1.0, std::log(static_cast<double>(pos) + 1.0) /
                             std::log(static_cast<double>(training_length)));
  }
};

namespace detail {

/// cos and sin of (n / k) * inv_freq for any key index n, and of the Leaky query position
/// i / k + w (1 - 1/k), composed from small tables by the angle-addition formulas: a table per
/// position (as the RoPE table is) would be read once more per kv head in every decode step.
/// n = 64 a + b gives (n / k) f = (64 a / k) f + (b / k) f: a coarse row per 64 positions and 64
/// fine rows (32 KiB at rotary_dim 128, so they stay in L2). Angles are computed in double and
/// stored as float; one composition adds about one float rounding. None carries the table's
/// attention factor.
class LeakyAngles {
 public:
  static constexpr Index kFineRows = 64;

  LeakyAngles() = default;
  LeakyAngles(const std::vector<double>& inv_freq, double leak, Index window, Index max_positions)
      : half_(static_cast<Index>(inv_freq.size())) {
    const auto fill = [&](std::vector<float>& table, Index rows, double step) {
      table.resize(static_cast<size_t>(rows * 2 * half_));
      for (Index r = 0; r < rows; ++r) {
        for (Index i = 0; i < half_; ++i) {
          const double angle = static_cast<double>(r) * step * inv_freq[i];
          table[r * 2 * half_ + i] = static_cast<float>(std::cos(angle));
          table[r * 2 * half_ + half_ + i] = static_cast<float>(std::sin(angle));
        }
      }
    };
    fill(coarse_, max_positions / kFineRows + 1, static_cast<double>(kFineRows) / leak);
    fill(fine_, kFineRows, 1.0 / leak);
    shift_.resize(static_cast<size_t>(2 * half_));
    const double offset = static_cast<double>(window) * (1.0 - 1.0 / leak);
    for (Index i = 0; i < half_; ++i) {
      shift_[i] = static_cast<float>(std::cos(offset * inv_freq[i]));
      shift_[half_ + i] = static_cast<float>(std::sin(offset * inv_freq[i]));
    }
  }

  /// Writes cos and sin of the key position n / k, [rotary_dim / 2] each.
  void key(Index n, float* cos, float* sin) const {
    compose(coarse_.data() + n / kFineRows * 2 * half_, fine_.data() + n % kFineRows * 2 * half_,
            cos, sin);
  }
  /// The angles of key position n / k are the sum of two table rows, [cos (rotary_dim / 2), sin]
  /// each: block(n / kFineRows) and in_block(n % kFineRows). The keys of one block share the
  /// first, which a step of few queries can apply to its query rows, inverted, once per block
  /// instead of composing it into every key.
  const float* block(Index b) const { return coarse_.data() + b * 2 * half_; }
  const float* in_block(Index j) const { return fine_.data() + j * 2 * half_; }
  /// Writes cos and sin of the query position n / k + w (1 - 1/k).
  void query(Index n, float* cos, float* sin) const {
    alignas(64) float key_cos[kMaxHalf], key_sin[kMaxHalf];
    key(n, key_cos, key_sin);
    compose_rows(key_cos, key_sin, shift_.data(), shift_.data() + half_, cos, sin);
  }

  /// The largest rotary_dim / 2 the stack buffers of the kernel hold.
  static constexpr Index kMaxHalf = 512;

 private:
  void compose(const float* a, const float* b, float* cos, float* sin) const {
    compose_rows(a, a + half_, b, b + half_, cos, sin);
  }
  /// cos(a + b) = cos a cos b - sin a sin b, sin(a + b) = sin a cos b + cos a sin b.
  void compose_rows(const float* cos_a, const float* sin_a, const float* cos_b, const float* sin_b,
                    float* cos, float* sin) const {
    for (Index i = 0; i < half_; ++i) {
      const float c = cos_a[i] * cos_b[i] - sin_a[i] * sin_b[i];
      const float s = sin_a[i] * cos_b[i] + cos_a[i] * sin_b[i];
      cos[i] = c;
      sin[i] = s;
    }
  }

  Index half_ = 0;
  std::vector<float> coarse_, fine_, shift_;  // rows of [cos (half), sin (half)]
};

}  // namespace detail

/// A RoPE table together with the ReRoPE settings: everything the kernel needs to apply ReRoPE to
/// raw queries and keys (AttentionOptions::rerope). Build it once per model; it is immutable and
/// may be shared by threads.
class ReRope {
 public:
  /// Builds the RoPE table for `rope` and checks `config` against it; throws headroom::Error
  /// naming the first bad field. The table must cover every position attended (max_positions >
  /// the longest sequence), which for ReRoPE is usually far beyond the training length.
  ReRope(const RopeConfig& rope, const ReRopeConfig& config)
      : table_(rope), config_(validated(config, table_)) {
    if (config_.is_leaky()) {
      leaky_ = detail::LeakyAngles(table_.inv_freq(), config_.leak, config_.window,
                                   table_.max_positions());
    }
  }

  const RopeTable& table() const { return table_; }
  const ReRopeConfig& config() const { return config_; }
  /// Leaky positions' cos and sin (without the attention factor); only for leaky configs.
  const detail::LeakyAngles& leaky_angles() const { return leaky_; }

 private:
  static ReRopeConfig validated(const ReRopeConfig& config, const RopeTable& table) {
    constexpr const char* kWhere = "ReRope";
    HEADROOM_CHECK(config.window >= 1, kWhere, "window (", config.window, ") must be >= 1");
    HEADROOM_CHECK(config.training_length >= 1, kWhere, "training_length (",
                   config.training_length, ") must be >= 1");
    HEADROOM_CHECK(config.window <= config.training_length, kWhere, "window (", config.window,
                   ") exceeds training_length (", config.training_length,
                   "): relative positions would leave the trained range");
    HEADROOM_CHECK(config.window < table.max_positions(), kWhere, "window (", config.window,
                   ") must be below the table's max_positions (", table.max_positions(),
                   "): queries beyond the window are rotated by it");
    HEADROOM_CHECK(config.leak > 1.0, kWhere, "leak (", config.leak,
                   ") must be > 1 (infinity for plain ReRoPE)");
    HEADROOM_CHECK(!config.log_n_scaling || config.training_length >= 2, kWhere,
                   "training_length (", config.training_length,
                   ") must be >= 2 with log_n_scaling: it divides by log(training_length)");
    HEADROOM_CHECK(table.rotary_dim() / 2 <= detail::LeakyAngles::kMaxHalf, kWhere,
                   "rotary_dim (", table.rotary_dim(), ") exceeds ",
                   2 * detail::LeakyAngles::kMaxHalf);
    return config;
  }

  RopeTable table_;
  ReRopeConfig config_;
  detail::LeakyAngles leaky_;
};

}  // namespace headroom
