// XLA FFI handlers for the tail of a post-activation residual block on the CPU:
// out = relu(BatchNorm(x) + residual) in training (the batch's statistics), and its
// gradient, each in one call of two passes over the activations. oneDNN's batch
// normalization fuses the addition only on GPUs (fuse_norm_add_relu), so this is plain
// C++ on OpenMP's threads (oneDNN's own, libgomp), vectorised by the compiler for AVX2
// and for any x86-64 (chosen at load time). Called from resnet_jax/models/onednn_norm.py
// through jax.ffi; built by resnet_jax/native/build.py into the extension.
//
// NHWC float32 activations seen as M = N*H*W rows of C channels; per-channel float32
// scale, shift, mean and (biased) variance. Sums run in float32 over blocks of rows and in
// double across blocks and threads. The gradient reads the forward pass's output (where it
// is positive the ReLU passed its input) instead of keeping a mask.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RESNET_JAX_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RESNET_JAX_CLONES
#endif

constexpr int64_t kMinPeriod = 64;    // Floats per period at least (vector loops' length).
constexpr int64_t kBlockPeriods = 64;  // Periods summed in float32 before adding to doubles.

ffi::Error Bad(const std::string& why) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "norm_add_relu: " + why);
}

// The loops see the activations as one flat array in periods of p floats, p a multiple of
// the channels c (and of 8, for the vectors): a channel's values sit at j, j + c, ... of
// each period, and per-channel vectors are tiled to p.
int64_t Period(int64_t c) {
  int64_t p = c;
  while (p % 8 != 0 || p < kMinPeriod) p += c;
  return p;
}

std::vector<float> Tiled(const std::vector<float>& v, int64_t p) {
  std::vector<float> out(p);
  for (int64_t j = 0; j < p; ++j) out[j] = v[j % v.size()];
  return out;
}

// Adds x and x*x of the n floats at `x` (n from a period's start) into `sum` and `sq`
// (p each: per position of the period).
RESNET_JAX_CLONES
void Sums(const float* __restrict x, int64_t n, int64_t p, double* __restrict sum,
          double* __restrict sq, float* __restrict fsum, float* __restrict fsq) {
  for (int64_t block = 0; block < n; block += kBlockPeriods * p) {
    std::fill(fsum, fsum + p, 0.f);
    std::fill(fsq, fsq + p, 0.f);
    const int64_t stop = std::min(n, block + kBlockPeriods * p);
    int64_t k = block;
    for (; k + p <= stop; k += p)
      for (int64_t j = 0; j < p; ++j) {
        fsum[j] += x[k + j];
        fsq[j] += x[k + j] * x[k + j];
      }
    for (int64_t j = 0; k + j < stop; ++j) {
      fsum[j] += x[k + j];
      fsq[j] += x[k + j] * x[k + j];
    }
    for (int64_t j = 0; j < p; ++j) {
      sum[j] += fsum[j];
      sq[j] += fsq[j];
    }
  }
}

// out = max(0, x * a + b + residual) for the n floats from a period's start.
RESNET_JAX_CLONES
void Normalize(const float* __restrict x, const float* __restrict residual,
               const float* __restrict a, const float* __restrict b, int64_t n, int64_t p,
               float* __restrict out) {
  int64_t k = 0;
  for (; k + p <= n; k += p)
    for (int64_t j = 0; j < p; ++j)
      out[k + j] = std::max(0.f, x[k + j] * a[j] + b[j] + residual[k + j]);
  for (int64_t j = 0; k + j < n; ++j)
    out[k + j] = std::max(0.f, x[k + j] * a[j] + b[j] + residual[k + j]);
}

