// SPDX-License-Identifier: MIT
// exp over a packet of floats for the online softmax: on AVX-512 a short form whose power of two is
// one vscalefps, elsewhere Eigen's pexp.
#pragma once

#include <Eigen/Core>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// Returns exp(x) lane by lane, within 2 ulp of the exact value where that is a normal float;
/// below ln(FLT_MIN) = -87.34 (also for -inf) the result is exactly 0, above 88.73 it is +inf, and
/// NaN stays NaN. No denormal ever comes out: a probability that small is below the resolution of
/// a softmax sum (which holds exp(0) = 1 for the row maximum), and multiplying denormals costs
/// Intel cores a microcode assist per instruction, so logits far below their row's maximum (as
/// next to attention sinks) would slow the P.V product for nothing.
///
/// The method is Cephes' expf (Moshier, "Methods and Programs for Mathematical Functions", 1989):
/// x = n ln2 + r with n = round(x log2 e) and ln2 split in two (Cody-Waite) so r is exact,
/// exp(r) ~ 1 + r + r^2 P(r) with P the degree-5 minimax polynomial of Cephes' expf.c, and the
/// result 2^n exp(r). Eigen's pexp uses the same reduction and polynomial but forms 2^n from the
/// exponent bits in about ten instructions; AVX-512's vscalefps does it in one, which makes this
/// exp about twice as fast where a tile's softmax is a tenth of its arithmetic.
EIGEN_ALWAYS_INLINE Packet packet_exp(const Packet& x) {
#if defined(__AVX512F__)
  static_assert(sizeof(Packet) == sizeof(__m512), "the AVX-512 exp works on 16 floats");
  // Lanes below ln(FLT_MIN) are zeroed at the end ("not less than" keeps NaN lanes). Clamping at
  // 89, where exp is +inf in float anyway, keeps +inf from making r = inf - inf = NaN.
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654475f), _CMP_NLT_UQ);
  const __m512 clamped = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 = 0.693359375 - 2.12194440e-4 (Cephes' C1, C2): n * C1 is exact for |n| < 2^15.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), clamped);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 exp_r = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  // 2^n exp(r); vscalefps saturates to +inf as exp itself does.
  return Packet(_mm512_maskz_scalef_ps(normal, exp_r, n));
#else
  // Eigen's pexp returns denormals down to about -88.4: zero them as above (NaN compares false).
  using namespace Eigen::internal;
  return pandnot(pexp(x), pcmp_lt(x, pset1<Packet>(-87.33654475f)));
#endif
}

}  // namespace headroom::detail
