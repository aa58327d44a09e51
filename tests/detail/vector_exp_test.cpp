// SPDX-License-Identifier: MIT
// Tests packet_exp, the softmax's vector exp, against exp in double precision.
#include "headroom/detail/vector_exp.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace headroom::detail {
namespace {

/// Returns exp of every element of `x`, a whole number of packets, through packet_exp.
std::vector<float> packet_exps(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); i += kPacketSize) {
    Eigen::internal::pstoreu(y.data() + i,
                             packet_exp(Eigen::internal::ploadu<Packet>(x.data() + i)));
  }
  return y;
}

/// Returns the distance between a float and the exact value in units of the float's last place.
double ulps(float got, double exact) {
  const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(exact)) - 23);
  return std::abs(static_cast<double>(got) - exact) / ulp;
}

TEST(PacketExpTest, WithinTwoUlpOverTheNormalRange) {
  // Every 2^-12 from -87.3 to 88.7: all results are normal floats. (Eigen's pexp, which this
  // replaces, is within about 1 ulp; the softmax sums thousands of these, so 2 ulp per term
  // moves a probability by far less than the tests' tolerances on the attention output.)
  std::vector<float> x;
  for (double t = -87.3; t < 88.7; t += 1.0 / 4096) x.push_back(static_cast<float>(t));
  while (x.size() % kPacketSize != 0) x.push_back(0.0f);
  const std::vector<float> y = packet_exps(x);
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    worst = std::max(worst, ulps(y[i], std::exp(static_cast<double>(x[i]))));
  }
  EXPECT_LE(worst, 2.0);
}

TEST(PacketExpTest, EdgesOfTheRange) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {0.0f,  -0.0f, -kInf, kInf,   -87.3f, -87.4f, -200.0f, 88.72f,
                          89.0f, 100.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f,
                          -1.0f, 1e-8f, -1e-8f, 0.5f};
  while (x.size() % kPacketSize != 0) x.push_back(0.0f);
  const std::vector<float> y = packet_exps(x);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 1.0f);
  EXPECT_EQ(y[2], 0.0f);
  EXPECT_EQ(y[3], kInf);
  // exp(-87.3) is just above the smallest normal float; exp(-87.4) would be a denormal and is 0,
  // as exp(-200) is; exp(88.72) is just below the largest float.
  EXPECT_LE(ulps(y[4], std::exp(static_cast<double>(x[4]))), 2.0);
  EXPECT_GE(y[4], std::numeric_limits<float>::min());
  EXPECT_EQ(y[5], 0.0f);
  EXPECT_EQ(y[6], 0.0f);
  EXPECT_LE(ulps(y[7], std::exp(static_cast<double>(x[7]))), 2.0);
  EXPECT_EQ(y[8], kInf);
  EXPECT_EQ(y[9], kInf);
  EXPECT_TRUE(std::isnan(y[10]));
  for (int i : {11, 12, 13, 14, 15}) EXPECT_LE(ulps(y[i], std::exp(static_cast<double>(x[i]))), 2.0);
}

TEST(PacketExpTest, EveryFloatNearTheSmallestNormalGivesZeroOrANormalFloat) {
  // The floats around ln(FLT_MIN) = -87.3365: where exp is normal the result is within 2 ulp,
  // everywhere else exactly 0; never a denormal (see packet_exp).
  std::vector<float> x;
  for (float t = -87.35f; t < -87.32f; t = std::nextafter(t, 0.0f)) x.push_back(t);
  while (x.size() % kPacketSize != 0) x.push_back(0.0f);
  const std::vector<float> y = packet_exps(x);
  int normal = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_TRUE(y[i] == 0.0f || std::isnormal(y[i])) << "exp(" << x[i] << ") = " << y[i];
    if (y[i] == 0.0f) continue;
    EXPECT_LE(ulps(y[i], std::exp(static_cast<double>(x[i]))), 2.0) << "exp(" << x[i] << ")";
    ++normal;
  }
  EXPECT_GT(normal, 1000);  // most of the range lies above ln(FLT_MIN)
}

}  // namespace
}  // namespace headroom::detail
