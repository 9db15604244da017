// oneDNN's convolutions as XLA:CPU custom calls (JAX's FFI): the forward pass and both gradients of an
// NHWC x HWIO float32 convolution, the kernels torch runs on the CPU. XLA:CPU's own convolutions ran 2-6x
// slower on a 2-core machine, its weight gradient most (benchmarks/NOTES.md). jaxcnn/onednn.py compiles
// this file at first use and wraps the three calls as JAX primitives with their derivative rules.
//
// Buffers stay in XLA's layouts: activations NHWC (oneDNN's `nhwc` tag), the kernel HWIO described by its
// strides. oneDNN picks its own blocked layout for the kernel (`any`) and the kernel is reordered into it,
// or out of it for the weight gradient, on each call. Primitives are built once per problem and kept.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

// One convolution: input [n, h, w, ci], kernel [kh, kw, ci / groups, co], output [n, oh, ow, co].
struct Problem {
  int64_t n, h, w, ci, kh, kw, co, oh, ow, sh, sw, pt, pb, pl, pr, groups;
  auto key() const { return std::make_tuple(n, h, w, ci, kh, kw, co, oh, ow, sh, sw, pt, pb, pl, pr, groups); }
  bool operator<(const Problem& other) const { return key() < other.key(); }
};

dnnl::engine& cpu() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc activations(int64_t n, int64_t c, int64_t h, int64_t w) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc);
}

// The kernel in oneDNN's logical order (groups first when grouped), either as XLA holds it (HWIO, described
// by strides) or in whatever layout the primitive prefers (`any`).
memory::desc kernel(const Problem& p, bool as_xla_holds_it) {
  const int64_t g = p.groups, ig = p.ci / g, og = p.co / g;
  memory::dims dims = g == 1 ? memory::dims{p.co, ig, p.kh, p.kw} : memory::dims{g, og, ig, p.kh, p.kw};
  if (!as_xla_holds_it) return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
  // Element (i, j, c, o) of the HWIO kernel sits at ((i * kw + j) * ig + c) * co + o; o = group * og + o'.
  memory::dims strides = g == 1 ? memory::dims{1, p.co, p.kw * ig * p.co, ig * p.co}
                                : memory::dims{og, 1, p.co, p.kw * ig * p.co, ig * p.co};
  return memory::desc(dims, memory::data_type::f32, strides);
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per call, so that concurrent calls share nothing
  return attr;
}

#if DNNL_VERSION_MAJOR >= 3
dnnl::convolution_forward::primitive_desc forward_pd(const Problem& p) {
  return {cpu(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          activations(p.n, p.ci, p.h, p.w), kernel(p, false), activations(p.n, p.co, p.oh, p.ow),
          {p.sh, p.sw}, {p.pt, p.pl}, {p.pb, p.pr}, user_scratchpad()};
}
dnnl::convolution_backward_data::primitive_desc backward_data_pd(const Problem& p) {
  return {cpu(), dnnl::algorithm::convolution_direct, activations(p.n, p.ci, p.h, p.w), kernel(p, false),
          activations(p.n, p.co, p.oh, p.ow), {p.sh, p.sw}, {p.pt, p.pl}, {p.pb, p.pr}, forward_pd(p),
          user_scratchpad()};
}
dnnl::convolution_backward_weights::primitive_desc backward_weights_pd(const Problem& p) {
  return {cpu(), dnnl::algorithm::convolution_direct, activations(p.n, p.ci, p.h, p.w), kernel(p, false),
          activations(p.n, p.co, p.oh, p.ow), {p.sh, p.sw}, {p.pt, p.pl}, {p.pb, p.pr}, forward_pd(p),
          user_scratchpad()};
}
#else  // oneDNN 2.x (Debian 12's libdnnl-dev 2.6): an operation descriptor first, then the primitive's
dnnl::convolution_forward::primitive_desc forward_pd(const Problem& p) {
  dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, activations(p.n, p.ci, p.h, p.w),
      kernel(p, false), activations(p.n, p.co, p.oh, p.ow), {p.sh, p.sw}, {p.pt, p.pl}, {p.pb, p.pr});
  return {desc, user_scratchpad(), cpu()};
}
dnnl::convolution_backward_data::primitive_desc backward_data_pd(const Problem& p) {
  dnnl::convolution_backward_data::desc desc(
      dnnl::algorithm::convolution_direct, activations(p.n, p.ci, p.h, p.w), kernel(p, false),
      activations(p.n, p.co, p.oh, p.ow), {p.sh, p.sw}, {p.pt, p.pl}, {p.pb, p.pr});
  return {desc, user_scratchpad(), cpu(), forward_pd(p)};
}
dnnl::convolution_backward_weights::primitive_desc backward_weights_pd(const Problem& p) {
  dnnl::convolution_backward_weights::desc desc(
      dnnl::algorithm::convolution_direct, activations(p.n, p.ci, p.h, p.w), kernel(p, false),
      activations(p.n, p.co, p.oh, p.ow), {p.sh, p.sw}, {p.pt, p.pl}, {p.pb, p.pr});
  return {desc, user_scratchpad(), cpu(), forward_pd(p)};
}
#endif

