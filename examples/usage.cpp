// The README's usage example, kept compiling by the build and in sync by a test.
#include <headroom/headroom.hpp>

#include <cstdio>
#include <vector>

int main() {
  const headroom::Index seq = 256, heads = 32, kv_heads = 8, dim = 128;  // GQA 32/8
  std::vector<float> q(seq * heads * dim, 0.1f), k(seq * kv_heads * dim, 0.2f),
      v(seq * kv_heads * dim, 0.3f), out(seq * heads * dim);
  using View = headroom::TensorView<const float>;  // [batch, seq, heads, dim], any strides
  headroom::AttentionOptions options;
  options.mask = headroom::Mask::causal();
  headroom::attend(View::bshd(q.data(), 1, seq, heads, dim),
                   View::bshd(k.data(), 1, seq, kv_heads, dim),
                   View::bshd(v.data(), 1, seq, kv_heads, dim),
                   headroom::TensorView<float>::bshd(out.data(), 1, seq, heads, dim), options);
  std::printf("out[0] = %f\n", out[0]);  // 0.3: every value row is 0.3
}
