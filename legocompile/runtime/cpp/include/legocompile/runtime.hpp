// legocompile C++ runtime: a thin C++17 layer over the C ABI (legocompile/runtime.h): RAII, exceptions, spans.
//
//   legocompile::Runtime rt = legocompile::Runtime::open("bundle");
//   rt.select(legocompile::Budget{}.latency(1.2).memory(8));
//   std::vector<float> y(rt.output_size(batch));
//   rt.run(x, batch, y);                           // x: batch x input shape, float32
#ifndef LEGOCOMPILE_RUNTIME_HPP
#define LEGOCOMPILE_RUNTIME_HPP

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "legocompile/runtime.h"

namespace legocompile {

// A pointer and a length (std::span before C++20); converts from std::vector and C arrays.
template <class T>
class span {
 public:
  constexpr span() noexcept = default;
  constexpr span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  template <class V, class = decltype(std::declval<V&>().data())>
  span(V& v) noexcept : data_(v.data()), size_(v.size()) {}  // NOLINT: implicit, like std::span
  template <std::size_t N>
  constexpr span(T (&a)[N]) noexcept : data_(a), size_(N) {}  // NOLINT
  constexpr T* data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
  constexpr T* begin() const noexcept { return data_; }
  constexpr T* end() const noexcept { return data_ + size_; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// Every failure: status() is the C ABI's code, what() its one-line message (the Python runtime's text).
class Error : public std::runtime_error {
 public:
  Error(lc_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  lc_status status() const noexcept { return status_; }

 private:
  lc_status status_;
};

// No selection fits the budget (Python: InfeasibleBudgetError).
class InfeasibleBudget : public Error {
 public:
  using Error::Error;
};

namespace detail {
inline void check(lc_status s) {
  if (s == LC_OK) return;
  const std::string message = lc_last_error();
  if (s == LC_INFEASIBLE) throw InfeasibleBudget(s, message);
  throw Error(s, message);
}
}  // namespace detail

// A budget on the predicted latency (milliseconds, chain overhead included) and memory (MB = 1e6 bytes).
struct Budget {
  lc_budget raw{0, 0.0, 0, 0.0};
  Budget& latency(double ms) {
    raw.has_latency = 1;
    raw.latency_ms = ms;
    return *this;
  }
  Budget& memory(double mb) {
    raw.has_memory = 1;
    raw.memory_mb = mb;
    return *this;
  }
};

struct Choice {
  std::string block, variant, precision;
  int option;  // index into the block's options (manifest order)
};

struct Selection {
  std::vector<Choice> blocks;
  lc_totals predicted{};  // latency_ms, memory_bytes, accuracy
};

struct Options {
  bool verify = true;
  int threads = 0;
  double keep_warm_mb = 0.0;
};

class Runtime {
 public:
  static Runtime open(const std::string& path, const Options& options = {}) {
    lc_open_options o;
    lc_open_options_init(&o);
    o.verify = options.verify ? 1 : 0;
    o.threads = options.threads;
    o.keep_warm_mb = options.keep_warm_mb;
    lc_runtime* rt = nullptr;
    detail::check(lc_open(path.c_str(), &o, &rt));
    return Runtime(rt);
  }

  Runtime(Runtime&& other) noexcept : rt_(std::exchange(other.rt_, nullptr)) {}
  Runtime& operator=(Runtime&& other) noexcept {
    if (this != &other) {
      lc_close(rt_);
      rt_ = std::exchange(other.rt_, nullptr);
    }
    return *this;
  }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  ~Runtime() { lc_close(rt_); }

  std::size_t num_blocks() const {
    std::size_t n = 0;
    detail::check(lc_num_blocks(rt_, &n));
    return n;
  }

  // The best selection under the budget, without switching to it.
  Selection plan(const Budget& budget) const {
    std::vector<int32_t> choice(num_blocks());
    lc_totals t{};
    detail::check(lc_plan(rt_, &budget.raw, choice.data(), &t));
    return describe(choice, t);
  }

  // Switches to the best selection under the budget (throws InfeasibleBudget when nothing fits).
  Selection select(const Budget& budget) {
    std::vector<int32_t> choice(num_blocks());
    lc_totals t{};
    detail::check(lc_select(rt_, &budget.raw, choice.data(), &t));
    return describe(choice, t);
  }

  // Switches to an explicit selection: (variant, precision) per block, in block order.
  Selection select(const std::vector<std::pair<std::string, std::string>>& options) {
    std::vector<const char*> variants, precisions;
    for (const auto& [v, p] : options) {
      variants.push_back(v.c_str());
      precisions.push_back(p.c_str());
    }
    std::vector<int32_t> choice(num_blocks());
    lc_totals t{};
    detail::check(lc_select_options(rt_, variants.data(), precisions.data(), options.size(), choice.data(), &t));
    return describe(choice, t);
  }

  Selection selection() const {
    std::vector<int32_t> choice(num_blocks());
    lc_totals t{};
    detail::check(lc_selection(rt_, choice.data(), &t));
    return describe(choice, t);
  }

  std::vector<int64_t> input_shape() const { return shape(true); }    // dims[0] = -1: the batch axis
  std::vector<int64_t> output_shape() const { return shape(false); }  // dims[0] = -1
  std::size_t input_size(std::size_t batch) const { return batch * per_sample(input_shape()); }
  std::size_t output_size(std::size_t batch) const { return batch * per_sample(output_shape()); }

  // A model whose forward returns several tensors (detection, pose heads): how many, and each one's shape/size.
  std::size_t num_outputs() const {
    std::size_t n = 0;
    detail::check(lc_num_outputs(rt_, &n));
    return n;
  }
  std::vector<int64_t> output_shape(std::size_t output) const {
    std::size_t n = 0;
    detail::check(lc_output_shape_at(rt_, output, nullptr, 0, &n));
    std::vector<int64_t> dims(n);
    detail::check(lc_output_shape_at(rt_, output, dims.data(), n, &n));
    return dims;
  }
  std::size_t output_size(std::size_t output, std::size_t batch) const {
    return batch * per_sample(output_shape(output));
  }

  // Runs the current selection on `batch` samples; sizes are checked against the bundle's shapes.
  void run(span<const float> input, std::size_t batch, span<float> output) {
    if (input.size() != input_size(batch) || output.size() != output_size(batch))
      throw Error(LC_INVALID_ARGUMENT, "input/output sizes do not match the batch and the bundle's shapes");
    detail::check(lc_run(rt_, input.data(), static_cast<int64_t>(batch), output.data()));
  }

  // The same for any number of outputs: outputs[k] receives output k (one span per output, in the model's order).
  void run_outputs(span<const float> input, std::size_t batch, const std::vector<span<float>>& outputs) {
    if (input.size() != input_size(batch) || outputs.size() != num_outputs())
      throw Error(LC_INVALID_ARGUMENT, "input size or output count does not match the batch and the bundle");
    std::vector<float*> ptrs;
    for (std::size_t k = 0; k < outputs.size(); ++k) {
      if (outputs[k].size() != output_size(k, batch))
        throw Error(LC_INVALID_ARGUMENT, "output sizes do not match the batch and the bundle's shapes");
      ptrs.push_back(outputs[k].data());
    }
    detail::check(lc_run_outputs(rt_, input.data(), static_cast<int64_t>(batch), ptrs.data(), ptrs.size()));
  }

  lc_runtime* handle() const noexcept { return rt_; }

 private:
  explicit Runtime(lc_runtime* rt) : rt_(rt) {}

  std::vector<int64_t> shape(bool input) const {
    std::size_t n = 0;
    detail::check(input ? lc_input_shape(rt_, nullptr, 0, &n) : lc_output_shape(rt_, nullptr, 0, &n));
    std::vector<int64_t> dims(n);
    detail::check(input ? lc_input_shape(rt_, dims.data(), n, &n) : lc_output_shape(rt_, dims.data(), n, &n));
    return dims;
  }

  static std::size_t per_sample(const std::vector<int64_t>& dims) {
    std::size_t n = 1;
    for (std::size_t i = 1; i < dims.size(); ++i) n *= static_cast<std::size_t>(dims[i]);
    return n;
  }

  Selection describe(const std::vector<int32_t>& choice, const lc_totals& t) const {
    Selection s;
    s.predicted = t;
    for (std::size_t b = 0; b < choice.size(); ++b) {
      const char* name = nullptr;
      lc_option_info info{};
      detail::check(lc_block_name(rt_, b, &name));
      detail::check(lc_option(rt_, b, static_cast<std::size_t>(choice[b]), &info));
      s.blocks.push_back({name, info.variant, info.precision, choice[b]});
    }
    return s;
  }

  lc_runtime* rt_ = nullptr;
};

}  // namespace legocompile

#endif  // LEGOCOMPILE_RUNTIME_HPP