// g = dout where out > 0 (else 0): adds g and g * (x - mean) into `sg` and `sgx`.
RESNET_JAX_CLONES
void GradSums(const float* __restrict x, const float* __restrict out,
              const float* __restrict dout, const float* __restrict mean, int64_t n,
              int64_t p, double* __restrict sg, double* __restrict sgx, float* __restrict fg,
              float* __restrict fgx) {
  for (int64_t block = 0; block < n; block += kBlockPeriods * p) {
    std::fill(fg, fg + p, 0.f);
    std::fill(fgx, fgx + p, 0.f);
    const int64_t stop = std::min(n, block + kBlockPeriods * p);
    int64_t k = block;
    for (; k + p <= stop; k += p)
      for (int64_t j = 0; j < p; ++j) {
        const float d = dout[k + j], g = out[k + j] > 0.f ? d : 0.f;
        fg[j] += g;
        fgx[j] += g * (x[k + j] - mean[j]);
      }
    for (int64_t j = 0; k + j < stop; ++j) {
      const float d = dout[k + j], g = out[k + j] > 0.f ? d : 0.f;
      fg[j] += g;
      fgx[j] += g * (x[k + j] - mean[j]);
    }
    for (int64_t j = 0; j < p; ++j) {
      sg[j] += fg[j];
      sgx[j] += fgx[j];
    }
  }
}

// dres = g; dx = g * a + x * k1 + k0 for the n floats from a period's start.
RESNET_JAX_CLONES
void Grads(const float* __restrict x, const float* __restrict out,
           const float* __restrict dout, const float* __restrict a,
           const float* __restrict k1, const float* __restrict k0, int64_t n, int64_t p,
           float* __restrict dx, float* __restrict dres) {
  int64_t k = 0;
  for (; k + p <= n; k += p)
    for (int64_t j = 0; j < p; ++j) {
      const float d = dout[k + j], g = out[k + j] > 0.f ? d : 0.f;
      dres[k + j] = g;
      dx[k + j] = g * a[j] + x[k + j] * k1[j] + k0[j];
    }
  for (int64_t j = 0; k + j < n; ++j) {
    const float d = dout[k + j], g = out[k + j] > 0.f ? d : 0.f;
    dres[k + j] = g;
    dx[k + j] = g * a[j] + x[k + j] * k1[j] + k0[j];
  }
}

// Runs body(offset, n) on OpenMP's threads over `total` floats split at periods of p
// (a thread for every kBlockPeriods periods at most).
template <typename F>
void Split(int64_t total, int64_t p, F body) {
  const int64_t periods = total / p;
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(omp_get_max_threads(), periods / kBlockPeriods)));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t begin = periods * t / count * p;
    const int64_t end = t + 1 == count ? total : periods * (t + 1) / count * p;
    body(t, begin, end - begin);
  }
}

// Per-channel sums (c each) of the two per-position sums `sums(offset, n, first, second,
// scratch...)` adds over the activations.
template <typename F>
void ChannelSums(int64_t total, int64_t c, int64_t p, F sums, std::vector<double>* first,
                 std::vector<double>* second) {
  const int max_threads = omp_get_max_threads();
  std::vector<double> partial(2 * p * max_threads, 0.0);
  Split(total, p, [&](int t, int64_t offset, int64_t n) {
    std::vector<float> scratch(2 * p);
    sums(offset, n, partial.data() + 2 * p * t, partial.data() + 2 * p * t + p,
         scratch.data(), scratch.data() + p);
  });
  first->assign(c, 0.0);
  second->assign(c, 0.0);
  for (int t = 0; t < max_threads; ++t)
    for (int64_t j = 0; j < p; ++j) {
      (*first)[j % c] += partial[2 * p * t + j];
      (*second)[j % c] += partial[2 * p * t + p + j];
    }
}

