// SPDX-License-Identifier: MIT
// generate: runs a Llama, Mistral or Qwen2 checkpoint on a prompt of token ids and prints the
// tokens it generates, with the prefill and decode speeds.
//
//   ./generate <checkpoint directory> <token id>... [options]
//   ./generate [options]          (no checkpoint: a random model, to see the speeds)
//
// The directory is a Hugging Face one: config.json and model.safetensors (or its shards and
// model.safetensors.index.json). headroom has no tokenizer: give the prompt as ids (e.g. from
// `tokenizer.encode(text)` in Python) and decode the printed ids the same way. Generation stops at
// generation_config.json's eos_token_id (else config.json's), after --max-new tokens, or when the
// sequence is full.
//
// Options: --max-new N, --temperature T (0: greedy), --top-k K (0: all), --top-p P, --seed S (0),
// --cache f32|bf16|int8 (bf16: the KV caches' element type), --weights f32|bf16 (bf16: how the
// linear weights and embeddings are held; bf16 loads a bf16 checkpoint unchanged in half the
// memory of f32), --max-tokens N (the KV caches' capacity: 4096, or max_position_embeddings if
// smaller), --threads N (0: all). Those of
// generation given override the checkpoint's generation_config.json (read_generation_config:
// greedy unless do_sample, at most 64 new tokens unless max_new_tokens); the random model
// generates 32 tokens greedily.
#include <headroom/headroom.hpp>
#include <headroom/io/decoder_checkpoint.hpp>
#include <headroom/io/generation_config.hpp>
#include <headroom/model/generate.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <limits>
#include <exception>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

using headroom::Index;
using Clock = std::chrono::steady_clock;

/// The generation options given on the command line; those not given come from the checkpoint.
struct GenerationOverrides {
  std::optional<Index> max_new_tokens;
  std::optional<float> temperature, top_p;
  std::optional<Index> top_k;
  std::uint64_t seed = 0;

  headroom::GenerationConfig applied_to(headroom::GenerationConfig generation) const {
    headroom::SamplerConfig& sampler = generation.sampler;
    generation.max_new_tokens = max_new_tokens.value_or(generation.max_new_tokens);
    sampler.temperature = temperature.value_or(sampler.temperature);
    sampler.top_k = top_k.value_or(sampler.top_k);
    sampler.top_p = top_p.value_or(sampler.top_p);
    sampler.seed = seed;
    return generation;
  }
};

struct Arguments {
  std::string directory;  // empty: a random model
  std::vector<std::int32_t> prompt;
  GenerationOverrides generation;
  std::string cache = "bf16";
  std::string weights = "bf16";
  headroom::DecoderOptions options{0, 0};  // max_tokens 0: see capacity()
};

[[noreturn]] void usage_error(const std::string& what, const char* text) {
  std::fprintf(stderr, "generate: %s, got \"%s\"\n", what.c_str(), text);
  std::exit(2);
}

/// Returns the whole number in `text` if it lies in [low, high], else exits naming `what`.
long long integer(const std::string& what, const char* text, long long low, long long high) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || value < low || value > high) {
    usage_error(what + " needs a whole number in [" + std::to_string(low) + ", " +
                    std::to_string(high) + "]",
                text);
  }
  return value;
}

/// Returns the finite number in `text` if it lies in [low, high], else exits naming `what`.
float real(const std::string& what, const char* text, float low, float high) {
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !std::isfinite(value) || value < low || value > high) {
    usage_error(what + " needs a number in [" + std::to_string(low) + ", " +
                    std::to_string(high) + "]",
                text);
  }
  return static_cast<float>(value);
}

Arguments parse(int argc, char** argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) == 0) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "generate: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      const char* value = argv[++i];
      GenerationOverrides& given = args.generation;
      constexpr long long kMost = 1LL << 40;
      if (arg == "--max-new") {
        given.max_new_tokens = static_cast<Index>(integer(arg, value, 0, kMost));
      } else if (arg == "--temperature") {
        given.temperature = real(arg, value, 0.0f, 1e6f);
      } else if (arg == "--top-k") {
        given.top_k = static_cast<Index>(integer(arg, value, 0, kMost));
      } else if (arg == "--top-p") {
        given.top_p = real(arg, value, 1e-6f, 1.0f);
      } else if (arg == "--seed") {
        given.seed = static_cast<std::uint64_t>(integer(arg, value, 0, kMost));
      } else if (arg == "--max-tokens") {
        args.options.max_tokens = static_cast<Index>(integer(arg, value, 1, kMost));
      } else if (arg == "--threads") {
        args.options.num_threads = static_cast<int>(integer(arg, value, 0, 4096));
      } else if (arg == "--cache") {
        args.cache = value;
      } else if (arg == "--weights") {
        args.weights = value;
      } else {
        std::fprintf(stderr, "generate: unknown option %s\n", arg.c_str());
        std::exit(2);
      }
    } else if (args.directory.empty() && args.prompt.empty() &&
               arg.find_first_not_of("0123456789") != std::string::npos) {
      args.directory = arg;
    } else {
      args.prompt.push_back(
          static_cast<std::int32_t>(integer("a token id", arg.c_str(), 0, std::numeric_limits<std::int32_t>::max())));
    }
  }
  return args;
}

