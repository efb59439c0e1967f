// The exact selection solver. legocompile/optimize/problem.py defines a total order on the selections that fit a
// budget: the least accuracy_drop, then latency_ms (both compared as their math.fsum totals), then memory_bytes,
// then the lexicographically smallest choice. Its minimum is unique, so any exact solver returns the same
// selection as Python's legocompile/optimize/solver.py on every budget, ties included.
//
// This one is a depth-first branch and bound over a fixed block order (Python's: widest spread first), options in
// increasing reduced cost. Bounds: LP relaxations (Lagrangian multipliers, suffix hulls: the previous Python
// solver's, ported), Pareto staircases of the suffix sums ((memory, drop), (latency, drop), (memory, latency) and
// a lexicographic (memory, w*drop + latency)), and a choice-aware tie prune. Every bound is computed in floats and
// padded by a tolerance far above its rounding error, so it never prunes a branch that could beat or tie the
// incumbent; each leaf is compared exactly in the order above (fsum totals, Python's per-block option filter).
// Python's current solver uses exact integer staircases throughout and is faster on its adversarial 1/360-drop
// families at 16 x 10 (there this one takes up to ~1.5 s per solve); the answers are the same.
// Compile without FMA contraction (-ffp-contract=off) and without -ffast-math.
#pragma once

#include <cstdint>
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
