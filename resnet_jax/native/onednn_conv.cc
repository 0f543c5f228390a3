// XLA FFI handlers running 2-D NHWC/HWIO float32 convolutions on oneDNN (CPU):
// the forward pass, the input gradient and the weight gradient. Called from
// resnet_jax/models/onednn_conv.py through jax.ffi; built by resnet_jax/native/build.py.
//
// Each handler takes the strides and paddings as attributes, reads every size from its
// buffers and checks that they agree (a mismatch is an FFI error, never a write out of
// bounds). Primitives are built once per shape and kept in a cache of the most recently
// used kCacheShapes shapes (a mutex guards it; a primitive in use outlives its eviction);
// every primitive runs in strict float32 math, whatever ONEDNN_DEFAULT_FPMATH_MODE says,
// with a scratchpad of its own; each call wraps XLA's buffers without copying and
// reorders the HWIO weights to and from the layout oneDNN chose for the shape (with plain
// HWIO weights oneDNN falls back to a path several times slower).

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <tuple>
#include <unordered_map>

#include "onednn_common.h"

namespace ffi = xla::ffi;

namespace {

using namespace resnet_jax_native;  // NOLINT: the shared helpers of onednn_common.h.
using Tag = memory::format_tag;

constexpr size_t kCacheShapes = 64;  // Convolution shapes kept (a ResNet has under 20).

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, plh, phh, plw, phw;
  auto Key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, sh, sw, plh, phh, plw, phw);
  }
  memory::desc Src() const { return {{n, c, h, w}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, oh, ow}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc HWIO() const { return {{o, c, kh, kw}, memory::data_type::f32, Tag::hwio}; }
  memory::desc AnyWeights() const {
    return {{o, c, kh, kw}, memory::data_type::f32, Tag::any};
  }
};

dnnl::reorder::primitive_desc ReorderDesc(const memory::desc& from, const memory::desc& to) {
  return dnnl::reorder::primitive_desc(Engine(), from, Engine(), to, Attributes());
}

// The primitives of one convolution shape: its forward pass and both gradients, with the
// reorders between HWIO and the layouts they chose.
struct Conv {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
  dnnl::reorder::primitive_desc to_fwd_pd, to_data_pd, from_diff_pd;
  dnnl::reorder to_fwd_weights, to_data_weights, from_diff_weights;
  bool fwd_plain, data_plain, diff_plain;

  explicit Conv(const Geometry& g) {
    dnnl::primitive_attr attr = Attributes();
    memory::dims strides = {g.sh, g.sw}, left = {g.plh, g.plw}, right = {g.phh, g.phw};
    auto& eng = Engine();
    fwd_pd = dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
        g.Src(), g.AnyWeights(), g.Dst(), strides, left, right, attr);
    data_pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        strides, left, right, fwd_pd, attr);
    weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        strides, left, right, fwd_pd, attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    data = dnnl::convolution_backward_data(data_pd);
    weights = dnnl::convolution_backward_weights(weights_pd);
    auto hwio = g.HWIO();
    fwd_plain = fwd_pd.weights_desc() == hwio;
    data_plain = data_pd.weights_desc() == hwio;
    diff_plain = weights_pd.diff_weights_desc() == hwio;
    if (!fwd_plain) {
      to_fwd_pd = ReorderDesc(hwio, fwd_pd.weights_desc());
      to_fwd_weights = dnnl::reorder(to_fwd_pd);
    }
    if (!data_plain) {
      to_data_pd = ReorderDesc(hwio, data_pd.weights_desc());
      to_data_weights = dnnl::reorder(to_data_pd);
    }
    if (!diff_plain) {
      from_diff_pd = ReorderDesc(weights_pd.diff_weights_desc(), hwio);
      from_diff_weights = dnnl::reorder(from_diff_pd);
    }
  }
};

using Key = decltype(Geometry().Key());

LruCache<Key, Conv>& TheCache() {
  static LruCache<Key, Conv> cache(kCacheShapes);
  return cache;
}

// The primitives of `g`'s shape (built on first use, kept while among the kCacheShapes
// most recently used shapes).
std::shared_ptr<Conv> Cached(const Geometry& g) {
  return TheCache().Get(g.Key(), [&] { return Conv(g); });
}

ffi::Error Bad(const std::string& why) { return Invalid("onednn_conv", why); }

// The geometry of input `x`, kernel `w` and output `y` (NHWC, HWIO, NHWC) with the
// attributes, after checking every dimension against the others: oneDNN reads and writes
// the buffers by these sizes, so any disagreement must stop the call.
ffi::Error Make(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t plh,
                int64_t phh, int64_t plw, int64_t phw, Geometry* g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return Bad("input, kernel and output must be 4-D (NHWC, HWIO, NHWC)");
  for (auto d : {x[0], x[1], x[2], x[3], w[0], w[1], w[2], w[3]})
    if (d < 1) return Bad("every input and kernel dimension must be positive");
  if (sh < 1 || sw < 1 || plh < 0 || phh < 0 || plw < 0 || phw < 0)
    return Bad("strides must be positive and paddings non-negative");
  if (w[2] != x[3]) return Bad("the kernel's input channels differ from the input's");
  int64_t oh = (x[1] + plh + phh - w[0]) / sh + 1, ow = (x[2] + plw + phw - w[1]) / sw + 1;
  if (x[1] + plh + phh < w[0] || x[2] + plw + phw < w[1])
    return Bad("the kernel is larger than the padded input");
  if (y[0] != x[0] || y[1] != oh || y[2] != ow || y[3] != w[3])
    return Bad("the output's shape is not the convolution's");
  *g = Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], oh, ow, sh, sw, plh, phh, plw, phw};
  return ffi::Error::Success();
}

