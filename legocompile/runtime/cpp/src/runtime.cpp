#include "runtime.hpp"

#include <malloc.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "error.hpp"
#include "pyfmt.hpp"

namespace lc {

// One thread's boundary buffers for one batch size: blocks + 1 buffers (and the last block's further outputs, for
// a model that returns several tensors), and the bound engines of the plan they were last bound to.
struct BufferSet {
  std::uint64_t id = 0;
  std::int64_t batch = 0;
  std::vector<std::unique_ptr<Buffer>> buffers;
  std::vector<std::unique_ptr<Buffer>> extra;
  std::uint64_t generation = 0;  // the plan `runs` belongs to (0: none)
  std::vector<Bound*> runs;
  std::vector<std::weak_ptr<Engine>> bound_engines;  // engines holding a binding to these buffers
  ~BufferSet() {
    for (auto& w : bound_engines)
      if (auto e = w.lock()) e->unbind(id);  // bindings go before the buffers (members are destroyed after this)
  }
};

struct ThreadBuffers {
  std::vector<std::unique_ptr<BufferSet>> sets;  // oldest first, at most kMaxBatchSets
  std::atomic<bool> closed{false};               // its runtime is gone: the entry is dropped on the next miss
};

namespace {

constexpr std::size_t kMaxBatchSets = 4;
std::atomic<std::uint64_t> g_next_id{1};
std::atomic<std::uint64_t> g_next_set_id{1};

struct ThreadEntry {
  std::uint64_t runtime_id;
  std::shared_ptr<ThreadBuffers> buffers;
};
thread_local std::vector<ThreadEntry> t_entries;

int default_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

std::string buffer_backend(const Manifest& m) {
  bool all_trt = !m.blocks.empty();
  for (const auto& b : m.blocks)
    for (const auto& o : b.options) all_trt = all_trt && o.backend == "tensorrt";
  return all_trt ? "tensorrt" : "onnxruntime";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

Runtime::Runtime(const std::string& path, const RuntimeOptions& options)
    : id_(g_next_id.fetch_add(1)), root_(py_path_str(path)), manifest_(read_bundle(path, options.verify)) {
  if (!(options.keep_warm_mb >= 0))
    throw user_error("keep_warm_mb must be at least 0, got " + py_float_repr(options.keep_warm_mb));
  selector_ = std::make_unique<Selector>(manifest_);
  BackendOptions bo;
  bo.threads = options.threads > 0 ? options.threads
                                   : manifest_.profile_threads > 0 ? manifest_.profile_threads : default_threads();
  backend_ = make_backend(buffer_backend(manifest_), bo);
  keep_warm_bytes_ = static_cast<std::int64_t>(std::nearbyint(options.keep_warm_mb * 1e6));
  boundary_shapes_.push_back(manifest_.blocks.front().input.shape);
  for (const auto& b : manifest_.blocks) boundary_shapes_.push_back(b.output.shape);
  for (const auto& t : manifest_.blocks.back().extra_outputs) extra_shapes_.push_back(t.shape);
  for (auto* shapes : {&boundary_shapes_, &extra_shapes_})
    for (auto& s : *shapes) {
      if (s.empty()) throw user_error("block boundary tensors need a batch axis (shape [N, ...])");
      s.erase(s.begin());
      for (auto d : s)
        if (d <= 0) throw user_error("block boundary shapes must be positive after the batch axis");
    }
  input_elements_ = 1;
  for (auto d : manifest_.input.shape.size() > 1 ? std::vector<std::int64_t>(manifest_.input.shape.begin() + 1,
                                                                             manifest_.input.shape.end())
                                                 : std::vector<std::int64_t>{})
    input_elements_ *= static_cast<std::size_t>(d);
  std::size_t first = 1;
  for (auto d : boundary_shapes_.front()) first *= static_cast<std::size_t>(d);
  if (first != input_elements_)
    throw user_error("the manifest's input shape does not match the first block's input shape");
  const auto elements = [](const std::vector<std::int64_t>& shape) {
    std::size_t n = 1;
    for (auto d : shape) n *= static_cast<std::size_t>(d);
    return n;
  };
  output_elements_.push_back(elements(boundary_shapes_.back()));
  for (const auto& s : extra_shapes_) output_elements_.push_back(elements(s));
}

Runtime::~Runtime() {
  // Every thread's buffers for this runtime go now (no call may run on a runtime being closed).
  std::lock_guard<std::mutex> lock(registry_mu_);
  for (auto& w : registry_)
    if (auto tb = w.lock()) {
      tb->sets.clear();
      tb->closed.store(true);
    }
  registry_.clear();
}

// ---------------------------------------------------------------------------------------------------- selecting
std::vector<int> Runtime::select(const BudgetRequest& budget) {
  const std::vector<int> choice = selector_->select(budget);
  switch_to(choice);
  return choice;
}

std::vector<int> Runtime::select_explicit(const std::vector<std::pair<std::string, std::string>>& pairs) {
  const std::vector<int> choice = selector_->explicit_selection(pairs);
  switch_to(choice);
  return choice;
}

std::vector<int> Runtime::selection() const {
  const auto plan = std::atomic_load_explicit(&plan_, std::memory_order_acquire);
  return plan ? plan->choice : selector_->original();
}

std::shared_ptr<Engine> Runtime::acquire(int block, int option) {
  const std::pair<int, int> key{block, option};
  auto it = alive_.find(key);
  if (it != alive_.end())
    if (auto e = it->second.lock()) return e;
  const BlockEntry& b = manifest_.blocks[block];
  const OptionEntry& o = b.options[option];
  if (o.backend != backend_->name()) {
    make_backend(o.backend, BackendOptions{});  // an unknown name: Python's "unknown backend" message
    throw user_error("block " + py_str_repr(b.name) + ": option " + o.variant + "/" + o.precision +
                     " is a " + o.backend + " engine, but this bundle's chain runs on " + backend_->name());
  }
  std::vector<unsigned char> bytes = read_verified_bytes(root_, o.engine, o.sha256);
  std::shared_ptr<Engine> e = backend_->load(bytes);
  alive_[key] = e;
  loads_.fetch_add(1);
  return e;
}

void Runtime::switch_to(const std::vector<int>& choice) {
  std::shared_ptr<const Plan> old;
  {
    std::lock_guard<std::mutex> lock(select_mu_);
    const std::int64_t loads_before = loads_.load();
    auto plan = std::make_shared<Plan>();
    plan->choice = choice;
    for (std::size_t i = 0; i < choice.size(); ++i) plan->engines.push_back(acquire(static_cast<int>(i), choice[i]));
    plan->generation = ++generation_;
    old = std::atomic_exchange_explicit(&plan_, std::shared_ptr<const Plan>(plan), std::memory_order_acq_rel);

    // Engines that the old plan used and the new one does not join the keep-warm set; evict beyond its budget.
    std::vector<std::pair<int, int>> current;
    for (std::size_t i = 0; i < choice.size(); ++i) current.emplace_back(static_cast<int>(i), choice[i]);
    auto in_current = [&](const std::pair<int, int>& k) {
      return std::find(current.begin(), current.end(), k) != current.end();
    };
    warm_.remove_if([&](const Warm& w) { return in_current(w.key); });
    if (old) {
      for (std::size_t i = 0; i < old->choice.size(); ++i) {
        const std::pair<int, int> key{static_cast<int>(i), old->choice[i]};
        if (in_current(key)) continue;
        warm_.remove_if([&](const Warm& w) { return w.key == key; });
        warm_.push_back({key, old->engines[i], manifest_.blocks[i].options[old->choice[i]].memory_bytes});
      }
    }
    std::int64_t total = 0;
    for (const auto& w : warm_) total += w.bytes;
    while (!warm_.empty() && total > keep_warm_bytes_) {
      total -= warm_.front().bytes;
      warm_.pop_front();
    }
    old.reset();  // the old plan's engines go now, or when the last call still running on it returns
    std::size_t freed = 0;
    for (auto it = alive_.begin(); it != alive_.end();) {
      if (it->second.expired()) {
        it = alive_.erase(it);
        ++freed;
      } else {
        ++it;
      }
    }
    // Resident memory follows the selection: give the C heap's free pages back after engines came or went (an
    // engine an in-flight call still held is counted at the next switch).
    freed_ += freed;
    if (freed_ > 0 || loads_.load() != loads_before) {
      freed_ = 0;
      malloc_trim(0);
    }
  }
}

std::shared_ptr<const Plan> Runtime::current_plan() {
  auto plan = std::atomic_load_explicit(&plan_, std::memory_order_acquire);
  if (plan) return plan;
  {
    std::lock_guard<std::mutex> lock(select_mu_);
    plan = std::atomic_load_explicit(&plan_, std::memory_order_acquire);
    if (plan) return plan;
  }
  switch_to(selector_->original());  // lazy: the first call without a select runs the original fp32 selection
  return std::atomic_load_explicit(&plan_, std::memory_order_acquire);
}

std::vector<std::pair<int, int>> Runtime::loaded_engines() const {
  std::lock_guard<std::mutex> lock(select_mu_);
  std::vector<std::pair<int, int>> out;
  for (const auto& [key, w] : alive_)
    if (!w.expired()) out.push_back(key);
  return out;
}

std::int64_t Runtime::warm_bytes() const {
  std::lock_guard<std::mutex> lock(select_mu_);
  std::int64_t total = 0;
  for (const auto& w : warm_) total += w.bytes;
  return total;
}

// ---------------------------------------------------------------------------------------------------- running
ThreadBuffers& Runtime::thread_buffers() {
  std::vector<ThreadEntry>& entries = t_entries;
  for (auto& e : entries)
    if (e.runtime_id == id_) return *e.buffers;
  entries.erase(std::remove_if(entries.begin(), entries.end(), [](const ThreadEntry& e) { return e.buffers->closed.load(); }),
                entries.end());
  auto tb = std::make_shared<ThreadBuffers>();
  {
    std::lock_guard<std::mutex> lock(registry_mu_);
    registry_.erase(std::remove_if(registry_.begin(), registry_.end(), [](const auto& w) { return w.expired(); }),
                    registry_.end());
    registry_.push_back(tb);
  }
  entries.push_back({id_, tb});
  return *tb;
}

BufferSet& Runtime::buffer_set(std::int64_t batch) {
  ThreadBuffers& tb = thread_buffers();
  for (auto& s : tb.sets)
    if (s->batch == batch) return *s;
  if (tb.sets.size() >= kMaxBatchSets) tb.sets.erase(tb.sets.begin());  // the oldest batch size goes
  auto set = std::make_unique<BufferSet>();
  set->id = g_next_set_id.fetch_add(1);
  set->batch = batch;
  for (const auto& s : boundary_shapes_) {
    std::vector<std::int64_t> shape{batch};
    shape.insert(shape.end(), s.begin(), s.end());
    set->buffers.push_back(backend_->allocate(shape));
  }
  for (const auto& s : extra_shapes_) {
    std::vector<std::int64_t> shape{batch};
    shape.insert(shape.end(), s.begin(), s.end());
    set->extra.push_back(backend_->allocate(shape));
  }
  tb.sets.push_back(std::move(set));
  return *tb.sets.back();
}

void Runtime::bind(BufferSet& set, const Plan& plan) {
  set.generation = 0;
  set.runs.clear();
  set.bound_engines.erase(std::remove_if(set.bound_engines.begin(), set.bound_engines.end(),
                                         [](const auto& w) { return w.expired(); }),
                          set.bound_engines.end());
  for (std::size_t i = 0; i < plan.engines.size(); ++i) {
    const std::shared_ptr<Engine>& e = plan.engines[i];
    if (i + 1 == plan.engines.size() && !set.extra.empty()) {  // a last block with several outputs
      std::vector<Buffer*> outs{set.buffers[i + 1].get()};
      for (auto& b : set.extra) outs.push_back(b.get());
      set.runs.push_back(&e->bind_outputs(set.id, *set.buffers[i], outs));
    } else {
      set.runs.push_back(&e->bind(set.id, *set.buffers[i], *set.buffers[i + 1]));
    }
    const bool known = std::any_of(set.bound_engines.begin(), set.bound_engines.end(),
                                   [&](const std::weak_ptr<Engine>& w) { return w.lock() == e; });
    if (!known) set.bound_engines.push_back(e);
  }
  set.generation = plan.generation;
}

void Runtime::run(const float* input, std::int64_t batch, float* output) {
  if (num_outputs() != 1)
    throw user_error("this bundle's model returns " + std::to_string(num_outputs()) +
                     " outputs; run it with lc_run_outputs (Runtime::run_outputs), one buffer per output");
  run_impl(input, batch, &output, nullptr);
}

void Runtime::run_outputs(const float* input, std::int64_t batch, float* const* outputs, std::size_t count) {
  if (count != num_outputs())
    throw user_error("this bundle's model returns " + std::to_string(num_outputs()) + " output" +
                     (num_outputs() == 1 ? "" : "s") + ", but " + std::to_string(count) + " output buffer" +
                     (count == 1 ? " was" : "s were") + " given");
  run_impl(input, batch, outputs, nullptr);
}

// outputs: one pointer per output of the last block. engine_ns (diagnostics): when set, receives each engine's time
// inside this call, then the whole call's time.
void Runtime::run_impl(const float* input, std::int64_t batch, float* const* outputs, std::int64_t* engine_ns) {
  using clock = std::chrono::steady_clock;
  const auto start = engine_ns ? clock::now() : clock::time_point{};
  const std::shared_ptr<const Plan> plan = current_plan();  // read once: this call runs on this plan
  if (batch == 0) return;
  BufferSet& set = buffer_set(batch);
  if (set.generation != plan->generation) bind(set, *plan);
  const std::size_t n = static_cast<std::size_t>(batch);
  backend_->copy_in(*set.buffers.front(), input, n * input_elements_);
  if (engine_ns == nullptr) {
    for (Bound* b : set.runs) b->run();
  } else {
    for (std::size_t i = 0; i < set.runs.size(); ++i) {
      const auto t0 = clock::now();
      set.runs[i]->run();
      engine_ns[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t0).count();
    }
  }
  backend_->synchronize();
  backend_->copy_out(outputs[0], *set.buffers.back(), n * output_elements_[0]);
  for (std::size_t k = 0; k < set.extra.size(); ++k)
    backend_->copy_out(outputs[k + 1], *set.extra[k], n * output_elements_[k + 1]);
  if (engine_ns)
    engine_ns[set.runs.size()] = std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count();
}

Measurement Runtime::measure(const float* input, std::int64_t batch, float* output, int rounds, int iters) {
  // The first output goes to `output`; a model's further outputs to scratch (copied as a call copies them).
  std::vector<std::vector<float>> scratch;
  std::vector<float*> outs{output};
  for (std::size_t k = 1; k < num_outputs(); ++k) {
    scratch.emplace_back(static_cast<std::size_t>(batch) * output_elements_[k]);
    outs.push_back(scratch.back().data());
  }
  run_impl(input, batch, outs.data(), nullptr);  // loads the plan and binds this thread's buffers
  const std::size_t blocks = manifest_.blocks.size();
  std::vector<double> totals, overhead;
  std::vector<std::vector<double>> per_block(blocks);
  std::vector<std::int64_t> ns(blocks + 1);
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < iters; ++k) run_impl(input, batch, outs.data(), nullptr);  // untimed: the same steady state
    for (int k = 0; k < iters; ++k) {
      run_impl(input, batch, outs.data(), ns.data());
      std::int64_t engines = 0;
      for (std::size_t i = 0; i < blocks; ++i) {
        per_block[i].push_back(static_cast<double>(ns[i]));
        engines += ns[i];
      }
      overhead.push_back(static_cast<double>(ns[blocks] - engines));
      totals.push_back(static_cast<double>(ns[blocks]));
    }
  }
  Measurement m;
  m.chain_ns = median(totals);
  for (auto& b : per_block) m.block_ns.push_back(median(b));
  m.overhead_ns = median(overhead);
  return m;
}

}  // namespace lc
