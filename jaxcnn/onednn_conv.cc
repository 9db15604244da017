// oneDNN's convolutions as XLA:CPU custom calls (JAX's FFI): the forward pass and both gradients of an
// NHWC x HWIO float32 convolution, the kernels torch runs on the CPU. XLA:CPU's own convolutions ran 2-6x
// slower on a 2-core machine, its weight gradient most (benchmarks/NOTES.md). jaxcnn/onednn.py compiles
// this file at first use and wraps the three calls as JAX primitives with their derivative rules.
//
// Buffers stay in XLA's layouts: activations NHWC (oneDNN's `nhwc` tag), the kernel HWIO described by its
// strides. oneDNN picks its own blocked layout for the kernel (`any`) and the kernel is reordered into it,
// or out of it for the weight gradient, on each call. Primitives are built once per problem and kept.

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <omp.h>

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
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // one buffer of ours for all, as calls take turns
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

enum class Kind { kForward, kBackwardData, kBackwardWeights };

// A built primitive with its memory objects, made once per problem; each call only points them at its buffers.
struct Built {
  Kind kind;
  dnnl::primitive primitive;
  memory x, y, user_kernel, kernel, scratchpad;  // kernel: in the primitive's layout (user_kernel's if `reorder`)
  bool reorder;                                  // whether the primitive's kernel layout differs from HWIO
  dnnl::primitive kernel_reorder;                // HWIO -> the primitive's, or back for the weight gradient
};

template <typename Primitive, typename PrimitiveDesc>
std::unique_ptr<Built> build(Kind kind, const PrimitiveDesc& pd, const memory::desc& kernel_desc, const Problem& p) {
  const memory::desc hwio = kernel(p, true);
  auto unbound = [](const memory::desc& desc) { return memory(desc, cpu(), DNNL_MEMORY_NONE); };
  auto built = std::make_unique<Built>(Built{
      kind, Primitive(pd), unbound(activations(p.n, p.ci, p.h, p.w)), unbound(activations(p.n, p.co, p.oh, p.ow)),
      unbound(hwio), unbound(kernel_desc), unbound(pd.scratchpad_desc()), kernel_desc != hwio, {}});
  if (built->reorder) {
    bool out = kind == Kind::kBackwardWeights;
    built->kernel_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(cpu(), out ? kernel_desc : hwio, cpu(),
                                                                         out ? hwio : kernel_desc));
  }
  return built;
}

// Problems below this many multiply-adds run on one thread: ~0.1 ms of work, about what it costs to wake
// oneDNN's other threads, which sleep through the XLA operations between calls. LeNet-5's step at batch 32 (all
// its convolutions 1.5-7.7M) went from 1.04x to 1.25-1.44x XLA's with it (benchmarks/NOTES.md).
constexpr int64_t kOneThreadMacs = 30'000'000;

int threads_for(const Problem& p) {
  static const int all = omp_get_max_threads();
  const int64_t macs = p.n * p.oh * p.ow * p.co * p.kh * p.kw * (p.ci / p.groups);
  return macs < kOneThreadMacs ? 1 : all;
}

Built& primitive_for(Kind kind, const Problem& p) {
  static std::map<std::pair<Kind, Problem>, std::unique_ptr<Built>> cache;
  auto& slot = cache[{kind, p}];
  omp_set_num_threads(threads_for(p));  // for the primitive built here and for each run of it
  if (!slot) {
    if (kind == Kind::kForward) {
      auto pd = forward_pd(p);
      slot = build<dnnl::convolution_forward>(kind, pd, pd.weights_desc(), p);
    } else if (kind == Kind::kBackwardData) {
      auto pd = backward_data_pd(p);
      slot = build<dnnl::convolution_backward_data>(kind, pd, pd.weights_desc(), p);
    } else {
      auto pd = backward_weights_pd(p);
      slot = build<dnnl::convolution_backward_weights>(kind, pd, pd.diff_weights_desc(), p);
    }
  }
  return *slot;
}

// The kernel in the primitive's layout and the scratchpad: one of each, grown as needed (calls take turns).
void* grown(std::vector<uint8_t>& buffer, size_t bytes) {
  if (buffer.size() < std::max<size_t>(bytes, 64)) buffer.resize(std::max<size_t>(bytes, 64));
  return buffer.data();
}

Problem problem(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y, int64_t sh,
                int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr, groups};
}

ffi::Error run(Kind kind, const Problem& p, float* x, float* w, float* y) {
  // One call at a time, each with all of oneDNN's threads: XLA runs independent operations concurrently (a
  // layer's two gradients, the devices of a pmap), and two thread teams on the same cores undo each other.
  // Everything static below is used under this lock.
  static std::mutex one_at_a_time;
  static std::vector<uint8_t> kernel_buffer, scratchpad_buffer;
  std::lock_guard<std::mutex> lock(one_at_a_time);
  try {
    static dnnl::stream stream(cpu());
    Built& b = primitive_for(kind, p);
    b.x.set_data_handle(x);
    b.y.set_data_handle(y);
    b.user_kernel.set_data_handle(w);
    b.kernel.set_data_handle(b.reorder ? grown(kernel_buffer, b.kernel.get_desc().get_size()) : w);
    b.scratchpad.set_data_handle(grown(scratchpad_buffer, b.scratchpad.get_desc().get_size()));
    if (kind != Kind::kBackwardWeights && b.reorder) {
      b.kernel_reorder.execute(stream, {{DNNL_ARG_FROM, b.user_kernel}, {DNNL_ARG_TO, b.kernel}});
    }
    if (kind == Kind::kForward) {
      b.primitive.execute(stream, {{DNNL_ARG_SRC, b.x}, {DNNL_ARG_WEIGHTS, b.kernel}, {DNNL_ARG_DST, b.y},
                                   {DNNL_ARG_SCRATCHPAD, b.scratchpad}});
    } else if (kind == Kind::kBackwardData) {
      b.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, b.x}, {DNNL_ARG_WEIGHTS, b.kernel},
                                   {DNNL_ARG_DIFF_DST, b.y}, {DNNL_ARG_SCRATCHPAD, b.scratchpad}});
    } else {
      b.primitive.execute(stream, {{DNNL_ARG_SRC, b.x}, {DNNL_ARG_DIFF_WEIGHTS, b.kernel},
                                   {DNNL_ARG_DIFF_DST, b.y}, {DNNL_ARG_SCRATCHPAD, b.scratchpad}});
      if (b.reorder) b.kernel_reorder.execute(stream, {{DNNL_ARG_FROM, b.kernel}, {DNNL_ARG_TO, b.user_kernel}});
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
