// oneDNN 3.x convolutions as XLA FFI handlers (CPU): forward, backward-data and
// backward-weights of a 2-D convolution with NHWC float32 activations and HWIO float32
// weights, any kernel size, stride, dilation, groups, asymmetric padding, optional bias.
//
// Leading dimensions in front of the NHWC / HWIO ones come from `vmap` (jax.ffi's
// "expand_dims": every operand gets one, of size 1 where it is not mapped). Where the
// weights are not mapped the leading dimensions fold into the batch (one call); otherwise
// the handler loops over them.
//
// Built by research/ops/onednn/build.py; the Python side gives padding that yields
// exactly the output size (oneDNN checks it), and dilation as lax counts it (1 = none).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = memory::dims;

namespace {

constexpr int kAbi = 4;  // Python checks it: a library built from other source is rebuilt
int g_threads = 0;       // OpenMP threads per call; 0 keeps OpenMP's default
std::mutex g_mutex;      // one oneDNN call at a time: each already uses every core

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static dnnl::stream stream(Engine());
  return stream;
}

// The primitives' scratchpads are ours (Scratch), not oneDNN's library-managed one: with
// that one, oneDNN 3.2's gemm-based convolutions (im2col; e.g. AlexNet's 11x11 stride-4
// conv1 on three channels, on a CPU without AVX-512) crashed the process after the first
// call in some programs.
dnnl::primitive_attr Attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

struct Geometry {
  int64_t n, h, w, c;      // input images (c: all channels)
  int64_t oh, ow, o;       // output
  int64_t kh, kw;          // kernel
  int64_t sh, sw, dh, dw;  // strides; dilation as lax counts it (1 = none)
  int64_t pt, pb, pl, pr;  // padding top, bottom, left, right
  int64_t groups;
  bool bias;

  std::string Key(char kind) const {
    char buffer[256];
    std::snprintf(buffer, sizeof(buffer),
                  "%c %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %d",
                  kind, n, h, w, c, oh, ow, o, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, groups,
                  bias ? 1 : 0);
    return buffer;
  }
  memory::desc Src() const { return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, oh, ow}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc Bias() const {
    return bias ? memory::desc({o}, memory::data_type::f32, memory::format_tag::a) : memory::desc();
  }
  Dims WeightDims() const {
    if (groups == 1) return {o, c, kh, kw};
    return {groups, o / groups, c / groups, kh, kw};
  }
  // The HWIO array [kh, kw, c / groups, o] as oneDNN's (g,) o, i, h, w dimensions.
  memory::desc Hwio() const {
    int64_t ci = c / groups;
    if (groups == 1) return {WeightDims(), memory::data_type::f32, Dims{1, o, kw * ci * o, ci * o}};
    return {WeightDims(), memory::data_type::f32, Dims{o / groups, 1, o, kw * ci * o, ci * o}};
  }
  // The images in the layout the primitive prefers (blocked, e.g. nChw8c on AVX2).
  memory::desc AnySrc() const { return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::any}; }
  memory::desc AnyDst() const { return {{n, o, oh, ow}, memory::data_type::f32, memory::format_tag::any}; }
  memory::desc AnyWeights() const {
    return {WeightDims(), memory::data_type::f32, memory::format_tag::any};
  }
  Dims Strides() const { return {sh, sw}; }
  Dims Dilation() const { return {dh - 1, dw - 1}; }
  Dims PadL() const { return {pt, pl}; }
  Dims PadR() const { return {pb, pr}; }

  dnnl::convolution_forward::primitive_desc ForwardDesc(dnnl::prop_kind prop) const {
    return {Engine(), prop, dnnl::algorithm::convolution_direct, Src(), AnyWeights(), Bias(),
            Dst(), Strides(), Dilation(), PadL(), PadR(), Attr()};
  }
};

