/* Fused CPU kernels for the hottest element-wise work of a decoder step.
 *
 * Built by nmt/kernels/__init__.py with the system C compiler on first use and called through
 * ctypes on contiguous float32 arrays. Loops over features are written branch-free so that
 * the compiler vectorizes them (AVX2 here: 8 floats at a time); rows are split across threads
 * with OpenMP, statically, so that every result is the same from run to run.
 *
 * Additive score (Bahdanau et al. 2014, Eq. 6), in the form nmt/model/scores.py documents:
 *     score[n, g, s] = 2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a])
 * proj (N, S, A) the projected keys, q (N, G, A) the projected queries, G queries per key row.
 * PyTorch computes it as an add, a sigmoid and a product, each a pass over an (N, G, S, A)
 * tensor, with as many more in the backward pass; here the forward pass reads proj once and
 * writes nothing but the scores, and the backward pass recomputes the sigmoid in one pass.
 *
 * LSTM cell (Hochreiter and Schmidhuber 1997, with forget gate), from the gates' pre-activations
 * (B, 4H) in the order i, f, g, o:
 *     c' = sigmoid(f) c + sigmoid(i) tanh(g),    h' = sigmoid(o) tanh(c')
 * one pass forward and one backward, where PyTorch runs some 10 and 15 element-wise operations.
 *
 * Cross-entropy with label smoothing eps over V classes, as torch's F.cross_entropy:
 *     loss = (1 - eps) (-log p_y) + eps mean_v (-log p_v),    p = softmax(logits)
 * computed together with its gradient p - (1 - eps) onehot(y) - eps / V, which the backward
 * pass only scales: each row of logits is read once and the gradient written once.
 *
 * Dropout with a counter-based generator: element i is kept when the hash of (seed, i) is at
 * least p 2^32, so the backward pass rebuilds the same mask from the seed instead of storing
 * it, and no sequential generator state limits the speed.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* exp(x), relative error below 2e-7 (Cephes expf): x = k ln2 + r with |r| <= ln2 / 2,
   exp(r) by a degree-6 polynomial, 2^k built in the float's exponent bits. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float round = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float k = (x * 1.44269504088896341f + round) - round;
    float r = x - k * 0.693359375f + k * 2.12194440e-4f; /* ln2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {((int32_t)k + 127) << 23}; /* 2^k */
    return p * scale.f;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

static inline float tanh_approx(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void additive_score_forward(const float *restrict proj, const float *restrict q,
                            const float *restrict v, float *restrict score,
                            int64_t N, int64_t G, int64_t S, int64_t A, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < N * G * S; i++) { /* i = (n, g, s) */
        int64_t s = i % S, ng = i / S, n = ng / G;
        const float *p = proj + (n * S + s) * A, *qr = q + ng * A;
        float acc = 0.0f;
        #pragma omp simd reduction(+:acc)
        for (int64_t a = 0; a < A; a++) acc += v[a] * sigmoid(p[a] + qr[a]);
        score[i] = 2.0f * acc;
    }
}

/* One (n, g, s) of the backward pass: d = 2 dscore[n, g, s], y = sigmoid(z), z = proj + q,
   dz = d v y (1 - y) added to dproj[n, s] and dq[n, g]; d y added to dv. With e = exp(-z),
   y = 1 / (1 + e) and 1 - y = e y. */
static inline void additive_score_backward_row(
        const float *restrict p, const float *restrict q, const float *restrict v, float d,
        float *restrict dp, float *restrict dq, float *restrict dv, int64_t A) {
    #pragma omp simd
    for (int64_t a = 0; a < A; a++) {
        float e = exp_approx(-(p[a] + q[a]));
        float y = 1.0f / (1.0f + e);
        float dz = d * v[a] * (e * y) * y; /* y (1 - y), without cancellation near y = 1 */
        dp[a] += dz;
        dq[a] += dz;
        dv[a] += d * y;
    }
}

/* Gradients for dscore (N, G, S): dproj (N, S, A), dq (N, G, A), and dv_parts (threads, A),
   each thread's share of dv, which the caller sums in a fixed order. */
