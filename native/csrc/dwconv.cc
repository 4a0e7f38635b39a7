// CPU kernels for y = depthwise_conv(act(x), w) (+ b) and its two gradients, for any kernel KH x KW, stride
// SH x SW and zero padding (top PT, left PL; bottom/right follow from the output shape); act is relu or the
// identity. MindSpore 2.8's CPU depthwise convolution runs 3-20x slower than PyTorch's; these kernels are
// loaded as MindSpore AOT custom ops (see ms_models/kernels.py), CPU only, float32.
//
// Layout: channels are processed LANES at a time in a channel-interleaved scratch, so the innermost loop is a
// fixed-width vector whatever the image size. The scratch holds the padded window that the output grid reads:
// rows -PT .. (HO - 1) * SH + KH - 1 - PT of the input (zeros outside it). The forward sum runs over kh, then
// kw, in ascending order, and the bias is added last, as PyTorch does.
//
// Every entry point takes the int32 tensor cfg = {SH, SW, PT, PL, RELU} as its last input.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace {
constexpr int64_t LANES = 8;

struct Geom {
  int64_t B, C, H, W, KH, KW, HO, WO, SH, SW, PT, PL;
  bool relu;
  Geom(const int64_t* x, const int64_t* w, const int64_t* y, const int32_t* cfg)
      : B(x[0]), C(x[1]), H(x[2]), W(x[3]), KH(w[2]), KW(w[3]), HO(y[2]), WO(y[3]), SH(cfg[0]), SW(cfg[1]),
        PT(cfg[2]), PL(cfg[3]), relu(cfg[4] != 0) {}
  int64_t HP() const { return (HO - 1) * SH + KH; }   // padded window read by the output grid
  int64_t WP() const { return (WO - 1) * SW + KW; }
  int64_t groups() const { return (C + LANES - 1) / LANES; }
  int64_t lanes(int64_t c0) const { return std::min(LANES, C - c0); }
};

// dst[(r * WP + q) * LANES + l] = act(x[b, c0 + l, r - PT, q - PL]), zero outside the image.
void gather_input(const float* x, const Geom& g, int64_t b, int64_t c0, bool relu, float* dst) {
  const int64_t HP = g.HP(), WP = g.WP();
  std::fill(dst, dst + HP * WP * LANES, 0.f);
  const int64_t r0 = std::max<int64_t>(0, g.PT), r1 = std::min(HP, g.H + g.PT);
  const int64_t q0 = std::max<int64_t>(0, g.PL), q1 = std::min(WP, g.W + g.PL);
  for (int64_t l = 0; l < g.lanes(c0); ++l) {
    const float* s = x + (b * g.C + c0 + l) * g.H * g.W;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = s + (r - g.PT) * g.W - g.PL;
      float* d = dst + r * WP * LANES + l;
      for (int64_t q = q0; q < q1; ++q) {
        const float v = row[q];
        d[q * LANES] = (relu && !(v > 0.f)) ? 0.f : v;
      }
    }
  }
}

// dst[(i * WO + j) * LANES + l] = src[b, c0 + l, i, j] for an output-shaped (HO, WO) tensor.
void gather_output(const float* src, const Geom& g, int64_t b, int64_t c0, float* dst) {
  const int64_t n = g.HO * g.WO;
  if (g.lanes(c0) < LANES) std::fill(dst, dst + n * LANES, 0.f);
  for (int64_t l = 0; l < g.lanes(c0); ++l) {
    const float* s = src + (b * g.C + c0 + l) * n;
    for (int64_t i = 0; i < n; ++i) dst[i * LANES + l] = s[i];
  }
}

// k[(kh * KW + kw) * LANES + l] = w[c0 + l, 0, kh, kw]
void gather_weights(const float* w, const Geom& g, int64_t c0, float* k) {
  const int64_t taps = g.KH * g.KW;
  std::fill(k, k + taps * LANES, 0.f);
  for (int64_t l = 0; l < g.lanes(c0); ++l)
    for (int64_t t = 0; t < taps; ++t) k[t * LANES + l] = w[(c0 + l) * taps + t];
}

// Below this many multiply-adds a call runs on one thread: waking a second one costs more than it saves, and
// next to MindSpore's own busy runtime threads (PyNative) a parallel region's barrier can wait for a time slice.
constexpr int64_t PARALLEL_WORK = int64_t(1) << 20;