// A built primitive, its scratchpad size, and the reorder between XLA's kernel and the primitive's.
struct Built {
  dnnl::primitive primitive;
  memory::desc kernel_desc;   // the primitive's kernel layout
  size_t scratchpad_bytes;
  bool reorder;               // whether the primitive's kernel layout differs from HWIO
  dnnl::primitive kernel_reorder;
};

enum class Kind { kForward, kBackwardData, kBackwardWeights };

template <typename PrimitiveDesc, typename Primitive>
Built build(const PrimitiveDesc& pd, const memory::desc& kernel_desc, const Problem& p, bool into_xla) {
  Built built{Primitive(pd), kernel_desc, pd.scratchpad_desc().get_size(), kernel_desc != kernel(p, true), {}};
  if (built.reorder) {
    built.kernel_reorder = into_xla ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                          cpu(), kernel_desc, cpu(), kernel(p, true)))
                                    : dnnl::reorder(dnnl::reorder::primitive_desc(
                                          cpu(), kernel(p, true), cpu(), kernel_desc));
  }
  return built;
}

const Built& primitive_for(Kind kind, const Problem& p) {
  static std::mutex mutex;
  static std::map<std::pair<Kind, Problem>, std::unique_ptr<Built>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{kind, p}];
  if (!slot) {
    if (kind == Kind::kForward) {
      auto pd = forward_pd(p);
      slot = std::make_unique<Built>(
          build<decltype(pd), dnnl::convolution_forward>(pd, pd.weights_desc(), p, false));
    } else if (kind == Kind::kBackwardData) {
      auto pd = backward_data_pd(p);
      slot = std::make_unique<Built>(
          build<decltype(pd), dnnl::convolution_backward_data>(pd, pd.weights_desc(), p, false));
    } else {
      auto pd = backward_weights_pd(p);
      slot = std::make_unique<Built>(
          build<decltype(pd), dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc(), p, true));
    }
  }
  return *slot;
}

// Scratch memory of the calling thread, grown as needed: XLA may run several calls at once (one per device).
struct Scratch {
  std::vector<uint8_t> scratchpad, kernel;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}
void* grown(std::vector<uint8_t>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

Problem problem(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y, int64_t sh,
                int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr, groups};
}

ffi::Error run(Kind kind, const Problem& p, float* x, float* w, float* y) {
  // One call at a time, each with all of oneDNN's threads: XLA runs independent operations concurrently (a
  // layer's two gradients, the devices of a pmap), and two thread teams on the same cores undo each other.
  static std::mutex one_at_a_time;
  std::lock_guard<std::mutex> lock(one_at_a_time);
  try {
    const Built& built = primitive_for(kind, p);
    Scratch& s = scratch();
    dnnl::stream stream(cpu());
    memory xm(activations(p.n, p.ci, p.h, p.w), cpu(), x), ym(activations(p.n, p.co, p.oh, p.ow), cpu(), y);
    memory user_kernel(kernel(p, true), cpu(), w);
    memory kernel_memory = built.reorder
        ? memory(built.kernel_desc, cpu(), grown(s.kernel, built.kernel_desc.get_size()))
        : user_kernel;
    memory pad(dnnl::memory::desc({static_cast<int64_t>(built.scratchpad_bytes)}, memory::data_type::u8,
                                  memory::format_tag::a),
               cpu(), grown(s.scratchpad, built.scratchpad_bytes));
    if (kind != Kind::kBackwardWeights && built.reorder) {
      built.kernel_reorder.execute(stream, {{DNNL_ARG_FROM, user_kernel}, {DNNL_ARG_TO, kernel_memory}});
    }
    if (kind == Kind::kForward) {
      built.primitive.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, kernel_memory}, {DNNL_ARG_DST, ym},
                                       {DNNL_ARG_SCRATCHPAD, pad}});
    } else if (kind == Kind::kBackwardData) {
      built.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, xm}, {DNNL_ARG_WEIGHTS, kernel_memory},
                                       {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, pad}});
    } else {
      built.primitive.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_WEIGHTS, kernel_memory},
                                       {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, pad}});
      if (built.reorder) built.kernel_reorder.execute(stream, {{DNNL_ARG_FROM, kernel_memory}, {DNNL_ARG_TO, user_kernel}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t groups) {
  Problem p = problem(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr, groups);
  return run(Kind::kForward, p, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BackwardData(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  Problem p = problem(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, groups);
  return run(Kind::kBackwardData, p, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  Problem p = problem(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, groups);
  return run(Kind::kBackwardWeights, p, x.typed_data(), dw->typed_data(), dy.typed_data());
}

template <typename Binding>
auto with_attributes(Binding&& binding) {
  return std::move(binding)
      .template Attr<int64_t>("sh")
      .template Attr<int64_t>("sw")
      .template Attr<int64_t>("pt")
      .template Attr<int64_t>("pb")
      .template Attr<int64_t>("pl")
      .template Attr<int64_t>("pr")
      .template Attr<int64_t>("groups");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvForward, Forward,
                              with_attributes(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvBackwardData, BackwardData,
                              with_attributes(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvBackwardWeights, BackwardWeights,
                              with_attributes(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