// A primitive with the reorders between HWIO weights and the layout it chose.
struct Entry {
  dnnl::primitive primitive;
  memory hwio;                // user weights (data handle set per call)
  memory blocked;             // weights in the primitive's layout
  dnnl::reorder reorder;      // between the two; empty when the layouts agree
  bool reordered = false;
  memory::desc scratch;       // the primitive's scratchpad, placed in Scratch() per call
  // Backward-weights only: x and dy reordered from NHWC into the primitive's layouts.
  memory::desc src, dst;
  dnnl::reorder src_reorder, dst_reorder;  // empty where NHWC is the primitive's layout
};

std::unordered_map<std::string, Entry>& Cache() {
  static std::unordered_map<std::string, Entry> cache;
  return cache;
}

void SetThreads() {
  // torch.set_num_threads and others change the calling thread's OpenMP setting; set ours
  // on whichever XLA thread runs the call.
  if (g_threads > 0 && omp_get_max_threads() != g_threads) omp_set_num_threads(g_threads);
}

Entry& Lookup(const Geometry& g, char kind) {
  auto& cache = Cache();
  std::string key = g.Key(kind);
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  Entry entry;
  memory::desc weights;
  if (kind == 'f') {
    auto pd = g.ForwardDesc(dnnl::prop_kind::forward_inference);
    entry.primitive = dnnl::convolution_forward(pd);
    weights = pd.weights_desc();
    entry.scratch = pd.scratchpad_desc();
  } else if (kind == 'd') {
    auto hint = g.ForwardDesc(dnnl::prop_kind::forward_training);
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        g.Strides(), g.Dilation(), g.PadL(), g.PadR(), hint, Attr());
    entry.primitive = dnnl::convolution_backward_data(pd);
    weights = pd.weights_desc();
    entry.scratch = pd.scratchpad_desc();
  } else {
    // x and dy in the layouts oneDNN chooses, not NHWC: on AVX2 its NHWC weight gradient
    // is slow at large maps (VGG-16's 224 x 224, 64 -> 64 layer at batch 16, two cores of
    // an AMD EPYC: 2.8 s in NHWC, 0.6 s blocked with both reorders).
    auto hint = g.ForwardDesc(dnnl::prop_kind::forward_training);
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.AnySrc(), g.AnyWeights(), g.Bias(),
        g.AnyDst(), g.Strides(), g.Dilation(), g.PadL(), g.PadR(), hint, Attr());
    entry.primitive = dnnl::convolution_backward_weights(pd);
    weights = pd.diff_weights_desc();
    entry.scratch = pd.scratchpad_desc();
    entry.src = pd.src_desc();
    entry.dst = pd.diff_dst_desc();
    if (entry.src != g.Src())
      entry.src_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), g.Src(), Engine(), entry.src));
    if (entry.dst != g.Dst())
      entry.dst_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), g.Dst(), Engine(), entry.dst));
  }
  entry.hwio = memory(g.Hwio(), Engine(), DNNL_MEMORY_NONE);
  entry.reordered = weights != g.Hwio();
  if (entry.reordered) {
    entry.blocked = memory(weights, Engine());
    entry.reorder = kind == 'w' ? dnnl::reorder(entry.blocked, entry.hwio)
                                : dnnl::reorder(entry.hwio, entry.blocked);
  }
  return cache.emplace(key, std::move(entry)).first->second;
}

memory Wrap(const memory::desc& desc, const void* data) {
  return memory(desc, Engine(), const_cast<void*>(data));
}

// Buffers shared by every primitive, each grown to the largest asked for: calls run one at a
// time (g_mutex). Slot 0: the scratchpads; 1 and 2: backward-weights' reordered x and dy.
memory Buffer(int slot, const memory::desc& desc) {
  static std::vector<char> buffers[3];
  std::vector<char>& buffer = buffers[slot];
  constexpr size_t kAlign = 4096;
  size_t size = desc.get_size() + kAlign;
  if (buffer.size() < size) buffer.resize(size);
  uintptr_t start = reinterpret_cast<uintptr_t>(buffer.data());
  return Wrap(desc, reinterpret_cast<void*>((start + kAlign - 1) / kAlign * kAlign));
}

