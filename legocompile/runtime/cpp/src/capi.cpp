// The C ABI: exceptions become an lc_status and a thread-local one-line message.
#include <cstring>
#include <new>
#include <string>

#include "error.hpp"
#include "legocompile/runtime.h"
#include "runtime.hpp"

#ifndef LEGOCOMPILE_VERSION
#define LEGOCOMPILE_VERSION "0.0.0"
#endif

struct lc_runtime {
  lc::Runtime impl;
  lc_runtime(const std::string& path, const lc::RuntimeOptions& o) : impl(path, o) {}
};

namespace {

thread_local std::string t_error;

lc_status fail(lc_status status, const std::string& message) {
  t_error = message;
  return status;
}

template <class F>
lc_status guarded(F&& f) {
  try {
    t_error.clear();
    f();
    return LC_OK;
  } catch (const lc::Error& e) {
    return fail(static_cast<lc_status>(static_cast<int>(e.code())), e.what());
  } catch (const std::bad_alloc&) {
    return fail(LC_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(LC_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(LC_INTERNAL, "internal error");
  }
}

lc::Error invalid(const std::string& what) { return lc::Error(lc::Code::invalid_argument, what); }

template <class T>
void need(const T* p, const char* what) {
  if (p == nullptr) throw invalid(std::string(what) + " is NULL");
}

lc::BudgetRequest request(const lc_budget* b) {
  need(b, "budget");
  lc::BudgetRequest r;
  if (b->has_latency) r.latency_ms = b->latency_ms;
  if (b->has_memory) r.memory_mb = b->memory_mb;
  return r;
}

void report(const lc::Runtime& rt, const std::vector<int>& choice, int32_t* out, lc_totals* totals) {
  if (out)
    for (std::size_t i = 0; i < choice.size(); ++i) out[i] = choice[i];
  if (totals) {
    const lc::Totals t = rt.selector().totals(choice);
    totals->latency_ms = t.latency_ms;
    totals->memory_bytes = t.memory_bytes;
    totals->accuracy = t.accuracy;
  }
}

// The input's shape, or output `output`'s (0: the first; the last block's further outputs follow).
lc_status shape(const lc_runtime* rt, bool input, std::size_t output, int64_t* dims, size_t capacity, size_t* ndim) {
  return guarded([&] {
    need(rt, "runtime");
    need(ndim, "ndim");
    const auto& m = rt->impl.manifest();
    const auto& last = m.blocks.back();
    if (!input && output > last.extra_outputs.size())
      throw invalid("output index " + std::to_string(output) + " out of range");
    const auto& s = input ? m.input.shape : output == 0 ? last.output.shape : last.extra_outputs[output - 1].shape;
    *ndim = s.size();
    if (dims == nullptr) return;
    if (capacity < s.size()) throw invalid("dims has room for " + std::to_string(capacity) + " dimensions, need " +
                                           std::to_string(s.size()));
    for (std::size_t i = 0; i < s.size(); ++i) dims[i] = i == 0 ? -1 : s[i];
  });
}

}  // namespace

extern "C" {

int lc_abi_version(void) { return LC_ABI_VERSION; }
const char* lc_version(void) { return LEGOCOMPILE_VERSION; }
const char* lc_last_error(void) { return t_error.c_str(); }

void lc_open_options_init(lc_open_options* options) {
  if (options == nullptr) return;
  options->verify = 1;
  options->threads = 0;
  options->keep_warm_mb = 0.0;
}

lc_status lc_open(const char* path, const lc_open_options* options, lc_runtime** out) {
  return guarded([&] {
    need(path, "path");
    need(out, "out");
    *out = nullptr;
    lc::RuntimeOptions o;
    if (options) {
      o.verify = options->verify != 0;
      o.threads = options->threads;
      o.keep_warm_mb = options->keep_warm_mb;
    }
    *out = new lc_runtime(path, o);
  });
}

void lc_close(lc_runtime* rt) { delete rt; }

lc_status lc_num_blocks(const lc_runtime* rt, size_t* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    *out = rt->impl.manifest().blocks.size();
  });
}

lc_status lc_block_name(const lc_runtime* rt, size_t block, const char** out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    const auto& blocks = rt->impl.manifest().blocks;
    if (block >= blocks.size()) throw invalid("block index " + std::to_string(block) + " out of range");
    *out = blocks[block].name.c_str();
  });
}

lc_status lc_num_options(const lc_runtime* rt, size_t block, size_t* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    const auto& blocks = rt->impl.manifest().blocks;
    if (block >= blocks.size()) throw invalid("block index " + std::to_string(block) + " out of range");
    *out = blocks[block].options.size();
  });
}

lc_status lc_option(const lc_runtime* rt, size_t block, size_t option, lc_option_info* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    const auto& blocks = rt->impl.manifest().blocks;
    if (block >= blocks.size()) throw invalid("block index " + std::to_string(block) + " out of range");
    if (option >= blocks[block].options.size()) throw invalid("option index " + std::to_string(option) + " out of range");
    const auto& o = blocks[block].options[option];
    out->variant = o.variant.c_str();
    out->precision = o.precision.c_str();
    out->backend = o.backend.c_str();
    out->latency_ms = o.latency_ms;
    out->memory_bytes = o.memory_bytes;
    out->accuracy_drop = o.accuracy_drop;
    out->excluded = o.excluded ? o.excluded->c_str() : nullptr;
  });
}

