// SPDX-License-Identifier: MIT
// Rotary position embeddings (RoPE): cos/sin tables for the scalings real checkpoints use, and the
// in-place rotation of q and k at arbitrary position ids.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <vector>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {

/// Names which dimensions of a head form the rotated pairs.
enum class RopeLayout {
  /// Pairs (i, i + rotary_dim / 2): GPT-NeoX, Hugging Face Llama / Mistral / Qwen (`rotate_half`).
  kRotateHalf,
  /// Pairs (2i, 2i + 1): GPT-J, the original Meta Llama code (complex multiply), DeepSeek MLA.
  kInterleaved,
};

/// Describes how the RoPE frequencies are stretched for a longer context, following the Hugging
/// Face `rope_scaling` / `rope_parameters` fields of config.json (transformers
/// modeling_rope_utils.py). Fields a kind does not use are ignored, except attention_factor, which
/// is rejected outside kYarn rather than silently dropped; the factories fill what each kind needs.
struct RopeScaling {
  /// Selects the formula; the comment gives the Hugging Face `rope_type`.
  enum class Kind {
    kNone,        ///< "default": plain RoPE.
    kLinear,      ///< "linear": position interpolation, every frequency divided by factor.
    kNtkAware,    ///< static NTK-aware: base' = base * factor^(dim / (dim - 2)).
    kDynamicNtk,  ///< "dynamic": NTK-aware with the factor grown from the current sequence length.
    kYarn,        ///< "yarn": per-frequency ramp between interpolation and extrapolation.
    kLlama3,      ///< "llama3": Llama 3.1 wavelength-band smoothing.
  };

  Kind kind = Kind::kNone;
  /// `factor`; must be >= 1 for every kind but kNone.
  double factor = 1.0;
  /// `original_max_position_embeddings`, the pretraining context (the model's
  /// `max_position_embeddings` for kDynamicNtk). Required by kDynamicNtk, kYarn and kLlama3.
  Index original_max_position_embeddings = 0;
  /// kLlama3 `low_freq_factor` and `high_freq_factor` (Llama 3.1: 1 and 4).
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  /// kYarn `beta_fast` and `beta_slow`: the ramp ends, in rotations over the original context.
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  /// kYarn `mscale` and `mscale_all_dim`; 0 means absent, as in the config (both must be nonzero to
  /// be used, like Python's `if mscale and mscale_all_dim`).
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  /// kYarn `attention_factor`: when set, replaces the one derived from factor and mscale.
  std::optional<double> attention_factor;
  /// kYarn `truncate`: rounds the correction range to whole dims (true in HF and DeepSeek; gpt-oss
  /// sets false).
  bool truncate = true;

  /// Returns plain RoPE.
  static RopeScaling none() { return RopeScaling{}; }

  /// Returns linear position interpolation (kaiokendev; Chen et al. 2023, arXiv:2306.15595).
  static RopeScaling linear(double factor) {
    RopeScaling scaling;
    scaling.kind = Kind::kLinear;
    scaling.factor = factor;
    return scaling;
  }

  /// Returns static NTK-aware scaling (bloc97's fixed-factor formula).
  static RopeScaling ntk_aware(double factor) {
    RopeScaling scaling;
    scaling.kind = Kind::kNtkAware;
    scaling.factor = factor;
    return scaling;
  }

  /// Returns dynamic NTK scaling; `original_max_position_embeddings` is the model's
  /// max_position_embeddings (HF reads that field for "dynamic").
  static RopeScaling dynamic_ntk(double factor, Index original_max_position_embeddings) {
    RopeScaling scaling;
    scaling.kind = Kind::kDynamicNtk;
    scaling.factor = factor;
    scaling.original_max_position_embeddings = original_max_position_embeddings;
    return scaling;
  }

  /// Returns YaRN (Peng et al. 2023, arXiv:2309.00071) with beta_fast 32, beta_slow 1 and the
  /// attention factor derived from factor and mscale. DeepSeek-V2 uses yarn(40, 4096, 0.707,
  /// 0.707).
  static RopeScaling yarn(double factor, Index original_max_position_embeddings,
                          double mscale = 0.0, double mscale_all_dim = 0.0) {
    RopeScaling scaling;
    scaling.kind = Kind::kYarn;
    scaling.factor = factor;
    scaling.original_max_position_embeddings = original_max_position_embeddings;
    scaling.mscale = mscale;
    scaling.mscale_all_dim = mscale_all_dim;
    return scaling;
  }

