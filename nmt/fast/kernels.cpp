// Fused CPU operators for the hottest element-wise work of a decoder step, registered with
// PyTorch as `torch.ops.nmt.*` (nmt/fast/kernels.py builds this file with
// torch.utils.cpp_extension and adds their fake implementations and autograd).
//
// Additive score (Bahdanau et al. 2014, Eq. 6), in the form nmt/model/scores.py documents:
//     score[n, g, s] = 2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a])
// proj (N, S, A) the projected keys, q (N, G, A) the projected queries, G queries per key row.
// PyTorch computes it as an add, a sigmoid and a product, each a pass over an (N, G, S, A)
// tensor, with as many more in the backward pass; here the forward pass reads proj once and
// writes nothing but the scores, and the backward pass recomputes the sigmoid in one pass.
//
// LSTM cell (Hochreiter and Schmidhuber 1997, with forget gate), from the gates' pre-activations
// (B, 4H) in the order i, f, g, o:
//     c' = sigmoid(f) c + sigmoid(i) tanh(g),    h' = sigmoid(o) tanh(c')
// one pass forward and one backward, where PyTorch runs some 10 and 15 element-wise operations.
//
// Cross-entropy with label smoothing eps over V classes, as torch's F.cross_entropy:
//     loss = (1 - eps) (-log p_y) + eps mean_v (-log p_v),    p = softmax(logits)
// computed together with its gradient p - (1 - eps) onehot(y) - eps / V, which the backward
// pass only scales: each row of logits is read once and the gradient written once.
//
// Rows are split over torch's own thread pool (at::parallel_for). Every sum runs in a fixed
// order whatever the thread count: the backward pass writes one partial dv per key row n, and
// the caller sums them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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

inline float tanh_approx(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }

void check_float_cpu(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, op,
              ": float32 CPU tensors only");
}

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
  TORCH_CHECK(proj.dim() == 3 && q.dim() == 3 && v.dim() == 2,
              "additive_score: expected proj (N, S, A), q (N, G, A), v (H, A / H)");
  TORCH_CHECK(q.size(0) == proj.size(0) && q.size(2) == proj.size(2) &&
                  v.size(0) * v.size(1) == proj.size(2),
              "additive_score: proj (N, S, A), q (N, G, A) and v (H, A / H) disagree in N or A");
}

// proj (N, S, A), q (N, G, A), v (H, D) with A = H D -> score (N, G, S, H): head h sums
// the features [h D, (h + 1) D).
at::Tensor additive_score(const at::Tensor& proj_in, const at::Tensor& q_in,
                          const at::Tensor& v_in) {
  check(proj_in, q_in, v_in);
  const at::Tensor proj = proj_in.contiguous(), q = q_in.contiguous(), v = v_in.contiguous();
  const int64_t N = proj.size(0), S = proj.size(1), A = proj.size(2), G = q.size(1);
  const int64_t H = v.size(0), D = v.size(1);
  at::Tensor score = at::empty({N, G, S, H}, proj.options());
  const float* P = proj.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  float* out = score.data_ptr<float>();
  at::parallel_for(0, N * G * S, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {  // i = (n, g, s)
      const int64_t s = i % S, ng = i / S, n = ng / G;
      const float* p = P + (n * S + s) * A;
      const float* qr = Q + ng * A;
      for (int64_t h = 0; h < H; h++)
        out[i * H + h] = score_one(p + h * D, qr + h * D, V + h * D, D);
    }
  });
  return score;
}

