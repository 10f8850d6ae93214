// Fused CPU operators, registered with PyTorch as `torch.ops.nmt.*` (nmt/fast/kernels.py builds
// this file with torch.utils.cpp_extension and adds their fake implementations and autograd).
//
// Additive score (Bahdanau et al. 2014, Eq. 6), in the form nmt/model/scores.py documents:
//     score[n, g, s] = 2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a])
// proj (N, S, A) the projected keys, q (N, G, A) the projected queries, G queries per key row.
// PyTorch computes it as an add, a sigmoid and a product, each a pass over an (N, G, S, A)
// tensor, with as many more in the backward pass; here the forward pass reads proj once and
// writes nothing but the scores, and the backward pass recomputes the sigmoid in one pass.
//
// Rows are split over torch's own thread pool (at::parallel_for). Every sum runs in a fixed
// order whatever the thread count: the backward pass writes one partial dv per key row n, and
// the caller sums them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

// exp(x), relative error below 2e-7 (Cephes expf): x = k ln2 + r with |r| <= ln2 / 2, exp(r) by
// a degree-6 polynomial, 2^k built in the float's exponent bits. Branch-free, so that the
// loops over features vectorize.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float round = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float k = (x * 1.44269504088896341f + round) - round;
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;  // ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale = {(static_cast<int32_t>(k) + 127) << 23};  // 2^k
  return p * scale.f;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

// 2 sum_a v[a] sigmoid(p[a] + q[a]): one score, vectorized over the A features.
inline float score_one(const float* __restrict__ p, const float* __restrict__ q,
                       const float* __restrict__ v, int64_t A) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t a = 0; a < A; a++) acc += v[a] * sigmoid(p[a] + q[a]);
  return 2.0f * acc;
}

void check(const at::Tensor& proj, const at::Tensor& q, const at::Tensor& v) {
  TORCH_CHECK(proj.device().is_cpu() && q.device().is_cpu() && v.device().is_cpu(),
              "additive_score: CPU tensors only");
  TORCH_CHECK(proj.scalar_type() == at::kFloat && q.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "additive_score: float32 tensors only");
  TORCH_CHECK(proj.dim() == 3 && q.dim() == 3 && v.dim() == 1,
              "additive_score: expected proj (N, S, A), q (N, G, A), v (A,)");
  TORCH_CHECK(q.size(0) == proj.size(0) && q.size(2) == proj.size(2) && v.size(0) == proj.size(2),
              "additive_score: proj (N, S, A), q (N, G, A) and v (A,) disagree in N or A");
}

// proj (N, S, A), q (N, G, A), v (A,) -> score (N, G, S)
at::Tensor additive_score(const at::Tensor& proj_in, const at::Tensor& q_in,
                          const at::Tensor& v_in) {
  check(proj_in, q_in, v_in);
  const at::Tensor proj = proj_in.contiguous(), q = q_in.contiguous(), v = v_in.contiguous();
  const int64_t N = proj.size(0), S = proj.size(1), A = proj.size(2), G = q.size(1);
  at::Tensor score = at::empty({N, G, S}, proj.options());
  const float* P = proj.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  float* out = score.data_ptr<float>();
  at::parallel_for(0, N * G * S, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {  // i = (n, g, s)
      const int64_t s = i % S, ng = i / S, n = ng / G;
      out[i] = score_one(P + (n * S + s) * A, Q + ng * A, V, A);
    }
  });
  return score;
}

// The gradients for dscore (N, G, S): dproj (N, S, A), dq (N, G, A) and dv_rows (N, A), the
// share of dv of each key row n, which the caller sums.
//   d = 2 dscore[n, g, s], y = sigmoid(z), z = proj + q:
//   dz = d v y (1 - y), added to dproj[n, s] and dq[n, g]; d y added to dv.
// With e = exp(-z), y = 1 / (1 + e) and 1 - y = e y, without cancellation near y = 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor> additive_score_backward(
    const at::Tensor& proj_in, const at::Tensor& q_in, const at::Tensor& v_in,
    const at::Tensor& dscore_in) {
  check(proj_in, q_in, v_in);
  const at::Tensor proj = proj_in.contiguous(), q = q_in.contiguous(), v = v_in.contiguous();
  const at::Tensor dscore = dscore_in.contiguous();
  const int64_t N = proj.size(0), S = proj.size(1), A = proj.size(2), G = q.size(1);
  TORCH_CHECK(dscore.sizes() == at::IntArrayRef({N, G, S}),
              "additive_score_backward: dscore must be (N, G, S)");
  at::Tensor dproj = at::zeros_like(proj), dq = at::zeros_like(q);
  at::Tensor dv_rows = at::zeros({N, A}, proj.options());
  const float* P = proj.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float* D = dscore.data_ptr<float>();
  float* DP = dproj.data_ptr<float>();
  float* DQ = dq.data_ptr<float>();
  float* DV = dv_rows.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      float* __restrict__ dv = DV + n * A;
      for (int64_t s = 0; s < S; s++) {
        const float* __restrict__ p = P + (n * S + s) * A;
        float* __restrict__ dp = DP + (n * S + s) * A;
        for (int64_t g = 0; g < G; g++) {
          const float* __restrict__ qr = Q + (n * G + g) * A;
          float* __restrict__ dqr = DQ + (n * G + g) * A;
          const float d = 2.0f * D[(n * G + g) * S + s];
#pragma omp simd
          for (int64_t a = 0; a < A; a++) {
            const float e = exp_approx(-(p[a] + qr[a]));
            const float y = 1.0f / (1.0f + e);
            const float dz = d * V[a] * (e * y) * y;
            dp[a] += dz;
            dqr[a] += dz;
            dv[a] += d * y;
          }
        }
      }
    }
  });
  return std::make_tuple(dproj, dq, dv_rows);
}

}  // namespace

TORCH_LIBRARY(nmt, m) {
  m.def("additive_score(Tensor proj, Tensor q, Tensor v) -> Tensor");
  m.def("additive_score_backward(Tensor proj, Tensor q, Tensor v, Tensor dscore) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nmt, CPU, m) {
  m.impl("additive_score", &additive_score);
  m.impl("additive_score_backward", &additive_score_backward);
}