  /// Returns Llama 3.1 scaling; Llama 3.1 uses llama3(8, 1, 4, 8192).
  static RopeScaling llama3(double factor, double low_freq_factor, double high_freq_factor,
                            Index original_max_position_embeddings) {
    RopeScaling scaling;
    scaling.kind = Kind::kLlama3;
    scaling.factor = factor;
    scaling.low_freq_factor = low_freq_factor;
    scaling.high_freq_factor = high_freq_factor;
    scaling.original_max_position_embeddings = original_max_position_embeddings;
    return scaling;
  }
};

/// Describes one RoPE: the head it rotates, the frequencies and the positions the table covers.
struct RopeConfig {
  Index head_dim = 0;
  /// Leading dims that rotate (HF `head_dim * partial_rotary_factor`); 0 means head_dim. Dims
  /// [rotary_dim, head_dim) pass through unchanged.
  Index rotary_dim = 0;
  /// `rope_theta`.
  double base = 10000.0;
  RopeLayout layout = RopeLayout::kRotateHalf;
  RopeScaling scaling = {};
  /// Rows of the table: every position id must lie in [0, max_positions).
  Index max_positions = 0;
};

/// Returns YaRN's magnitude correction 0.1 * mscale * ln(scale) + 1 (1 when scale <= 1): the factor
/// HF multiplies into cos and sin, and DeepSeek-V2/V3 MLA squares into the softmax scale as
/// yarn_mscale(factor, mscale_all_dim)^2.
/// Source: transformers modeling_rope_utils.py, `get_mscale` inside `_compute_yarn_parameters`.
inline double yarn_mscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

/// A non-owning view of position ids, logical axes [batch, seq], arbitrary strides in elements.
struct PositionView {
  const Index* data = nullptr;
  Index batch = 0, seq = 0;
  Index batch_stride = 0, seq_stride = 1;

  /// Views a contiguous [batch, seq] buffer (HF `position_ids`).
  static PositionView bs(const Index* base, Index batch, Index seq) {
    return {base, batch, seq, seq, 1};
  }
  /// Views one [seq] buffer shared by every batch row (batch stride 0).
  static PositionView shared(const Index* base, Index batch, Index seq) {
    return {base, batch, seq, 0, 1};
  }

  Index operator()(Index b, Index s) const { return data[b * batch_stride + s * seq_stride]; }
};

