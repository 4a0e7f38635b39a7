// Elementwise erf(x) on float32, written to vectorise: Eigen's rational approximation
// (generic_fast_erf_float: an odd degree-13 numerator over an even degree-8 denominator in x, the input clamped
// to [-4, 4], where float32 erf is already +-1), |error| <= 6.5e-8 in exact arithmetic, a few float32 ulps as
// computed here. MindSpore 2.8's CPU Erf runs 5-10x slower than PyTorch's vectorised one and it is the core of
// the exact GELU of the transformers; this kernel is loaded as a MindSpore AOT custom op
// (ms_models/layers/kernels.py), CPU only, float32.
#include <algorithm>
#include <cstdint>

namespace {
inline float erf_approx(float v) {
  const float x = std::min(4.f, std::max(-4.f, v));
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

// Below this many elements a call runs on one thread (waking a second one costs more than it saves).
constexpr int64_t PARALLEL_WORK = int64_t(1) << 16;
}  // namespace

extern "C" {
// input x (any shape), output y of the same shape
int Erf(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream, void* extra) {
  int64_t n = 1;
  for (int d = 0; d < ndims[0]; ++d) n *= shapes[0][d];
  const float* x = static_cast<const float*>(params[0]);
  float* y = static_cast<float*>(params[1]);
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_WORK)
  for (int64_t i = 0; i < n; ++i) y[i] = erf_approx(x[i]);
  return 0;
}
}
