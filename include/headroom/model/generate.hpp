// SPDX-License-Identifier: MIT
// Generates tokens: a prompt through a Decoder, then one sampled token at a time until a stop
// token, a token budget or the sequence's capacity.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "headroom/core/error.hpp"
#include "headroom/model/decoder.hpp"
#include "headroom/model/sampler.hpp"

namespace headroom {

/// When generation ends and how tokens are picked.
struct GenerationConfig {
  /// The most tokens to generate.
  Index max_new_tokens = 64;
  /// Tokens that end generation (config.json's eos_token_id); the stop token is returned too.
  std::vector<std::int32_t> stop_tokens;
  SamplerConfig sampler;
};

/// Feeds `prompt` to `decoder` (after what it already holds), then samples and feeds one token
/// at a time, calling on_token(id) for each as it is picked, until a stop token, max_new_tokens
/// tokens, or the decoder's max_tokens. Returns the generated tokens; the decoder then holds the
/// prompt and all of them but the last, which a continuation feeds first. Throws headroom::Error
/// before feeding anything if the prompt is empty or does not fit, or max_new_tokens or the
/// sampler's settings are invalid; logits the sampler refuses (NaN) throw with what was fed
/// until then kept.
template <class CacheElement, class Weight, class OnToken>
std::vector<std::int32_t> generate(Decoder<CacheElement, Weight>& decoder,
                                   const std::vector<std::int32_t>& prompt,
                                   const GenerationConfig& config, OnToken&& on_token) {
  constexpr const char* kWhere = "generate";
  HEADROOM_CHECK(config.max_new_tokens >= 0, kWhere, "config.max_new_tokens (",
                 config.max_new_tokens, ") must be >= 0");
  Sampler sampler(config.sampler);
  // The last sampled token is returned without being fed, so the sequence may fill up entirely.
  Eigen::VectorXf logits = decoder.forward(prompt);
  std::vector<std::int32_t> generated;
  while (static_cast<Index>(generated.size()) < config.max_new_tokens) {
    const std::int32_t token = sampler.sample(logits);
    generated.push_back(token);
    on_token(token);
    const bool stop = std::find(config.stop_tokens.begin(), config.stop_tokens.end(), token) !=
                      config.stop_tokens.end();
    if (stop || static_cast<Index>(generated.size()) == config.max_new_tokens ||
        decoder.position() == decoder.max_tokens()) {
      break;
    }
    logits = decoder.forward({token});
  }
  return generated;
}

/// generate without a per-token callback.
template <class CacheElement, class Weight>
std::vector<std::int32_t> generate(Decoder<CacheElement, Weight>& decoder,
                                   const std::vector<std::int32_t>& prompt,
                                   const GenerationConfig& config) {
  return generate(decoder, prompt, config, [](std::int32_t) {});
}

}  // namespace headroom