lc_status lc_input_shape(const lc_runtime* rt, int64_t* dims, size_t capacity, size_t* ndim) {
  return shape(rt, true, 0, dims, capacity, ndim);
}

lc_status lc_output_shape(const lc_runtime* rt, int64_t* dims, size_t capacity, size_t* ndim) {
  return shape(rt, false, 0, dims, capacity, ndim);
}

lc_status lc_num_outputs(const lc_runtime* rt, size_t* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    *out = rt->impl.num_outputs();
  });
}

lc_status lc_output_shape_at(const lc_runtime* rt, size_t output, int64_t* dims, size_t capacity, size_t* ndim) {
  return shape(rt, false, output, dims, capacity, ndim);
}

lc_status lc_manifest_json(const lc_runtime* rt, const char** data, size_t* size) {
  return guarded([&] {
    need(rt, "runtime");
    need(data, "data");
    need(size, "size");
    *data = rt->impl.manifest().text.data();
    *size = rt->impl.manifest().text.size();
  });
}

lc_status lc_plan(const lc_runtime* rt, const lc_budget* budget, int32_t* choice, lc_totals* totals) {
  return guarded([&] {
    need(rt, "runtime");
    report(rt->impl, rt->impl.plan(request(budget)), choice, totals);
  });
}

lc_status lc_select(lc_runtime* rt, const lc_budget* budget, int32_t* choice, lc_totals* totals) {
  return guarded([&] {
    need(rt, "runtime");
    report(rt->impl, rt->impl.select(request(budget)), choice, totals);
  });
}

lc_status lc_select_options(lc_runtime* rt, const char* const* variants, const char* const* precisions, size_t n,
                            int32_t* choice, lc_totals* totals) {
  return guarded([&] {
    need(rt, "runtime");
    if (n > 0) {
      need(variants, "variants");
      need(precisions, "precisions");
    }
    std::vector<std::pair<std::string, std::string>> pairs;
    for (std::size_t i = 0; i < n; ++i) {
      need(variants[i], "variants[i]");
      need(precisions[i], "precisions[i]");
      pairs.emplace_back(variants[i], precisions[i]);
    }
    report(rt->impl, rt->impl.select_explicit(pairs), choice, totals);
  });
}

lc_status lc_selection(const lc_runtime* rt, int32_t* choice, lc_totals* totals) {
  return guarded([&] {
    need(rt, "runtime");
    report(rt->impl, rt->impl.selection(), choice, totals);
  });
}

lc_status lc_min_totals(const lc_runtime* rt, double* latency_ms, int64_t* memory_bytes) {
  return guarded([&] {
    need(rt, "runtime");
    if (latency_ms) *latency_ms = rt->impl.selector().min_latency_ms();
    if (memory_bytes) *memory_bytes = rt->impl.selector().min_memory_bytes();
  });
}

lc_status lc_run(lc_runtime* rt, const float* input, int64_t batch, float* output) {
  return guarded([&] {
    need(rt, "runtime");
    if (batch < 0) throw invalid("batch must be at least 0, got " + std::to_string(batch));
    if (batch > 0) {
      need(input, "input");
      need(output, "output");
    }
    rt->impl.run(input, batch, output);
  });
}

lc_status lc_run_outputs(lc_runtime* rt, const float* input, int64_t batch, float* const* outputs, size_t count) {
  return guarded([&] {
    need(rt, "runtime");
    if (batch < 0) throw invalid("batch must be at least 0, got " + std::to_string(batch));
    if (batch > 0) {
      need(input, "input");
      need(outputs, "outputs");
      for (std::size_t k = 0; k < count; ++k) need(outputs[k], "outputs[k]");
    }
    rt->impl.run_outputs(input, batch, outputs, count);
  });
}

lc_status lc_engine_loads(const lc_runtime* rt, int64_t* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    *out = rt->impl.loads();
  });
}

lc_status lc_measure(lc_runtime* rt, const float* input, int64_t batch, float* output, int rounds, int iters,
                     double* chain_ns, double* block_ns, double* overhead_ns) {
  return guarded([&] {
    need(rt, "runtime");
    need(input, "input");
    need(output, "output");
    if (batch <= 0 || rounds <= 0 || iters <= 0) throw invalid("batch, rounds and iters must be positive");
    const lc::Measurement m = rt->impl.measure(input, batch, output, rounds, iters);
    if (chain_ns) *chain_ns = m.chain_ns;
    if (overhead_ns) *overhead_ns = m.overhead_ns;
    if (block_ns)
      for (std::size_t i = 0; i < m.block_ns.size(); ++i) block_ns[i] = m.block_ns[i];
  });
}

}  // extern "C"
