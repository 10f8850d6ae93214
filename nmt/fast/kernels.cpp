// Fused CPU operators for the hottest element-wise work of a training step, registered with
// PyTorch as `torch.ops.nmt.*` (nmt/fast/kernels.py builds this file with
// torch.utils.cpp_extension and adds their fake implementations and autograd).
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
// order whatever the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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
  m.def("lstm_cell(Tensor gates, Tensor c) -> (Tensor, Tensor, Tensor)");
  m.def("lstm_cell_backward(Tensor act, Tensor c, Tensor c_new, Tensor dh, Tensor dc_new) "
        "-> (Tensor, Tensor)");
  m.def("cross_entropy(Tensor logits, Tensor target, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nmt, CPU, m) {
  m.impl("lstm_cell", &lstm_cell);
  m.impl("lstm_cell_backward", &lstm_cell_backward);
  m.impl("cross_entropy", &cross_entropy);
}