memory Scratch(const memory::desc& desc) { return Buffer(0, desc); }

// `data` (NHWC) as the primitive reads it: the array itself, or its copy in `slot` reordered
// into `desc`.
memory Reordered(const dnnl::reorder& reorder, const memory::desc& nhwc, const memory::desc& desc,
                 const float* data, int slot) {
  memory plain = Wrap(nhwc, data);
  if (!reorder) return plain;
  memory out = Buffer(slot, desc);
  reorder.execute(Stream(), {{DNNL_ARG_FROM, plain}, {DNNL_ARG_TO, out}});
  return out;
}

void Forward(const Geometry& g, const float* x, const float* w, const float* b, float* y) {
  Entry& e = Lookup(g, 'f');
  e.hwio.set_data_handle(const_cast<float*>(w));
  if (e.reordered) e.reorder.execute(Stream(), e.hwio, e.blocked);
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, Wrap(g.Src(), x)},
                                          {DNNL_ARG_WEIGHTS, e.reordered ? e.blocked : e.hwio},
                                          {DNNL_ARG_DST, Wrap(g.Dst(), y)},
                                          {DNNL_ARG_SCRATCHPAD, Scratch(e.scratch)}};
  if (g.bias) args[DNNL_ARG_BIAS] = Wrap(g.Bias(), b);
  e.primitive.execute(Stream(), args);
}

void BackwardData(const Geometry& g, const float* dy, const float* w, float* dx) {
  Entry& e = Lookup(g, 'd');
  e.hwio.set_data_handle(const_cast<float*>(w));
  if (e.reordered) e.reorder.execute(Stream(), e.hwio, e.blocked);
  e.primitive.execute(Stream(), {{DNNL_ARG_DIFF_DST, Wrap(g.Dst(), dy)},
                                 {DNNL_ARG_WEIGHTS, e.reordered ? e.blocked : e.hwio},
                                 {DNNL_ARG_DIFF_SRC, Wrap(g.Src(), dx)},
                                 {DNNL_ARG_SCRATCHPAD, Scratch(e.scratch)}});
}

void BackwardWeights(const Geometry& g, const float* x, const float* dy, float* dw, float* db) {
  Entry& e = Lookup(g, 'w');
  e.hwio.set_data_handle(dw);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, Reordered(e.src_reorder, g.Src(), e.src, x, 1)},
      {DNNL_ARG_DIFF_DST, Reordered(e.dst_reorder, g.Dst(), e.dst, dy, 2)},
      {DNNL_ARG_DIFF_WEIGHTS, e.reordered ? e.blocked : e.hwio},
      {DNNL_ARG_SCRATCHPAD, Scratch(e.scratch)}};
  if (g.bias) args[DNNL_ARG_DIFF_BIAS] = Wrap(g.Bias(), db);
  e.primitive.execute(Stream(), args);
  if (e.reordered) e.reorder.execute(Stream(), e.blocked, e.hwio);
}

// One operand or result: its dimensions, how many of them are its own (4, or 1 for a
// bias), whether it holds images (its leading dimensions may fold into the batch) and its
// data.
struct Operand {
  ffi::Span<const int64_t> dims;
  size_t core;
  bool images;
  char* data;
};