void additive_score_backward(const float *restrict proj, const float *restrict q,
                             const float *restrict v, const float *restrict dscore,
                             float *restrict dproj, float *restrict dq, float *restrict dv_parts,
                             int64_t N, int64_t G, int64_t S, int64_t A, int threads) {
    memset(dv_parts, 0, sizeof(float) * threads * A);
    #pragma omp parallel num_threads(threads)
    {
        float *dv = dv_parts + thread_id() * A;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            memset(dq + n * G * A, 0, sizeof(float) * G * A);
            for (int64_t s = 0; s < S; s++) {
                const float *p = proj + (n * S + s) * A;
                float *dp = dproj + (n * S + s) * A;
                memset(dp, 0, sizeof(float) * A);
                for (int64_t g = 0; g < G; g++)
                    additive_score_backward_row(p, q + (n * G + g) * A, v,
                                                2.0f * dscore[(n * G + g) * S + s], dp,
                                                dq + (n * G + g) * A, dv, A);
            }
        }
    }
}

/* gates (B, 4H), c (B, H) -> h', c' (B, H) and act (B, 4H), the activations sigmoid(i),
   sigmoid(f), tanh(g), sigmoid(o) that the backward pass reads. */
void lstm_cell_forward(const float *restrict gates, const float *restrict c, float *restrict h,
                       float *restrict c_new, float *restrict act, int64_t B, int64_t H,
                       int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        const float *x = gates + b * 4 * H;
        float *y = act + b * 4 * H;
        #pragma omp simd
        for (int64_t j = 0; j < H; j++) {
            float i = sigmoid(x[j]), f = sigmoid(x[H + j]);
            float g = tanh_approx(x[2 * H + j]), o = sigmoid(x[3 * H + j]);
            float cn = f * c[b * H + j] + i * g;
            c_new[b * H + j] = cn;
            h[b * H + j] = o * tanh_approx(cn);
            y[j] = i, y[H + j] = f, y[2 * H + j] = g, y[3 * H + j] = o;
        }
    }
}

/* Gradients for dh', dc' (B, H): dgates (B, 4H) and dc (B, H). */
void lstm_cell_backward(const float *restrict act, const float *restrict c,
                        const float *restrict c_new, const float *restrict dh,
                        const float *restrict dc_new, float *restrict dgates,
                        float *restrict dc, int64_t B, int64_t H, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        const float *y = act + b * 4 * H;
        float *dx = dgates + b * 4 * H;
        #pragma omp simd
        for (int64_t j = 0; j < H; j++) {
            float i = y[j], f = y[H + j], g = y[2 * H + j], o = y[3 * H + j];
            float t = tanh_approx(c_new[b * H + j]), d = dh[b * H + j];
            float dcn = dc_new[b * H + j] + d * o * (1.0f - t * t);
            dx[j] = dcn * g * i * (1.0f - i);
            dx[H + j] = dcn * c[b * H + j] * f * (1.0f - f);
            dx[2 * H + j] = dcn * i * (1.0f - g * g);
            dx[3 * H + j] = d * t * o * (1.0f - o);
            dc[b * H + j] = dcn * f;
        }
    }
}

/* logits (N, V), target (N,) -> loss (N,) and grad (N, V), the gradient of each row's loss. */
void cross_entropy_forward(const float *restrict logits, const int64_t *restrict target,
                           float eps, float *restrict loss, float *restrict grad, int64_t N,
                           int64_t V, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * V;
        float *g = grad + n * V;
        float max = x[0], total = 0.0f, sum = 0.0f;
        #pragma omp simd reduction(max:max) reduction(+:total)
        for (int64_t v = 0; v < V; v++) {
            max = x[v] > max ? x[v] : max;
            total += x[v];
        }
        #pragma omp simd reduction(+:sum)
        for (int64_t v = 0; v < V; v++) {
            g[v] = exp_approx(x[v] - max);
            sum += g[v];
        }
        float log_z = max + logf(sum), scale = 1.0f / sum, uniform = eps / (float)V;
        #pragma omp simd
        for (int64_t v = 0; v < V; v++) g[v] = g[v] * scale - uniform;
        int64_t y = target[n];
        g[y] -= 1.0f - eps;
        loss[n] = (1.0f - eps) * (log_z - x[y]) + eps * (log_z - total / (float)V);
    }
}

/* A 32-bit integer hash with good avalanche (Wellons' lowbias32). */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* out[i] = x[i] / (1 - p) where mix(seed, i) >= p 2^32, else 0 (out may be x). */
void dropout(const float *x, float *out, int64_t n, uint64_t seed, float p, int threads) {
    uint32_t k1 = (uint32_t)seed, k2 = (uint32_t)(seed >> 32);
    uint32_t threshold = (uint32_t)((double)p * 4294967296.0);
    float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        out[i] = mix32(mix32((uint32_t)i ^ k1) + k2) >= threshold ? x[i] * scale : 0.0f;
}
