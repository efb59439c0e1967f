// The block-selection problem (legocompile/optimize/problem.py): costs, solutions, exact sums, the budget texts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lc {

struct Cost {
  double latency_ms;
  std::int64_t memory_bytes;
  double accuracy_drop;  // what the solver minimises (select.py: -log(retention))
};

using CostTable = std::vector<std::vector<Cost>>;  // costs[b][o]: o indexes the block's selectable options

struct Solution {
  std::vector<int> choice;  // per block, an index into costs[b]
  double latency_ms = 0;    // fsum of the chosen latencies
  std::int64_t memory_bytes = 0;
  double accuracy_drop = 0;  // fsum of the chosen drops
};

// math.fsum: the correctly rounded sum (Shewchuk's partials, CPython's final rounding), independent of order.
double fsum(const double* values, std::size_t n);
inline double fsum(const std::vector<double>& v) { return fsum(v.data(), v.size()); }

// Python's format_ms / format_mb (problem.py), with the optional value they must be told apart from.
std::string format_ms(double latency_ms, const double* other_ms = nullptr);
std::string format_mb(double memory_bytes, const double* other_bytes = nullptr);

// InfeasibleBudgetError's message for the asked budget and the least achievable totals.
std::string infeasible_message(std::optional<double> latency_ms, std::optional<std::int64_t> memory_bytes,
                               double min_latency_ms, std::int64_t min_memory_bytes);

}  // namespace lc