namespace detail {

/// Returns the HF `rope_type` of a scaling kind, for messages.
inline const char* rope_scaling_name(RopeScaling::Kind kind) {
  switch (kind) {
    case RopeScaling::Kind::kNone:
      return "default";
    case RopeScaling::Kind::kLinear:
      return "linear";
    case RopeScaling::Kind::kNtkAware:
      return "ntk-aware";
    case RopeScaling::Kind::kDynamicNtk:
      return "dynamic";
    case RopeScaling::Kind::kYarn:
      return "yarn";
    case RopeScaling::Kind::kLlama3:
      return "llama3";
  }
  return "unknown";
}

/// Validates a config (and the dynamic-NTK sequence length) and returns the resolved rotary_dim.
inline Index check_rope_config(const RopeConfig& config, Index seq_len) {
  constexpr const char* kWhere = "RopeTable";
  using Kind = RopeScaling::Kind;
  HEADROOM_CHECK(config.head_dim > 0, kWhere, "head_dim (", config.head_dim, ") must be positive");
  HEADROOM_CHECK(config.rotary_dim >= 0, kWhere, "rotary_dim (", config.rotary_dim,
                 ") must be positive, or 0 for head_dim");
  const Index rotary_dim = config.rotary_dim == 0 ? config.head_dim : config.rotary_dim;
  HEADROOM_CHECK(rotary_dim % 2 == 0, kWhere, "rotary_dim (", rotary_dim,
                 ") must be even: dims rotate in pairs");
  HEADROOM_CHECK(rotary_dim <= config.head_dim, kWhere, "rotary_dim (", rotary_dim,
                 ") exceeds head_dim (", config.head_dim, ")");
  // Every check is written so that NaN fails it.
  HEADROOM_CHECK(config.base > 1.0 && std::isfinite(config.base), kWhere, "base (", config.base,
                 ") must be a finite number > 1");
  HEADROOM_CHECK(config.max_positions > 0, kWhere, "max_positions (", config.max_positions,
                 ") must be positive");
  // The table holds max_positions x rotary_dim floats; a count no vector can hold is an argument
  // error (an allocation that merely fails is std::bad_alloc, as anywhere else).
  HEADROOM_CHECK(config.max_positions <= std::numeric_limits<Index>::max() / rotary_dim &&
                     static_cast<std::size_t>(config.max_positions * rotary_dim) <=
                         std::vector<float>().max_size(),
                 kWhere, "max_positions (", config.max_positions, ") times rotary_dim (",
                 rotary_dim, ") floats are more than a table can hold");
  HEADROOM_CHECK(seq_len >= 0, kWhere, "seq_len (", seq_len, ") is negative");

  const RopeScaling& scaling = config.scaling;
  const Kind kind = scaling.kind;
  HEADROOM_CHECK(kind == Kind::kNone || kind == Kind::kLinear || kind == Kind::kNtkAware ||
                     kind == Kind::kDynamicNtk || kind == Kind::kYarn || kind == Kind::kLlama3,
                 kWhere, "scaling.kind (", static_cast<int>(kind), ") is not a RopeScaling::Kind");
  if (kind == Kind::kNone) return rotary_dim;

  const char* name = rope_scaling_name(kind);
  // HF's validators warn below 1: a factor < 1 would shrink the context, which no checkpoint does.
  HEADROOM_CHECK(scaling.factor >= 1.0 && std::isfinite(scaling.factor), kWhere, "scaling.factor (",
                 scaling.factor, ") must be a finite number >= 1 for ", name, " scaling");
  HEADROOM_CHECK(kind == Kind::kYarn || !scaling.attention_factor.has_value(), kWhere,
                 "scaling.attention_factor (", scaling.attention_factor.value_or(0.0),
                 ") is only used by yarn scaling, not ", name);
  if (kind == Kind::kDynamicNtk || kind == Kind::kYarn || kind == Kind::kLlama3) {
    HEADROOM_CHECK(scaling.original_max_position_embeddings > 0, kWhere,
                   "scaling.original_max_position_embeddings (",
                   scaling.original_max_position_embeddings, ") must be positive for ", name,
                   " scaling");
  }
  if (kind == Kind::kNtkAware || kind == Kind::kDynamicNtk) {
    // The exponent dim / (dim - 2) is undefined for a single pair.
    HEADROOM_CHECK(rotary_dim > 2, kWhere, "rotary_dim (", rotary_dim, ") must be > 2 for ", name,
                   " scaling (exponent dim / (dim - 2))");
  }
  if (kind == Kind::kYarn) {
    HEADROOM_CHECK(scaling.beta_slow > 0.0 && std::isfinite(scaling.beta_slow), kWhere,
                   "scaling.beta_slow (", scaling.beta_slow, ") must be a finite number > 0");
    HEADROOM_CHECK(scaling.beta_fast > scaling.beta_slow && std::isfinite(scaling.beta_fast),
                   kWhere, "scaling.beta_fast (", scaling.beta_fast,
                   ") must be finite and greater than beta_slow (", scaling.beta_slow, ")");
    // Negative values could make the denominator get_mscale(factor, mscale_all_dim) zero.
    HEADROOM_CHECK(scaling.mscale >= 0.0 && std::isfinite(scaling.mscale), kWhere,
                   "scaling.mscale (", scaling.mscale, ") must be a finite number >= 0");
    HEADROOM_CHECK(scaling.mscale_all_dim >= 0.0 && std::isfinite(scaling.mscale_all_dim), kWhere,
                   "scaling.mscale_all_dim (", scaling.mscale_all_dim,
                   ") must be a finite number >= 0");
    if (scaling.attention_factor) {
      const double attention_factor = *scaling.attention_factor;
      HEADROOM_CHECK(attention_factor > 0.0 && std::isfinite(attention_factor), kWhere,
                     "scaling.attention_factor (", attention_factor,
                     ") must be a finite number > 0");
    }
  }
  if (kind == Kind::kLlama3) {
    HEADROOM_CHECK(scaling.low_freq_factor > 0.0 && std::isfinite(scaling.low_freq_factor), kWhere,
                   "scaling.low_freq_factor (", scaling.low_freq_factor,
                   ") must be a finite number > 0");
    HEADROOM_CHECK(scaling.high_freq_factor > scaling.low_freq_factor &&
                       std::isfinite(scaling.high_freq_factor),
                   kWhere, "scaling.high_freq_factor (", scaling.high_freq_factor,
                   ") must be finite and greater than low_freq_factor (", scaling.low_freq_factor,
                   ")");
  }
  return rotary_dim;
}

/// Returns the unscaled inverse frequencies base^(-2i / dim), i in [0, dim / 2).
/// Source: transformers modeling_rope_utils.py, `_compute_default_rope_parameters`
/// (inv_freq = 1 / base^(arange(0, dim, 2) / dim)).
inline std::vector<double> default_inv_freq(Index rotary_dim, double base) {
  std::vector<double> inv_freq(rotary_dim / 2);
  for (Index i = 0; i < rotary_dim / 2; ++i) {
    inv_freq[i] =
        1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(rotary_dim));
  }
  return inv_freq;
}