// Runs body(b, c0) for every image and channel group, in parallel; each thread owns its scratch buffers.
template <class Scratch, class Body>
void for_each_block(const Geom& g, Body body) {
#pragma omp parallel if (g.B * g.C * g.HO * g.WO * g.KH * g.KW >= PARALLEL_WORK)
  {
    Scratch s(g);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t grp = 0; grp < g.groups(); ++grp) body(s, b, grp * LANES);
  }
}

// Stride-1-along-W forward, one (image, channel) plane at a time: the padded plane (act applied) is read by
// unit-stride rows, so the inner loop runs along an output row with no channel interleaving. Same summation
// order as the interleaved path (kh, then kw, ascending; bias last). Used for rows of at least
// PLANE_MIN_WIDTH outputs (measured, GhostNetV2 shapes at batch 16: 20-40 % faster from 28 columns up, up to
// 2x slower at 7 and 3, where the interleaved path's 8-channel vectors are full and the rows are not).
constexpr int64_t PLANE_MIN_WIDTH = 16;
void forward_planes(const float* x, const float* w, const float* bias, const Geom& g, float* y) {
  const int64_t HP = g.HP(), WP = g.WP(), taps = g.KH * g.KW;
#pragma omp parallel if (g.B * g.C * g.HO * g.WO * taps >= PARALLEL_WORK)
  {
    std::vector<float> pad(HP * WP);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < g.B * g.C; ++p) {
      const int64_t c = p % g.C;
      std::fill(pad.begin(), pad.end(), 0.f);
      const float* src = x + p * g.H * g.W;
      const int64_t r0 = std::max<int64_t>(0, g.PT), r1 = std::min(HP, g.H + g.PT);
      const int64_t q0 = std::max<int64_t>(0, g.PL), q1 = std::min(WP, g.W + g.PL);
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = src + (r - g.PT) * g.W - g.PL;
        float* d = pad.data() + r * WP;
        for (int64_t q = q0; q < q1; ++q) d[q] = (g.relu && !(row[q] > 0.f)) ? 0.f : row[q];
      }
      const float* wc = w + c * taps;
      float* out = y + p * g.HO * g.WO;
      for (int64_t i = 0; i < g.HO; ++i) {
        float* o = out + i * g.WO;
        std::fill(o, o + g.WO, 0.f);
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const float wk = wc[kh * g.KW + kw];
            const float* in = pad.data() + (i * g.SH + kh) * WP + kw;
#pragma omp simd
            for (int64_t j = 0; j < g.WO; ++j) o[j] += wk * in[j];
          }
        if (bias) {
          const float b = bias[c];
          for (int64_t j = 0; j < g.WO; ++j) o[j] += b;
        }
      }
    }
  }
}

struct Scratch {
  std::vector<float> pad, out, k;
  explicit Scratch(const Geom& g)
      : pad(g.HP() * g.WP() * LANES), out(g.HO * g.WO * LANES), k(g.KH * g.KW * LANES) {}
};
}  // namespace

extern "C" {
// inputs x (B,C,H,W), w (C,1,KH,KW)[, b (C)], cfg; output y (B,C,HO,WO)
int DwConv(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
           void* extra) {
  const bool has_bias = nparam == 5;
  const Geom g(shapes[0], shapes[1], shapes[nparam - 1], static_cast<const int32_t*>(params[nparam - 2]));
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* bias = has_bias ? static_cast<const float*>(params[2]) : nullptr;
  float* y = static_cast<float*>(params[nparam - 1]);
  if (g.SW == 1 && g.WO >= PLANE_MIN_WIDTH) {
    forward_planes(x, w, bias, g, y);
    return 0;
  }
  const int64_t WP = g.WP();
  for_each_block<Scratch>(g, [&](Scratch& s, int64_t b, int64_t c0) {
    gather_input(x, g, b, c0, g.relu, s.pad.data());
    gather_weights(w, g, c0, s.k.data());
    for (int64_t i = 0; i < g.HO; ++i)
      for (int64_t j = 0; j < g.WO; ++j) {
        float a[LANES] = {0.f};
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const float* p = s.pad.data() + ((i * g.SH + kh) * WP + j * g.SW + kw) * LANES;
            const float* kk = s.k.data() + (kh * g.KW + kw) * LANES;
#pragma omp simd
            for (int64_t l = 0; l < LANES; ++l) a[l] += kk[l] * p[l];
          }
        std::copy(a, a + LANES, s.out.data() + (i * g.WO + j) * LANES);
      }
    const int64_t n = g.HO * g.WO;
    for (int64_t l = 0; l < g.lanes(c0); ++l) {
      float* dst = y + (b * g.C + c0 + l) * n;
      if (bias) {
        const float bl = bias[c0 + l];
        for (int64_t i = 0; i < n; ++i) dst[i] = s.out[i * LANES + l] + bl;
      } else {
        for (int64_t i = 0; i < n; ++i) dst[i] = s.out[i * LANES + l];
      }
    }
  });
  return 0;
}

