// The fused softmax + dynamic local filtering of dfn/ops/softmax_local_filter.py on a CPU, one pass per pixel.
//
// What it computes (De Brabandere et al. 2016: per-pixel K×K filters normalised by a softmax), for every
// sample b, channel c, output pixel (i, j) and tap k = a·K + e (a, e in 0..K-1), dilation d:
//
//     w_k    = exp(l_k − max l) / Σ_k' exp(l_k' − max l)                   l = logits[b, g, i, j, :]
//     out_c  = Σ_k w_k · xp[b, c, i + d·a, j + d·e]                          (= Σ_k w_k · window_k(x)_c)
//
// and backward, from the output gradient g_c = ∂L/∂out_c:
//
//     t_k                         = Σ_c g_c · window_k(x)_c
//     ∂L/∂l_k                     = w_k · (t_k − Σ_k' w_k' t_k')    (= w_k · Σ_c g_c (window_k(x)_c − out_c))
//     ∂L/∂xp[b, c, i + d·a, j + d·e] += w_k · g_c                    (the transpose of reading the window)
//
// g (the filter group) is 0 for filters shared by the C channels and c for per-channel filters. Backward
// recomputes the softmax from the logits: keeping the K*K float32 weights instead saved 0.6 ms per call
// (forward +1.1 ms writing them, backward −1.7 ms) in a harness that reused one buffer, but holds 21 MB
// per call until backward (10 calls per quickstart iteration) and, allocated by torch, page-faults it in.
//
// Why: the torch code it replaces (dfn/ops/softmax_local_filter.py: per chunk a softmax, a windowed
// product and a sum, each a pass over K*K values per pixel through memory) takes 14.1 ms forward and
// 21.3 ms backward per call at the quickstart's shape (x (16, 1, 64, 64), 9×9 bfloat16 logits), this
// kernel 5.7 ms and 10.6 ms: one thread, CPU time, the same process, a 2-core AMD EPYC (AVX-512) shared
// with a training run. The quickstart's training iteration goes from 1.14 to 0.91 s of CPU time (1.24×).
// Commands and the 2-thread figures: docs/speed.md, section 6.
//
// Layouts (contiguous; dfn/ops/_cpu_kernels.py checks them before calling):
//     xp       (B, C, Hp, Wp) float32   the frame padded by p = d·(K//2): Hp = H + 2p, Wp = W + 2p
//     logits   (B, G, H, W, K*K)        float32 or bfloat16, the taps fastest (an NHWC 1x1 conv's output);
//                                       G = 1 (shared by the channels) or G = C (per channel)
//     out      (B, C, H, W) float32
//     grad_xp  (B, C, Hp, Wp) float32   the padded frame's gradient (the caller slices or folds the border)
//     grad_l   like logits, in their dtype
//
// Vectors: a pixel's K*K taps in memory order are "dense" vectors of 16 floats (V = ceil(K*K / 16); the
// softmax runs on those: 6 vectors for 81 taps), and window row a (taps a·K .. a·K + K-1) is R = ceil(K / 16)
// vectors reloaded from position a·K, the lanes past K masked, so that with d = 1 a window row of the
// frame is one unaligned load (d > 1 gathers). The frame and its gradient are used through copies whose
// rows have 16·R spare columns: those loads and stores never leave their row. GCC/Clang vector types: one
// 512-bit register per vector with AVX-512, two or four narrower ones elsewhere.
//
// Threads: OpenMP, as many as the caller passes (torch.get_num_threads()); without OpenMP, one. Rows are
// handed out dynamically: on a shared machine a descheduled thread's rows go to the others.
// Forward: output rows (b, i) are independent. Backward: the frame gradient of output row i lands in
// padded rows i .. i + 2p, so output rows go in bands of at least 2p rows, even bands in parallel, then
// odd bands: two bands running at once never share a row. Results do not depend on the thread count.
//
// The entry points are plain C functions on raw pointers (dfn/ops/_cpu_kernels.py checks the tensors
// and calls them through ctypes): no torch headers, so the first-use build takes seconds, not a minute.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

