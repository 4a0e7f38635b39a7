// CPU kernels of AdderNet's adder layer (arXiv 1912.13200) on the im2col matrix, shared by both frameworks:
//   forward     y[n, o, l]  = -sum_k |x[n, k, l] - w[o, k]|
//   grad input  gx[n, k, l] = sum_o clamp(w[o, k] - x[n, k, l], -1, 1) * g[n, o, l]
// x is F.unfold's / ops.unfold's (N, K, L) output, w the (O, K) weight, y and g (N, O, L) = the layer's NCHW
// output. The weight gradient is a matmul and stays in the frameworks. Plain C entry points (adder_forward,
// adder_grad_input; torch, through ctypes) and MindSpore AOT custom-op ones (AdderForward, AdderGradInput).
// Work is split in tiles of LB positions of one image (OpenMP over tiles); in a tile the x panel is copied to a
// zero-padded scratch and the sums are register-blocked: OB output channels (forward) or KB input features
// (grad input) times LB positions of accumulators, so each loaded value feeds OB or KB vector operations.
// No working memory beyond the per-thread scratch (K*LB + O*LB floats).
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
constexpr int64_t SERIAL_WORK = 1 << 21;   // adder operations (positions x K x O)

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

void forward(const float* x, const float* w, float* y, int64_t N, int64_t K, int64_t L, int64_t O, int threads) {
  const std::vector<float> wp = pack(w, O, K, OB, false);
  const int64_t tiles = (L + LB - 1) / LB, nob = (O + OB - 1) / OB;
#pragma omp parallel num_threads(team_size(threads, N * L * K * O))
  {
    std::vector<float> xs(K * LB);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * tiles; ++t) {
      const int64_t n = t / tiles, l0 = t % tiles * LB, cnt = std::min(LB, L - l0);
      panel(x + n * K * L, K, K, L, l0, cnt, xs.data());
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

void grad_input(const float* x, const float* w, const float* g, float* gx, int64_t N, int64_t K, int64_t L,
                int64_t O, int threads) {
  const std::vector<float> wp = pack(w, O, K, KB, true);
  const int64_t tiles = (L + LB - 1) / LB, kp = round_up(K, KB);
#pragma omp parallel num_threads(team_size(threads, N * L * K * O))
  {
    std::vector<float> xs(kp * LB), gs(O * LB);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * tiles; ++t) {
      const int64_t n = t / tiles, l0 = t % tiles * LB, cnt = std::min(LB, L - l0);
      panel(x + n * K * L, K, kp, L, l0, cnt, xs.data());
      panel(g + n * O * L, O, O, L, l0, cnt, gs.data());
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
        for (int64_t i = 0; i < KB && k0 + i < K; ++i) {
          float out[LB];
          store(out, acc[i][0]);
          store(out + V, acc[i][1]);
          std::memcpy(gx + (n * K + k0 + i) * L + l0, out, cnt * sizeof(float));
        }
      }
    }
  }
}
}  // namespace

extern "C" {
// x (N, K, L), w (O, K) -> y (N, O, L); threads <= 0: OpenMP's default
void adder_forward(const float* x, const float* w, float* y, int64_t N, int64_t K, int64_t L, int64_t O,
                   int threads) {
  forward(x, w, y, N, K, L, O, threads);
}

// x (N, K, L), w (O, K), g (N, O, L) -> gx (N, K, L)
void adder_grad_input(const float* x, const float* w, const float* g, float* gx, int64_t N, int64_t K, int64_t L,
                      int64_t O, int threads) {
  grad_input(x, w, g, gx, N, K, L, O, threads);
}

// MindSpore AOT: inputs x (N, K, L), w (O, K); output y (N, O, L)
int AdderForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                 void* extra) {
  forward(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]), static_cast<float*>(params[2]),
          shapes[0][0], shapes[0][1], shapes[0][2], shapes[1][0], 0);
  return 0;
}

// MindSpore AOT: inputs x (N, K, L), w (O, K), g (N, O, L); output gx (N, K, L)
int AdderGradInput(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                   void* extra) {
  grad_input(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
             static_cast<const float*>(params[2]), static_cast<float*>(params[3]), shapes[0][0], shapes[0][1],
             shapes[0][2], shapes[1][0], 0);
  return 0;
}
}
