// CPU kernels for y = depthwise_conv_KxK(relu(x), w) (+ b), stride 1, zero padding K/2, and its gradients.
// MindSpore 2.8's CPU depthwise convolution runs 3-20x slower than PyTorch's; these kernels are loaded as
// MindSpore AOT custom ops (see ms_models/kernels.py), CPU only. Channels are processed LANES at a time in
// a channel-interleaved scratch, so the innermost loop is a fixed-width vector whatever the image size.
// The sum runs over kh, then kw, in ascending order, and the bias is added last, as PyTorch does.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace {
constexpr int64_t LANES = 8;

struct Geom {
  int64_t B, C, H, W, K, P, Hp, Wp;
  Geom(const int64_t* xs, int64_t k) : B(xs[0]), C(xs[1]), H(xs[2]), W(xs[3]), K(k), P(k / 2),
                                       Hp(xs[2] + 2 * (k / 2)), Wp(xs[3] + 2 * (k / 2)) {}
  int64_t groups() const { return (C + LANES - 1) / LANES; }
};

// Channels [c0, c0 + LANES) of image b into scratch[(h * Wp + w) * LANES + l], zero-padded by `pad`.
void gather(const float* src, const Geom& g, int64_t b, int64_t c0, int64_t pad, bool relu, float* dst) {
  const int64_t Wd = g.W + 2 * pad, Hd = g.H + 2 * pad;
  std::fill(dst, dst + Hd * Wd * LANES, 0.f);
  for (int64_t l = 0; l < LANES && c0 + l < g.C; ++l) {
    const float* s = src + (b * g.C + c0 + l) * g.H * g.W;
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w) {
        const float v = s[h * g.W + w];
        dst[((h + pad) * Wd + w + pad) * LANES + l] = (relu && !(v > 0.f)) ? 0.f : v;
      }
  }
}

// acc[(h * W + w) * LANES + l] = sum_{kh, kw} k[(kh * K + kw) * LANES + l] * pad[((h + kh) * Wp + w + kw) * LANES + l]
void correlate(const float* pad, const float* k, const Geom& g, float* acc) {
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t w = 0; w < g.W; ++w) {
      float a[LANES] = {0.f};
      for (int64_t kh = 0; kh < g.K; ++kh)
        for (int64_t kw = 0; kw < g.K; ++kw) {
          const float* p = pad + ((h + kh) * g.Wp + w + kw) * LANES;
          const float* kk = k + (kh * g.K + kw) * LANES;
#pragma omp simd
          for (int64_t l = 0; l < LANES; ++l) a[l] += kk[l] * p[l];
        }
      std::copy(a, a + LANES, acc + (h * g.W + w) * LANES);
    }
}

void lane_weights(const float* w, const Geom& g, int64_t c0, bool flip, float* k) {
  std::fill(k, k + g.K * g.K * LANES, 0.f);
  for (int64_t l = 0; l < LANES && c0 + l < g.C; ++l)
    for (int64_t i = 0; i < g.K * g.K; ++i)
      k[i * LANES + l] = w[(c0 + l) * g.K * g.K + (flip ? g.K * g.K - 1 - i : i)];
}

// out = conv(gather(src)) [+ bias] [* (mask > 0)], scattered back to NCHW.
void conv_pass(const float* src, const float* w, const float* bias, const float* mask, const Geom& g,
               bool relu, bool flip, float* out) {
#pragma omp parallel
  {
    std::vector<float> pad(g.Hp * g.Wp * LANES), k(g.K * g.K * LANES), acc(g.H * g.W * LANES);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t grp = 0; grp < g.groups(); ++grp) {
        const int64_t c0 = grp * LANES;
        gather(src, g, b, c0, g.P, relu, pad.data());
        lane_weights(w, g, c0, flip, k.data());
        correlate(pad.data(), k.data(), g, acc.data());
        for (int64_t l = 0; l < LANES && c0 + l < g.C; ++l) {
          const int64_t off = (b * g.C + c0 + l) * g.H * g.W;
          const float bl = bias ? bias[c0 + l] : 0.f;
          for (int64_t i = 0; i < g.H * g.W; ++i) {
            float v = acc[i * LANES + l];
            if (bias) v += bl;
            if (mask && !(mask[off + i] > 0.f)) v = 0.f;
            out[off + i] = v;
          }
        }
      }
  }
}
}  // namespace

extern "C" {
// inputs x (B,C,H,W), w (C,1,K,K)[, b (C)]; output y (B,C,H,W)
int ReluDwConv(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
               void* extra) {
  const bool has_bias = nparam == 4;
  const Geom g(shapes[0], shapes[1][2]);
  conv_pass(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
            has_bias ? static_cast<const float*>(params[2]) : nullptr, nullptr, g, true, false,
            static_cast<float*>(params[nparam - 1]));
  return 0;
}

// inputs x, w, dy; output dx = (x > 0) * conv(dy, flipped w)
int ReluDwConvGradInput(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                        void* stream, void* extra) {
  const Geom g(shapes[0], shapes[1][2]);
  conv_pass(static_cast<const float*>(params[2]), static_cast<const float*>(params[1]), nullptr,
            static_cast<const float*>(params[0]), g, false, true, static_cast<float*>(params[3]));
  return 0;
}

// inputs x, dy, w (for its shape); output dw[c, 0, kh, kw] = sum_{b,h,w} dy * relu(x)[h + kh - P, w + kw - P]
int ReluDwConvGradWeight(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                         void* stream, void* extra) {
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  float* dw = static_cast<float*>(params[3]);
  const Geom g(shapes[0], shapes[2][2]);
#pragma omp parallel
  {
    std::vector<float> pad(g.Hp * g.Wp * LANES), d(g.H * g.W * LANES), acc(g.K * g.K * LANES);
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < g.groups(); ++grp) {
      const int64_t c0 = grp * LANES;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t b = 0; b < g.B; ++b) {
        gather(x, g, b, c0, g.P, true, pad.data());
        gather(dy, g, b, c0, 0, false, d.data());
        for (int64_t h = 0; h < g.H; ++h)
          for (int64_t w = 0; w < g.W; ++w) {
            const float* dd = d.data() + (h * g.W + w) * LANES;
            for (int64_t kh = 0; kh < g.K; ++kh)
              for (int64_t kw = 0; kw < g.K; ++kw) {
                const float* p = pad.data() + ((h + kh) * g.Wp + w + kw) * LANES;
                float* a = acc.data() + (kh * g.K + kw) * LANES;
#pragma omp simd
                for (int64_t l = 0; l < LANES; ++l) a[l] += dd[l] * p[l];
              }
          }
      }
      for (int64_t l = 0; l < LANES && c0 + l < g.C; ++l)
        for (int64_t i = 0; i < g.K * g.K; ++i) dw[(c0 + l) * g.K * g.K + i] = acc[i * LANES + l];
    }
  }
  return 0;
}
}