// The gradients for dscore (N, G, S, H): dproj (N, S, A), dq (N, G, A) and dv_rows (N, A),
// the share of dv of each key row n, which the caller sums.
//   d = 2 dscore[n, g, s, h] for the features a of head h, y = sigmoid(z), z = proj + q:
//   dz = d v y (1 - y), added to dproj[n, s] and dq[n, g]; d y added to dv.
// With e = exp(-z), y = 1 / (1 + e) and 1 - y = e y, without cancellation near y = 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor> additive_score_backward(
    const at::Tensor& proj_in, const at::Tensor& q_in, const at::Tensor& v_in,
    const at::Tensor& dscore_in) {
  check(proj_in, q_in, v_in);
  const at::Tensor proj = proj_in.contiguous(), q = q_in.contiguous(), v = v_in.contiguous();
  const at::Tensor dscore = dscore_in.contiguous();
  const int64_t N = proj.size(0), S = proj.size(1), A = proj.size(2), G = q.size(1);
  const int64_t H = v.size(0), D = v.size(1);
  TORCH_CHECK(dscore.sizes() == at::IntArrayRef({N, G, S, H}),
              "additive_score_backward: dscore must be (N, G, S, H)");
  at::Tensor dproj = at::zeros_like(proj), dq = at::zeros_like(q);
  at::Tensor dv_rows = at::zeros({N, A}, proj.options());
  const float* P = proj.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float* DS = dscore.data_ptr<float>();
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
          for (int64_t h = 0; h < H; h++) {
            const float d = 2.0f * DS[((n * G + g) * S + s) * H + h];
#pragma omp simd
            for (int64_t a = h * D; a < (h + 1) * D; a++) {
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
    }
  });
  return std::make_tuple(dproj, dq, dv_rows);
}

// gates (B, 4H), c (B, H) -> h', c' (B, H) and act (B, 4H), the activations sigmoid(i),
// sigmoid(f), tanh(g), sigmoid(o) that the backward pass reads.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell(const at::Tensor& gates_in,
                                                         const at::Tensor& c_in) {
  check_float_cpu(gates_in, "lstm_cell");
  check_float_cpu(c_in, "lstm_cell");
  TORCH_CHECK(c_in.dim() == 2 && gates_in.dim() == 2 && gates_in.size(0) == c_in.size(0) &&
                  gates_in.size(1) == 4 * c_in.size(1),
              "lstm_cell: expected gates (B, 4H) and c (B, H)");
  const at::Tensor gates = gates_in.contiguous(), c = c_in.contiguous();
  const int64_t B = c.size(0), H = c.size(1);
  at::Tensor h = at::empty({B, H}, c.options()), c_new = at::empty({B, H}, c.options());
  at::Tensor act = at::empty({B, 4 * H}, c.options());
  const float* X = gates.data_ptr<float>();
  const float* C = c.data_ptr<float>();
  float* Hn = h.data_ptr<float>();
  float* Cn = c_new.data_ptr<float>();
  float* Y = act.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++) {
      const float* __restrict__ x = X + b * 4 * H;
      const float* __restrict__ cb = C + b * H;
      float* __restrict__ y = Y + b * 4 * H;
      float* __restrict__ hb = Hn + b * H;
      float* __restrict__ cn = Cn + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; j++) {
        const float i = sigmoid(x[j]), f = sigmoid(x[H + j]);
        const float g = tanh_approx(x[2 * H + j]), o = sigmoid(x[3 * H + j]);
        const float cc = f * cb[j] + i * g;
        cn[j] = cc;
        hb[j] = o * tanh_approx(cc);
        y[j] = i, y[H + j] = f, y[2 * H + j] = g, y[3 * H + j] = o;
      }
    }
  });
  return std::make_tuple(h, c_new, act);
}

// The gradients for dh', dc' (B, H): dgates (B, 4H) and dc (B, H).
std::tuple<at::Tensor, at::Tensor> lstm_cell_backward(const at::Tensor& act_in,
                                                      const at::Tensor& c_in,
                                                      const at::Tensor& c_new_in,
                                                      const at::Tensor& dh_in,
                                                      const at::Tensor& dc_new_in) {
  for (const at::Tensor* t : {&act_in, &c_in, &c_new_in, &dh_in, &dc_new_in})
    check_float_cpu(*t, "lstm_cell_backward");
  const at::Tensor act = act_in.contiguous(), c = c_in.contiguous();
  const at::Tensor c_new = c_new_in.contiguous(), dh = dh_in.contiguous();
  const at::Tensor dc_new = dc_new_in.contiguous();
  const int64_t B = c.size(0), H = c.size(1);
  TORCH_CHECK(act.sizes() == at::IntArrayRef({B, 4 * H}) && c_new.sizes() == c.sizes() &&
                  dh.sizes() == c.sizes() && dc_new.sizes() == c.sizes(),
              "lstm_cell_backward: expected act (B, 4H) and the others (B, H)");
  at::Tensor dgates = at::empty({B, 4 * H}, c.options()), dc = at::empty({B, H}, c.options());
  const float* Y = act.data_ptr<float>();
  const float* C = c.data_ptr<float>();
  const float* Cn = c_new.data_ptr<float>();
  const float* DH = dh.data_ptr<float>();
  const float* DCn = dc_new.data_ptr<float>();
  float* DX = dgates.data_ptr<float>();
  float* DC = dc.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++) {
      const float* __restrict__ y = Y + b * 4 * H;
      const float* __restrict__ cb = C + b * H;
      const float* __restrict__ cn = Cn + b * H;
      const float* __restrict__ d = DH + b * H;
      const float* __restrict__ dcn_in = DCn + b * H;
      float* __restrict__ dx = DX + b * 4 * H;
      float* __restrict__ dcb = DC + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; j++) {
        const float i = y[j], f = y[H + j], g = y[2 * H + j], o = y[3 * H + j];
        const float t = tanh_approx(cn[j]);
        const float dcn = dcn_in[j] + d[j] * o * (1.0f - t * t);
        dx[j] = dcn * g * i * (1.0f - i);
        dx[H + j] = dcn * cb[j] * f * (1.0f - f);
        dx[2 * H + j] = dcn * i * (1.0f - g * g);
        dx[3 * H + j] = d[j] * t * o * (1.0f - o);
        dcb[j] = dcn * f;
      }
    }
  });
  return std::make_tuple(dgates, dc);
}

