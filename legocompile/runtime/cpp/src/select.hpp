// Selections over a manifest's options (legocompile/optimize/select.py): the cost table, the multiplicative
// accuracy model, budgets in end-to-end terms (the chain overhead included) and explicit selections.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "manifest.hpp"
#include "solver.hpp"

namespace lc {

struct Totals {
  double latency_ms = 0;  // sum of the options' latencies + teacher.chain_overhead_ms (Selection.latency_ms)
  std::int64_t memory_bytes = 0;  // sum of the options' memory + the boundary buffers (Selection.memory_bytes)
  double accuracy = 0;  // T * prod(retention), at most 1 (Selection.accuracy)
};

// The budget as a caller gives it (select_options' arguments).
struct BudgetRequest {
  std::optional<double> latency_ms;
  std::optional<double> memory_mb;  // MB = 1e6 bytes
};

class Selector {
 public:
  // costs_of + prepare, in the order (and with the errors) of the Python Runtime's constructor.
  explicit Selector(const Manifest& manifest);

  // select_options: manifest option indices per block; throws lc::Infeasible or lc::Error.
  std::vector<int> select(const BudgetRequest& budget) const;

  // Runtime._explicit for (variant, precision) pairs in block order.
  std::vector<int> explicit_selection(const std::vector<std::pair<std::string, std::string>>& pairs) const;

  // The original fp32 selection (s0/fp32 of every block).
  const std::vector<int>& original() const { return original_; }

  Totals totals(const std::vector<int>& choice) const;

  // The least achievable totals in end-to-end terms (InfeasibleBudgetError's numbers).
  double min_latency_ms() const;
  std::int64_t min_memory_bytes() const { return prepared_.min_memory_bytes + boundary_bytes_; }

  // boundary_bytes(manifest): the boundary buffers (float32, profile batch) every selection runs on.
  std::int64_t boundary_bytes() const { return boundary_bytes_; }

 private:
  double overhead_ms() const;  // chain_overhead_ms(manifest): raises when the manifest's value is not a number

  const Manifest& m_;
  double teacher_accuracy_ = 0;
  std::vector<std::vector<int>> selectable_;  // per block: manifest indices of selectable options
  PreparedCosts prepared_;
  std::vector<int> original_;
  std::int64_t boundary_bytes_ = 0;
};

double retention(double drop, double teacher_accuracy);

}  // namespace lc
