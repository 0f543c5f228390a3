// XLA FFI handlers running BatchNorm's training pass on oneDNN (CPU): the forward pass
// (the batch's statistics, normalisation, scale and shift, and optionally the ReLU after
// it, fused) and its gradient. Called from resnet_jax/models/onednn_norm.py through
// jax.ffi; built by resnet_jax/native/build.py with onednn_conv.cc.
//
// NHWC float32 activations, per-channel float32 scale, shift, mean and variance (the
// batch's, biased, as BatchNorm normalises with). With the ReLU fused, the forward pass
// writes a workspace (the ReLU's mask, in oneDNN's format: OnednnNormWorkspaceBytes gives
// its size) that the gradient reads. Every size is checked against the others before
// oneDNN sees a buffer; primitives are kept per shape as the convolutions' are.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <string>
#include <tuple>
#include <unordered_map>

#include "onednn_common.h"

namespace ffi = xla::ffi;

namespace {

using namespace resnet_jax_native;  // NOLINT: the shared helpers of onednn_common.h.

constexpr size_t kCacheShapes = 64;  // Shapes kept (a ResNet normalises under 20).

struct Shape {
  int64_t n, h, w, c;
  float epsilon;
  bool relu;
  auto Key() const {
    uint32_t bits;
    std::memcpy(&bits, &epsilon, sizeof bits);
    return std::make_tuple(n, h, w, c, bits, relu);
  }
  memory::desc Data() const {
    return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc};
  }
  memory::desc Channels() const {
    return {{c}, memory::data_type::f32, memory::format_tag::a};
  }
};

// The forward and backward primitives of one shape.
struct Norm {
  dnnl::batch_normalization_forward::primitive_desc fwd_pd;
  dnnl::batch_normalization_backward::primitive_desc bwd_pd;
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;

  explicit Norm(const Shape& s) {
    auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    if (s.relu) flags = flags | dnnl::normalization_flags::fuse_norm_relu;
    auto data = s.Data();
    fwd_pd = dnnl::batch_normalization_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, data, data, s.epsilon, flags,
        Attributes());
    bwd_pd = dnnl::batch_normalization_backward::primitive_desc(
        Engine(), dnnl::prop_kind::backward, data, data, data, s.epsilon, flags, fwd_pd,
        Attributes());
    fwd = dnnl::batch_normalization_forward(fwd_pd);
    bwd = dnnl::batch_normalization_backward(bwd_pd);
  }

  int64_t WorkspaceBytes() const {
    return static_cast<int64_t>(fwd_pd.workspace_desc().get_size());
  }
};

using Key = decltype(Shape().Key());

LruCache<Key, Norm>& TheCache() {
  static LruCache<Key, Norm> cache(kCacheShapes);
  return cache;
}

std::shared_ptr<Norm> Cached(const Shape& s) {
  return TheCache().Get(s.Key(), [&] { return Norm(s); });
}

ffi::Error Bad(const std::string& why) { return Invalid("onednn_norm", why); }

// The shape of activations `x` after checking every other buffer against it: `same` are
// activations of x's shape, `channels` per-channel vectors, `ws` the ReLU's workspace
// (empty without it).
ffi::Error Check(ffi::Span<const int64_t> x,
                 std::initializer_list<ffi::Span<const int64_t>> same,
                 std::initializer_list<ffi::Span<const int64_t>> channels,
                 ffi::Span<const int64_t> ws, float epsilon, bool relu, Shape* s) {
  if (x.size() != 4) return Bad("the activations must be 4-D (NHWC)");
  for (auto d : x)
    if (d < 1) return Bad("every dimension of the activations must be positive");
  if (!(epsilon > 0)) return Bad("epsilon must be positive");
  for (auto other : same)
    if (other.size() != 4 || !std::equal(x.begin(), x.end(), other.begin()))
      return Bad("the activations and their gradients must have one shape");
  for (auto other : channels)
    if (other.size() != 1 || other[0] != x[3])
      return Bad("scale, shift, mean and variance must have one value per channel");
  *s = Shape{x[0], x[1], x[2], x[3], epsilon, relu};
  int64_t want = 0;
  if (relu) {
    auto built = Guarded("onednn_norm", [&] { want = Cached(*s)->WorkspaceBytes(); });
    if (built.failure()) return built;
  }
  if (ws.size() != 1 || ws[0] != want)
    return Bad("the workspace must have " + std::to_string(want) + " bytes for this shape");
  return ffi::Error::Success();
}

