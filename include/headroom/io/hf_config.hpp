// SPDX-License-Identifier: MIT
// Reads the fields of a Hugging Face config.json into headroom's configs: the RoPE scaling of
// `rope_scaling`, Llama-family decoders (DecoderConfig) and DeepSeek-V2's attention (MlaConfig).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/io/checkpoint.hpp"
#include "headroom/mla/mla_config.hpp"
#include "headroom/model/decoder_config.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {
namespace detail {

/// Reads typed fields of one JSON object; every error names `where`, the source (a file, or a
/// field path within one) and the field. A field that is null counts as absent, as
/// transformers reads `"q_lora_rank": null`.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& object, std::string source, const char* where)
      : object_(object), source_(std::move(source)), where_(where) {
    HEADROOM_CHECK(object_.is_object(), where_, source_, " (", object_.dump(),
                   ") is not a JSON object");
  }

  const std::string& source() const { return source_; }

  /// Returns whether `field` is present and not null.
  bool has(const char* field) const {
    return object_.contains(field) && !object_.at(field).is_null();
  }

  /// Returns `field` (which must be present) as it is.
  const nlohmann::json& at(const char* field) const {
    HEADROOM_CHECK(has(field), where_, source_, ": field \"", field, "\" is missing");
    return object_.at(field);
  }

  /// Returns the integer `field` in [0, 2^62], or `fallback` when it is absent (and has one).
  Index count(const char* field, std::optional<Index> fallback = std::nullopt) const {
    if (!has(field) && fallback.has_value()) return *fallback;
    const nlohmann::json& value = at(field);
    constexpr std::uint64_t kLimit = std::uint64_t{1} << 62;
    // Parsed text holds non-negative integers as unsigned; values set in code may be signed.
    const bool in_range = value.is_number_unsigned()
                              ? value.get<std::uint64_t>() <= kLimit
                              : value.is_number_integer() && value.get<std::int64_t>() >= 0;
    HEADROOM_CHECK(in_range, where_,
                   source_, ": field \"", field, "\" (", value.dump(),
                   ") is not an integer in [0, 2^62]");
    return static_cast<Index>(value.get<std::int64_t>());
  }

  /// Returns the finite number `field`, or `fallback` when it is absent (and has one).
  double number(const char* field, std::optional<double> fallback = std::nullopt) const {
    if (!has(field) && fallback.has_value()) return *fallback;
    const nlohmann::json& value = at(field);
    HEADROOM_CHECK(value.is_number() && std::isfinite(value.get<double>()), where_, source_,
                   ": field \"", field, "\" (", value.dump(), ") is not a finite number");
    return value.get<double>();
  }

  /// Returns the boolean `field`, or `fallback` when it is absent (and has one).
  bool flag(const char* field, std::optional<bool> fallback = std::nullopt) const {
    if (!has(field) && fallback.has_value()) return *fallback;
    const nlohmann::json& value = at(field);
    HEADROOM_CHECK(value.is_boolean(), where_, source_, ": field \"", field, "\" (",
                   value.dump(), ") is not true or false");
    return value.get<bool>();
  }

