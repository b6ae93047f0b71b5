// ffn_math.cuh -- the gated FFN's element-wise contract, shared by its two kernels (gated_ffn.cu, the
// cluster kernel; gated_ffn_flow.cu, the claimed-tile kernel), so both round and activate alike.
#pragma once

namespace cf {
namespace ffn {

/// @brief Activation codes; the launchers pass the same values (ffn.ACTIVATIONS).
enum Activation : int { kSilu = 0, kGeluTanh = 1, kGeluErf = 2 };
/// @brief RMSNorm weight forms (ffn.NORM_KINDS): w (Llama) or 1 + w (Gemma).
enum NormKind : int { kNormWeight = 0, kNormUnitOffset = 1 };

/// @brief act(v) in fp32 for the run-time activation code.
__device__ __forceinline__ float activate(float v, int activation) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;  // tanh-GELU: sqrt(2 / pi)
  constexpr float kGeluCubic = 0.044715f;              // tanh-GELU cubic coefficient
  constexpr float kInvSqrt2 = 0.7071067811865476f;     // erf-GELU: 1 / sqrt(2)
  if (activation == kSilu) return v / (1.f + expf(-v));
  if (activation == kGeluTanh) return 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v)));
  return 0.5f * v * (1.f + erff(v * kInvSqrt2));
}

}  // namespace ffn
}  // namespace cf