// logits (N, V), target (N,) -> loss (N,), each row's loss, and grad (N, V), its gradient.
std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& logits_in,
                                                 const at::Tensor& target_in, double eps_in) {
  check_float_cpu(logits_in, "cross_entropy");
  TORCH_CHECK(target_in.device().is_cpu() && target_in.scalar_type() == at::kLong,
              "cross_entropy: target must be int64 on the CPU");
  TORCH_CHECK(logits_in.dim() == 2 && target_in.dim() == 1 &&
                  target_in.size(0) == logits_in.size(0) && logits_in.size(1) > 0,
              "cross_entropy: expected logits (N, V) and target (N,)");
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const float eps = static_cast<float>(eps_in);
  const int64_t* T = target.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; n++)
    TORCH_CHECK(T[n] >= 0 && T[n] < V, "cross_entropy: target ", T[n], " out of range for ", V,
                " classes");
  at::Tensor loss = at::empty({N}, logits.options()), grad = at::empty_like(logits);
  const float* L = logits.data_ptr<float>();
  float* LO = loss.data_ptr<float>();
  float* G = grad.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      const float* __restrict__ x = L + n * V;
      float* __restrict__ g = G + n * V;
      float max = x[0], total = 0.0f, sum = 0.0f;
#pragma omp simd reduction(max : max) reduction(+ : total)
      for (int64_t v = 0; v < V; v++) {
        max = x[v] > max ? x[v] : max;
        total += x[v];
      }
#pragma omp simd reduction(+ : sum)
      for (int64_t v = 0; v < V; v++) {
        g[v] = exp_approx(x[v] - max);
        sum += g[v];
      }
      const float log_z = max + std::log(sum), scale = 1.0f / sum;
      const float uniform = eps / static_cast<float>(V);
#pragma omp simd
      for (int64_t v = 0; v < V; v++) g[v] = g[v] * scale - uniform;
      const int64_t y = T[n];
      g[y] -= 1.0f - eps;
      LO[n] = (1.0f - eps) * (log_z - x[y]) + eps * (log_z - total / static_cast<float>(V));
    }
  });
  return std::make_tuple(loss, grad);
}

}  // namespace

TORCH_LIBRARY(nmt, m) {
  m.def("additive_score(Tensor proj, Tensor q, Tensor v) -> Tensor");
  m.def("additive_score_backward(Tensor proj, Tensor q, Tensor v, Tensor dscore) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("lstm_cell(Tensor gates, Tensor c) -> (Tensor, Tensor, Tensor)");
  m.def("lstm_cell_backward(Tensor act, Tensor c, Tensor c_new, Tensor dh, Tensor dc_new) "
        "-> (Tensor, Tensor)");
  m.def("cross_entropy(Tensor logits, Tensor target, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nmt, CPU, m) {
  m.impl("additive_score", &additive_score);
  m.impl("additive_score_backward", &additive_score_backward);
  m.impl("lstm_cell", &lstm_cell);
  m.impl("lstm_cell_backward", &lstm_cell_backward);
  m.impl("cross_entropy", &cross_entropy);
}
