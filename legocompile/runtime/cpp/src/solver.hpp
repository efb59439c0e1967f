// The exact selection solver. legocompile/optimize/problem.py defines a total order on the selections that fit a
// budget: the least accuracy_drop, then latency_ms (both compared as their math.fsum totals), then memory_bytes,
// then the lexicographically smallest choice. Its minimum is unique, so any exact solver returns the same
// selection as Python's legocompile/optimize/solver.py on every budget, ties included.
//
// The search is a port of Python's (PreparedCosts._search, see that module's docstring): drops and latencies
// scaled by a power of two to exact integers (__int128), a depth-first branch and bound over Python's block order
// with bounds from precomputed Pareto staircases of the suffix sums ((latency, drop), (memory, drop),
// (latency, memory), a lexicographic (memory, a*drop + b*latency), Lagrangian and surrogate joint ones) and the
// drop-level staircases (per suffix and drop level, the (latency, memory) staircase: exact drop bounds under both
// budgets on a 1/N_eval grid, and the latency and memory among drop ties). Same constants, same bounds, same
// branch order as Python's (up to float roundings in a few heuristics: the block order, the ratios; they change the
// speed, never the answer; the ratios are clamped to keep every value below 2**124). Used whenever the table's
// scaled totals fit in 100 bits (the optimizer benchmark's tables: at most 71).
//
// Otherwise (drops or latencies far below the others' last bit, e.g. 1e-40 next to 0.1) the older float search
// answers: LP relaxations (Lagrangian multipliers, suffix hulls), float staircases and a choice-aware tie prune,
// every bound padded by a tolerance far above its rounding error, each leaf compared exactly in the order above.
// It is exact too but has no drop-level bounds: measured up to 264 s for one solve on the benchmark's 16 x 15
// q360-mono tables under a memory budget.
// Compile without FMA contraction (-ffp-contract=off) and without -ffast-math.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "problem.hpp"

namespace lc {

// No selection fits: the least achievable totals (of the cost table, without the chain overhead).
struct SolverInfeasible {
  double min_latency_ms;
  std::int64_t min_memory_bytes;
};

class PreparedCosts {
 public:
  // validate_costs + dominance filtering, once per table. Throws lc::Error (Code::error) for an empty table.
  explicit PreparedCosts(const CostTable& costs);

  // solve_raw: the optimum under the bounds (nullopt: unbounded); throws SolverInfeasible.
  Solution solve(std::optional<double> latency_ms, std::optional<std::int64_t> memory_bytes) const;

  double min_latency_ms = 0;
  std::int64_t min_memory_bytes = 0;
  double max_latency_ms = 0;
  std::int64_t max_memory_bytes = 0;
  Solution unconstrained;

  struct Exact;  // the exact integer search (solver.cpp, a port of Python's): an implementation detail

  struct Opt {  // an option after dominance filtering: (drop, latency, memory, index in its block)
    double drop;
    double lat;
    std::int64_t mem;
    int index;
  };
  struct Segment {  // (rate, block, step, w saved, c added, target)
    double rate;
    int block;
    int step;
    double saved_w;
    double added_c;
    int target;
  };
  using Stairs = std::vector<std::vector<std::pair<double, double>>>;
  struct Hull {
    double c;
    double w;
    int start;
    std::vector<Segment> segments;
  };

 private:
  struct Multipliers {
    double lam;
    double mu;
    std::vector<std::vector<int>> selections;
  };
  std::shared_ptr<const Exact> exact_;  // null when the table's scaled totals do not fit (then the float search)
  const std::vector<Hull>& cached_hulls(int kind) const;  // 0 latency, 1 memory, 2 least memory, 3 least latency
  std::optional<Multipliers> multipliers(std::optional<double> lat_cap, std::optional<std::int64_t> mem_cap) const;
  std::optional<Solution> branch_and_bound(std::optional<double> lat_cap, std::optional<std::int64_t> mem_cap) const;

  std::vector<std::vector<Opt>> blocks_;
  std::vector<int> first_index_;
  // Exact Pareto staircases of the suffix sums (in the fixed search order order_), per suffix k: points (x, y)
  // with x ascending and y descending; "the least y of a completion with x <= r" is one binary search.
  std::vector<int> order_;
  Stairs mem_drop_, lat_drop_, mem_lat_, mem_lex_;
  double lex_weight_ = 0;  // mem_lex_'s y = lex_weight_ * drop + latency: one drop step outweighs all latency  // per block: the smallest option index left after filtering
  std::vector<Hull> hulls_[4];  // budget-independent hulls: (drop, lat), (drop, mem), (mem, lat), (lat, mem)
  double scale_drop_ = 0;
  double tol_factor_ = 0;
  bool exact_drop_ = false;
  bool exact_latency_ = false;
};

}  // namespace lc