// exp(x) for the x ≤ 0 of a max-subtracted softmax (Cephes' expf): x = n·ln2 + r, |r| ≤ ln2/2, a degree-6
// polynomial for e^r, times 2^n built from exponent bits. Relative error ~2e-7. Below −87 (the end of
// float's normal range) it returns exp(−87) ≈ 1.6e-38 rather than a smaller number or 0: against the
// softmax's sum ≥ 1 that is zero all the same, and one clamp is cheaper than a select. NaN stays NaN.
inline vf exp_nonpositive(vf x) {
  x = x < -87.0f ? -87.0f : x;
  const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5·2^23)
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf y = 1.9875691500e-4f * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return y * (vf)bits;
}

inline float hsum(vf v) {
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
  const vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (c[0] + c[2]) + (c[1] + c[3]);
#else
  float sum = 0.0f;
  for (int e = 0; e < kLanes; ++e) sum += v[e];
  return sum;
#endif
}

inline float hmax(vf v) {
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
  vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const vf8 b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  a = a > b ? a : b;
  vf4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3);
  const vf4 d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  c = c > d ? c : d;
  return std::max(std::max(c[0], c[1]), std::max(c[2], c[3]));
#else
  float m = v[0];
  for (int e = 1; e < kLanes; ++e) m = std::max(m, v[e]);
  return m;
#endif
}

// Unaligned loads and stores through vector types of the element's alignment: unlike memcpy (which may
// alias anything) they alias only floats / uint16s, so the compiler keeps pointers and sizes in registers.
typedef float vf_unaligned __attribute__((vector_size(64), aligned(4)));
typedef uint16_t vh_unaligned __attribute__((vector_size(32), aligned(2)));

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline vf load(const uint16_t* p) {  // bfloat16: the high half of a float32
  const vh h = *reinterpret_cast<const vh_unaligned*>(p);
  return (vf)(__builtin_convertvector(h, vu) << 16);
}
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }
inline void store(uint16_t* p, vf v) {  // float32 -> bfloat16, rounding to nearest even (as c10::BFloat16)
  const vu bits = (vu)v;
  vu rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  rounded = v != v ? 0x7FC0u : rounded;
  *reinterpret_cast<vh_unaligned*>(p) = __builtin_convertvector(rounded, vh);
}

struct Geometry {
  int64_t B, C, G, H, W, Hp, Wp;
  int K, d, R;
  int64_t S;  // row stride of the frame copies: Wp + 16·R spare columns
  bool per_channel;
  int threads;
};

// Pixels go in blocks along a row: first the exponentials of the whole block, then its window sums, so
// that the long dependency chains of neighbouring pixels (max -> exp -> sum; the window's FMAs) overlap.
constexpr int kBlock = 16;

// Per-thread buffers and lane masks. A pixel's taps k = 0 .. K*K-1 in memory order are "dense" vectors
// (V = ceil(K*K / 16) of them); window row a starts at dense position a·K.
struct Scratch {
  int64_t stride;            // floats per pixel in `dense`
  std::vector<float> dense;  // per pixel of the block: exp(l_k − max l), dense, zero past K*K
  float inv[kBlock];         // per pixel of the block: 1 / Σ_k exp(l_k − max l)
  std::vector<float> rows;   // t_k written row by row at a·K + 16q, read back dense
  std::vector<float> copy;   // a pixel's logits or logit gradient (any dtype) at the tensor's or a row's end
  std::vector<vi> valid;     // R masks: lane e of row vector q is tap e + 16q < K
  vi tail;                   // lane e of the last dense vector is a tap
  explicit Scratch(const Geometry& s)
      : stride(s.K * s.K + 2 * kLanes), dense(kBlock * stride), rows(stride), copy(stride), valid(s.R) {
    for (int q = 0; q < s.R; ++q)
      for (int e = 0; e < kLanes; ++e) valid[q][e] = q * kLanes + e < s.K ? -1 : 0;
    const int last = (s.K * s.K - 1) / kLanes * kLanes;
    for (int e = 0; e < kLanes; ++e) tail[e] = last + e < s.K * s.K ? -1 : 0;
  }
};

// Fast: d = 1 and K <= 16 (one vector per window row, read by one load), the common case, compiled apart.