// inputs x, w, dy, cfg; output dx = act'(x) * conv_transpose(dy, w): each dy tap is scattered into the padded
// window, whose image part is then cropped out (input pixels that no window reads get zero).
int DwConvGradInput(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                    void* stream, void* extra) {
  const Geom g(shapes[0], shapes[1], shapes[2], static_cast<const int32_t*>(params[3]));
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dx = static_cast<float*>(params[4]);
  const int64_t HP = g.HP(), WP = g.WP();
  for_each_block<Scratch>(g, [&](Scratch& s, int64_t b, int64_t c0) {
    gather_output(dy, g, b, c0, s.out.data());
    gather_weights(w, g, c0, s.k.data());
    std::fill(s.pad.begin(), s.pad.end(), 0.f);
    for (int64_t i = 0; i < g.HO; ++i)
      for (int64_t j = 0; j < g.WO; ++j) {
        const float* d = s.out.data() + (i * g.WO + j) * LANES;
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            float* p = s.pad.data() + ((i * g.SH + kh) * WP + j * g.SW + kw) * LANES;
            const float* kk = s.k.data() + (kh * g.KW + kw) * LANES;
#pragma omp simd
            for (int64_t l = 0; l < LANES; ++l) p[l] += kk[l] * d[l];
          }
      }
    for (int64_t l = 0; l < g.lanes(c0); ++l) {
      const int64_t off = (b * g.C + c0 + l) * g.H * g.W;
      for (int64_t h = 0; h < g.H; ++h)
        for (int64_t v = 0; v < g.W; ++v) {
          const int64_t r = h + g.PT, q = v + g.PL;
          float grad = (r < HP && q < WP) ? s.pad[(r * WP + q) * LANES + l] : 0.f;
          if (g.relu && !(x[off + h * g.W + v] > 0.f)) grad = 0.f;
          dx[off + h * g.W + v] = grad;
        }
    }
  });
  return 0;
}

// inputs x, dy, w (for its shape), cfg; output dw[c, 0, kh, kw] = sum_{b,i,j} dy[b,c,i,j] * act(x)[b, c,
// i * SH + kh - PT, j * SW + kw - PL]. Partial sums per image run in parallel and are added in image order.
int DwConvGradWeight(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                     void* stream, void* extra) {
  const Geom g(shapes[0], shapes[2], shapes[1], static_cast<const int32_t*>(params[3]));
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  float* dw = static_cast<float*>(params[4]);
  const int64_t WP = g.WP(), taps = g.KH * g.KW;
  std::vector<float> part(g.B * g.groups() * taps * LANES);
  for_each_block<Scratch>(g, [&](Scratch& s, int64_t b, int64_t c0) {
    gather_input(x, g, b, c0, g.relu, s.pad.data());
    gather_output(dy, g, b, c0, s.out.data());
    float* acc = part.data() + (b * g.groups() + c0 / LANES) * taps * LANES;
    for (int64_t i = 0; i < g.HO; ++i)
      for (int64_t j = 0; j < g.WO; ++j) {
        const float* d = s.out.data() + (i * g.WO + j) * LANES;
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const float* p = s.pad.data() + ((i * g.SH + kh) * WP + j * g.SW + kw) * LANES;
            float* a = acc + (kh * g.KW + kw) * LANES;
#pragma omp simd
            for (int64_t l = 0; l < LANES; ++l) a[l] += d[l] * p[l];
          }
      }
  });
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      float sum = 0.f;
      for (int64_t b = 0; b < g.B; ++b)
        sum += part[((b * g.groups() + c / LANES) * taps + t) * LANES + c % LANES];
      dw[c * taps + t] = sum;
    }
  return 0;
}
}