  /// Returns the token ids of `field`, one id or a list of them (as transformers writes
  /// eos_token_id), each in [0, vocab_size); none when it is absent.
  std::vector<std::int32_t> token_ids(const char* field, Index vocab_size) const {
    std::vector<std::int32_t> ids;
    if (!has(field)) return ids;
    const nlohmann::json& value = at(field);
    const nlohmann::json list = value.is_array() ? value : nlohmann::json::array({value});
    for (const nlohmann::json& id : list) {
      HEADROOM_CHECK(id.is_number_integer() && id.get<std::int64_t>() >= 0 &&
                         id.get<std::int64_t>() < vocab_size,
                     where_, source_, ": ", field, " (", json_excerpt(value),
                     ") is not a token id or a list of them in [0, vocab_size (", vocab_size,
                     "))");
      ids.push_back(static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
    return ids;
  }

  /// Returns the string `field`, or `fallback` when it is absent (and has one).
  std::string text(const char* field, std::optional<std::string> fallback = std::nullopt) const {
    if (!has(field) && fallback.has_value()) return *fallback;
    const nlohmann::json& value = at(field);
    HEADROOM_CHECK(value.is_string(), where_, source_, ": field \"", field, "\" (",
                   value.dump(), ") is not a string");
    return value.get<std::string>();
  }

 private:
  const nlohmann::json& object_;
  std::string source_;
  const char* where_;
};

/// Returns the name of the object of `config` that holds its RoPE settings: "rope_parameters"
/// (transformers v5 writes rope_theta and the scaling there), else "rope_scaling" (earlier
/// versions), or null when there is neither.
inline const char* rope_object_name(const JsonFields& config) {
  if (config.has("rope_parameters")) return "rope_parameters";
  if (config.has("rope_scaling")) return "rope_scaling";
  return nullptr;
}

/// Returns rope_theta: from rope_parameters when the config has them, else the top-level field,
/// else `fallback`.
inline double rope_theta_of(const nlohmann::json& config, const JsonFields& fields,
                            double fallback) {
  if (fields.has("rope_parameters")) {
    const JsonFields rope(config.at("rope_parameters"), fields.source() + ": rope_parameters",
                          "rope_theta_of");
    return rope.number("rope_theta", fields.number("rope_theta", fallback));
  }
  return fields.number("rope_theta", fallback);
}

}  // namespace detail

/// Returns the RoPE scaling a config.json's `rope_scaling` object (or transformers v5's
/// `rope_parameters`) describes (null or absent: none), as transformers' modeling_rope_utils.py
/// reads it: the kind from "rope_type" (or the
/// older "type"): "default", "linear", "dynamic", "yarn" or "llama3"; their fields under the same
/// names, with transformers' defaults (yarn: beta_fast 32, beta_slow 1, mscale and
/// mscale_all_dim absent, truncate true; original_max_position_embeddings falls back to
/// `max_position_embeddings` for yarn and is `max_position_embeddings` for dynamic). Other kinds
/// ("longrope", ...) throw headroom::Error, as does a field of the wrong type. The values are not
/// range-checked here: the RoPE table (or the config that holds the scaling) does that.
inline RopeScaling rope_scaling_from_json(const nlohmann::json& config,
                                          Index max_position_embeddings,
                                          const std::string& source = "config.json") {
  constexpr const char* kWhere = "rope_scaling_from_json";
  const detail::JsonFields top(config, source, kWhere);
  const char* object = detail::rope_object_name(top);
  if (object == nullptr) return RopeScaling::none();
  const detail::JsonFields fields(top.at(object), source + ": " + object, kWhere);
  const std::string type =
      fields.has("rope_type") ? fields.text("rope_type") : fields.text("type", "default");
  if (type == "default") return RopeScaling::none();
  if (type == "linear") return RopeScaling::linear(fields.number("factor"));
  if (type == "dynamic") {
    return RopeScaling::dynamic_ntk(fields.number("factor"), max_position_embeddings);
  }
  if (type == "yarn") {
    // The stated factor, as transformers v5 reads it (some 4.4x versions derived it from
    // max_position_embeddings / original_max_position_embeddings when both were given).
    RopeScaling scaling = RopeScaling::yarn(
        fields.number("factor"),
        fields.count("original_max_position_embeddings", max_position_embeddings),
        fields.number("mscale", 0.0), fields.number("mscale_all_dim", 0.0));
    scaling.beta_fast = fields.number("beta_fast", 32.0);
    scaling.beta_slow = fields.number("beta_slow", 1.0);
    if (fields.has("attention_factor")) scaling.attention_factor = fields.number("attention_factor");
    scaling.truncate = fields.flag("truncate", true);
    return scaling;
  }
  if (type == "llama3") {
    return RopeScaling::llama3(fields.number("factor"), fields.number("low_freq_factor"),
                               fields.number("high_freq_factor"),
                               fields.count("original_max_position_embeddings"));
  }
  detail::throw_error(kWhere, fields.source(), ": type \"", type,
                      "\" is not one headroom implements (default, linear, dynamic, yarn, "
                      "llama3)");
}

/// Returns the DecoderConfig of a Llama, Mistral or Qwen2 config.json (parsed), validated, with
/// transformers' defaults: num_key_value_heads = num_attention_heads, head_dim = hidden_size /
/// num_attention_heads, rms_norm_eps 1e-6, rope_theta 10000, tie_word_embeddings false. Llama's
/// attention_bias puts biases on q, k, v and o; Qwen2 has them on q, k and v always; Mistral's
/// sliding_window (null: none) becomes the window. What these models' code would compute
/// differently is refused rather than ignored: another model_type or hidden_act, Llama's
/// mlp_bias, Qwen2's use_sliding_window.
inline DecoderConfig decoder_config_from_json(const nlohmann::json& config,
                                              const std::string& source = "config.json") {
  constexpr const char* kWhere = "decoder_config_from_json";
  const detail::JsonFields fields(config, source, kWhere);
  DecoderConfig decoder;
  decoder.model_type = fields.text("model_type");
  const std::string& type = decoder.model_type;
  HEADROOM_CHECK(type == "llama" || type == "mistral" || type == "qwen2", kWhere, source,
                 ": model_type (\"", type,
                 "\") is not a decoder headroom runs (llama, mistral, qwen2)");
  const std::string act = fields.text("hidden_act", "silu");
  HEADROOM_CHECK(act == "silu", kWhere, source, ": hidden_act (\"", act,
                 "\") is not \"silu\", the SwiGLU these models use");
  decoder.vocab_size = fields.count("vocab_size");
  decoder.hidden_size = fields.count("hidden_size");
  decoder.intermediate_size = fields.count("intermediate_size");
  decoder.num_hidden_layers = fields.count("num_hidden_layers");
  decoder.num_attention_heads = fields.count("num_attention_heads");
  // Absent, MistralConfig and Qwen2Config default to 8 and 32 kv heads; null (and absent for
  // Llama) means MHA.
  const Index default_kv_heads = !config.contains("num_key_value_heads") && type == "mistral" ? 8
                                 : !config.contains("num_key_value_heads") && type == "qwen2"
                                     ? 32
                                     : decoder.num_attention_heads;
  decoder.num_key_value_heads = fields.count("num_key_value_heads", default_kv_heads);
  HEADROOM_CHECK(decoder.num_attention_heads > 0, kWhere, source,
                 ": num_attention_heads (0) must be positive");
  decoder.head_dim =
      fields.count("head_dim", decoder.hidden_size / decoder.num_attention_heads);
  decoder.max_position_embeddings = fields.count("max_position_embeddings");
  decoder.rms_norm_eps = fields.number("rms_norm_eps", 1e-6);
  decoder.rope_theta = detail::rope_theta_of(config, fields, 10000.0);
  decoder.rope_scaling =
      rope_scaling_from_json(config, decoder.max_position_embeddings, source);
  decoder.tie_word_embeddings = fields.flag("tie_word_embeddings", false);
  if (type == "qwen2") {
    decoder.qkv_bias = true;
    HEADROOM_CHECK(!fields.flag("use_sliding_window", false), kWhere, source,
                   ": use_sliding_window (true) is not supported for qwen2 (its window covers "
                   "only some layers)");
  } else if (type == "llama") {
    decoder.qkv_bias = decoder.o_bias = fields.flag("attention_bias", false);
  }
  if (type == "llama") {
    HEADROOM_CHECK(!fields.flag("mlp_bias", false), kWhere, source,
                   ": mlp_bias (true) is not supported: the MLP has no biases here");
  }
  // MistralConfig's default window is 4096; null means none.
  if (type == "mistral") {
    decoder.sliding_window =
        config.contains("sliding_window") ? fields.count("sliding_window", 0) : 4096;
  }
  decoder.eos_token_ids = fields.token_ids("eos_token_id", decoder.vocab_size);
  decoder.validate();
  return decoder;
}

/// Returns the DecoderConfig of the checkpoint directory `directory` (its config.json).
inline DecoderConfig read_decoder_config(const std::string& directory) {
  const std::string path = detail::path_in(directory, "config.json");
  return decoder_config_from_json(detail::read_json_file(path, "read_decoder_config"), path);
}

/// Returns the MlaConfig of a DeepSeek-V2 config.json (parsed), validated. Fields as
/// transformers-style configuration_deepseek.py names them; "q_lora_rank": null (DeepSeek-V2-Lite)
/// means no query compression; rope_theta defaults to 10000. DeepSeek's YaRN reads mscale as 1 and
/// mscale_all_dim as 0 when the config omits them (DeepseekV2YarnRotaryEmbedding's defaults).
inline MlaConfig mla_config_from_json(const nlohmann::json& config,
                                      const std::string& source = "config.json") {
  const detail::JsonFields fields(config, source, "mla_config_from_json");
  MlaConfig mla;
  mla.hidden_size = fields.count("hidden_size");
  mla.num_attention_heads = fields.count("num_attention_heads");
  mla.q_lora_rank = fields.count("q_lora_rank", 0);
  mla.kv_lora_rank = fields.count("kv_lora_rank");
  mla.qk_nope_head_dim = fields.count("qk_nope_head_dim");
  mla.qk_rope_head_dim = fields.count("qk_rope_head_dim");
  mla.v_head_dim = fields.count("v_head_dim");
  mla.rms_norm_eps = fields.number("rms_norm_eps");
  mla.rope_theta = detail::rope_theta_of(config, fields, 10000.0);
  mla.max_position_embeddings = fields.count("max_position_embeddings");
  mla.rope_scaling = rope_scaling_from_json(config, mla.max_position_embeddings, source);
  if (mla.rope_scaling.kind == RopeScaling::Kind::kYarn) {
    const char* object = detail::rope_object_name(fields);
    const detail::JsonFields scaling(config.at(object), source + ": " + object,
                                     "mla_config_from_json");
    mla.rope_scaling.mscale = scaling.number("mscale", 1.0);
  }
  mla.validate();
  return mla;
}

/// Returns the MlaConfig of the checkpoint directory `directory` (its config.json).
inline MlaConfig read_mla_config(const std::string& directory) {
  const std::string path = detail::path_in(directory, "config.json");
  return mla_config_from_json(detail::read_json_file(path, "read_mla_config"), path);
}

}  // namespace headroom