// The q-th vector of a window row starting at `row` (the pixel's tap (a, 0)), zero in the masked lanes.
template <bool Fast>
inline vf window_row(const float* row, int q, const Geometry& s, const vi& valid) {
  vf v;
  if (Fast || s.d == 1) {
    v = load(row + q * kLanes);
  } else {
    for (int e = 0; e < kLanes; ++e) {
      const int tap = q * kLanes + e;
      v[e] = tap < s.K ? row[static_cast<int64_t>(tap) * s.d] : 0.0f;
    }
  }
  return valid ? v : 0.0f;
}

template <bool Fast>
inline void add_window_row(float* row, int q, const Geometry& s, vf v) {
  if (Fast || s.d == 1) {
    store(row + q * kLanes, load(row + q * kLanes) + v);  // masked lanes of v are 0: the spare columns stay 0
  } else {
    for (int e = 0; e < kLanes && q * kLanes + e < s.K; ++e) row[static_cast<int64_t>(q * kLanes + e) * s.d] += v[e];
  }
}

// The exponentials exp(l_k − max l) of a pixel's logits into `dense`; returns 1 / their sum. On the taps
// in memory order (81 taps: 6 vectors, against 9 window-row vectors). `last`: the pixel's whole-vector
// loads would read past the tensor's end, so they read a copy.
template <typename T>
inline float exponentials(const T* logits, bool last, const Geometry& s, Scratch& sc, float* dense) {
  const int KK = s.K * s.K, V = (KK + kLanes - 1) / kLanes;
  if (last) {
    T* copy = reinterpret_cast<T*>(sc.copy.data());  // (sc.copy is not in use while exponentials run)
    std::memcpy(copy, logits, sizeof(T) * KK);
    logits = copy;
  }
  const vf minus_inf = vf{} - std::numeric_limits<float>::infinity();
  vf m = minus_inf, m2 = minus_inf;  // two running maxima: half the dependency chain
  for (int v = 0; v < V; ++v) {
    vf x = load(logits + v * kLanes);
    if (v == V - 1) x = sc.tail ? x : minus_inf;
    store(dense + v * kLanes, x);
    if (v % 2) m2 = m2 > x ? m2 : x;
    else m = m > x ? m : x;
  }
  m = m > m2 ? m : m2;
  const float top = hmax(m);
  vf sum = {};
  for (int v = 0; v < V; ++v) {
    vf e = exp_nonpositive(load(dense + v * kLanes) - top);
    if (v == V - 1) e = sc.tail ? e : 0.0f;  // the lanes past K*K
    sum += e;
    store(dense + v * kLanes, e);
  }
  return 1.0f / hsum(sum);
}

// Vector q of window row a of a pixel's `dense` taps (an unaligned reload), zero in the masked lanes.
inline vf dense_row(const float* dense, const Scratch& sc, int K, int a, int q) {
  return sc.valid[q] ? load(dense + a * K + q * kLanes) : 0.0f;
}

// Copy of xp (B, C, Hp, Wp) with row stride s.S, the spare columns zero.
std::vector<float> spare_columns(const float* xp, const Geometry& s) {
  std::vector<float> out(s.B * s.C * s.Hp * s.S, 0.0f);
  for (int64_t r = 0; r < s.B * s.C * s.Hp; ++r) std::memcpy(out.data() + r * s.S, xp + r * s.Wp, sizeof(float) * s.Wp);
  return out;
}

