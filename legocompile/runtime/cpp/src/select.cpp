#include "select.hpp"

#include <cmath>

#include "error.hpp"
#include "pyfmt.hpp"

namespace lc {
namespace {

constexpr double kMinRetention = 1e-6;

double teacher_accuracy(const Manifest& m) {
  if (!m.teacher_accuracy.value) throw user_error(m.teacher_accuracy.problem);
  return *m.teacher_accuracy.value;
}

// costs_of(manifest), with Cost's validation messages.
CostTable costs_of(const Manifest& m, double t, std::vector<std::vector<int>>& selectable) {
  CostTable table;
  for (const auto& b : m.blocks) {
    table.emplace_back();
    selectable.emplace_back();
    for (std::size_t k = 0; k < b.options.size(); ++k) {
      const OptionEntry& o = b.options[k];
      if (o.excluded) continue;
      if (!std::isfinite(o.latency_ms) || o.latency_ms < 0)
        throw user_error("Cost.latency_ms must be a finite number >= 0, got " + py_float_repr(o.latency_ms));
      if (o.memory_bytes < 0)
        throw user_error("Cost.memory_bytes must be >= 0, got " + std::to_string(o.memory_bytes));
      const double drop = -std::log(retention(o.accuracy_drop, t));
      if (!std::isfinite(drop))
        throw user_error("Cost.accuracy_drop must be a finite number, got " + py_float_repr(drop));
      table.back().push_back({o.latency_ms, o.memory_bytes, drop});
      selectable.back().push_back(static_cast<int>(k));
    }
  }
  return table;
}

// boundary_bytes(manifest): block 0's input, every block's output and the last block's further outputs, as float32.
std::int64_t boundary_bytes_of(const Manifest& m) {
  std::vector<const TensorSpec*> specs;
  if (!m.blocks.empty()) specs.push_back(&m.blocks.front().input);
  for (const auto& b : m.blocks) specs.push_back(&b.output);
  if (!m.blocks.empty())
    for (const auto& t : m.blocks.back().extra_outputs) specs.push_back(&t);
  std::int64_t total = 0;
  for (const TensorSpec* t : specs) {
    std::int64_t n = 1;
    for (const std::int64_t d : t->shape) n *= d;
    total += n;
  }
  return total * 4;  // BOUNDARY_ITEMSIZE: every backend allocates boundary buffers as float32
}

}  // namespace

double retention(double drop, double teacher_accuracy) {
  if (!(teacher_accuracy > 0)) return kMinRetention;
  const double r = 1.0 - drop / teacher_accuracy;
  return kMinRetention > r ? kMinRetention : r;  // max(r, MIN_RETENTION): r unless MIN_RETENTION is larger
}

Selector::Selector(const Manifest& manifest)
    : m_(manifest),
      teacher_accuracy_(teacher_accuracy(manifest)),
      prepared_(costs_of(manifest, teacher_accuracy_, selectable_)) {
  for (const auto& b : manifest.blocks) original_.push_back(static_cast<int>(b.option_index("s0", "fp32")));
  boundary_bytes_ = boundary_bytes_of(manifest);
}

double Selector::overhead_ms() const {
  if (!m_.chain_overhead_ms.value) throw user_error(m_.chain_overhead_ms.problem);
  return *m_.chain_overhead_ms.value;
}

double Selector::min_latency_ms() const { return prepared_.min_latency_ms + overhead_ms(); }

std::vector<int> Selector::select(const BudgetRequest& budget) const {
  std::optional<std::int64_t> memory_bytes;
  if (budget.memory_mb) {
    const double scaled = *budget.memory_mb * 1e6;
    if (std::isnan(scaled)) throw user_error("cannot convert float NaN to integer");
    if (std::isinf(scaled)) throw user_error("cannot convert float infinity to integer");
    const double rounded = std::nearbyint(scaled);  // round(): half to even
    memory_bytes = rounded >= 9.2e18 ? INT64_MAX : rounded <= -9.2e18 ? INT64_MIN : static_cast<std::int64_t>(rounded);
  }
  if (budget.latency_ms && (std::isnan(*budget.latency_ms) || *budget.latency_ms <= 0))
    throw user_error("the latency budget (latency_ms) must be a positive number, got " +
                     py_float_repr(*budget.latency_ms));
  if (memory_bytes && *memory_bytes <= 0)
    throw user_error("the memory budget (memory_bytes) must be a positive number, got " +
                     std::to_string(*memory_bytes));
  const double overhead = overhead_ms();
  std::optional<double> blocks_budget;
  if (budget.latency_ms) {
    const double rest = *budget.latency_ms - overhead;
    blocks_budget = 1e-12 > rest ? 1e-12 : rest;  // max(rest, 1e-12)
  }
  std::optional<std::int64_t> engines_budget;
  if (memory_bytes) {
    const std::int64_t rest = *memory_bytes - boundary_bytes_;
    engines_budget = rest > 1 ? rest : 1;  // max(memory_bytes - buffers, 1)
  }
  Solution solution;
  try {
    solution = prepared_.solve(blocks_budget, engines_budget);
  } catch (const SolverInfeasible& e) {
    const double min_latency = e.min_latency_ms + overhead;
    const std::int64_t min_memory = e.min_memory_bytes + boundary_bytes_;
    throw Infeasible(infeasible_message(budget.latency_ms, memory_bytes, min_latency, min_memory), min_latency,
                     min_memory);
  }
  std::vector<int> out;
  for (std::size_t b = 0; b < solution.choice.size(); ++b) out.push_back(selectable_[b][solution.choice[b]]);
  return out;
}

std::vector<int> Selector::explicit_selection(const std::vector<std::pair<std::string, std::string>>& pairs) const {
  if (pairs.size() != m_.blocks.size())
    throw user_error("selection has " + std::to_string(pairs.size()) + " entries but the bundle has " +
                     std::to_string(m_.blocks.size()) + " blocks");
  std::vector<int> out;
  for (std::size_t b = 0; b < pairs.size(); ++b) {
    const BlockEntry& block = m_.blocks[b];
    const auto& [variant, precision] = pairs[b];
    const std::size_t k = block.option_index(variant, precision);
    const auto& reason = block.options[k].excluded;
    if (reason && !reason->empty())
      throw user_error("block " + py_str_repr(block.name) + ": option " + variant + "/" + precision +
                       " is excluded from selection: " + py_collapse_whitespace(*reason));
    out.push_back(static_cast<int>(k));
  }
  return out;
}

Totals Selector::totals(const std::vector<int>& choice) const {
  Totals t;
  double latency = 0.0;
  double product = 1.0;
  for (std::size_t b = 0; b < choice.size(); ++b) {
    const OptionEntry& o = m_.blocks[b].options[choice[b]];
    latency += o.latency_ms;
    t.memory_bytes += o.memory_bytes;
    product *= retention(o.accuracy_drop, teacher_accuracy_);
  }
  t.latency_ms = latency + overhead_ms();
  t.memory_bytes += boundary_bytes_;
  const double acc = teacher_accuracy_ * product;
  t.accuracy = acc < 1.0 ? acc : 1.0;
  return t;
}

}  // namespace lc