/// Returns the pair index whose wavelength fits `num_rotations` times into `context`:
/// dim * ln(context / (num_rotations * 2 pi)) / (2 ln base).
/// Source: transformers modeling_rope_utils.py, `find_correction_dim` in
/// `_compute_yarn_parameters`.
inline double yarn_correction_dim(double num_rotations, Index rotary_dim, double base,
                                  double context) {
  const double kTwoPi = 2.0 * 3.14159265358979323846;
  return static_cast<double>(rotary_dim) * std::log(context / (num_rotations * kTwoPi)) /
         (2.0 * std::log(base));
}

/// Returns YaRN inverse frequencies: interpolation (inv_freq / factor) for the low-frequency pairs,
/// extrapolation (inv_freq) for the high-frequency ones, a linear ramp between pair indices low and
/// high, where [low, high] = find_correction_range(beta_fast, beta_slow) clamped to [0, dim - 1].
/// Source: transformers modeling_rope_utils.py, `_compute_yarn_parameters`
/// (find_correction_range, linear_ramp_factor; inv_freq = interp * (1 - extrap_factor) +
/// extrap * extrap_factor with extrap_factor = 1 - ramp).
inline std::vector<double> yarn_inv_freq(const RopeScaling& scaling, Index rotary_dim,
                                         double base) {
  const double context = static_cast<double>(scaling.original_max_position_embeddings);
  double low = yarn_correction_dim(scaling.beta_fast, rotary_dim, base, context);
  double high = yarn_correction_dim(scaling.beta_slow, rotary_dim, base, context);
  if (scaling.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(rotary_dim - 1));
  if (low == high) high += 0.001;  // HF: "Prevent singularity".

  std::vector<double> inv_freq = default_inv_freq(rotary_dim, base);
  for (Index i = 0; i < rotary_dim / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation = inv_freq[i];
    const double interpolation = inv_freq[i] / scaling.factor;
    inv_freq[i] = interpolation * ramp + extrapolation * (1.0 - ramp);
  }
  return inv_freq;
}

/// Returns the factor YaRN multiplies into cos and sin: the configured attention_factor, else
/// get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both are nonzero, else
/// get_mscale(factor) = 0.1 ln(factor) + 1.
/// Source: transformers modeling_rope_utils.py, `_compute_yarn_parameters`.
inline double yarn_attention_factor(const RopeScaling& scaling) {
  if (scaling.attention_factor) return *scaling.attention_factor;
  if (scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0) {
    return yarn_mscale(scaling.factor, scaling.mscale) /
           yarn_mscale(scaling.factor, scaling.mscale_all_dim);
  }
  return yarn_mscale(scaling.factor);
}

/// Returns Llama 3.1 inverse frequencies: wavelengths 2 pi / inv_freq below
/// original / high_freq_factor keep their frequency, those above original / low_freq_factor are
/// divided by factor, and the band between blends the two with
/// smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor).
/// Source: transformers modeling_rope_utils.py, `_compute_llama3_parameters`.
inline std::vector<double> llama3_inv_freq(const RopeScaling& scaling, Index rotary_dim,
                                           double base) {
  const double kTwoPi = 2.0 * 3.14159265358979323846;
  const double context = static_cast<double>(scaling.original_max_position_embeddings);
  const double low_freq_wavelen = context / scaling.low_freq_factor;
  const double high_freq_wavelen = context / scaling.high_freq_factor;
  std::vector<double> inv_freq = default_inv_freq(rotary_dim, base);
  for (double& frequency : inv_freq) {
    const double wavelen = kTwoPi / frequency;
    if (wavelen > low_freq_wavelen) {
      frequency /= scaling.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth = (context / wavelen - scaling.low_freq_factor) /
                            (scaling.high_freq_factor - scaling.low_freq_factor);
      frequency = (1.0 - smooth) * frequency / scaling.factor + smooth * frequency;
    }
  }
  return inv_freq;
}

