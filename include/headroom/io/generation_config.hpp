// SPDX-License-Identifier: MIT
// Reads a Hugging Face generation_config.json into a GenerationConfig: the tokens generation stops
// at and how tokens are picked, as the checkpoint's authors set them.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/io/checkpoint.hpp"
#include "headroom/io/hf_config.hpp"
#include "headroom/model/decoder_config.hpp"
#include "headroom/model/generate.hpp"

namespace headroom {

/// Returns the GenerationConfig of a generation_config.json (parsed) for the model `decoder`,
/// with transformers' GenerationConfig defaults where a field is absent:
/// - `eos_token_id` (one id or a list) gives the stop tokens. Absent, config.json's eos_token_id
///   (decoder.eos_token_ids) stays in force: chat checkpoints such as Llama 3 Instruct list their
///   end-of-turn token only here, and the model's own end token is never wrong to stop at.
/// - `do_sample` (false) picks greedy decoding, whatever the other fields say; true samples with
///   `temperature` (1), `top_k` (50, transformers' default, not "all") and `top_p` (1).
/// - `max_new_tokens` sets the budget; absent, GenerationConfig's default stays.
/// Fields that need the prompt (max_length) or a logits processor headroom's Sampler does not
/// have (repetition_penalty, min_p, ...) are not applied. Throws headroom::Error naming the source
/// and the field for a mistyped field, a token id outside [0, vocab_size), a temperature outside
/// [0, 1e30] or a top_p outside (0, 1].
inline GenerationConfig generation_config_from_json(
    const nlohmann::json& config, const DecoderConfig& decoder,
    const std::string& source = "generation_config.json") {
  constexpr const char* kWhere = "generation_config_from_json";
  const detail::JsonFields fields(config, source, kWhere);
  GenerationConfig generation;
  generation.stop_tokens = fields.has("eos_token_id")
                               ? fields.token_ids("eos_token_id", decoder.vocab_size)
                               : decoder.eos_token_ids;
  generation.max_new_tokens = fields.count("max_new_tokens", generation.max_new_tokens);
  SamplerConfig& sampler = generation.sampler;
  // transformers' defaults (GenerationConfig.__init__): temperature 1.0, top_k 50, top_p 1.0.
  const double temperature = fields.number("temperature", 1.0);
  HEADROOM_CHECK(temperature >= 0.0 && temperature <= 1e30, kWhere, source, ": temperature (",
                 temperature, ") must be in [0, 1e30]");
  const double top_p = fields.number("top_p", 1.0);
  HEADROOM_CHECK(top_p > 0.0 && top_p <= 1.0, kWhere, source, ": top_p (", top_p,
                 ") must be in (0, 1]");
  sampler.top_k = fields.count("top_k", 50);
  sampler.top_p = static_cast<float>(top_p);
  // Greedy unless do_sample: transformers then ignores temperature, top_k and top_p.
  sampler.temperature = fields.flag("do_sample", false) ? static_cast<float>(temperature) : 0.0f;
  return generation;
}

/// Returns the GenerationConfig of the checkpoint directory `directory` for its model `decoder`:
/// from its generation_config.json when it has one (see generation_config_from_json), else
/// what transformers derives from config.json alone: greedy, stopping at config.json's
/// eos_token_id.
inline GenerationConfig read_generation_config(const std::string& directory,
                                               const DecoderConfig& decoder) {
  const std::string path = detail::path_in(directory, "generation_config.json");
  if (!detail::file_exists(path)) {
    GenerationConfig generation;
    generation.stop_tokens = decoder.eos_token_ids;
    generation.sampler.temperature = 0.0f;
    return generation;
  }
  return generation_config_from_json(detail::read_json_file(path, "read_generation_config"),
                                     decoder, path);
}

}  // namespace headroom
