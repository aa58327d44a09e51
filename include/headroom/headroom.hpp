// SPDX-License-Identifier: MIT
// The umbrella header: includes headroom's public API but io/ (which needs nlohmann/json).
#pragma once

#include "headroom/version.hpp"

#include "headroom/core/error.hpp"
#include "headroom/core/parallel.hpp"
#include "headroom/core/tensor_view.hpp"

#include "headroom/position/rope.hpp"
#include "headroom/position/rerope.hpp"

#include "headroom/cache/kv_cache.hpp"
#include "headroom/cache/paged_kv_cache.hpp"

#include "headroom/attention/attend.hpp"
#include "headroom/attention/cost.hpp"
#include "headroom/attention/kv_source.hpp"
#include "headroom/attention/merge.hpp"
#include "headroom/attention/options.hpp"
#include "headroom/attention/rerope_attention.hpp"

#include "headroom/mla/latent_cache.hpp"
#include "headroom/mla/mla_attention.hpp"
#include "headroom/mla/mla_config.hpp"
#include "headroom/mla/mla_cost.hpp"
#include "headroom/mla/mla_weights.hpp"

#include "headroom/model/decoder.hpp"
#include "headroom/model/decoder_config.hpp"
#include "headroom/model/decoder_weights.hpp"
#include "headroom/model/generate.hpp"
#include "headroom/model/sampler.hpp"