/// Returns the inverse frequencies of a validated config; `seq_len` matters only to kDynamicNtk.
inline std::vector<double> rope_inv_freq(const RopeConfig& config, Index rotary_dim,
                                         Index seq_len) {
  using Kind = RopeScaling::Kind;
  const RopeScaling& scaling = config.scaling;
  const double dim = static_cast<double>(rotary_dim);
  switch (scaling.kind) {
    case Kind::kLinear: {
      // Source: transformers modeling_rope_utils.py, `_compute_linear_scaling_rope_parameters`
      // (inv_freq /= factor, the same as dividing the position ids by factor).
      std::vector<double> inv_freq = default_inv_freq(rotary_dim, config.base);
      for (double& frequency : inv_freq) frequency /= scaling.factor;
      return inv_freq;
    }
    case Kind::kNtkAware:
      // bloc97, "NTK-Aware Scaled RoPE" (r/LocalLLaMA, 2023): base' = base * factor^(dim/(dim-2)),
      // which stretches the lowest frequency by exactly factor and leaves the highest unchanged.
      // The same formula as `_compute_ntk_parameters` in some transformers versions.
      return default_inv_freq(rotary_dim,
                              config.base * std::pow(scaling.factor, dim / (dim - 2.0)));
    case Kind::kDynamicNtk: {
      // Source: transformers modeling_rope_utils.py, `_compute_dynamic_ntk_parameters`:
      // seq_len = max(seq_len, max_position_embeddings);
      // base' = base * (factor * seq_len / max_position_embeddings - (factor - 1))^(dim/(dim-2)),
      // so the base is unchanged up to the original context.
      const double context = static_cast<double>(scaling.original_max_position_embeddings);
      const double length = std::max(static_cast<double>(seq_len), context);
      const double stretch = scaling.factor * length / context - (scaling.factor - 1.0);
      return default_inv_freq(rotary_dim, config.base * std::pow(stretch, dim / (dim - 2.0)));
    }
    case Kind::kYarn:
      return yarn_inv_freq(scaling, rotary_dim, config.base);
    case Kind::kLlama3:
      return llama3_inv_freq(scaling, rotary_dim, config.base);
    case Kind::kNone:
      break;
  }
  return default_inv_freq(rotary_dim, config.base);
}

}  // namespace detail

/// Holds the cos and sin of every (position, pair) for one RoPE config, computed in double and
/// stored as float, with YaRN's attention factor already multiplied in (as HF does).
///
/// Angles are position * inv_freq in double, so they are more accurate than HF's float32
/// `inv_freq @ position_ids`; the two drift apart by up to ~position * 6e-8 radians.
class RopeTable {
 public:
  /// Builds the table for `config`; throws headroom::Error on an invalid config.
  /// `seq_len` is used only by dynamic NTK: the current sequence length, max(position_ids) + 1
  /// (0 or anything up to original_max_position_embeddings leaves the base unchanged). HF's
  /// `dynamic_rope_update` recomputes the frequencies whenever max(position_ids) + 1 exceeds the
  /// length they were built for, and restores the original ones when it drops below the original
  /// context; to match it, rebuild the table when that length grows. Keys already rotated
  /// into a cache keep their old frequencies, as in HF.
  explicit RopeTable(const RopeConfig& config, Index seq_len = 0)
      : config_(config), rotary_dim_(detail::check_rope_config(config, seq_len)) {
    config_.rotary_dim = rotary_dim_;
    inv_freq_ = detail::rope_inv_freq(config_, rotary_dim_, seq_len);
    attention_factor_ = config_.scaling.kind == RopeScaling::Kind::kYarn
                            ? detail::yarn_attention_factor(config_.scaling)
                            : 1.0;
    const Index half = rotary_dim_ / 2;
    cos_sin_.resize(config_.max_positions * rotary_dim_);
    for (Index pos = 0; pos < config_.max_positions; ++pos) {
      float* cos_row = cos_sin_.data() + pos * rotary_dim_;
      float* sin_row = cos_row + half;
      for (Index i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos) * inv_freq_[i];
        cos_row[i] = static_cast<float>(std::cos(angle) * attention_factor_);
        sin_row[i] = static_cast<float>(std::sin(angle) * attention_factor_);
      }
    }
  }

  /// Returns the config, with rotary_dim resolved (never 0).
  const RopeConfig& config() const { return config_; }
  Index head_dim() const { return config_.head_dim; }
  Index rotary_dim() const { return rotary_dim_; }
  Index max_positions() const { return config_.max_positions; }
  RopeLayout layout() const { return config_.layout; }

  /// Returns the inverse frequency of each rotated pair. // [rotary_dim / 2]
  const std::vector<double>& inv_freq() const { return inv_freq_; }

  /// Returns the factor multiplied into every cos and sin: YaRN's mscale ratio, 1 otherwise.
  /// Rotated q and k both carry it, so logits scale by its square.
  double attention_factor() const { return attention_factor_; }

  /// Returns attention_factor * cos(pos * inv_freq[i]) for i in [0, rotary_dim / 2); throws
  /// headroom::Error unless `pos` lies in [0, max_positions).
  const float* cos(Index pos) const {
    HEADROOM_CHECK(pos >= 0 && pos < config_.max_positions, "RopeTable::cos", "pos (", pos,
                   ") is outside [0, ", config_.max_positions, "), the table's max_positions");
    return cos_sin_.data() + pos * rotary_dim_;
  }
  /// Returns attention_factor * sin(pos * inv_freq[i]) for i in [0, rotary_dim / 2); throws
  /// headroom::Error unless `pos` lies in [0, max_positions).
  const float* sin(Index pos) const {
    HEADROOM_CHECK(pos >= 0 && pos < config_.max_positions, "RopeTable::sin", "pos (", pos,
                   ") is outside [0, ", config_.max_positions, "), the table's max_positions");
    return cos_sin_.data() + pos * rotary_dim_ + rotary_dim_ / 2;
  }

 private:
  RopeConfig config_;
  Index rotary_dim_;
  double attention_factor_ = 1.0;
  std::vector<double> inv_freq_;  // [rotary_dim / 2]
  std::vector<float> cos_sin_;    // [max_positions, 2 (cos, sin), rotary_dim / 2]
};