template <bool Fast, typename T>
void forward_impl(const float* xs, const T* logits, float* out, const Geometry& s) {
  const int K = s.K, R = Fast ? 1 : s.R, d = Fast ? 1 : s.d;
  const int64_t KK = K * K, end = s.B * s.G * s.H * s.W * KK;
  const int64_t dense_end = (KK + kLanes - 1) / kLanes * kLanes;  // a pixel's whole-vector loads
#pragma omp parallel num_threads(s.threads)
  {
    Scratch sc(s);
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < s.B * s.H; ++r) {
      const int64_t b = r / s.H, i = r % s.H;
      for (int64_t g = 0; g < s.G; ++g) {
        const int64_t c0 = s.per_channel ? g : 0, c1 = s.per_channel ? g + 1 : s.C;
        for (int64_t j0 = 0; j0 < s.W; j0 += kBlock) {
          const int n = static_cast<int>(std::min<int64_t>(kBlock, s.W - j0));
          const int64_t at0 = (((b * s.G + g) * s.H + i) * s.W + j0) * KK;
          for (int jj = 0; jj < n; ++jj) {
            const int64_t at = at0 + jj * KK;
            sc.inv[jj] = exponentials(logits + at, at + dense_end > end, s, sc, sc.dense.data() + jj * sc.stride);
          }
          for (int jj = 0; jj < n; ++jj) {
            const float* dense = sc.dense.data() + jj * sc.stride;
            for (int64_t c = c0; c < c1; ++c) {
              const float* corner = xs + ((b * s.C + c) * s.Hp + i) * s.S + j0 + jj;  // the window's tap (0, 0)
              vf acc[2] = {};  // two accumulators: half the chain of dependent FMAs
              for (int a = 0; a < K; ++a)
                for (int q = 0; q < R; ++q)
                  acc[a % 2] += dense_row(dense, sc, K, a, q) * window_row<Fast>(corner + a * d * s.S, q, s, sc.valid[q]);
              out[((b * s.C + c) * s.H + i) * s.W + j0 + jj] = hsum(acc[0] + acc[1]) * sc.inv[jj];
            }
          }
        }
      }
    }
  }
}

template <bool Fast, typename T>
void backward_impl(const float* grad_out, const float* xs, const T* logits, float* grad_xs, T* grad_l,
                   const Geometry& s) {
  const int K = s.K, R = Fast ? 1 : s.R, d = Fast ? 1 : s.d;
  const int64_t KK = K * K, V = (KK + kLanes - 1) / kLanes, end = s.B * s.G * s.H * s.W * KK;
  const int64_t dense_end = V * kLanes;  // a pixel's whole-vector loads and stores
  const int64_t p = static_cast<int64_t>(d) * (K / 2);
  const int64_t band = std::max<int64_t>(2 * p, 4);  // rows per band: ≥ 2p keeps same-parity bands apart
  const int64_t bands = (s.H + band - 1) / band;
  for (int64_t parity = 0; parity < 2; ++parity) {
    const int64_t per_sample = (bands - parity + 1) / 2;  // bands of this parity in one sample
#pragma omp parallel num_threads(s.threads)
    {
      Scratch sc(s);
      std::vector<float> g(s.C);
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < s.B * per_sample; ++u) {
        const int64_t b = u / per_sample, first = (2 * (u % per_sample) + parity) * band;
        for (int64_t i = first; i < std::min(first + band, s.H); ++i) {
          for (int64_t gr = 0; gr < s.G; ++gr) {
            const int64_t c0 = s.per_channel ? gr : 0, c1 = s.per_channel ? gr + 1 : s.C;
            for (int64_t j0 = 0; j0 < s.W; j0 += kBlock) {
              const int n = static_cast<int>(std::min<int64_t>(kBlock, s.W - j0));
              const int64_t at0 = (((b * s.G + gr) * s.H + i) * s.W + j0) * KK;
              for (int jj = 0; jj < n; ++jj) {
                const int64_t at = at0 + jj * KK;
                sc.inv[jj] = exponentials(logits + at, at + dense_end > end, s, sc, sc.dense.data() + jj * sc.stride);
              }
              for (int jj = 0; jj < n; ++jj) {
                const int64_t j = j0 + jj, at = at0 + jj * KK;
                const float* dense = sc.dense.data() + jj * sc.stride;
                const float inv = sc.inv[jj];
                for (int64_t c = c0; c < c1; ++c) g[c] = grad_out[((b * s.C + c) * s.H + i) * s.W + j];
                vf wt[2] = {};
                for (int a = 0; a < K; ++a) {
                  const int64_t row = ((b * s.C) * s.Hp + i + static_cast<int64_t>(a) * d) * s.S + j;  // channel 0
                  for (int q = 0; q < R; ++q) {
                    const vf w = dense_row(dense, sc, K, a, q) * inv;
                    if (grad_l) {  // t_k = Σ_c g_c window_k(x)_c, row by row; Σ_k w_k t_k
                      vf t = {};
                      for (int64_t c = c0; c < c1; ++c)
                        t += g[c] * window_row<Fast>(xs + row + c * s.Hp * s.S, q, s, sc.valid[q]);
                      wt[a % 2] += w * t;
                      store(sc.rows.data() + a * K + q * kLanes, t);  // later rows overwrite the masked lanes
                    }
                    if (grad_xs)
                      for (int64_t c = c0; c < c1; ++c)
                        add_window_row<Fast>(grad_xs + row + c * s.Hp * s.S, q, s, w * g[c]);
                  }
                }
                if (grad_l) {  // w_k (t_k − Σ w t), dense. Past K*K the stores spill into the next pixel, rewritten
                               // when that one comes (same thread, same row); at a row's end through a copy.
                  const float total = hsum(wt[0] + wt[1]);
                  const bool inside = (j * KK + dense_end) <= s.W * KK;
                  T* dst = inside ? grad_l + at : reinterpret_cast<T*>(sc.copy.data());
                  for (int v = 0; v < V; ++v)
                    store(dst + v * kLanes, load(dense + v * kLanes) * inv * (load(sc.rows.data() + v * kLanes) - total));
                  if (!inside) std::memcpy(grad_l + at, dst, sizeof(T) * KK);
                }
              }
            }
          }
        }
      }
    }
  }
}