// Runs `call(pointers, n)` over the leading (vmap) dimensions: once with them folded into
// the batch n when only image operands have them, else once per leading index.
template <typename Call>
ffi::Error ForEachLead(std::vector<Operand> ops, int64_t n, Call call) {
  size_t lead = ops[0].dims.size() - ops[0].core;
  std::vector<int64_t> out(lead, 1);
  for (const Operand& op : ops) {
    if (op.dims.size() - op.core != lead)
      return ffi::Error::InvalidArgument("onednn conv: operands with different leading ranks");
    for (size_t i = 0; i < lead; ++i) out[i] = std::max(out[i], op.dims[i]);
  }
  bool fold = true;
  int64_t total = 1;
  for (size_t i = 0; i < lead; ++i) total *= out[i];
  for (const Operand& op : ops)
    for (size_t i = 0; i < lead; ++i) {
      if (op.dims[i] != 1 && op.dims[i] != out[i])
        return ffi::Error::InvalidArgument("onednn conv: leading dimensions do not broadcast");
      if (op.images ? op.dims[i] != out[i] : op.dims[i] != 1) fold = false;
    }
  std::vector<char*> pointers(ops.size());
  if (fold) {
    for (size_t k = 0; k < ops.size(); ++k) pointers[k] = ops[k].data;
    call(pointers, n * total);
    return ffi::Error::Success();
  }
  std::vector<int64_t> bytes(ops.size(), sizeof(float));
  for (size_t k = 0; k < ops.size(); ++k)
    for (size_t i = lead; i < ops[k].dims.size(); ++i) bytes[k] *= ops[k].dims[i];
  std::vector<int64_t> index(lead, 0);
  for (int64_t step = 0; step < total; ++step) {
    for (size_t k = 0; k < ops.size(); ++k) {
      int64_t offset = 0;
      for (size_t i = 0; i < lead; ++i)
        offset = offset * ops[k].dims[i] + (ops[k].dims[i] == 1 ? 0 : index[i]);
      pointers[k] = ops[k].data + offset * bytes[k];
    }
    call(pointers, n);
    for (size_t i = lead; i-- > 0;) {
      if (++index[i] < out[i]) break;
      index[i] = 0;
    }
  }
  return ffi::Error::Success();
}

ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                        int64_t groups, bool bias, Geometry* g) {
  if (x.size() < 4 || w.size() < 4 || y.size() < 4 || strides.size() != 2 ||
      padding.size() != 4 || dilation.size() != 2 || groups < 1)
    return ffi::Error::InvalidArgument("onednn conv: expected NHWC, HWIO and 2-D attributes");
  auto last = [](ffi::Span<const int64_t> d, size_t i) { return d[d.size() - 4 + i]; };
  *g = Geometry{last(x, 0), last(x, 1), last(x, 2), last(x, 3), last(y, 1), last(y, 2),
                last(y, 3), last(w, 0), last(w, 1), strides[0], strides[1], dilation[0],
                dilation[1], padding[0], padding[1], padding[2], padding[3], groups, bias};
  if (last(w, 2) * groups != g->c || last(w, 3) != g->o || g->o % groups)
    return ffi::Error::InvalidArgument("onednn conv: channels do not match the kernel and groups");
  return ffi::Error::Success();
}

template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    SetThreads();
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

using F32 = ffi::Buffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

ffi::Error ForwardImpl(F32 x, F32 w, std::optional<F32> b, ffi::Result<F32> y, Ints strides,
                       Ints padding, Ints dilation, int64_t groups) {
  return Guarded([&]() -> ffi::Error {
    Geometry g;
    bool bias = b.has_value();
    ffi::Error error = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), strides,
                                    padding, dilation, groups, bias, &g);
    if (error.failure()) return error;
    std::vector<Operand> ops = {
        {x.dimensions(), 4, true, reinterpret_cast<char*>(x.untyped_data())},
        {w.dimensions(), 4, false, reinterpret_cast<char*>(w.untyped_data())},
        {y->dimensions(), 4, true, reinterpret_cast<char*>(y->untyped_data())}};
    if (bias) ops.push_back({b->dimensions(), 1, false, reinterpret_cast<char*>(b->untyped_data())});
    return ForEachLead(ops, g.n, [&](const std::vector<char*>& p, int64_t n) {
      Geometry h = g;
      h.n = n;
      Forward(h, reinterpret_cast<float*>(p[0]), reinterpret_cast<float*>(p[1]),
              bias ? reinterpret_cast<float*>(p[3]) : nullptr, reinterpret_cast<float*>(p[2]));
    });
  });
}

ffi::Error ForwardNoBias(F32 x, F32 w, ffi::Result<F32> y, Ints strides, Ints padding,
                         Ints dilation, int64_t groups) {
  return ForwardImpl(x, w, std::nullopt, y, strides, padding, dilation, groups);
}