namespace detail {

/// Checks that `x` is a writable view the table can rotate.
inline void check_rope_target(const RopeTable& table, const TensorView<float>& x, const char* where,
                              const char* name) {
  check_view(x, where, name, /*writable=*/true);
  HEADROOM_CHECK(x.dim == table.head_dim(), where, name, ".dim (", x.dim,
                 ") does not match the table's head_dim (", table.head_dim(), ")");
}

/// Checks that `positions` covers the [batch, seq] of the view named `name`.
inline void check_positions_cover(const PositionView& positions, const TensorView<float>& x,
                                  const char* where, const char* name) {
  HEADROOM_CHECK(positions.batch == x.batch, where, "positions.batch (", positions.batch,
                 ") does not match ", name, ".batch (", x.batch, ")");
  HEADROOM_CHECK(positions.seq == x.seq, where, "positions.seq (", positions.seq,
                 ") does not match ", name, ".seq (", x.seq, ")");
}

/// Checks that every position id lies in the table (all of them, before anything is rotated).
inline void check_position_ids(const RopeTable& table, const PositionView& positions,
                               const char* where) {
  HEADROOM_CHECK(positions.data != nullptr || positions.batch == 0 || positions.seq == 0, where,
                 "positions.data is null but there are ", positions.batch, " x ", positions.seq,
                 " tokens");
  for (Index b = 0; b < positions.batch; ++b) {
    for (Index s = 0; s < positions.seq; ++s) {
      const Index pos = positions(b, s);
      HEADROOM_CHECK(pos >= 0 && pos < table.max_positions(), where, "positions[", b, ", ", s,
                     "] (", pos, ") is outside [0, ", table.max_positions(),
                     "), the table's max_positions");
    }
  }
}

/// Checks that q and k do not start at the same element, which would rotate it twice.
/// Returns floor(a / b) for b != 0.
inline Index floor_div(Index a, Index b) {
  return a / b - ((a % b != 0 && (a < 0) != (b < 0)) ? 1 : 0);
}

/// Returns whether views q and k (each checked by check_view) may share an element. Elements meet
/// where q.data + sum_j i_j s_j == k.data + sum_j i'_j t_j with every index within its size: one
/// linear equation in eight bounded integers, searched term by term from the largest stride down,
/// each term taking only the values the remaining terms can still balance. Views in separate
/// buffers fail the first bound; interleaved views of one buffer (q and k of a fused QKV
/// projection) are told apart in a few dozen steps. Should the search ever grow past a bound, or
/// a view span 2^58 elements or more, the answer is a conservative yes.
inline bool views_may_share_elements(const TensorView<float>& q, const TensorView<float>& k) {
  if (q.size() == 0 || k.size() == 0) return false;
  constexpr Index kMaxSpan = Index{1} << 58;
  struct Term {
    Index stride, count;  // the values i * stride for i in [0, count)
  };
  // The stride of an axis of size 1 never counts (and may be anything): it is taken as 0. Longer
  // axes have strides that check_view bounded, so negating them cannot overflow.
  const auto axis = [](Index stride, Index count, Index sign) {
    return Term{count > 1 ? sign * stride : 0, count};
  };
  Term terms[8] = {axis(q.batch_stride, q.batch, 1),  axis(q.seq_stride, q.seq, 1),
                   axis(q.head_stride, q.heads, 1),   axis(q.dim_stride, q.dim, 1),
                   axis(k.batch_stride, k.batch, -1), axis(k.seq_stride, k.seq, -1),
                   axis(k.head_stride, k.heads, -1),  axis(k.dim_stride, k.dim, -1)};
  for (const Term& t : terms) {
    if (std::abs(t.stride) >= kMaxSpan / t.count) return true;
  }
  std::sort(std::begin(terms), std::end(terms), [](const Term& x, const Term& y) {
    return std::abs(x.stride) > std::abs(y.stride);
  });
  // low[j], high[j]: the least and the greatest sum of terms j and after (under 2^61 in
  // magnitude: eight terms of less than 2^58 each, so no difference below overflows).
  Index low[9] = {}, high[9] = {};
  for (int j = 7; j >= 0; --j) {
    const Index extent = (terms[j].count - 1) * terms[j].stride;
    low[j] = low[j + 1] + std::min<Index>(0, extent);
    high[j] = high[j + 1] + std::max<Index>(0, extent);
  }
  // k.data - q.data in elements (a float view's data is aligned to its element).
  const auto bytes = static_cast<std::intptr_t>(reinterpret_cast<std::uintptr_t>(k.data) -
                                                reinterpret_cast<std::uintptr_t>(q.data));
  const auto offset = static_cast<Index>(bytes / static_cast<std::intptr_t>(sizeof(float)));
  Index steps = 0;
  // Whether terms j and after can sum to `target`.
  const auto solvable = [&](const auto& self, int j, Index target) -> bool {
    if (target < low[j] || target > high[j]) return false;
    if (j == 8) return true;  // low[8] == high[8] == 0 == target
    if (++steps > (Index{1} << 16)) return true;
    const Term& term = terms[j];
    if (term.stride == 0) return self(self, j + 1, target);
    // The i for which target - i * stride lies in [low[j + 1], high[j + 1]], within [0, count).
    const Index a = target - high[j + 1], b = target - low[j + 1];  // i * stride in [a, b]
    const Index first =
        term.stride > 0 ? -floor_div(-a, term.stride) : -floor_div(-b, term.stride);
    const Index last = term.stride > 0 ? floor_div(b, term.stride) : floor_div(a, term.stride);
    for (Index i = std::max<Index>(first, 0); i <= std::min(last, term.count - 1); ++i) {
      if (self(self, j + 1, target - i * term.stride)) return true;
    }
    return false;
  };
  return solvable(solvable, 0, offset);
}

inline void check_distinct(const TensorView<float>& q, const TensorView<float>& k,
                           const char* where) {
  HEADROOM_CHECK(!views_may_share_elements(q, k), where,
                 "q and k share elements (q.data ", static_cast<const void*>(q.data), ", k.data ",
                 static_cast<const void*>(k.data), "); each would be rotated twice");
}

/// Checks that positions start_pos .. start_pos + x.seq - 1 lie in the table.
inline void check_start_pos(const RopeTable& table, Index start_pos, const TensorView<float>& x,
                            const char* where) {
  HEADROOM_CHECK(start_pos >= 0, where, "start_pos (", start_pos, ") is negative");
  HEADROOM_CHECK(x.batch == 0 || x.seq == 0 || start_pos <= table.max_positions() - x.seq, where,
                 "start_pos (", start_pos, ") + seq (", x.seq,
                 ") exceeds the table's max_positions (", table.max_positions(), ")");
}

/// Rotates pairs (i, i + half) of one head: x' = x * cos + rotate_half(x) * sin, HF
/// `apply_rotary_pos_emb` with rotate_half(x) = [-x2, x1].
template <bool kUnitStride>
inline void rotate_half(float* x, Index stride, const float* cos_row, const float* sin_row,
                        Index half) {
  const Index step = kUnitStride ? 1 : stride;
  float* x1 = x;                // [half], stride step
  float* x2 = x + half * step;  // [half], stride step
  for (Index i = 0; i < half; ++i) {
    const float a = x1[i * step];
    const float b = x2[i * step];
    x1[i * step] = a * cos_row[i] - b * sin_row[i];
    x2[i * step] = b * cos_row[i] + a * sin_row[i];
  }
}

/// Rotates pairs (2i, 2i + 1) of one head, the complex product (x0 + i x1) * (cos + i sin) of the
/// original Meta code.
template <bool kUnitStride>
inline void rotate_interleaved(float* x, Index stride, const float* cos_row, const float* sin_row,
                               Index half) {
  const Index step = kUnitStride ? 1 : stride;
  for (Index i = 0; i < half; ++i) {
    const float a = x[(2 * i) * step];
    const float b = x[(2 * i + 1) * step];
    x[(2 * i) * step] = a * cos_row[i] - b * sin_row[i];
    x[(2 * i + 1) * step] = b * cos_row[i] + a * sin_row[i];
  }
}

/// Rotates the pairs of one contiguous head row of either layout by (cos_row, sin_row), [half].
inline void rotate_row(RopeLayout layout, float* x, const float* cos_row, const float* sin_row,
                       Index half) {
  if (layout == RopeLayout::kInterleaved) {
    rotate_interleaved<true>(x, 1, cos_row, sin_row, half);
  } else {
    rotate_half<true>(x, 1, cos_row, sin_row, half);
  }
}

/// Rotates every head of every token of a validated `x`; `position_of(b, s)` gives the token's id.
template <bool kUnitStride, class PositionOf>
void rotate_all(const RopeTable& table, const TensorView<float>& x, PositionOf position_of) {
  const Index half = table.rotary_dim() / 2;
  const bool interleaved = table.layout() == RopeLayout::kInterleaved;
  for (Index b = 0; b < x.batch; ++b) {
    for (Index s = 0; s < x.seq; ++s) {
      const Index pos = position_of(b, s);
      const float* cos_row = table.cos(pos);  // [half]
      const float* sin_row = table.sin(pos);  // [half]
      for (Index h = 0; h < x.heads; ++h) {
        float* head = x.row(b, s, h);  // [head_dim], stride x.dim_stride
        if (interleaved) {
          rotate_interleaved<kUnitStride>(head, x.dim_stride, cos_row, sin_row, half);
        } else {
          rotate_half<kUnitStride>(head, x.dim_stride, cos_row, sin_row, half);
        }
      }
    }
  }
}

/// Dispatches on the dim stride so the common contiguous case gets unit-stride loops.
template <class PositionOf>
void rotate(const RopeTable& table, const TensorView<float>& x, PositionOf position_of) {
  if (x.dim_stride == 1) {
    rotate_all<true>(table, x, position_of);
  } else {
    rotate_all<false>(table, x, position_of);
  }
}

}  // namespace detail

