// The chained runtime (legocompile/runtime/executor.py in C++).
//
// * Immutable plans swapped by one reference: select() builds a Plan (a selection and the engines that run it)
//   and publishes it with one atomic shared_ptr store; run() reads it once, so one inference never mixes two
//   selections, and the plan it holds keeps that selection's engines alive until it returns.
// * Engines outside the current plan are unloaded (kept up to keep_warm_mb of profiled memory, least recently
//   used out first); lazy loading (open() loads no engine; the first run without select uses s0/fp32); engines
//   load from bytes read once and checked against the manifest's sha256.
// * Per-thread boundary buffers (per batch size, at most 4 sizes per thread): concurrent runs share no buffer and
//   the hot path takes no lock and allocates nothing once a thread's buffers are bound to the current plan.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "manifest.hpp"
#include "select.hpp"

namespace lc {

struct Plan {
  std::uint64_t generation;
  std::vector<int> choice;  // per block: index into the manifest's options
  std::vector<std::shared_ptr<Engine>> engines;
};

struct BufferSet;
struct ThreadBuffers;

struct RuntimeOptions {
  bool verify = true;
  int threads = 0;  // 0: the bundle's settings.profile.threads, else every core this process may use
  double keep_warm_mb = 0.0;
};

struct Measurement {
  double chain_ns = 0;           // median over calls of one run() call's time
  std::vector<double> block_ns;  // median over calls of each engine's time inside the chain
  double overhead_ns = 0;        // median over calls of (call time - the sum of its engine times)
};

class Runtime {
 public:
  Runtime(const std::string& path, const RuntimeOptions& options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const Manifest& manifest() const { return manifest_; }
  const Selector& selector() const { return *selector_; }

  std::vector<int> plan(const BudgetRequest& budget) const { return selector_->select(budget); }
  std::vector<int> select(const BudgetRequest& budget);
  std::vector<int> select_explicit(const std::vector<std::pair<std::string, std::string>>& pairs);
  std::vector<int> selection() const;

  // Runs the current plan on `batch` samples (float32, C order, the bundle's input shape after the batch axis).
  // A bundle whose model returns several tensors is refused here: run_outputs writes each of them.
  void run(const float* input, std::int64_t batch, float* output);
  // outputs[k] receives output k (the model's order); count must be num_outputs().
  void run_outputs(const float* input, std::int64_t batch, float* const* outputs, std::size_t count);
  std::size_t input_elements() const { return input_elements_; }  // per sample
  std::size_t output_elements(std::size_t k = 0) const { return output_elements_.at(k); }  // per sample
  std::size_t num_outputs() const { return output_elements_.size(); }

  Measurement measure(const float* input, std::int64_t batch, float* output, int rounds, int iters);

  std::int64_t loads() const { return loads_.load(); }
  std::vector<std::pair<int, int>> loaded_engines() const;  // (block, option) alive now
  std::int64_t warm_bytes() const;

 private:
  std::shared_ptr<const Plan> current_plan();
  void switch_to(const std::vector<int>& choice);
  std::shared_ptr<Engine> acquire(int block, int option);
  ThreadBuffers& thread_buffers();
  BufferSet& buffer_set(std::int64_t batch);
  void bind(BufferSet& set, const Plan& plan);
  void run_impl(const float* input, std::int64_t batch, float* const* outputs, std::int64_t* engine_ns);

  const std::uint64_t id_;
  std::string root_;
  Manifest manifest_;
  std::unique_ptr<Selector> selector_;
  std::unique_ptr<Backend> backend_;
  std::int64_t keep_warm_bytes_ = 0;
  std::size_t input_elements_ = 1;
  std::vector<std::size_t> output_elements_;                // per output of the last block, per sample
  std::vector<std::vector<std::int64_t>> boundary_shapes_;  // per boundary, after the batch axis
  std::vector<std::vector<std::int64_t>> extra_shapes_;     // the last block's outputs after the first, likewise

  mutable std::mutex select_mu_;  // select / switch / engine map / warm set
  std::shared_ptr<const Plan> plan_;  // read and replaced with std::atomic_load / std::atomic_store
  std::uint64_t generation_ = 0;
  std::map<std::pair<int, int>, std::weak_ptr<Engine>> alive_;
  struct Warm {
    std::pair<int, int> key;
    std::shared_ptr<Engine> engine;
    std::int64_t bytes;
  };
  std::list<Warm> warm_;  // oldest first
  std::atomic<std::int64_t> loads_{0};
  std::size_t freed_ = 0;  // engines freed since the last heap trim (select lock)

  std::mutex registry_mu_;
  std::vector<std::weak_ptr<ThreadBuffers>> registry_;  // every thread's buffers for this runtime
};

}  // namespace lc