// Runs `primitive` (of descriptor `pd`) on `args` with a scratchpad of its own and, where
// the ReLU is fused, the workspace `ws`.
void Execute(const dnnl::primitive& primitive, const dnnl::primitive_desc_base& pd,
             std::unordered_map<int, memory> args, bool relu, const void* ws) {
  args[DNNL_ARG_SCRATCHPAD] = Owned(pd.scratchpad_desc());
  if (relu) args[DNNL_ARG_WORKSPACE] = Wrap(pd.workspace_desc(), ws);
  dnnl::stream stream(Engine());
  primitive.execute(stream, args);
  stream.wait();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                       ffi::ResultBuffer<ffi::U8> ws, float epsilon, bool relu) {
  Shape s;
  if (auto e = Check(x.dimensions(), {y->dimensions()},
                     {scale.dimensions(), shift.dimensions(), mean->dimensions(),
                      var->dimensions()},
                     ws->dimensions(), epsilon, relu, &s); e.failure()) return e;
  return Guarded("onednn_norm", [&] {
    auto held = Cached(s);
    Norm& norm = *held;
    auto data = s.Data(), channels = s.Channels();
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, Wrap(data, x.typed_data())},
        {DNNL_ARG_DST, Wrap(data, y->typed_data())},
        {DNNL_ARG_SCALE, Wrap(channels, scale.typed_data())},
        {DNNL_ARG_SHIFT, Wrap(channels, shift.typed_data())},
        {DNNL_ARG_MEAN, Wrap(channels, mean->typed_data())},
        {DNNL_ARG_VARIANCE, Wrap(channels, var->typed_data())}};
    Execute(norm.fwd, norm.fwd_pd, args, relu, ws->typed_data());
  });
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                        ffi::Buffer<ffi::U8> ws, ffi::Buffer<ffi::F32> dy,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                        ffi::ResultBuffer<ffi::F32> dshift, float epsilon, bool relu) {
  Shape s;
  if (auto e = Check(x.dimensions(), {dy.dimensions(), dx->dimensions()},
                     {scale.dimensions(), mean.dimensions(), var.dimensions(),
                      dscale->dimensions(), dshift->dimensions()},
                     ws.dimensions(), epsilon, relu, &s); e.failure()) return e;
  return Guarded("onednn_norm", [&] {
    auto held = Cached(s);
    Norm& norm = *held;
    auto data = s.Data(), channels = s.Channels();
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, Wrap(data, x.typed_data())},
        {DNNL_ARG_DIFF_DST, Wrap(data, dy.typed_data())},
        {DNNL_ARG_SCALE, Wrap(channels, scale.typed_data())},
        {DNNL_ARG_MEAN, Wrap(channels, mean.typed_data())},
        {DNNL_ARG_VARIANCE, Wrap(channels, var.typed_data())},
        {DNNL_ARG_DIFF_SRC, Wrap(data, dx->typed_data())},
        {DNNL_ARG_DIFF_SCALE, Wrap(channels, dscale->typed_data())},
        {DNNL_ARG_DIFF_SHIFT, Wrap(channels, dshift->typed_data())}};
    Execute(norm.bwd, norm.bwd_pd, args, relu, ws.typed_data());
  });
}

}  // namespace

// The bytes of the ReLU's workspace for activations of this shape (0 without the ReLU),
// or -1 where oneDNN has no primitive for it. Read through ctypes when tracing the call.
extern "C" int64_t OnednnNormWorkspaceBytes(int64_t n, int64_t h, int64_t w, int64_t c,
                                            float epsilon, int relu) {
  if (!relu) return 0;
  try {
    return Cached(Shape{n, h, w, c, epsilon, true})->WorkspaceBytes();
  } catch (const std::exception&) {
    return -1;
  }
}

// For the tests: the floating-point math mode of a small shape's primitives (0: strict).
extern "C" int OnednnNormFpmathMode(int* mode) {
  try {
    Norm norm(Shape{2, 3, 3, 4, 1e-5f, true});
    *mode = std::max(static_cast<int>(norm.fwd_pd.get_primitive_attr().get_fpmath_mode()),
                     static_cast<int>(norm.bwd_pd.get_primitive_attr().get_fpmath_mode()));
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnNormForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // variance
                                  .Ret<ffi::Buffer<ffi::U8>>()   // the ReLU's workspace
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnNormBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // variance
                                  .Arg<ffi::Buffer<ffi::U8>>()   // the ReLU's workspace
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dshift
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));