template <typename T>
void forward_typed(const float* xs, const T* logits, float* out, const Geometry& s) {
  if (s.d == 1 && s.R == 1) forward_impl<true>(xs, logits, out, s);
  else forward_impl<false>(xs, logits, out, s);
}

template <typename T>
void backward_typed(const float* grad_out, const float* xs, const T* logits, float* grad_xs, T* grad_l,
                    const Geometry& s) {
  if (s.d == 1 && s.R == 1) backward_impl<true>(grad_out, xs, logits, grad_xs, grad_l, s);
  else backward_impl<false>(grad_out, xs, logits, grad_xs, grad_l, s);
}

Geometry geometry(int64_t B, int64_t C, int64_t G, int64_t H, int64_t W, int64_t K, int64_t d, int threads) {
  const int64_t p = d * (K / 2), R = (K + kLanes - 1) / kLanes;
  Geometry s{B, C, G, H, W, H + 2 * p, W + 2 * p, static_cast<int>(K), static_cast<int>(d), static_cast<int>(R),
             W + 2 * p + kLanes * R, G == C && C > 1, std::max(threads, 1)};
  return s;
}

}  // namespace

// Shapes: see the top of this file; `bf16`: the logits (and their gradient) are bfloat16, else float32.
// The caller guarantees contiguous tensors of those shapes, K odd, d >= 1, G in {1, C}.
extern "C" void dfn_softmax_local_filter_forward(const float* xp, const void* logits, int bf16, float* out,
                                                 int64_t B, int64_t C, int64_t G, int64_t H, int64_t W,
                                                 int64_t K, int64_t d, int threads) {
  const Geometry s = geometry(B, C, G, H, W, K, d, threads);
  const std::vector<float> xs = spare_columns(xp, s);
  if (bf16) forward_typed(xs.data(), static_cast<const uint16_t*>(logits), out, s);
  else forward_typed(xs.data(), static_cast<const float*>(logits), out, s);
}

// grad_xp (B, C, Hp, Wp) and grad_logits (like the logits) are written when not null.
extern "C" void dfn_softmax_local_filter_backward(const float* grad_out, const float* xp, const void* logits, int bf16,
                                                  float* grad_xp, void* grad_logits, int64_t B, int64_t C,
                                                  int64_t G, int64_t H, int64_t W, int64_t K, int64_t d,
                                                  int threads) {
  const Geometry s = geometry(B, C, G, H, W, K, d, threads);
  const std::vector<float> xs = spare_columns(xp, s);
  std::vector<float> gxs(grad_xp ? xs.size() : 0, 0.0f);
  float* gx = grad_xp ? gxs.data() : nullptr;
  if (bf16)
    backward_typed(grad_out, xs.data(), static_cast<const uint16_t*>(logits), gx, static_cast<uint16_t*>(grad_logits), s);
  else
    backward_typed(grad_out, xs.data(), static_cast<const float*>(logits), gx, static_cast<float*>(grad_logits), s);
  if (grad_xp)
    for (int64_t r = 0; r < s.B * s.C * s.Hp; ++r) std::memcpy(grad_xp + r * s.Wp, gx + r * s.S, sizeof(float) * s.Wp);
}