/// Rotates x in place by RoPE at the given position ids: every head of token (b, s) turns by
/// positions(b, s). Dims [rotary_dim, head_dim) are left unchanged. Validates everything (shapes,
/// every position id) before touching x, so a call that throws headroom::Error changes nothing.
/// x: [batch, seq, heads, head_dim], any strides; positions: [batch, seq], each in
/// [0, table.max_positions()).
inline void apply_rope(const RopeTable& table, TensorView<float> x, PositionView positions) {
  detail::check_rope_target(table, x, "apply_rope", "x");
  detail::check_positions_cover(positions, x, "apply_rope", "x");
  detail::check_position_ids(table, positions, "apply_rope");
  detail::rotate(table, x, [&](Index b, Index s) { return positions(b, s); });
}

/// Rotates x in place with positions start_pos + s for token s of every batch row (a prompt
/// continuing a cache of start_pos tokens). x: [batch, seq, heads, head_dim], any strides.
inline void apply_rope(const RopeTable& table, TensorView<float> x, Index start_pos) {
  detail::check_rope_target(table, x, "apply_rope", "x");
  detail::check_start_pos(table, start_pos, x, "apply_rope");
  detail::rotate(table, x, [&](Index, Index s) { return start_pos + s; });
}

/// Rotates q and k in place at the same position ids; validates both before rotating either.
/// q: [batch, seq, num_heads, head_dim]; k: [batch, seq, num_kv_heads, head_dim];
/// positions: [batch, seq].
inline void apply_rope(const RopeTable& table, TensorView<float> q, TensorView<float> k,
                       PositionView positions) {
  detail::check_rope_target(table, q, "apply_rope", "q");
  detail::check_rope_target(table, k, "apply_rope", "k");
  detail::check_distinct(q, k, "apply_rope");
  detail::check_positions_cover(positions, q, "apply_rope", "q");
  detail::check_positions_cover(positions, k, "apply_rope", "k");
  detail::check_position_ids(table, positions, "apply_rope");
  const auto position_of = [&](Index b, Index s) { return positions(b, s); };
  detail::rotate(table, q, position_of);
  detail::rotate(table, k, position_of);
}

/// Rotates q and k in place with positions start_pos + s; validates both before rotating either.
/// q: [batch, seq, num_heads, head_dim]; k: [batch, seq, num_kv_heads, head_dim].
inline void apply_rope(const RopeTable& table, TensorView<float> q, TensorView<float> k,
                       Index start_pos) {
  detail::check_rope_target(table, q, "apply_rope", "q");
  detail::check_rope_target(table, k, "apply_rope", "k");
  detail::check_distinct(q, k, "apply_rope");
  HEADROOM_CHECK(q.batch == k.batch && q.seq == k.seq, "apply_rope", "k [batch, seq] ([", k.batch,
                 ", ", k.seq, "]) does not match q ([", q.batch, ", ", q.seq, "])");
  detail::check_start_pos(table, start_pos, q, "apply_rope");
  const auto position_of = [&](Index, Index s) { return start_pos + s; };
  detail::rotate(table, q, position_of);
  detail::rotate(table, k, position_of);
}

}  // namespace headroom
