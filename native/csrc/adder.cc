// CPU kernels of AdderNet's adder layer (arXiv 1912.13200), shared by both frameworks. For an (N, C, H, W)
// image x, a kh x kw window (stride, zero padding) with rows k = (c, i, j), K = C * kh * kw, positions
// l = (ho, wo), L = Ho * Wo, and weights w (O, K):
//   forward     y[n, o, l]  = -sum_k |x[n, k, l] - w[o, k]|                    (y: the (N, O, Ho, Wo) output)
//   grad input  gx[n, c, h, w] = sum over windows of sum_o clamp(w[o, k] - x[n, k, l], -1, 1) * g[n, o, l]
// where x[n, k, l] is the im2col matrix, read straight from the image (no im2col buffer). The weight gradient
// stays in the frameworks (a convolution weight gradient or a matmul). Plain C entry points for torch
// (ctypes) and MindSpore AOT custom ops that take the (N, K, L) im2col matrix (a 1 x 1 window on it).
// Work is split in tiles of LB positions of one image; in a tile the x panel is gathered into a zero-padded
// scratch and the sums are register-blocked: OB output channels (forward) or KB rows (grad input) times LB
// positions of accumulators, so each loaded value feeds OB or KB vector operations. OpenMP runs over tiles
// (forward) or images (grad input, which adds into its image). No working memory beyond the per-thread
// scratch (K * LB + O * LB floats).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
typedef float vf __attribute__((vector_size(64)));     // 16 lanes (two AVX2 / one AVX-512 register)
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int64_t V = 16;
constexpr int64_t LB = 2 * V;   // positions per tile
constexpr int64_t OB = 8;       // output channels per forward register block
constexpr int64_t KB = 4;       // input features per grad-input register block

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vabs(vf d) { return (vf)((vi)d & 0x7fffffff); }
inline vf vclamp1(vf d) {
  const vf one = vf{} + 1.f, mone = vf{} - 1.f;
  d = d < mone ? mone : d;
  return d > one ? one : d;
}
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

struct Window {
  int64_t N, C, H, W, kh, kw, stride, pad, Ho, Wo;
  int64_t rows() const { return C * kh * kw; }
  int64_t positions() const { return Ho * Wo; }
};

// The (N, K, L) im2col matrix seen as an image with a 1 x 1 window (the MindSpore ops' input).
Window matrix_window(const int64_t* shape) { return {shape[0], shape[1], shape[2], 1, 1, 1, 1, 0, shape[2], 1}; }

// Visit the rows k and in-image tile positions jj of positions [l0, l0 + cnt): f(k, jj, pixel offset in image).
template <class F>
void for_window(const Window& g, int64_t l0, int64_t cnt, F f) {
  int64_t hb[LB], wb[LB];
  for (int64_t jj = 0; jj < cnt; ++jj) {
    hb[jj] = (l0 + jj) / g.Wo * g.stride - g.pad;
    wb[jj] = (l0 + jj) % g.Wo * g.stride - g.pad;
  }
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t k = (c * g.kh + i) * g.kw + j;
        for (int64_t jj = 0; jj < cnt; ++jj) {
          const int64_t h = hb[jj] + i, w = wb[jj] + j;
          if (h >= 0 && h < g.H && w >= 0 && w < g.W) f(k, jj, (c * g.H + h) * g.W + w);
        }
      }
}

// x panel of image img: dst[k * LB + jj] = x[k, l0 + jj], zero outside the image and for k >= K, jj >= cnt
void gather(const Window& g, const float* img, int64_t l0, int64_t cnt, int64_t rows_p, float* dst) {
  std::fill(dst, dst + rows_p * LB, 0.f);
  for_window(g, l0, cnt, [&](int64_t k, int64_t jj, int64_t px) { dst[k * LB + jj] = img[px]; });
}

// rows [0, rows) x positions [l0, l0 + cnt) of src (row stride L) into dst[r * LB + j], zero-padded to rows_p x LB
void panel(const float* src, int64_t rows, int64_t rows_p, int64_t L, int64_t l0, int64_t cnt, float* dst) {
  std::fill(dst, dst + rows_p * LB, 0.f);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * LB, src + r * L + l0, cnt * sizeof(float));
}

// w (O, K) -> wp[b][k][i] = w[b * BS + i, k] (blocks of BS rows along o, zero-padded) for BS = OB;
// with transpose, wp[b][o][i] = w[o, b * BS + i] (blocks along k) for BS = KB.
std::vector<float> pack(const float* w, int64_t O, int64_t K, int64_t bs, bool along_k) {
  const int64_t outer = along_k ? K : O, inner = along_k ? O : K;
  std::vector<float> wp(round_up(outer, bs) * inner, 0.f);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t a = along_k ? k : o, b = along_k ? o : k;
      wp[(a / bs * inner + b) * bs + a % bs] = w[o * K + k];
    }
  return wp;
}

// Small calls run on one thread (like torch's grain size): waking a team costs more than they take, and far
// more on a loaded machine, where a barrier waits for a descheduled thread.
constexpr int64_t SERIAL_WORK = 1 << 24;   // adder operations (positions x K x O): about 2 ms on one core

int team_size(int threads, int64_t work) {
#ifdef _OPENMP
  if (work < SERIAL_WORK) return 1;
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  (void)work;
  return 1;
#endif
}