// Checks every buffer against x's shape: `same` have x's shape, `channels` are per-channel.
ffi::Error Check(ffi::Span<const int64_t> x,
                 std::initializer_list<ffi::Span<const int64_t>> same,
                 std::initializer_list<ffi::Span<const int64_t>> channels, float epsilon) {
  if (x.size() != 4) return Bad("the activations must be 4-D (NHWC)");
  for (auto d : x)
    if (d < 1) return Bad("every dimension of the activations must be positive");
  if (!(epsilon > 0)) return Bad("epsilon must be positive");
  for (auto other : same)
    if (other.size() != 4 || !std::equal(x.begin(), x.end(), other.begin()))
      return Bad("the activations, the residual and their gradients must have one shape");
  for (auto other : channels)
    if (other.size() != 1 || other[0] != x[3])
      return Bad("scale, shift, mean and variance must have one value per channel");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> residual,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> mean,
                       ffi::ResultBuffer<ffi::F32> var, float epsilon) {
  if (auto e = Check(x.dimensions(), {residual.dimensions(), out->dimensions()},
                     {scale.dimensions(), shift.dimensions(), mean->dimensions(),
                      var->dimensions()}, epsilon); e.failure()) return e;
  auto d = x.dimensions();
  const int64_t c = d[3], rows = d[0] * d[1] * d[2], total = rows * c, p = Period(c);
  const float* xs = x.typed_data();
  std::vector<double> sum, sq;
  ChannelSums(total, c, p, [&](int64_t at, int64_t n, double* s1, double* s2, float* f1,
                               float* f2) { Sums(xs + at, n, p, s1, s2, f1, f2); },
              &sum, &sq);
  std::vector<float> a(c), b(c);
  for (int64_t j = 0; j < c; ++j) {
    double m = sum[j] / rows, v = std::max(0.0, sq[j] / rows - m * m);
    mean->typed_data()[j] = static_cast<float>(m);
    var->typed_data()[j] = static_cast<float>(v);
    double inv = 1.0 / std::sqrt(v + epsilon);
    a[j] = static_cast<float>(scale.typed_data()[j] * inv);
    b[j] = static_cast<float>(shift.typed_data()[j] - m * scale.typed_data()[j] * inv);
  }
  auto at = Tiled(a, p), bt = Tiled(b, p);
  Split(total, p, [&](int, int64_t offset, int64_t n) {
    Normalize(xs + offset, residual.typed_data() + offset, at.data(), bt.data(), n, p,
              out->typed_data() + offset);
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                        ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> dout,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                        ffi::ResultBuffer<ffi::F32> dshift,
                        ffi::ResultBuffer<ffi::F32> dresidual, float epsilon) {
  if (auto e = Check(x.dimensions(),
                     {out.dimensions(), dout.dimensions(), dx->dimensions(),
                      dresidual->dimensions()},
                     {scale.dimensions(), mean.dimensions(), var.dimensions(),
                      dscale->dimensions(), dshift->dimensions()}, epsilon); e.failure())
    return e;
  auto d = x.dimensions();
  const int64_t c = d[3], rows = d[0] * d[1] * d[2], total = rows * c, p = Period(c);
  const float *xs = x.typed_data(), *os = out.typed_data(), *ds = dout.typed_data();
  std::vector<float> mean_c(mean.typed_data(), mean.typed_data() + c);
  auto mt = Tiled(mean_c, p);
  std::vector<double> sg, sgx;
  ChannelSums(total, c, p, [&](int64_t at, int64_t n, double* s1, double* s2, float* f1,
                               float* f2) {
    GradSums(xs + at, os + at, ds + at, mt.data(), n, p, s1, s2, f1, f2);
  }, &sg, &sgx);
  std::vector<float> a(c), k1(c), k0(c);
  for (int64_t j = 0; j < c; ++j) {
    double inv = 1.0 / std::sqrt(static_cast<double>(var.typed_data()[j]) + epsilon);
    double aj = scale.typed_data()[j] * inv;
    double ds_scale = sgx[j] * inv;  // The sum of g * xhat.
    dshift->typed_data()[j] = static_cast<float>(sg[j]);
    dscale->typed_data()[j] = static_cast<float>(ds_scale);
    // dx = a * (g - sg / M - xhat * dscale / M), xhat = (x - mean) * inv.
    double slope = -aj * inv * ds_scale / rows;
    a[j] = static_cast<float>(aj);
    k1[j] = static_cast<float>(slope);
    k0[j] = static_cast<float>(-aj * sg[j] / rows - slope * mean_c[j]);
  }
  auto at = Tiled(a, p), k1t = Tiled(k1, p), k0t = Tiled(k0, p);
  Split(total, p, [&](int, int64_t offset, int64_t n) {
    Grads(xs + offset, os + offset, ds + offset, at.data(), k1t.data(), k0t.data(), n, p,
          dx->typed_data() + offset, dresidual->typed_data() + offset);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NormAddReluForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift
                                  .Arg<ffi::Buffer<ffi::F32>>()  // residual
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // variance
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(NormAddReluBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // variance
                                  .Arg<ffi::Buffer<ffi::F32>>()  // out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dout
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dshift
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dresidual
                                  .Attr<float>("epsilon"));