/// Returns the options with the caches' capacity resolved: as given, else 4096 tokens or the
/// model's max_position_embeddings if that is smaller.
headroom::DecoderOptions capacity(const Arguments& args, const headroom::DecoderConfig& config) {
  headroom::DecoderOptions options = args.options;
  if (options.max_tokens == 0) {
    options.max_tokens = std::min<Index>(4096, config.max_position_embeddings);
  }
  return options;
}

/// A random model with Llama 3.2 1B's attention layout (32 heads of 64 over 8 kv heads) at half
/// its width and a quarter of its depth, and a 128-token random prompt.
headroom::DecoderConfig random_model(Arguments& args) {
  headroom::DecoderConfig config;
  config.vocab_size = 32000;
  config.hidden_size = 1024;
  config.intermediate_size = 4096;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 16;
  config.num_key_value_heads = 4;
  config.head_dim = 64;
  config.max_position_embeddings = 8192;
  config.rope_theta = 500000.0;
  if (args.prompt.empty()) {
    std::mt19937 rng(1);
    for (int i = 0; i < 128; ++i) {
      args.prompt.push_back(static_cast<std::int32_t>(rng() % config.vocab_size));
    }
  }
  return config;
}

/// Generates from args.prompt with `checkpoint_generation` as the command line overrides it.
template <class CacheElement, class Weight>
void run(const Arguments& args, const headroom::GenerationConfig& checkpoint_generation,
         headroom::Decoder<CacheElement, Weight> decoder) {
  const headroom::GenerationConfig generation = args.generation.applied_to(checkpoint_generation);
  std::printf("model: %s, %ld layers, %ld heads over %ld kv heads of %ld, vocab %ld; %s weights, "
              "%s cache, %ld bytes per token\n",
              decoder.config().model_type.c_str(), static_cast<long>(decoder.config().num_hidden_layers),
              static_cast<long>(decoder.config().num_attention_heads),
              static_cast<long>(decoder.config().num_key_value_heads),
              static_cast<long>(decoder.config().head_dim),
              static_cast<long>(decoder.config().vocab_size), args.weights.c_str(),
              args.cache.c_str(),
              static_cast<long>(decoder.cache_bytes_per_token()));
  std::printf("prompt: %zu tokens\ngenerated:", args.prompt.size());
  std::fflush(stdout);
  Clock::time_point start = Clock::now(), first_token;
  const auto tokens = headroom::generate(decoder, args.prompt, generation, [&](std::int32_t id) {
    if (first_token == Clock::time_point{}) first_token = Clock::now();
    std::printf(" %d", id);
    std::fflush(stdout);
  });
  const Clock::time_point end = Clock::now();
  if (tokens.empty()) first_token = end;
  const double prefill = std::chrono::duration<double>(first_token - start).count();
  const double decode = std::chrono::duration<double>(end - first_token).count();
  std::printf("\nprefill: %.1f tokens/s (%.3f s); decode: %.1f tokens/s (%zu tokens)\n",
              prefill > 0 ? static_cast<double>(args.prompt.size()) / prefill : 0.0, prefill,
              tokens.size() > 1 ? static_cast<double>(tokens.size() - 1) / decode : 0.0,
              tokens.size());
}

template <class CacheElement, class Weight>
void load_and_run(const Arguments& args) {
  if (args.directory.empty()) {
    Arguments random_args = args;
    const headroom::DecoderConfig config = random_model(random_args);
    std::printf("no checkpoint given: a random model\n");
    headroom::GenerationConfig greedy;
    greedy.max_new_tokens = 32;
    greedy.sampler.temperature = 0.0f;
    run(random_args, greedy,
        headroom::Decoder<CacheElement, Weight>(
            config, headroom::DecoderWeightsOf<Weight>::random(config, 7), capacity(args, config)));
  } else {
    if (args.prompt.empty()) {
      std::fprintf(stderr, "generate: give the prompt's token ids after the directory\n");
      std::exit(2);
    }
    const headroom::DecoderConfig config = headroom::read_decoder_config(args.directory);
    run(args, headroom::read_generation_config(args.directory, config),
        headroom::load_decoder<CacheElement, Weight>(args.directory, capacity(args, config)));
  }
}

}  // namespace

/// Runs with the weights held as --weights says.
template <class CacheElement>
void load_and_run_with_weights(const Arguments& args) {
  if (args.weights == "bf16") {
    load_and_run<CacheElement, Eigen::bfloat16>(args);
  } else {
    load_and_run<CacheElement, float>(args);
  }
}

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  if (args.weights != "f32" && args.weights != "bf16") {
    std::fprintf(stderr, "generate: --weights must be f32 or bf16, got %s\n", args.weights.c_str());
    return 2;
  }
  try {
    if (args.cache == "f32") {
      load_and_run_with_weights<float>(args);
    } else if (args.cache == "bf16") {
      load_and_run_with_weights<Eigen::bfloat16>(args);
    } else if (args.cache == "int8") {
      load_and_run_with_weights<std::int8_t>(args);
    } else {
      std::fprintf(stderr, "generate: --cache must be f32, bf16 or int8, got %s\n",
                   args.cache.c_str());
      return 2;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "generate: %s\n", error.what());
    return 1;
  }
  return 0;
}
