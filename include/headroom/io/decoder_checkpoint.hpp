// SPDX-License-Identifier: MIT
// Reads a Llama-family decoder from a Hugging Face checkpoint directory: its config.json and its
// safetensors weights.
#pragma once

#include <string>
#include <utility>

#include "headroom/io/checkpoint.hpp"
#include "headroom/io/hf_config.hpp"
#include "headroom/model/decoder.hpp"
#include "headroom/model/decoder_config.hpp"
#include "headroom/model/decoder_weights.hpp"

namespace headroom {

/// Returns the decoder weights of `checkpoint` for `config`, linear weights and embeddings
/// converted to Weight (float or Eigen::bfloat16: bf16 files copy in unchanged, f32 ones round to
/// nearest even), norms and biases to f32, under transformers' names: model.embed_tokens.weight, model.layers.<i>.input_layernorm.weight,
/// .self_attn.{q,k,v,o}_proj.weight (and .bias where the config has biases),
/// .post_attention_layernorm.weight, .mlp.{gate,up,down}_proj.weight, model.norm.weight and, unless
/// the embeddings are tied, lm_head.weight. Throws headroom::Error naming the tensor if one is
/// missing, of another shape or not floating-point.
template <class Weight = float>
DecoderWeightsOf<Weight> read_decoder_weights(const SafetensorsCheckpoint& checkpoint,
                                              const DecoderConfig& config) {
  config.validate();
  const Index hidden = config.hidden_size, inter = config.intermediate_size;
  const Index q_rows = config.num_attention_heads * config.head_dim;
  const Index kv_rows = config.num_key_value_heads * config.head_dim;
  DecoderWeightsOf<Weight> weights;
  weights.embed_tokens =
      read_matrix<Weight>(checkpoint, "model.embed_tokens.weight", config.vocab_size, hidden);
  for (Index i = 0; i < config.num_hidden_layers; ++i) {
    const std::string at = "model.layers." + std::to_string(i) + ".";
    const auto matrix = [&](const std::string& name, Index rows, Index cols) {
      return read_matrix<Weight>(checkpoint, at + name + ".weight", rows, cols);
    };
    const auto vector = [&](const std::string& name, const char* kind, Index size) {
      return read_vector(checkpoint, at + name + kind, size);
    };
    typename DecoderWeightsOf<Weight>::LayerWeights layer;
    layer.input_layernorm = vector("input_layernorm", ".weight", hidden);
    layer.q_proj = matrix("self_attn.q_proj", q_rows, hidden);
    layer.k_proj = matrix("self_attn.k_proj", kv_rows, hidden);
    layer.v_proj = matrix("self_attn.v_proj", kv_rows, hidden);
    if (config.qkv_bias) {
      layer.q_bias = vector("self_attn.q_proj", ".bias", q_rows);
      layer.k_bias = vector("self_attn.k_proj", ".bias", kv_rows);
      layer.v_bias = vector("self_attn.v_proj", ".bias", kv_rows);
    }
    layer.o_proj = matrix("self_attn.o_proj", hidden, q_rows);
    if (config.o_bias) layer.o_bias = vector("self_attn.o_proj", ".bias", hidden);
    layer.post_attention_layernorm = vector("post_attention_layernorm", ".weight", hidden);
    layer.gate_proj = matrix("mlp.gate_proj", inter, hidden);
    layer.up_proj = matrix("mlp.up_proj", inter, hidden);
    layer.down_proj = matrix("mlp.down_proj", hidden, inter);
    weights.layers.push_back(std::move(layer));
  }
  weights.norm = read_vector(checkpoint, "model.norm.weight", hidden);
  if (!config.tie_word_embeddings) {
    weights.lm_head = read_matrix<Weight>(checkpoint, "lm_head.weight", config.vocab_size, hidden);
  }
  weights.validate(config);
  return weights;
}

/// Returns the decoder of the Hugging Face checkpoint in `directory` (config.json and
/// model.safetensors or its shards), with KV caches of CacheElement and weights held as Weight
/// (Eigen::bfloat16 halves the memory of f32, and a bf16 checkpoint loses nothing).
template <class CacheElement = float, class Weight = float>
Decoder<CacheElement, Weight> load_decoder(const std::string& directory,
                                           const DecoderOptions& options = {}) {
  const DecoderConfig config = read_decoder_config(directory);
  const SafetensorsCheckpoint checkpoint(directory);
  return Decoder<CacheElement, Weight>(config, read_decoder_weights<Weight>(checkpoint, config),
                                       options);
}

}  // namespace headroom
