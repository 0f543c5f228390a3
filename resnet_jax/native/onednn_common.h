// What the extension's handlers share (onednn_conv.cc, onednn_norm.cc): oneDNN's CPU
// engine, the attributes every primitive runs with, memory that wraps XLA's buffers or
// owns its own, errors for XLA, and a bounded cache of primitives by shape.

#ifndef RESNET_JAX_NATIVE_ONEDNN_COMMON_H_
#define RESNET_JAX_NATIVE_ONEDNN_COMMON_H_

#include <exception>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace resnet_jax_native {

namespace ffi = xla::ffi;
using dnnl::memory;

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Every primitive's attributes: strict float32 math (oneDNN's default comes from the
// environment, where ONEDNN_DEFAULT_FPMATH_MODE=BF16 would allow bfloat16) and a
// scratchpad that the caller passes.
inline dnnl::primitive_attr Attributes() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  return attr;
}

// Memory of `desc` owning its buffer (scratchpads, reordered weights).
inline memory Owned(const memory::desc& desc) { return memory(desc, Engine()); }

// Memory of `desc` over a buffer of XLA's, without copying it.
inline memory Wrap(const memory::desc& desc, const void* data) {
  return memory(desc, Engine(), const_cast<void*>(data));
}

inline ffi::Error Invalid(const std::string& handler, const std::string& why) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, handler + ": " + why);
}

// Runs `body`, turning oneDNN's and any other exception into an error for XLA.
template <typename F>
ffi::Error Guarded(const std::string& handler, F body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, handler + ": " + e.what());
  }
  return ffi::Error::Success();
}

// The primitives of the `capacity` most recently used keys, built on first use (a mutex
// guards it; the caller's shared_ptr keeps a primitive alive past its eviction).
template <typename Key, typename Value>
class LruCache {
 public:
  explicit LruCache(size_t capacity) : capacity_(capacity) {}

  template <typename Make>
  std::shared_ptr<Value> Get(const Key& key, Make make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = entries_.find(key);
    if (found != entries_.end()) {
      order_.splice(order_.begin(), order_, found->second.second);
      return found->second.first;
    }
    auto value = std::make_shared<Value>(make());
    order_.push_front(key);
    entries_[key] = {value, order_.begin()};
    if (entries_.size() > capacity_) {
      entries_.erase(order_.back());
      order_.pop_back();
    }
    return value;
  }

  size_t Size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  size_t capacity_;
  std::mutex mutex_;
  std::list<Key> order_;  // Most recently used first.
  std::map<Key, std::pair<std::shared_ptr<Value>, typename std::list<Key>::iterator>> entries_;
};

}  // namespace resnet_jax_native

#endif  // RESNET_JAX_NATIVE_ONEDNN_COMMON_H_
