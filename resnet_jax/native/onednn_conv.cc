// XLA FFI handlers running 2-D NHWC/HWIO float32 convolutions on oneDNN (CPU):
// the forward pass, the input gradient and the weight gradient. Called from
// resnet_jax/models/onednn_conv.py through jax.ffi; built by resnet_jax/native/build.py.
//
// Each handler takes the strides and paddings as attributes and reads every size from
// its buffers. Primitives are built once per shape and kept (a mutex guards the map);
// each call wraps XLA's buffers without copying, gives the primitive its own scratchpad,
// and reorders the HWIO weights to and from the layout oneDNN chose for the shape (with
// plain HWIO weights oneDNN falls back to a path several times slower).

#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

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

// The primitives of one convolution shape: its forward pass and both gradients, with the
// reorders between HWIO and the layouts they chose.
struct Conv {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
  dnnl::reorder to_fwd_weights, to_data_weights, from_diff_weights;
  bool fwd_plain, data_plain, diff_plain;

  explicit Conv(const Geometry& g) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
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
    if (!fwd_plain)
      to_fwd_weights = dnnl::reorder(dnnl::reorder::primitive_desc(
          eng, hwio, eng, fwd_pd.weights_desc()));
    if (!data_plain)
      to_data_weights = dnnl::reorder(dnnl::reorder::primitive_desc(
          eng, hwio, eng, data_pd.weights_desc()));
    if (!diff_plain)
      from_diff_weights = dnnl::reorder(dnnl::reorder::primitive_desc(
          eng, weights_pd.diff_weights_desc(), eng, hwio));
  }
};

Conv& Cached(const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.Key()), std::unique_ptr<Conv>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[g.Key()];
  if (!entry) entry = std::make_unique<Conv>(g);
  return *entry;
}

// Memory of `desc` owning its buffer (scratchpads and reordered weights).
memory Owned(const memory::desc& desc) { return memory(desc, Engine()); }

memory Wrap(const memory::desc& desc, const void* data) {
  return memory(desc, Engine(), const_cast<void*>(data));
}

Geometry Make(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
              ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t plh,
              int64_t phh, int64_t plw, int64_t phw) {
  return Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                  sh, sw, plh, phh, plw, phw};
}

ffi::Error Check(const Geometry& g, ffi::Span<const int64_t> w) {
  if (w[2] != g.c)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn_conv: the kernel's input channels differ from the input's");
  return ffi::Error::Success();
}

template <typename F>
ffi::Error Guarded(F body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// Runs `primitive` on `args` with the HWIO weights `w`, reordered by `to_layout` into
// `layout` unless the primitive takes HWIO (`plain`), and a scratchpad of its own.
void RunWithWeights(const dnnl::primitive& primitive, const dnnl::reorder& to_layout,
                    bool plain, const memory::desc& layout, const memory::desc& scratchpad,
                    const Geometry& g, const float* w,
                    std::unordered_map<int, memory> args) {
  dnnl::stream stream(Engine());
  memory weights = Wrap(g.HWIO(), w);
  if (!plain) {
    memory ordered = Owned(layout);
    to_layout.execute(stream, weights, ordered);
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
  Geometry g = Make(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, plh, phh,
                    plw, phw);
  if (auto e = Check(g, w.dimensions()); e.failure()) return e;
  return Guarded([&] {
    Conv& conv = Cached(g);
    RunWithWeights(conv.fwd, conv.to_fwd_weights, conv.fwd_plain,
                   conv.fwd_pd.weights_desc(), conv.fwd_pd.scratchpad_desc(), g,
                   w.typed_data(),
                   {{DNNL_ARG_SRC, Wrap(g.Src(), x.typed_data())},
                    {DNNL_ARG_DST, Wrap(g.Dst(), y->typed_data())}});
  });
}

ffi::Error InputGradImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw,
                         int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  Geometry g = Make(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, plh, phh,
                    plw, phw);
  if (auto e = Check(g, w.dimensions()); e.failure()) return e;
  return Guarded([&] {
    Conv& conv = Cached(g);
    RunWithWeights(conv.data, conv.to_data_weights, conv.data_plain,
                   conv.data_pd.weights_desc(), conv.data_pd.scratchpad_desc(), g,
                   w.typed_data(),
                   {{DNNL_ARG_DIFF_DST, Wrap(g.Dst(), dy.typed_data())},
                    {DNNL_ARG_DIFF_SRC, Wrap(g.Src(), dx->typed_data())}});
  });
}

ffi::Error WeightGradImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                          int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  Geometry g = Make(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, plh, phh,
                    plw, phw);
  if (auto e = Check(g, dw->dimensions()); e.failure()) return e;
  return Guarded([&] {
    Conv& conv = Cached(g);
    dnnl::stream stream(Engine());
    memory out = Wrap(g.HWIO(), dw->typed_data());
    memory diff = conv.diff_plain ? out : Owned(conv.weights_pd.diff_weights_desc());
    memory scratch = Owned(conv.weights_pd.scratchpad_desc());
    conv.weights.execute(stream, {{DNNL_ARG_SRC, Wrap(g.Src(), x.typed_data())},
                                  {DNNL_ARG_DIFF_DST, Wrap(g.Dst(), dy.typed_data())},
                                  {DNNL_ARG_DIFF_WEIGHTS, diff},
                                  {DNNL_ARG_SCRATCHPAD, scratch}});
    if (!conv.diff_plain) conv.from_diff_weights.execute(stream, diff, out);
    stream.wait();
  });
}

}  // namespace

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