ffi::Error ForwardBias(F32 x, F32 w, F32 b, ffi::Result<F32> y, Ints strides, Ints padding,
                       Ints dilation, int64_t groups) {
  return ForwardImpl(x, w, b, y, strides, padding, dilation, groups);
}

ffi::Error BackwardDataImpl(F32 dy, F32 w, ffi::Result<F32> dx, Ints strides, Ints padding,
                            Ints dilation, int64_t groups) {
  return Guarded([&]() -> ffi::Error {
    Geometry g;
    ffi::Error error = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), strides,
                                    padding, dilation, groups, false, &g);
    if (error.failure()) return error;
    std::vector<Operand> ops = {
        {dy.dimensions(), 4, true, reinterpret_cast<char*>(dy.untyped_data())},
        {w.dimensions(), 4, false, reinterpret_cast<char*>(w.untyped_data())},
        {dx->dimensions(), 4, true, reinterpret_cast<char*>(dx->untyped_data())}};
    return ForEachLead(ops, g.n, [&](const std::vector<char*>& p, int64_t n) {
      Geometry h = g;
      h.n = n;
      BackwardData(h, reinterpret_cast<float*>(p[0]), reinterpret_cast<float*>(p[1]),
                   reinterpret_cast<float*>(p[2]));
    });
  });
}

ffi::Error BackwardWeightsImpl(F32 x, F32 dy, ffi::Result<F32> dw, std::optional<ffi::Result<F32>> db,
                               Ints strides, Ints padding, Ints dilation, int64_t groups) {
  return Guarded([&]() -> ffi::Error {
    Geometry g;
    bool bias = db.has_value();
    ffi::Error error = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), strides,
                                    padding, dilation, groups, bias, &g);
    if (error.failure()) return error;
    std::vector<Operand> ops = {
        {x.dimensions(), 4, true, reinterpret_cast<char*>(x.untyped_data())},
        {dy.dimensions(), 4, true, reinterpret_cast<char*>(dy.untyped_data())},
        {dw->dimensions(), 4, false, reinterpret_cast<char*>(dw->untyped_data())}};
    if (bias)
      ops.push_back({(*db)->dimensions(), 1, false, reinterpret_cast<char*>((*db)->untyped_data())});
    return ForEachLead(ops, g.n, [&](const std::vector<char*>& p, int64_t n) {
      Geometry h = g;
      h.n = n;
      BackwardWeights(h, reinterpret_cast<float*>(p[0]), reinterpret_cast<float*>(p[1]),
                      reinterpret_cast<float*>(p[2]),
                      bias ? reinterpret_cast<float*>(p[3]) : nullptr);
    });
  });
}

ffi::Error BackwardWeightsNoBias(F32 x, F32 dy, ffi::Result<F32> dw, Ints strides, Ints padding,
                                 Ints dilation, int64_t groups) {
  return BackwardWeightsImpl(x, dy, dw, std::nullopt, strides, padding, dilation, groups);
}

ffi::Error BackwardWeightsBias(F32 x, F32 dy, ffi::Result<F32> dw, ffi::Result<F32> db,
                               Ints strides, Ints padding, Ints dilation, int64_t groups) {
  return BackwardWeightsImpl(x, dy, dw, db, strides, padding, dilation, groups);
}

}  // namespace

#define RESEARCH_ATTRS                        \
  .Attr<Ints>("strides")                      \
      .Attr<Ints>("padding")                  \
      .Attr<Ints>("dilation")                 \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvForward, ForwardNoBias,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() RESEARCH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvForwardBias, ForwardBias,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>()
                                  RESEARCH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() RESEARCH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBackwardWeights, BackwardWeightsNoBias,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() RESEARCH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBackwardWeightsBias, BackwardWeightsBias,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>()
                                  RESEARCH_ATTRS);

extern "C" {
int research_onednn_abi() { return kAbi; }
int research_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
void research_onednn_set_threads(int threads) { g_threads = threads; }
}