void forward(const Window& g, const float* x, const float* w, float* y, int64_t O, int threads) {
  const int64_t K = g.rows(), L = g.positions();
  const std::vector<float> wp = pack(w, O, K, OB, false);
  const int64_t tiles = (L + LB - 1) / LB, nob = (O + OB - 1) / OB;
#pragma omp parallel num_threads(team_size(threads, g.N * L * K * O))
  {
    std::vector<float> xs(K * LB);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < g.N * tiles; ++t) {
      const int64_t n = t / tiles, l0 = t % tiles * LB, cnt = std::min(LB, L - l0);
      gather(g, x + n * g.C * g.H * g.W, l0, cnt, K, xs.data());
      for (int64_t b = 0; b < nob; ++b) {
        const float* wb = wp.data() + b * K * OB;
        vf acc[OB][2] = {};
        for (int64_t k = 0; k < K; ++k) {
          const vf x0 = load(xs.data() + k * LB), x1 = load(xs.data() + k * LB + V);
#pragma GCC unroll 8
          for (int64_t i = 0; i < OB; ++i) {
            const float wi = wb[k * OB + i];
            acc[i][0] += vabs(x0 - wi);
            acc[i][1] += vabs(x1 - wi);
          }
        }
        for (int64_t i = 0; i < OB && b * OB + i < O; ++i) {
          float out[LB];
          store(out, -acc[i][0]);
          store(out + V, -acc[i][1]);
          std::memcpy(y + (n * O + b * OB + i) * L + l0, out, cnt * sizeof(float));
        }
      }
    }
  }
}

void grad_input(const Window& g, const float* x, const float* w, const float* gy, float* gx, int64_t O,
                int threads) {
  const int64_t K = g.rows(), L = g.positions(), img = g.C * g.H * g.W;
  const std::vector<float> wp = pack(w, O, K, KB, true);
  const int64_t tiles = (L + LB - 1) / LB, kp = round_up(K, KB);
#pragma omp parallel num_threads(team_size(threads, g.N * L * K * O))
  {
    std::vector<float> xs(kp * LB), gs(O * LB), gc(kp * LB);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      float* gxn = gx + n * img;
      std::fill(gxn, gxn + img, 0.f);
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t l0 = t * LB, cnt = std::min(LB, L - l0);
        gather(g, x + n * img, l0, cnt, kp, xs.data());
        panel(gy + n * O * L, O, O, L, l0, cnt, gs.data());
        for (int64_t k0 = 0; k0 < K; k0 += KB) {
          const float* wb = wp.data() + k0 * O;
          vf xv[KB][2], acc[KB][2] = {};
          for (int64_t i = 0; i < KB; ++i) {
            xv[i][0] = load(xs.data() + (k0 + i) * LB);
            xv[i][1] = load(xs.data() + (k0 + i) * LB + V);
          }
          for (int64_t o = 0; o < O; ++o) {
            const vf g0 = load(gs.data() + o * LB), g1 = load(gs.data() + o * LB + V);
#pragma GCC unroll 4
            for (int64_t i = 0; i < KB; ++i) {
              const float wi = wb[o * KB + i];
              acc[i][0] += vclamp1(wi - xv[i][0]) * g0;
              acc[i][1] += vclamp1(wi - xv[i][1]) * g1;
            }
          }
          for (int64_t i = 0; i < KB; ++i) {
            store(gc.data() + (k0 + i) * LB, acc[i][0]);
            store(gc.data() + (k0 + i) * LB + V, acc[i][1]);
          }
        }
        for_window(g, l0, cnt, [&](int64_t k, int64_t jj, int64_t px) { gxn[px] += gc[k * LB + jj]; });
      }
    }
  }
}
}  // namespace

extern "C" {
// x (N, C, H, W), w (O, C * kh * kw) -> y (N, O, Ho * Wo); threads <= 0: OpenMP's default
void adder_forward(const float* x, const float* w, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh,
                   int64_t kw, int64_t stride, int64_t pad, int64_t Ho, int64_t Wo, int64_t O, int threads) {
  forward(Window{N, C, H, W, kh, kw, stride, pad, Ho, Wo}, x, w, y, O, threads);
}

// x, w as above, g (N, O, Ho * Wo) -> gx (N, C, H, W). Parallel over images.
void adder_grad_input(const float* x, const float* w, const float* g, float* gx, int64_t N, int64_t C, int64_t H,
                      int64_t W, int64_t kh, int64_t kw, int64_t stride, int64_t pad, int64_t Ho, int64_t Wo,
                      int64_t O, int threads) {
  grad_input(Window{N, C, H, W, kh, kw, stride, pad, Ho, Wo}, x, w, g, gx, O, threads);
}

// MindSpore AOT: inputs x (N, K, L), w (O, K); output y (N, O, L)
int AdderForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                 void* extra) {
  forward(matrix_window(shapes[0]), static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
          static_cast<float*>(params[2]), shapes[1][0], 0);
  return 0;
}

// MindSpore AOT: inputs x (N, K, L), w (O, K), g (N, O, L); output gx (N, K, L)
int AdderGradInput(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                   void* extra) {
  grad_input(matrix_window(shapes[0]), static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
             static_cast<const float*>(params[2]), static_cast<float*>(params[3]), shapes[1][0], 0);
  return 0;
}
}