// Runs `reorder` (of descriptor `pd`) from `from` into `to`, with its scratchpad.
void Reorder(dnnl::stream& stream, const dnnl::reorder& reorder,
             const dnnl::reorder::primitive_desc& pd, memory& from, memory& to) {
  reorder.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                           {DNNL_ARG_SCRATCHPAD, Owned(pd.scratchpad_desc())}});
}

// Runs `primitive` on `args` with the HWIO weights `w`, reordered by `to_layout` into
// `layout` unless the primitive takes HWIO (`plain`), and a scratchpad of its own.
void RunWithWeights(const dnnl::primitive& primitive, const dnnl::reorder& to_layout,
                    const dnnl::reorder::primitive_desc& to_layout_pd, bool plain,
                    const memory::desc& layout, const memory::desc& scratchpad,
                    const Geometry& g, const float* w,
                    std::unordered_map<int, memory> args) {
  dnnl::stream stream(Engine());
  memory weights = Wrap(g.HWIO(), w);
  if (!plain) {
    memory ordered = Owned(layout);
    Reorder(stream, to_layout, to_layout_pd, weights, ordered);
    weights = ordered;
  }
  args[DNNL_ARG_WEIGHTS] = weights;
  args[DNNL_ARG_SCRATCHPAD] = Owned(scratchpad);
  primitive.execute(stream, args);
  stream.wait();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t plh,
                       int64_t phh, int64_t plw, int64_t phw) {
  Geometry g;
  if (auto e = Make(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, plh, phh,
                    plw, phw, &g); e.failure()) return e;
  return Guarded("onednn_conv", [&] {
    auto held = Cached(g);
    Conv& conv = *held;
    RunWithWeights(conv.fwd, conv.to_fwd_weights, conv.to_fwd_pd, conv.fwd_plain,
                   conv.fwd_pd.weights_desc(), conv.fwd_pd.scratchpad_desc(), g,
                   w.typed_data(),
                   {{DNNL_ARG_SRC, Wrap(g.Src(), x.typed_data())},
                    {DNNL_ARG_DST, Wrap(g.Dst(), y->typed_data())}});
  });
}

ffi::Error InputGradImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw,
                         int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  Geometry g;
  if (auto e = Make(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, plh, phh,
                    plw, phw, &g); e.failure()) return e;
  return Guarded("onednn_conv", [&] {
    auto held = Cached(g);
    Conv& conv = *held;
    RunWithWeights(conv.data, conv.to_data_weights, conv.to_data_pd, conv.data_plain,
                   conv.data_pd.weights_desc(), conv.data_pd.scratchpad_desc(), g,
                   w.typed_data(),
                   {{DNNL_ARG_DIFF_DST, Wrap(g.Dst(), dy.typed_data())},
                    {DNNL_ARG_DIFF_SRC, Wrap(g.Src(), dx->typed_data())}});
  });
}

ffi::Error WeightGradImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                          int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  Geometry g;
  if (auto e = Make(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, plh, phh,
                    plw, phw, &g); e.failure()) return e;
  return Guarded("onednn_conv", [&] {
    auto held = Cached(g);
    Conv& conv = *held;
    dnnl::stream stream(Engine());
    memory out = Wrap(g.HWIO(), dw->typed_data());
    memory diff = conv.diff_plain ? out : Owned(conv.weights_pd.diff_weights_desc());
    memory scratch = Owned(conv.weights_pd.scratchpad_desc());
    conv.weights.execute(stream, {{DNNL_ARG_SRC, Wrap(g.Src(), x.typed_data())},
                                  {DNNL_ARG_DIFF_DST, Wrap(g.Dst(), dy.typed_data())},
                                  {DNNL_ARG_DIFF_WEIGHTS, diff},
                                  {DNNL_ARG_SCRATCHPAD, scratch}});
    if (!conv.diff_plain) Reorder(stream, conv.from_diff_weights, conv.from_diff_pd, diff, out);
    stream.wait();
  });
}

}  // namespace

// For the tests (through ctypes): the number of shapes cached, and the floating-point
// math mode of oneDNN's default attributes and of the primitives of a small convolution
// (dnnl_fpmath_mode_t: 0 is strict), the largest of its forward pass and gradients.
extern "C" int64_t OnednnConvCachedShapes() {
  return static_cast<int64_t>(TheCache().Size());
}

extern "C" int OnednnConvFpmathModes(int* default_mode, int* primitive_mode) {
  try {
    *default_mode = static_cast<int>(dnnl::primitive_attr().get_fpmath_mode());
    Conv conv(Geometry{1, 4, 4, 2, 3, 3, 2, 4, 4, 1, 1, 1, 1, 1, 1});
    int mode = 0;
    for (auto attr : {conv.fwd_pd.get_primitive_attr(), conv.data_pd.get_primitive_attr(),
                      conv.weights_pd.get_primitive_attr()})
      mode = std::max(mode, static_cast<int>(attr.get_fpmath_mode()));
    *primitive_mode = mode;
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

#define CONV_BINDING(first, second)                 \
  ffi::Ffi::Bind()                                  \
      .Arg<ffi::Buffer<ffi::F32>>()                 \
      .Arg<ffi::Buffer<ffi::F32>>()                 \
      .Ret<ffi::Buffer<ffi::F32>>()                 \
      .Attr<int64_t>("stride_h")                    \
      .Attr<int64_t>("stride_w")                    \
      .Attr<int64_t>("pad_low_h")                   \
      .Attr<int64_t>("pad_high_h")                  \
      .Attr<int64_t>("pad_low_w")                   \
      .Attr<int64_t>("pad_high_w")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, ForwardImpl, CONV_BINDING(x, w));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGrad, InputGradImpl, CONV_BINDING(dy, w));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvWeightGrad, WeightGradImpl, CONV_BINDING(x, dy));
