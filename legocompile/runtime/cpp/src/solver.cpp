// The exact selection solver (see solver.hpp): the exact integer search (a port of Python's, below "exact
// search"), and the float search for tables whose scaled totals do not fit its integers: the LP-relaxation branch
// and bound of an earlier legocompile/optimize/solver.py (comments name the Python function each part mirrors),
// padded by tolerances far above their rounding error, so they never prune a branch that could beat or tie the
// incumbent; every leaf is compared exactly in problem.py's total order (fsum drop, fsum latency, memory, then the
// smallest choice).
#include "solver.hpp"

#include <algorithm>
#include <array>
#include <iterator>
#include <cfloat>
#include <climits>
#include <cmath>
#include <functional>
#include <memory>
#include <limits>
#include <string>
#include <tuple>

#include "error.hpp"

namespace lc {
namespace {

using Opt = PreparedCosts::Opt;
using Segment = PreparedCosts::Segment;
using Hull = PreparedCosts::Hull;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kEps = DBL_EPSILON;

bool seg_less(const Segment& a, const Segment& b) {  // tuple order; (block, step) is unique
  if (a.rate != b.rate) return a.rate < b.rate;
  if (a.block != b.block) return a.block < b.block;
  return a.step < b.step;
}

// _filter: drops the options that can never be the answer. Option o goes when another k is no worse in drop,
// latency and memory and either needs strictly less memory or has a smaller index. An o that only loses on drop
// or latency to an option with a larger index stays: rounding can make the totals tie, and then o's smaller
// index wins.
std::vector<Opt> pareto_options(const std::vector<Cost>& block) {
  std::vector<Opt> options;
  for (std::size_t o = 0; o < block.size(); ++o)
    options.push_back({block[o].accuracy_drop, block[o].latency_ms, block[o].memory_bytes, static_cast<int>(o)});
  std::sort(options.begin(), options.end(), [](const Opt& a, const Opt& b) {
    return std::tie(a.drop, a.lat, a.mem, a.index) < std::tie(b.drop, b.lat, b.mem, b.index);
  });
  std::vector<Opt> kept;
  for (const Opt& option : options) {
    bool dominated = false;
    for (const Opt& k : kept)  // every kept option has a drop <= this one (sort order)
      if (k.lat <= option.lat && k.mem <= option.mem && (k.mem < option.mem || k.index < option.index)) {
        dominated = true;
        break;
      }
    if (!dominated) kept.push_back(option);
  }
  return kept;
}

// _hull(block_id, points): points are (c, w) per option, in option order.
Hull make_hull(int block_id, const std::vector<std::pair<double, double>>& points) {
  struct P {
    double w, c;
    int i;
  };
  std::vector<P> sorted;
  for (std::size_t i = 0; i < points.size(); ++i)
    sorted.push_back({points[i].second, points[i].first, static_cast<int>(i)});
  std::sort(sorted.begin(), sorted.end(),
            [](const P& a, const P& b) { return std::tie(a.w, a.c, a.i) < std::tie(b.w, b.c, b.i); });
  std::vector<P> hull;
  for (const P& p3 : sorted) {
    if (!hull.empty() && p3.c >= hull.back().c) continue;
    while (hull.size() >= 2) {
      const P& p1 = hull[hull.size() - 2];
      const P& p2 = hull[hull.size() - 1];
      const double lhs = (p2.w - p1.w) * (p3.c - p1.c);
      const double rhs = (p2.c - p1.c) * (p3.w - p1.w);
      if (lhs - rhs > 0) break;
      hull.pop_back();
    }
    hull.push_back(p3);
  }
  Hull out;
  double rate_floor = 0.0;
  double w_from = hull.back().w, c_from = hull.back().c;
  for (std::size_t step = 0; step + 1 < hull.size(); ++step) {
    const P& to = hull[hull.size() - 2 - step];
    const double rate = (to.c - c_from) / (w_from - to.w);
    if (rate > rate_floor) rate_floor = rate;  // max(rate_floor, rate)
    out.segments.push_back({rate_floor, block_id, static_cast<int>(step), w_from - to.w, to.c - c_from, to.i});
    w_from = to.w;
    c_from = to.c;
  }
  out.w = hull.back().w;
  out.c = hull.back().c;
  out.start = hull.back().i;
  return out;
}

struct Walk {
  double multiplier;
  std::vector<int> selection;
  double value;
  double other_lp;
};

// _walk(hulls, capacity, other)
Walk walk(const std::vector<Hull>& hulls, double capacity, const std::vector<std::vector<double>>* other) {
  std::vector<int> selection;
  std::vector<double> cs, ws;
  std::vector<Segment> segments;
  for (const Hull& h : hulls) {
    selection.push_back(h.start);
    cs.push_back(h.c);
    ws.push_back(h.w);
    segments.insert(segments.end(), h.segments.begin(), h.segments.end());
  }
  double total_c = fsum(cs);
  double total_w = fsum(ws);
  std::sort(segments.begin(), segments.end(), seg_less);
  double multiplier = 0.0;
  bool crossed = false;
  int cb = 0, cprev = 0, ctarget = 0;
  double csaved = 0;
  for (const Segment& s : segments) {
    if (total_w <= capacity) break;
    multiplier = s.rate;
    crossed = true;
    cb = s.block;
    cprev = selection[s.block];
    ctarget = s.target;
    csaved = s.saved_w;
    total_w -= s.saved_w;
    total_c += s.added_c;
    selection[s.block] = s.target;
  }
  const double value = total_c + multiplier * (total_w - capacity);
  double other_lp = 0.0;
  if (other != nullptr) {
    std::vector<double> vals;
    for (std::size_t b = 0; b < selection.size(); ++b) vals.push_back((*other)[b][selection[b]]);
    other_lp = fsum(vals);
    if (crossed && total_w < capacity)
      other_lp += (capacity - total_w) / csaved * ((*other)[cb][cprev] - (*other)[cb][ctarget]);
  }
  return {multiplier, std::move(selection), value, other_lp};
}

// _sums_exactly: every sum of one value per block is exact in floating point.
bool sums_exactly(const std::vector<std::vector<double>>& values) {
  struct Ratio {
    std::uint64_t m;  // |numerator| / 2**k, odd
    int e;            // value = m * 2**e
    bool zero;
  };
  std::vector<std::vector<Ratio>> ratios;
  int unit_exp = 0;  // unit = 2**unit_exp, the largest denominator
  for (const auto& block : values) {
    std::vector<Ratio> rs;
    for (double v : block) {
      if (v == 0) {
        rs.push_back({0, 0, true});
        continue;
      }
      int e = 0;
      const double m = std::frexp(std::fabs(v), &e);
      std::uint64_t mant = static_cast<std::uint64_t>(std::ldexp(m, 53));
      int exp = e - 53;
      while ((mant & 1) == 0) {
        mant >>= 1;
        ++exp;
      }
      rs.push_back({mant, exp, false});
      if (-exp > unit_exp) unit_exp = -exp;
    }
    ratios.push_back(std::move(rs));
  }
  const unsigned __int128 limit = static_cast<unsigned __int128>(1) << 53;
  unsigned __int128 total = 0;
  for (const auto& block : ratios) {
    unsigned __int128 best = 0;
    for (const Ratio& r : block) {
      if (r.zero) continue;
      const int shift = r.e + unit_exp;  // term = m * unit / den = m * 2**(e + unit_exp), shift >= 0
      if (shift >= 53) return false;
      const unsigned __int128 term = static_cast<unsigned __int128>(r.m) << shift;
      if (term >= limit) return false;
      if (term > best) best = term;
    }
    total += best;
    if (total >= limit) return false;
  }
  return total < limit;
}

struct LP {  // _suffix_lp's (c0, w0, saved, added, rates, max_rate)
  std::vector<double> c0, w0;
  std::vector<std::vector<double>> saved, added, rates;
  double max_rate = 0.0;
};

// _suffix_lp(hulls): hulls in search order.
LP suffix_lp(const std::vector<const Hull*>& hulls) {
  const std::size_t n = hulls.size();
  LP lp;
  lp.c0.assign(n + 1, 0.0);
  lp.w0.assign(n + 1, 0.0);
  lp.saved.assign(n + 1, {0.0});
  lp.added.assign(n + 1, {0.0});
  lp.rates.assign(n + 1, {});
  std::vector<Segment> merged;
  for (std::size_t k = n; k-- > 0;) {
    const Hull& h = *hulls[k];
    lp.c0[k] = lp.c0[k + 1] + h.c;
    lp.w0[k] = lp.w0[k + 1] + h.w;
    merged.insert(merged.end(), h.segments.begin(), h.segments.end());
    std::sort(merged.begin(), merged.end(), seg_less);
    std::vector<double>& saved = lp.saved[k];
    std::vector<double>& added = lp.added[k];
    std::vector<double>& rates = lp.rates[k];
    saved.assign(1, 0.0);
    added.assign(1, 0.0);
    rates.clear();
    for (const Segment& s : merged) {
      saved.push_back(saved.back() + s.saved_w);
      added.push_back(added.back() + s.added_c);
      rates.push_back(s.rate);
    }
  }
  if (!lp.rates[0].empty()) lp.max_rate = *std::max_element(lp.rates[0].begin(), lp.rates[0].end());
  return lp;
}

// The LP value of a suffix at `need` (the shared expression of the three LP bounds in the search).
inline double lp_at(const LP& lp, std::size_t k1, double need) {
  if (need > 0.0) {
    const std::vector<double>& saved = lp.saved[k1];
    const std::size_t j = static_cast<std::size_t>(std::lower_bound(saved.begin(), saved.end(), need) - saved.begin());
    if (j < saved.size())
      return lp.c0[k1] + lp.added[k1][j - 1] + (need - saved[j - 1]) * lp.rates[k1][j - 1];
    return lp.c0[k1] + lp.added[k1].back();
  }
  return lp.c0[k1];
}

// The Pareto staircases of every suffix k..n-1 of `blocks` (one (x, y) point per option), coarsened to at most
// about `limit` points (a slice's least x and least y: a point that dominates the slice, so look-ups stay lower
// bounds).
PreparedCosts::Stairs staircases(const std::vector<std::vector<std::pair<double, double>>>& blocks,
                                 std::size_t limit) {
  const std::size_t n = blocks.size();
  PreparedCosts::Stairs out(n + 1);
  out[n] = {{0.0, 0.0}};
  std::vector<std::pair<double, double>> cand;
  for (std::size_t k = n; k-- > 0;) {
    cand.clear();
    for (const auto& [x, y] : blocks[k])
      for (const auto& [px, py] : out[k + 1]) cand.emplace_back(px + x, py + y);
    std::sort(cand.begin(), cand.end());
    std::vector<std::pair<double, double>>& front = out[k];
    for (const auto& p : cand)
      if (front.empty() || p.second < front.back().second) front.push_back(p);
    if (front.size() > limit) {
      const double first = front.front().first, width = (front.back().first - first) / static_cast<double>(limit);
      std::vector<std::pair<double, double>> coarse{front.front()};
      double slice = 0;
      for (std::size_t i = 1; i < front.size(); ++i) {
        const double si = width > 0 ? std::floor((front[i].first - first) / width) : 0;
        if (si == slice) {
          coarse.back().second = front[i].second;  // the slice's least x, its least y
        } else {
          coarse.push_back(front[i]);
          slice = si;
        }
      }
      front.swap(coarse);
    }
  }
  return out;
}

// The least y of a staircase point with x <= r, or +inf when none.
inline double least_y(const std::vector<std::pair<double, double>>& stairs, double r) {
  const auto it = std::upper_bound(stairs.begin(), stairs.end(), r,
                                   [](double v, const std::pair<double, double>& p) { return v < p.first; });
  return it == stairs.begin() ? std::numeric_limits<double>::infinity() : std::prev(it)->second;
}

struct TupleKey {  // (drop, latency, memory) compared as Python tuples
  double d, l;
  std::int64_t m;
  bool operator<(const TupleKey& o) const {
    if (d != o.d) return d < o.d;
    if (l != o.l) return l < o.l;
    return m < o.m;
  }
  bool operator==(const TupleKey& o) const { return d == o.d && l == o.l && m == o.m; }
};

// The total order of problem.py: (drop, latency, memory), then the lexicographically smallest choice.
bool better(const TupleKey& k, const std::vector<int>& choice, const TupleKey& best,
            const std::vector<int>& best_choice, bool have_best) {
  if (!have_best) return true;
  if (k < best) return true;
  return k == best && choice < best_choice;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ exact search
// A port of legocompile/optimize/solver.py's branch and bound (PreparedCosts._search and the staircases that
// prepare builds; comments name the Python function each part mirrors): drops and latencies scaled by a power of
// two to exact integers (__int128), so every sum, bound and pruning decision is exact, with no tolerance. Used
// when every scaled total fits in 100 bits (then no intermediate value exceeds 2**124); else the float search
// above answers.
namespace {

using i128 = __int128;
using u128 = unsigned __int128;
using Pt = std::pair<i128, i128>;

constexpr int kFitBits = 100;                   // scaled totals below 2**kFitBits
constexpr i128 kHuge = static_cast<i128>(1) << 124;  // above any total: an absent bound, no incumbent yet
constexpr int kLevels = 256;       // _LEVELS
constexpr std::size_t kLevelPoints = 128;  // _LEVEL_POINTS
constexpr int kQuantBits = 40;     // _QUANT_BITS
constexpr std::size_t kCoarse = 256;      // _COARSE
constexpr std::size_t kCoarseLex = 1024;  // _COARSE_LEX

int bit_length(i128 v) {  // Python's int.bit_length()
  u128 u = v < 0 ? -static_cast<u128>(v) : static_cast<u128>(v);
  int n = 0;
  while (u != 0) {
    ++n;
    u >>= 1;
  }
  return n;
}

i128 floor_div(i128 a, i128 b) {  // Python's a // b (b > 0)
  i128 q = a / b;
  if (a % b != 0 && a < 0) --q;
  return q;
}

i128 pow2(int e) { return static_cast<i128>(1) << e; }

// The correctly rounded (half to even) double of an integer.
double to_double(i128 v) {
  const bool neg = v < 0;
  const u128 u = neg ? -static_cast<u128>(v) : static_cast<u128>(v);
  const int nb = bit_length(static_cast<i128>(u));
  double r;
  if (nb <= 53) {
    r = static_cast<double>(static_cast<std::uint64_t>(u));
  } else {
    const int drop = nb - 53;
    u128 m = u >> drop;
    const u128 rem = u & ((static_cast<u128>(1) << drop) - 1);
    const u128 half = static_cast<u128>(1) << (drop - 1);
    if (rem > half || (rem == half && (m & 1) != 0)) ++m;
    r = std::ldexp(static_cast<double>(static_cast<std::uint64_t>(m)), drop);
  }
  return neg ? -r : r;
}

// x == mant * 2**exp, mant odd (0 for x == 0).
void decompose(double x, std::int64_t& mant, int& exp) {
  mant = 0;
  exp = 0;
  if (x == 0) return;
  int e = 0;
  const double f = std::frexp(x, &e);
  mant = static_cast<std::int64_t>(std::ldexp(f, 53));
  exp = e - 53;
  while (mant % 2 == 0) {
    mant /= 2;
    ++exp;
  }
}

// floor((a + b) / 2) for neighbouring doubles a, b (|a|, |b| < 2**120), exactly (_half_sum_scaled's use).
i128 floor_half_sum(double a, double b) {
  std::int64_t ma, mb;
  int ea, eb;
  decompose(a, ma, ea);
  decompose(b, mb, eb);
  if (ma == 0) ea = eb;
  if (mb == 0) eb = ea;
  const int low = std::min(ea, eb);
  const i128 m = static_cast<i128>(ma) * pow2(ea - low) + static_cast<i128>(mb) * pow2(eb - low);
  const int e = low - 1;  // (a + b) / 2 == m * 2**e
  if (e >= 0) return m * pow2(e);
  if (-e >= 126) return m < 0 ? -1 : 0;
  return floor_div(m, pow2(-e));
}

// _band: the integers v with to_double(v) == x (x integer-valued), as (lo, hi).
std::pair<i128, i128> band(double x) {
  i128 lo = -floor_half_sum(-x, -std::nextafter(x, -kInf));  // ceil of the midpoint with the float below
  if (to_double(lo) != x) ++lo;  // the midpoint itself rounds to the float below (ties to even)
  i128 hi = floor_half_sum(x, std::nextafter(x, kInf));
  if (to_double(hi) != x) --hi;
  return {lo, hi};
}

// _limit: the largest integer v with to_double(v) <= x.
i128 limit_of(double x) {
  if (!(std::fabs(x) < std::ldexp(1.0, 120))) return x > 0 ? kHuge : -kHuge;
  i128 hi = floor_half_sum(x, std::nextafter(x, kInf));
  while (to_double(hi) > x) --hi;
  return hi;
}

// _ratio: (a, b) powers of two with b / a the power of two nearest num / den, times 2**step; the exponents
// clamped to max_a and max_b (any positive ratio gives a valid bound).
std::pair<i128, i128> ratio(i128 num, i128 den, int step, int max_a, int max_b) {
  const double e_real = std::nearbyint(std::log2(to_double(num)) - std::log2(to_double(den)));
  int e = static_cast<int>(e_real) + step;
  if (e >= 0) return {1, pow2(std::max(0, std::min(e, max_b)))};
  return {pow2(std::max(0, std::min(-e, max_a))), 1};
}

// _pareto: the non-dominated points, x ascending, y descending.
std::vector<Pt> pareto(std::vector<Pt> points) {
  std::sort(points.begin(), points.end());
  std::vector<Pt> front;
  for (const Pt& p : points)
    if (front.empty() || p.second < front.back().second) front.push_back(p);
  return front;
}

// Coarsens a staircase (x ascending, y descending) of more than `limit` points: per slice of the x range, the
// slice's least x and least y (a point dominating the slice).
template <class P>
void coarsen(std::vector<P>& front, std::size_t limit) {
  if (front.size() <= limit) return;
  const auto first = front.front().first;
  const auto width = (front.back().first - first) / static_cast<decltype(first)>(limit) + 1;
  std::size_t out = 0;
  auto slice_of = (front[0].first - first) / width;
  for (std::size_t i = 1; i < front.size(); ++i) {
    const auto s = (front[i].first - first) / width;
    if (s == slice_of) {
      front[out].second = front[i].second;
    } else {
      front[++out] = front[i];
      slice_of = s;
    }
  }
  front.resize(out + 1);
}

// out = the Pareto front of a's points and b's shifted by (dx, dy), both fronts (x ascending, y descending): a
// merge in (x, y) order and a scan, so the same points as sorting the union and scanning it.
template <class T>
void merge_front(const std::vector<std::pair<T, T>>& a, const std::vector<std::pair<T, T>>& b, T dx, T dy,
                 std::vector<std::pair<T, T>>& out) {
  out.clear();
  std::size_t i = 0, k = 0;
  while (i < a.size() || k < b.size()) {
    std::pair<T, T> p;
    if (k == b.size()) {
      p = a[i++];
    } else {
      const std::pair<T, T> q{b[k].first + dx, b[k].second + dy};
      if (i < a.size() && !(q < a[i])) {
        p = a[i++];
      } else {
        p = q;
        ++k;
      }
    }
    if (out.empty() || p.second < out.back().second) out.push_back(p);
  }
}

struct Stair {  // xs ascending, ys descending
  std::vector<i128> xs, ys;
};
using IStairs = std::vector<Stair>;  // per suffix j = 1..n (n: the empty suffix)

// _staircases: the Pareto staircases of the suffix sums of (x, y) (one point per option), suffixes 1..n-1.
IStairs staircases(const std::vector<std::vector<Pt>>& blocks, std::size_t limit) {
  const std::size_t n = blocks.size();
  IStairs out(n + 1);
  out[n].xs = {0};
  out[n].ys = {0};
  std::vector<Pt> front{{0, 0}}, acc, tmp;
  for (std::size_t j = n - 1; j >= 1; --j) {
    acc.clear();
    for (const Pt& p : pareto(blocks[j])) {  // the previous staircase shifted by each point of the block
      merge_front(acc, front, p.first, p.second, tmp);
      acc.swap(tmp);
    }
    front.swap(acc);
    if (limit > 0) coarsen(front, limit);
    for (const Pt& p : front) {
      out[j].xs.push_back(p.first);
      out[j].ys.push_back(p.second);
    }
  }
  return out;
}

// ys[bisect_right(xs, r) - 1]: the least y of a point with x <= r (kHuge when none: nothing fits).
inline i128 y_at(const Stair& s, i128 r) {
  const auto it = std::upper_bound(s.xs.begin(), s.xs.end(), r);
  return it == s.xs.begin() ? kHuge : s.ys[static_cast<std::size_t>(it - s.xs.begin()) - 1];
}

// xs[bisect_left(-ys, -r)]: the least x of a point with y <= r (kHuge when none).
inline i128 x_at(const Stair& s, i128 r) {
  const auto it = std::lower_bound(s.ys.begin(), s.ys.end(), r, std::greater<i128>());
  return it == s.ys.end() ? kHuge : s.xs[static_cast<std::size_t>(it - s.ys.begin())];
}

}  // namespace

struct PreparedCosts::Exact {
  struct IOpt {
    i128 d, t, m;
    int index;
  };
  struct Joint {  // every completion within (r_t, r_m) has a*drop >= y(x_t*r_t + x_m*r_m) - (s_t*r_t + s_m*r_m)
    i128 x_t, x_m, s_t, s_m, a;
    IStairs stairs;
  };
  struct Levels {  // _Levels
    i128 delta = 0, qt = 1, qm = 1;
    std::vector<i128> base;
    std::vector<int> top;
    std::vector<std::vector<i128>> least;
    std::vector<std::vector<std::vector<std::int64_t>>> xs, ys;  // [j][level]
  };

  int drop_exp = 0, lat_exp = 0;  // scales 2**drop_exp, 2**lat_exp
  std::vector<int> order;         // search position -> block
  std::vector<int> first_index;   // per block
  std::vector<std::vector<IOpt>> blocks;  // search order, each sorted by (drop, latency, memory, index)
  std::vector<i128> min_d, min_t, min_m;  // per suffix
  bool drops_vary = false;
  IStairs dt, dm, tm;
  std::vector<Joint> joint;
  bool has_lex = false;
  i128 lex_a = 1, lex_b = 1;
  IStairs lex;
  bool has_levels = false;
  Levels levels;

  static std::shared_ptr<const Exact> make(const std::vector<std::vector<Opt>>& filtered,
                                           const std::vector<int>& first_index);
  std::optional<Solution> search(std::optional<double> latency_ms, std::optional<std::int64_t> memory_bytes) const;
  double drop_value(i128 v) const { return std::ldexp(to_double(v), -drop_exp); }
  double lat_value(i128 v) const { return std::ldexp(to_double(v), -lat_exp); }
};

namespace {

using Exact = PreparedCosts::Exact;

// _level_step: the drop step of the levels (0 when all drops tie).
i128 level_step(const std::vector<std::vector<i128>>& residuals) {
  std::vector<i128> values;
  i128 total = 0;
  for (const auto& block : residuals) {
    i128 top = 0;
    for (i128 r : block) {
      if (r > 0) values.push_back(r);
      top = std::max(top, r);
    }
    total += top;
  }
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  const i128 coarse = (total + kLevels - 1) / kLevels;
  i128 g = 0;
  for (i128 r : values) {
    i128 a = g, b = r;
    while (b != 0) {
      const i128 t = a % b;
      a = b;
      b = t;
    }
    g = a;
  }
  if (total / g <= kLevels) return g;  // exact integer grid
  for (int parts = 1; parts < 5; ++parts) {  // the smallest residual is 1..4 units
    const double unit = to_double(values[0]) / parts;
    bool grid = true;
    for (i128 r : values) {
      const double q = to_double(r) / unit;
      if (!(std::fabs(q - std::nearbyint(q)) <= 1e-6)) {
        grid = false;
        break;
      }
    }
    if (grid) {
      const i128 step = static_cast<i128>(unit * (1 - 1e-9));
      if (step > 0 && total / step <= kLevels) return step;
      break;
    }
  }
  return std::max<i128>(coarse, 1);
}

// _level_staircases
bool level_staircases(const std::vector<std::vector<Exact::IOpt>>& blocks, Exact::Levels& out) {
  const std::size_t n = blocks.size();
  std::vector<std::vector<i128>> residuals;
  for (const auto& block : blocks) {
    residuals.emplace_back();
    for (const auto& o : block) residuals.back().push_back(o.d - block[0].d);
  }
  const i128 delta = level_step(residuals);
  if (delta == 0) return false;
  i128 total_t = 0, total_m = 0;
  for (const auto& block : blocks) {
    i128 mt = 0, mm = 0;
    for (const auto& o : block) {
      mt = std::max(mt, o.t);
      mm = std::max(mm, o.m);
    }
    total_t += mt;
    total_m += mm;
  }
  out.delta = delta;
  out.qt = std::max<i128>(1, total_t >> kQuantBits);
  out.qm = std::max<i128>(1, total_m >> kQuantBits);
  out.base.assign(n + 1, 0);
  out.top.assign(n + 1, 0);
  out.least.assign(n + 1, {});
  out.xs.assign(n + 1, {});
  out.ys.assign(n + 1, {});
  using P64 = std::pair<std::int64_t, std::int64_t>;
  std::vector<std::vector<P64>> prev{{{0, 0}}};
  std::vector<i128> least{0};
  int top = 0;
  std::vector<P64> front, tmp;
  for (std::size_t j = n - 1; j >= 1; --j) {
    const auto& block = blocks[j];
    out.base[j] = out.base[j + 1] + block[0].d;
    std::vector<int> lv;
    int max_lv = 0;
    for (std::size_t o = 0; o < block.size(); ++o) {
      lv.push_back(static_cast<int>(residuals[j][o] / delta));
      max_lv = std::max(max_lv, lv.back());
    }
    const int new_top = top + max_lv;
    std::vector<std::vector<P64>> cur(static_cast<std::size_t>(new_top) + 1);
    for (int c = 0; c <= new_top; ++c) {
      front.clear();
      for (std::size_t o = 0; o < block.size(); ++o) {
        if (lv[o] > c) continue;
        merge_front(front, prev[static_cast<std::size_t>(std::min(c - lv[o], top))],
                    static_cast<std::int64_t>(block[o].t / out.qt), static_cast<std::int64_t>(block[o].m / out.qm),
                    tmp);
        front.swap(tmp);
      }
      coarsen(front, kLevelPoints);
      cur[static_cast<std::size_t>(c)] = front;
    }
    std::vector<i128> next(static_cast<std::size_t>(new_top) + 1);
    for (int c = 0; c <= new_top; ++c) {
      bool any = false;
      i128 best = 0;
      for (std::size_t o = 0; o < block.size(); ++o) {
        if (c - lv[o] > top) continue;
        const i128 v = residuals[j][o] + least[static_cast<std::size_t>(std::max(c - lv[o], 0))];
        if (!any || v < best) best = v;
        any = true;
      }
      next[static_cast<std::size_t>(c)] = best;
    }
    least.swap(next);
    prev.swap(cur);
    top = new_top;
    out.top[j] = top;
    out.least[j] = least;
    out.xs[j].resize(prev.size());
    out.ys[j].resize(prev.size());
    for (std::size_t c = 0; c < prev.size(); ++c)
      for (const P64& p : prev[c]) {
        out.xs[j][c].push_back(p.first);
        out.ys[j][c].push_back(p.second);
      }
  }
  return true;
}

}  // namespace

std::shared_ptr<const Exact> Exact::make(const std::vector<std::vector<Opt>>& filtered,
                                         const std::vector<int>& first_index) {
  auto x = std::make_shared<Exact>();
  const std::size_t n = filtered.size();
  // _scale: the smallest powers of two that make every drop and latency an integer.
  int drop_exp = 0, lat_exp = 0;
  for (const auto& block : filtered)
    for (const Opt& o : block) {
      std::int64_t mant;
      int e;
      decompose(o.drop, mant, e);
      if (mant != 0) drop_exp = std::max(drop_exp, -e);
      decompose(o.lat, mant, e);
      if (mant != 0) lat_exp = std::max(lat_exp, -e);
    }
  if (drop_exp > kFitBits || lat_exp > kFitBits) return nullptr;
  x->drop_exp = drop_exp;
  x->lat_exp = lat_exp;
  // _to_int, with the fit check: every scaled value below 2**(kFitBits - 8), every total below 2**kFitBits.
  auto to_int = [](double v, int scale_exp, bool& fits) -> i128 {
    std::int64_t mant;
    int e;
    decompose(v, mant, e);
    if (mant == 0) return 0;
    const int shift = e + scale_exp;
    if (bit_length(mant) + shift > kFitBits - 8) {
      fits = false;
      return 0;
    }
    return static_cast<i128>(mant) * pow2(shift);
  };
  bool fits = true;
  std::vector<std::vector<IOpt>> scaled(n);
  std::array<i128, 3> totals{0, 0, 0};  // sums of the blocks' largest |drop|, latency, memory
  for (std::size_t b = 0; b < n; ++b) {
    std::array<i128, 3> top{0, 0, 0};
    for (const Opt& o : filtered[b]) {
      const IOpt io{to_int(o.drop, drop_exp, fits), to_int(o.lat, lat_exp, fits), static_cast<i128>(o.mem), o.index};
      if (!fits) return nullptr;
      scaled[b].push_back(io);
      top[0] = std::max(top[0], io.d < 0 ? -io.d : io.d);
      top[1] = std::max(top[1], io.t);
      top[2] = std::max(top[2], io.m);
    }
    for (int a = 0; a < 3; ++a) totals[a] += top[a];
  }
  std::array<int, 3> room{};  // the largest weight exponent per attribute: weight * 3 * total < 2**120
  for (int a = 0; a < 3; ++a) {
    if (bit_length(totals[a]) > kFitBits) return nullptr;
    room[a] = 120 - bit_length(3 * totals[a] + 2);
  }
  x->first_index = first_index;

  // Search order: the blocks whose options differ most first (ranges relative to the table's).
  std::vector<std::array<i128, 3>> ranges(n);
  std::array<i128, 3> spans{0, 0, 0};
  for (std::size_t b = 0; b < n; ++b) {
    for (int a = 0; a < 3; ++a) {
      i128 lo = 0, hi = 0;
      for (std::size_t k = 0; k < scaled[b].size(); ++k) {
        const IOpt& o = scaled[b][k];
        const i128 v = a == 0 ? o.d : a == 1 ? o.t : o.m;
        if (k == 0 || v < lo) lo = v;
        if (k == 0 || v > hi) hi = v;
      }
      ranges[b][a] = hi - lo;
      spans[a] += hi - lo;
    }
  }
  std::vector<std::pair<double, int>> keyed;
  for (std::size_t b = 0; b < n; ++b) {
    double spread = 0;
    for (int a = 0; a < 3; ++a)
      if (spans[a] > 0) spread += to_double(ranges[b][a]) / to_double(spans[a]);
    keyed.emplace_back(-spread, static_cast<int>(b));
  }
  std::sort(keyed.begin(), keyed.end());
  for (const auto& kv : keyed) {
    x->order.push_back(kv.second);
    auto block = scaled[static_cast<std::size_t>(kv.second)];
    std::sort(block.begin(), block.end(), [](const IOpt& p, const IOpt& q) {
      return std::tie(p.d, p.t, p.m, p.index) < std::tie(q.d, q.t, q.m, q.index);
    });
    x->blocks.push_back(std::move(block));
  }
  const auto& blocks = x->blocks;
  x->min_d.assign(n + 1, 0);
  x->min_t.assign(n + 1, 0);
  x->min_m.assign(n + 1, 0);
  for (std::size_t j = n; j-- > 0;) {
    i128 d = blocks[j][0].d, t = blocks[j][0].t, m = blocks[j][0].m;
    for (const IOpt& o : blocks[j]) {
      d = std::min(d, o.d);
      t = std::min(t, o.t);
      m = std::min(m, o.m);
    }
    x->min_d[j] = x->min_d[j + 1] + d;
    x->min_t[j] = x->min_t[j + 1] + t;
    x->min_m[j] = x->min_m[j + 1] + m;
  }
  auto stairs = [&](auto fx, auto fy, std::size_t limit) {
    std::vector<std::vector<Pt>> pts;
    for (const auto& block : blocks) {
      pts.emplace_back();
      for (const IOpt& o : block) pts.back().emplace_back(fx(o), fy(o));
    }
    return staircases(pts, limit);
  };
  for (std::size_t j = 1; j < n; ++j)
    if (blocks[j].front().d != blocks[j].back().d) x->drops_vary = true;
  const auto d_of = [](const IOpt& o) { return o.d; };
  const auto t_of = [](const IOpt& o) { return o.t; };
  const auto m_of = [](const IOpt& o) { return o.m; };
  x->dt = stairs(t_of, d_of, 0);
  x->dm = stairs(m_of, d_of, 0);
  x->tm = stairs(t_of, m_of, 0);
  if (n > 1 && spans[0] > 0) {
    if (spans[1] > 0 && spans[2] > 0) {
      const auto [c, e] = ratio(spans[1], spans[2], 0, room[1], room[2]);  // _SURROGATE_STEPS = (0,)
      x->joint.push_back({c, e, 0, 0, 1, stairs([c = c, e = e](const IOpt& o) { return c * o.t + e * o.m; },
                                                d_of, kCoarse)});
    }
    if (spans[1] > 0) {
      for (int step : {-2, 0, 2}) {  // _RATIO_STEPS
        const auto [a, b] = ratio(spans[0], spans[1], step, room[0], room[1]);
        x->joint.push_back({0, 1, b, 0, a, stairs(m_of, [a = a, b = b](const IOpt& o) { return a * o.d + b * o.t; },
                                                  kCoarse)});
      }
      // Lexicographic: a drop step (the least gap between two drops of a block) outweighs any latency span.
      i128 gap = 0;
      for (const auto& block : blocks)
        for (const IOpt& p : block)
          for (const IOpt& q : block)
            if (p.d > q.d && (gap == 0 || p.d - q.d < gap)) gap = p.d - q.d;
      const auto [a, b] = ratio(gap, 4 * spans[1], -1, room[0], room[1]);
      x->has_lex = true;
      x->lex_a = a;
      x->lex_b = b;
      x->lex = stairs(m_of, [a = a, b = b](const IOpt& o) { return a * o.d + b * o.t; }, kCoarseLex);
    }
    if (spans[2] > 0) {
      for (int step : {-2, 0, 2}) {
        const auto [a, b] = ratio(spans[0], spans[2], step, room[0], room[2]);
        x->joint.push_back({1, 0, 0, b, a, stairs(t_of, [a = a, b = b](const IOpt& o) { return a * o.d + b * o.m; },
                                                  kCoarse)});
      }
    }
  }
  x->has_levels = n > 1 && x->drops_vary && level_staircases(blocks, x->levels);
  return x;
}

namespace {

// PreparedCosts._search's state and nested functions.
class ExactSearch {
 public:
  ExactSearch(const Exact& x, std::optional<double> latency_ms, std::optional<std::int64_t> memory_bytes)
      : x_(x), n_(x.blocks.size()), last_(n_ - 1) {
    has_l_ = latency_ms.has_value();
    has_m_ = memory_bytes.has_value();
    lim_t_ = has_l_ ? limit_of(std::ldexp(*latency_ms, x.lat_exp)) : kHuge;
    lim_m_ = has_m_ ? static_cast<i128>(*memory_bytes) : kHuge;
    if (has_l_ && has_m_)
      for (std::size_t g = 0; g < x.joint.size(); ++g) joint_.push_back(&x.joint[g]);
    lex_ = has_m_ && x.has_lex;
    levels_ = has_l_ && has_m_ && x.has_levels ? &x.levels : nullptr;
    path_.assign(n_, 0);
    choice_.assign(n_, 0);
    branches_.resize(n_);
  }

  std::optional<Solution> run() {
    dfs(0, 0, 0, 0);
    if (!have_inc_) return std::nullopt;
    Solution s;
    s.choice = inc_choice_;
    s.latency_ms = inc_t_;
    s.memory_bytes = static_cast<std::int64_t>(inc_m_);
    s.accuracy_drop = inc_d_;
    return s;
  }

 private:
  struct Branch {
    i128 bd, bt, nd, nt, nm;
    int index;
    long seen;
  };

  // smallest_choice: the smallest choice (block order) of a selection extending path[:k] + [index].
  const std::vector<int>& smallest_choice(std::size_t k, int index) {
    choice_ = x_.first_index;
    for (std::size_t p = 0; p < k; ++p) choice_[static_cast<std::size_t>(x_.order[p])] = path_[p];
    choice_[static_cast<std::size_t>(x_.order[k])] = index;
    return choice_;
  }

  // The least drop level in [0, high] at which a completion fits (qrt, qrm), or -1 (the binary search in solver.py's drop_bound).
  bool level_fits(std::size_t j, int level, std::int64_t qrt, std::int64_t qrm) const {
    const auto& xs = levels_->xs[j][static_cast<std::size_t>(level)];
    const auto it = std::upper_bound(xs.begin(), xs.end(), qrt);
    return it != xs.begin() &&
           levels_->ys[j][static_cast<std::size_t>(level)][static_cast<std::size_t>(it - xs.begin()) - 1] <= qrm;
  }

  static std::int64_t quantised(i128 r, i128 q) {
    const i128 v = floor_div(r, q);
    return v > INT64_MAX ? INT64_MAX : v < INT64_MIN ? INT64_MIN : static_cast<std::int64_t>(v);
  }

  // least_latency: a lower bound on the latency of blocks j.. in a completion with drop <= cap, memory <= r_m.
  i128 least_latency(std::size_t j, i128 cap, i128 r_m) const {
    i128 lbt = x_.drops_vary ? x_at(x_.dt[j], cap) : x_.min_t[j];
    if (has_m_) {
      i128 v = x_at(x_.tm[j], r_m);
      if (v > lbt) lbt = v;
      if (lex_) {
        v = -floor_div(x_.lex_a * cap - y_at(x_.lex[j], r_m), x_.lex_b);
        if (v > lbt) lbt = v;
      }
      if (levels_ != nullptr) {
        i128 level = floor_div(cap - levels_->base[j], levels_->delta);
        if (level < 0) return kHuge;
        if (level > levels_->top[j]) level = levels_->top[j];
        const auto& ys = levels_->ys[j][static_cast<std::size_t>(level)];
        const auto it = std::lower_bound(ys.begin(), ys.end(), quantised(r_m, levels_->qm), std::greater<>());
        if (it == ys.end()) return kHuge;
        v = levels_->xs[j][static_cast<std::size_t>(level)][static_cast<std::size_t>(it - ys.begin())] *
            static_cast<i128>(levels_->qt);
        if (v > lbt) lbt = v;
      }
    }
    return lbt;
  }

  // drop_bound: a lower bound on the total drop of the completions of a prefix (nd, nt, nm), blocks j.. left,
  // that fit the budgets; false when none fits or none can tie or beat the incumbent's drop.
  bool drop_bound(std::size_t j, i128 nd, i128 nt, i128 nm, i128& out) {
    const i128 r_t = lim_t_ - nt;
    const i128 r_m = lim_m_ - nm;
    if (r_t < x_.min_t[j] || r_m < x_.min_m[j]) return false;
    const i128 cap = d_hi_ - nd;
    i128 lbd = x_.min_d[j];
    if (lbd > cap) return false;
    if (has_l_ && x_.drops_vary) {
      const i128 v = y_at(x_.dt[j], r_t);
      if (v > lbd) {
        if (v > cap) return false;
        lbd = v;
      }
    }
    if (has_m_) {
      if (x_.drops_vary) {
        const i128 v = y_at(x_.dm[j], r_m);
        if (v > lbd) {
          if (v > cap) return false;
          lbd = v;
        }
      }
      if (has_l_) {
        if (y_at(x_.tm[j], r_t) > r_m) return false;  // no completion fits both budgets
        if (levels_ != nullptr) {
          const i128 base = levels_->base[j];
          i128 high = floor_div(cap - base, levels_->delta);
          if (high > levels_->top[j]) high = levels_->top[j];
          if (high < 0) return false;
          const std::int64_t qrt = quantised(r_t, levels_->qt), qrm = quantised(r_m, levels_->qm);
          int hi = static_cast<int>(high);
          if (!level_fits(j, hi, qrt, qrm)) return false;  // nothing within both budgets and the drop cap
          int lo = 0;
          while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            if (level_fits(j, mid, qrt, qrm))
              hi = mid;
            else
              lo = mid + 1;
          }
          const i128 v = base + levels_->least[j][static_cast<std::size_t>(lo)];
          if (v > lbd) lbd = v;
        }
        for (std::size_t k = 0; k < joint_.size(); ++k) {
          const Exact::Joint& g = *joint_[k];
          const i128 v = -floor_div(g.s_t * r_t + g.s_m * r_m - y_at(g.stairs[j], g.x_t * r_t + g.x_m * r_m), g.a);
          if (v > lbd) {
            if (v > cap) {
              if (k != 0) {  // move to front: the bound that pruned is tried first
                joint_.erase(joint_.begin() + static_cast<std::ptrdiff_t>(k));
                joint_.insert(joint_.begin(), &g);
              }
              return false;
            }
            lbd = v;
          }
        }
      }
    }
    out = nd + lbd;
    return true;
  }

  // tie_bound: for a prefix (path[:j-1] + [index], totals nd, nt, nm) whose drop cannot beat the incumbent's:
  // false when no completion can beat it on latency, memory, then choice; else a lower bound on the latency.
  bool tie_bound(std::size_t j, i128 nd, i128 nt, i128 nm, int index, i128& out) {
    const i128 cap = d_hi_ - nd;
    const i128 r_t = lim_t_ - nt;
    const i128 r_m = lim_m_ - nm;
    const i128 bt = nt + least_latency(j, cap, r_m);
    if (bt > t_hi_) return false;
    if (bt >= t_lo_) {  // nor can the latency: memory decides, then the choice
      const i128 tau = std::min(t_hi_ - nt, r_t);
      i128 lbm = x_.drops_vary ? x_at(x_.dm[j], cap) : x_.min_m[j];
      i128 v = y_at(x_.tm[j], tau);
      if (v > lbm) lbm = v;
      if (levels_ != nullptr) {
        i128 level = floor_div(cap - levels_->base[j], levels_->delta);
        if (level > levels_->top[j]) level = levels_->top[j];
        if (level < 0) return false;
        const auto& xs = levels_->xs[j][static_cast<std::size_t>(level)];
        const auto it = std::upper_bound(xs.begin(), xs.end(), quantised(tau, levels_->qt));
        if (it == xs.begin()) return false;
        v = levels_->ys[j][static_cast<std::size_t>(level)][static_cast<std::size_t>(it - xs.begin()) - 1] *
            static_cast<i128>(levels_->qm);
        if (v > lbm) lbm = v;
      }
      const i128 bm = nm + lbm;
      if (bm > inc_m_ || (bm == inc_m_ && !(smallest_choice(j - 1, index) < inc_choice_))) return false;
    }
    out = bt;
    return true;
  }

  // leaves: the last block, complete selections.
  void leaves(i128 pd, i128 pt, i128 pm) {
    for (const Exact::IOpt& o : x_.blocks[last_]) {
      const i128 nt = pt + o.t, nm = pm + o.m;
      if (nt > lim_t_ || nm > lim_m_) continue;
      const i128 nd = pd + o.d;
      if (nd > d_hi_ || (nd >= d_lo_ && (nt > t_hi_ || (nt >= t_lo_ && nm > inc_m_)))) continue;
      const double dv = x_.drop_value(nd), tv = x_.lat_value(nt);
      const std::vector<int>& choice = smallest_choice(last_, o.index);
      if (have_inc_) {
        if (dv != inc_d_) {
          if (dv > inc_d_) continue;
        } else if (tv != inc_t_) {
          if (tv > inc_t_) continue;
        } else if (nm != inc_m_) {
          if (nm > inc_m_) continue;
        } else if (!(choice < inc_choice_)) {
          continue;
        }
      }
      have_inc_ = true;
      inc_d_ = dv;
      inc_t_ = tv;
      inc_m_ = nm;
      inc_choice_ = choice;
      std::tie(d_lo_, d_hi_) = band(to_double(nd));
      std::tie(t_lo_, t_hi_) = band(to_double(nt));
      ++version_;
    }
  }

  void dfs(std::size_t k, i128 pd, i128 pt, i128 pm) {
    if (k == last_) {
      leaves(pd, pt, pm);
      return;
    }
    const std::size_t j = k + 1;
    std::vector<Branch>& branches = branches_[k];
    branches.clear();
    for (const Exact::IOpt& o : x_.blocks[k]) {
      const i128 nd = pd + o.d, nt = pt + o.t, nm = pm + o.m;
      i128 bd = 0, bt = 0;
      if (!drop_bound(j, nd, nt, nm, bd)) continue;
      if (bd < d_lo_) {
        branches.push_back({bd, 0, nd, nt, nm, o.index, version_});
        continue;
      }
      if (tie_bound(j, nd, nt, nm, o.index, bt)) branches.push_back({bd, bt, nd, nt, nm, o.index, version_});
    }
    if (branches.size() > 1) {
      if (!have_inc_) {
        // Before the first incumbent: the least drop bound first, the least latency bound first among them.
        i128 least = branches[0].bd;
        for (const Branch& b : branches) least = std::min(least, b.bd);
        for (Branch& b : branches)
          b.bt = b.bd == least ? b.nt + least_latency(j, b.bd - b.nd, lim_m_ - b.nm) : kHuge;
      }
      std::sort(branches.begin(), branches.end(), [](const Branch& a, const Branch& b) {
        if (a.bd != b.bd) return a.bd < b.bd;
        if (a.bt != b.bt) return a.bt < b.bt;
        return a.index < b.index;
      });
    }
    for (std::size_t i = 0; i < branches.size(); ++i) {
      const Branch br = branches[i];
      if (br.bd > d_hi_) break;  // sorted by drop bound: no later branch can tie or beat the incumbent
      i128 unused = 0;
      if (br.seen != version_ && br.bd >= d_lo_ && !tie_bound(j, br.nd, br.nt, br.nm, br.index, unused))
        continue;  // the incumbent improved since this branch was bounded, and now it ties on drop
      path_[k] = br.index;
      dfs(j, br.nd, br.nt, br.nm);
    }
  }

  const Exact& x_;
  const std::size_t n_, last_;
  bool has_l_ = false, has_m_ = false, lex_ = false;
  const Exact::Levels* levels_ = nullptr;
  std::vector<const Exact::Joint*> joint_;  // reordered during the search
  i128 lim_t_ = kHuge, lim_m_ = kHuge;
  i128 d_lo_ = kHuge, d_hi_ = kHuge, t_lo_ = kHuge, t_hi_ = kHuge, inc_m_ = kHuge;
  bool have_inc_ = false;
  double inc_d_ = 0, inc_t_ = 0;
  std::vector<int> inc_choice_;
  long version_ = 0;
  std::vector<int> path_, choice_;
  std::vector<std::vector<Branch>> branches_;
};

}  // namespace

std::optional<Solution> Exact::search(std::optional<double> latency_ms,
                                      std::optional<std::int64_t> memory_bytes) const {
  return ExactSearch(*this, latency_ms, memory_bytes).run();
}

// ------------------------------------------------------------------------------------------------ PreparedCosts
PreparedCosts::PreparedCosts(const CostTable& costs) {
  if (costs.empty()) throw user_error("the cost table has no blocks: nothing to select");
  for (std::size_t b = 0; b < costs.size(); ++b)
    if (costs[b].empty())
      throw user_error("block " + std::to_string(b) +
                       " has no options: every block needs at least one profiled option");
  std::size_t total_options = 0;
  std::vector<double> min_l, max_l, scale;
  for (const auto& block : costs) {
    blocks_.push_back(pareto_options(block));
    const auto& kept = blocks_.back();
    total_options += kept.size();
    double lo = kept[0].lat, hi = kept[0].lat, amax = std::fabs(kept[0].drop);
    std::int64_t mlo = kept[0].mem, mhi = kept[0].mem;
    for (const Opt& o : kept) {
      if (o.lat < lo) lo = o.lat;
      if (o.lat > hi) hi = o.lat;
      if (o.mem < mlo) mlo = o.mem;
      if (o.mem > mhi) mhi = o.mem;
      if (std::fabs(o.drop) > amax) amax = std::fabs(o.drop);
    }
    min_l.push_back(lo);
    max_l.push_back(hi);
    min_memory_bytes += mlo;
    max_memory_bytes += mhi;
    scale.push_back(amax);
    int first_index = kept[0].index;
    for (const Opt& o : kept) first_index = std::min(first_index, o.index);
    first_index_.push_back(first_index);
  }
  min_latency_ms = fsum(min_l);
  max_latency_ms = fsum(max_l);
  scale_drop_ = fsum(scale);
  tol_factor_ = static_cast<double>(8 * (total_options + 8)) * kEps;
  exact_ = Exact::make(blocks_, first_index_);
  if (exact_) {
    unconstrained = *exact_->search(std::nullopt, std::nullopt);
    return;
  }
  // The float search (only for tables whose scaled totals do not fit the exact search's integers).
  std::vector<std::vector<double>> drops, lats;
  for (const auto& block : blocks_) {
    drops.emplace_back();
    lats.emplace_back();
    for (const Opt& o : block) {
      drops.back().push_back(o.drop);
      lats.back().push_back(o.lat);
    }
  }
  exact_drop_ = sums_exactly(drops);
  exact_latency_ = sums_exactly(lats);
  for (int kind = 0; kind < 4; ++kind) {
    for (std::size_t b = 0; b < blocks_.size(); ++b) {
      std::vector<std::pair<double, double>> points;
      for (const Opt& o : blocks_[b]) {
        if (kind == 0) points.emplace_back(o.drop, o.lat);
        if (kind == 1) points.emplace_back(o.drop, static_cast<double>(o.mem));
        if (kind == 2) points.emplace_back(static_cast<double>(o.mem), o.lat);
        if (kind == 3) points.emplace_back(o.lat, static_cast<double>(o.mem));
      }
      hulls_[kind].push_back(make_hull(static_cast<int>(b), points));
    }
  }
  // A fixed search order (the blocks whose options differ most first, as Python's solver) and its staircases.
  {
    const std::size_t n = blocks_.size();
    std::vector<std::array<double, 3>> ranges(n);
    std::array<double, 3> spans{0, 0, 0};
    for (std::size_t b = 0; b < n; ++b) {
      double lo[3] = {kInf, kInf, kInf}, hi[3] = {-kInf, -kInf, -kInf};
      for (const Opt& o : blocks_[b]) {
        const double v[3] = {o.drop, o.lat, static_cast<double>(o.mem)};
        for (int a = 0; a < 3; ++a) {
          lo[a] = std::min(lo[a], v[a]);
          hi[a] = std::max(hi[a], v[a]);
        }
      }
      for (int a = 0; a < 3; ++a) {
        ranges[b][a] = hi[a] - lo[a];
        spans[a] += ranges[b][a];
      }
    }
    std::vector<std::pair<double, int>> keyed;
    for (std::size_t b = 0; b < n; ++b) {
      double spread = 0;
      for (int a = 0; a < 3; ++a)
        if (spans[a] > 0) spread += ranges[b][a] / spans[a];
      keyed.emplace_back(-spread, static_cast<int>(b));
    }
    std::sort(keyed.begin(), keyed.end());
    for (const auto& [_, b] : keyed) order_.push_back(b);
    std::vector<double> drops;
    for (const auto& block : blocks_)
      for (const Opt& o : block) drops.push_back(o.drop);
    std::sort(drops.begin(), drops.end());
    double gap = 0;
    for (std::size_t k = 1; k < drops.size(); ++k)
      if (drops[k] > drops[k - 1] && (gap == 0 || drops[k] - drops[k - 1] < gap)) gap = drops[k] - drops[k - 1];
    if (gap > 0 && std::isfinite(4.0 * (max_latency_ms + 1.0) / gap)) lex_weight_ = 4.0 * (max_latency_ms + 1.0) / gap;
    std::vector<std::vector<std::pair<double, double>>> md, ld, ml, mx;
    for (int b : order_) {
      md.emplace_back();
      ld.emplace_back();
      ml.emplace_back();
      mx.emplace_back();
      for (const Opt& o : blocks_[b]) {
        md.back().emplace_back(static_cast<double>(o.mem), o.drop);
        ld.back().emplace_back(o.lat, o.drop);
        ml.back().emplace_back(static_cast<double>(o.mem), o.lat);
        mx.back().emplace_back(static_cast<double>(o.mem), lex_weight_ * o.drop + o.lat);
      }
    }
    mem_lex_ = staircases(mx, 4096);
    mem_drop_ = staircases(md, 4096);
    lat_drop_ = staircases(ld, 4096);
    mem_lat_ = staircases(ml, 4096);
  }
  // The optimum without a budget: the search without bounds (the least option per block is not always it: two
  // drops that differ only below the totals' rounding tie, and then latency, memory and the choice decide).
  unconstrained = *branch_and_bound(std::nullopt, std::nullopt);
}

const std::vector<Hull>& PreparedCosts::cached_hulls(int kind) const { return hulls_[kind]; }

Solution PreparedCosts::solve(std::optional<double> latency_ms, std::optional<std::int64_t> memory_bytes) const {
  if ((latency_ms && !(min_latency_ms <= *latency_ms)) || (memory_bytes && min_memory_bytes > *memory_bytes))
    throw SolverInfeasible{min_latency_ms, min_memory_bytes};
  if (latency_ms && *latency_ms >= max_latency_ms) latency_ms.reset();
  if (memory_bytes && *memory_bytes >= max_memory_bytes) memory_bytes.reset();
  if ((!latency_ms || unconstrained.latency_ms <= *latency_ms) &&
      (!memory_bytes || unconstrained.memory_bytes <= *memory_bytes))
    return unconstrained;
  auto result = exact_ ? exact_->search(latency_ms, memory_bytes) : branch_and_bound(latency_ms, memory_bytes);
  if (!result) throw SolverInfeasible{min_latency_ms, min_memory_bytes};
  return *result;
}

std::optional<PreparedCosts::Multipliers> PreparedCosts::multipliers(std::optional<double> lat_cap,
                                                                     std::optional<std::int64_t> mem_cap) const {
  const auto& blocks = blocks_;
  if (!mem_cap && !lat_cap) return Multipliers{0.0, 0.0, {std::vector<int>(blocks.size(), 0)}};
  if (!mem_cap) {
    Walk w = walk(cached_hulls(0), *lat_cap, nullptr);
    return Multipliers{w.multiplier, 0.0, {w.selection}};
  }
  const double mem_capf = static_cast<double>(*mem_cap);
  Walk mem_walk = walk(cached_hulls(1), mem_capf, nullptr);
  if (!lat_cap) return Multipliers{0.0, mem_walk.multiplier, {mem_walk.selection}};

  Multipliers out{0.0, 0.0, {mem_walk.selection}};
  std::vector<std::vector<double>> memory;
  for (const auto& block : blocks) {
    memory.emplace_back();
    for (const Opt& o : block) memory.back().push_back(static_cast<double>(o.mem));
  }
  Walk least = walk(cached_hulls(2), *lat_cap, nullptr);
  out.selections.push_back(least.selection);
  if (least.value > mem_capf + tol_factor_ * 4 * static_cast<double>(max_memory_bytes + *mem_cap)) return std::nullopt;

  struct H {
    double h, s, lam;
  };
  auto h = [&](double mu) -> H {
    Walk w;
    if (mu == 0.0) {
      w = walk(cached_hulls(0), *lat_cap, &memory);
    } else {
      std::vector<Hull> hulls;
      for (std::size_t b = 0; b < blocks.size(); ++b) {
        std::vector<std::pair<double, double>> points;
        for (const Opt& o : blocks[b]) points.emplace_back(o.drop + mu * static_cast<double>(o.mem), o.lat);
        hulls.push_back(make_hull(static_cast<int>(b), points));
      }
      w = walk(hulls, *lat_cap, &memory);
    }
    out.selections.push_back(w.selection);
    return {w.value - mu * mem_capf, w.other_lp - mem_capf, w.multiplier};
  };
  struct Best {
    double h, lam, mu;
    bool operator<(const Best& o) const { return std::tie(h, lam, mu) < std::tie(o.h, o.lam, o.mu); }
  };

  H a = h(0.0);
  double h_a = a.h, s_a = a.s;
  Best best{a.h, a.lam, 0.0};
  if (s_a <= 0) {
    out.lam = a.lam;
    out.mu = 0.0;
    return out;
  }
  double mu_a = 0.0;
  double mu_b = mem_walk.multiplier;
  if (mu_b <= 0.0) mu_b = (scale_drop_ + 1.0) / static_cast<double>(max_memory_bytes > 1 ? max_memory_bytes : 1);
  double h_b = 0, s_b = 0;
  for (int it = 0; it < 64; ++it) {
    H b = h(mu_b);
    h_b = b.h;
    s_b = b.s;
    if (best < Best{b.h, b.lam, mu_b}) best = Best{b.h, b.lam, mu_b};
    if (s_b <= 0) break;
    mu_a = mu_b;
    h_a = h_b;
    s_a = s_b;
    mu_b *= 4.0;
  }
  if (s_b < 0) {
    const double scale = std::fabs(best.h) + scale_drop_ + 1.0;
    for (int it = 0; it < 12; ++it) {
      double mu_c = (h_b - h_a + s_a * mu_a - s_b * mu_b) / (s_a - s_b);
      const double upper = h_a + s_a * (mu_c - mu_a);
      if (!(mu_a < mu_c && mu_c < mu_b)) mu_c = 0.5 * (mu_a + mu_b);
      if (upper - best.h <= 1e-9 * scale) break;
      H c = h(mu_c);
      if (best < Best{c.h, c.lam, mu_c}) best = Best{c.h, c.lam, mu_c};
      if (c.s > 0) {
        mu_a = mu_c;
        h_a = c.h;
        s_a = c.s;
      } else if (c.s < 0) {
        mu_b = mu_c;
        h_b = c.h;
        s_b = c.s;
      } else {
        break;
      }
    }
  }
  out.lam = best.lam;
  out.mu = best.mu;
  return out;
}

std::optional<Solution> PreparedCosts::branch_and_bound(std::optional<double> lat_cap,
                                                        std::optional<std::int64_t> mem_cap) const {
  const auto& blocks = blocks_;
  const std::size_t n = blocks.size();
  const double tol = tol_factor_;
  const bool has_lat = lat_cap.has_value();
  const bool has_mem = mem_cap.has_value();
  const double cap_l = has_lat ? *lat_cap : 0.0;
  const std::int64_t cap_m = has_mem ? *mem_cap : 0;

  // --- Multipliers and incumbent
  auto mult = multipliers(lat_cap, mem_cap);
  if (!mult) return std::nullopt;
  const double lam = mult->lam, mu = mult->mu;
  TupleKey best_key{kInf, kInf, INT64_MAX};
  std::vector<int> best_choice;
  bool have_choice = false;
  for (const auto& sel : mult->selections) {
    std::vector<double> ls, ds;
    std::int64_t mem = 0;
    for (std::size_t b = 0; b < n; ++b) {
      const Opt& o = blocks[b][sel[b]];
      ls.push_back(o.lat);
      ds.push_back(o.drop);
      mem += o.mem;
    }
    const double lat = fsum(ls);
    if ((has_lat && lat > cap_l) || (has_mem && mem > cap_m)) continue;
    TupleKey key{fsum(ds), lat, mem};
    std::vector<int> choice;
    for (std::size_t b = 0; b < n; ++b) choice.push_back(blocks[b][sel[b]].index);
    if (better(key, choice, best_key, best_choice, have_choice)) {
      best_key = key;
      best_choice = choice;
      have_choice = true;
    }
  }

  // --- Search order: options as (drop, latency, memory, index, reduced cost)
  struct X {
    double d, l;
    std::int64_t m;
    int index;
    double r;
  };
  struct Row {
    double spread;
    int b;
    std::vector<X> options;
  };
  std::vector<Row> table;
  for (std::size_t b = 0; b < n; ++b) {
    std::vector<X> options;
    for (const Opt& o : blocks[b])
      options.push_back({o.drop, o.lat, o.mem, o.index, o.drop + lam * o.lat + mu * static_cast<double>(o.mem)});
    std::sort(options.begin(), options.end(), [](const X& a, const X& c) {
      return std::tie(a.r, a.l, a.m, a.index) < std::tie(c.r, c.l, c.m, c.index);
    });
    const double spread = options.front().r - options.back().r;
    table.push_back({spread, static_cast<int>(b), std::move(options)});
  }
  std::vector<Row> fixed_rows;
  for (int b : order_) fixed_rows.push_back(std::move(table[b]));
  table.swap(fixed_rows);
  std::vector<int> order;
  std::vector<const std::vector<X>*> ordered;
  for (const Row& row : table) {
    order.push_back(row.b);
    ordered.push_back(&row.options);
  }

  std::vector<double> suf_d(n + 1, 0.0), suf_r(n + 1, 0.0), suf_l(n + 1, 0.0);
  std::vector<std::int64_t> suf_m(n + 1, 0);
  for (std::size_t k = n; k-- > 0;) {
    const auto& options = *ordered[k];
    double md = options[0].d, ml = options[0].l;
    std::int64_t mm = options[0].m;
    for (const X& x : options) {
      if (x.d < md) md = x.d;
      if (x.l < ml) ml = x.l;
      if (x.m < mm) mm = x.m;
    }
    suf_d[k] = suf_d[k + 1] + md;
    suf_r[k] = suf_r[k + 1] + options[0].r;
    suf_l[k] = suf_l[k + 1] + ml;
    suf_m[k] = suf_m[k + 1] + mm;
  }

  std::vector<Hull> own_l, own_m;
  LP lp_l, lp_m, lp_f;
  auto in_order = [&](const std::vector<Hull>& hulls) {
    std::vector<const Hull*> out;
    for (int b : order) out.push_back(&hulls[b]);
    return out;
  };
  if (has_lat) {
    if (mu == 0.0) {
      lp_l = suffix_lp(in_order(cached_hulls(0)));
    } else {
      for (std::size_t b = 0; b < n; ++b) {
        std::vector<std::pair<double, double>> points;
        for (const Opt& o : blocks[b]) points.emplace_back(o.drop + mu * static_cast<double>(o.mem), o.lat);
        own_l.push_back(make_hull(static_cast<int>(b), points));
      }
      lp_l = suffix_lp(in_order(own_l));
    }
  }
  if (has_mem) {
    if (lam == 0.0) {
      lp_m = suffix_lp(in_order(cached_hulls(1)));
    } else {
      for (std::size_t b = 0; b < n; ++b) {
        std::vector<std::pair<double, double>> points;
        for (const Opt& o : blocks[b]) points.emplace_back(o.drop + lam * o.lat, static_cast<double>(o.mem));
        own_m.push_back(make_hull(static_cast<int>(b), points));
      }
      lp_m = suffix_lp(in_order(own_m));
    }
  }
  const bool joint = has_lat && has_mem;
  if (joint) lp_f = suffix_lp(in_order(cached_hulls(2)));
  // The least latency of a completion within the memory left (LP): the tie-break bound when drops tie.
  LP lp_lm;
  if (has_mem) lp_lm = suffix_lp(in_order(cached_hulls(3)));

  const double scale_d = scale_drop_;
  const double scale_l = max_latency_ms + cap_l;
  const double scale_m = static_cast<double>(max_memory_bytes + cap_m);
  const double tol_d = exact_drop_ ? 0.0 : tol * 2 * scale_d;
  const double tol_r = tol * 2 * (scale_d + lam * scale_l + mu * scale_m);
  const double tol_l = exact_latency_ ? 0.0 : tol * 2 * scale_l;
  const double tol_f = tol * 4 * (scale_m + (joint ? lp_f.max_rate * scale_l : 0.0));
  const double tol_lp_l = tol * 4 * (scale_d + mu * scale_m + (has_lat ? lp_l.max_rate * scale_l : 0.0));
  const double tol_lp_m = tol * 4 * (scale_d + lam * scale_l + (has_mem ? lp_m.max_rate * scale_m : 0.0));
  const double tol_lm = tol * 4 * (scale_l + (has_mem ? lp_lm.max_rate * scale_m : 0.0));
  const double tol_s = tol * 4 * scale_d;   // staircase drop sums: rounding of up to n additions
  const double tol_l2 = tol * 4 * scale_l;  // staircase latency sums
  const double tol_x = tol * 8 * (lex_weight_ * scale_d + scale_l);  // lexicographic sums and the subtraction
  const double const_r = lam * cap_l + mu * static_cast<double>(cap_m);
  std::vector<double> rest_r_all;
  for (double s : suf_r) rest_r_all.push_back(s - const_r);
  const double lat_limit = has_lat ? cap_l + tol_l : kInf;
  std::vector<std::int64_t> mem_room;
  for (std::int64_t s : suf_m) mem_room.push_back(has_mem ? cap_m - s : INT64_MAX);
  const double const_lp_l = mu * static_cast<double>(cap_m);
  const double const_lp_m = lam * cap_l;

  // --- Depth-first search
  double best_d = best_key.d, best_l = best_key.l;
  std::int64_t best_m = best_key.m;
  double lim_d = best_d + tol_d;
  double lim_r = best_d + tol_r;
  double lim_lp_l = best_d + tol_lp_l + const_lp_l;
  double lim_lp_m = best_d + tol_lp_m + const_lp_m;
  const double lim_f = static_cast<double>(cap_m) + tol_f;
  std::vector<const X*> path(n, nullptr);
  const std::size_t last = n - 1;
  const double tol_any = std::max(std::max(tol_d, tol_r), std::max(tol_lp_l, tol_lp_m));
  std::vector<double> scratch_l(n), scratch_d(n);
  std::vector<int> leaf_choice(n, 0);
  std::vector<int> fixed(n, -1);  // per block (block order): the option chosen on the current path, -1 when free
  // Whether a branch (the path with `x` at block b) can lead to a choice smaller than the incumbent's: its
  // smallest choice has the free blocks at their smallest remaining index.
  auto smaller_choice_possible = [&](int b, int index) {
    if (!have_choice) return true;
    for (std::size_t c = 0; c < n; ++c) {
      const int v = static_cast<int>(c) == b ? index : fixed[c] >= 0 ? fixed[c] : first_index_[c];
      if (v != best_choice[c]) return v < best_choice[c];
    }
    return false;
  };
  // A branch that cannot beat the incumbent in drop, latency or memory, and cannot lead to a smaller choice, can
  // at best tie it: prune it (keeps tie-heavy tables from exploring every permutation of equal options).
  auto only_ties = [&](double bound_d, double lat_bound, std::int64_t mem_bound, int b, int index) {
    return have_choice && bound_d - tol_d >= best_d && lat_bound >= best_l && mem_bound >= best_m &&
           !smaller_choice_possible(b, index);
  };

  auto leaf = [&](std::int64_t mem) {
    for (std::size_t k = 0; k < n; ++k) scratch_l[k] = path[k]->l;
    const double lat = fsum(scratch_l);
    if (has_lat && lat > cap_l) return;
    for (std::size_t k = 0; k < n; ++k) scratch_d[k] = path[k]->d;
    const double drop = fsum(scratch_d);
    for (std::size_t k = 0; k < n; ++k) leaf_choice[order[k]] = path[k]->index;
    if (better(TupleKey{drop, lat, mem}, leaf_choice, TupleKey{best_d, best_l, best_m}, best_choice, have_choice)) {
      best_d = drop;
      best_l = lat;
      best_m = mem;
      lim_d = drop + tol_d;
      lim_r = drop + tol_r;
      lim_lp_l = drop + tol_lp_l + const_lp_l;
      lim_lp_m = drop + tol_lp_m + const_lp_m;
      best_choice = leaf_choice;
      have_choice = true;
    }
  };

  struct Child {
    double bound, bound_d, n_d, n_l;
    std::int64_t n_m;
    double q_r;
    double lat_lb;
    const X* x;
  };
  std::vector<std::vector<Child>> children_at(n);

  // Recursion depth is the number of blocks (<= a few dozen).
  auto dfs = [&](auto&& self, std::size_t k, double p_d, double p_l, std::int64_t p_m, double p_r) -> void {
    const std::size_t k1 = k + 1;
    const double rest_d = suf_d[k1];
    const double rest_l = suf_l[k1];
    const double rest_r = rest_r_all[k1];
    const std::int64_t room_m = mem_room[k1];
    const double w0_l = has_lat ? lp_l.w0[k1] - cap_l : 0.0;
    const double w0_m = has_mem ? lp_m.w0[k1] - static_cast<double>(cap_m) : 0.0;
    const double w0_f = joint ? lp_f.w0[k1] - cap_l : 0.0;
    const double w0_lm = has_mem ? lp_lm.w0[k1] - static_cast<double>(cap_m) : 0.0;
    const bool at_leaf = k == last;
    std::vector<Child>& children = children_at[k];
    children.clear();
    for (const X& x : *ordered[k]) {
      const double q_r = p_r + x.r;
      double bound = q_r + rest_r;
      if (bound > lim_r) break;  // options come in increasing reduced cost: the rest of the block is no better
      const double n_l = p_l + x.l;
      if (n_l + rest_l > lat_limit) continue;
      const std::int64_t n_m = p_m + x.m;
      if (n_m > room_m) continue;
      const double n_d = p_d + x.d;
      double bound_d = n_d + rest_d;
      if (bound_d > lim_d) continue;
      if (has_lat) {
        double lp = lp_at(lp_l, k1, w0_l + n_l);
        lp += n_d + mu * static_cast<double>(n_m);
        if (lp > lim_lp_l) continue;
        if (lp - const_lp_l > bound) bound = lp - const_lp_l;
      }
      if (has_mem) {
        double lp = lp_at(lp_m, k1, w0_m + static_cast<double>(n_m));
        lp += n_d + lam * n_l;
        if (lp > lim_lp_m) continue;
        if (lp - const_lp_m > bound) bound = lp - const_lp_m;
      }
      if (joint) {
        const double lp = lp_at(lp_f, k1, w0_f + n_l);
        if (static_cast<double>(n_m) + lp > lim_f) continue;
      }
      // The staircases: the least drop of a completion within the memory (latency) left, exactly up to rounding.
      if (has_mem) {
        const double y = least_y(mem_drop_[k1], static_cast<double>(cap_m - n_m));
        if (y == kInf) continue;
        const double lb = n_d + y - tol_s;
        if (lb > lim_d) continue;
        if (lb > bound_d) bound_d = lb;
      }
      if (has_lat) {
        const double y = least_y(lat_drop_[k1], cap_l - n_l + tol_l);
        if (y == kInf) continue;
        const double lb = n_d + y - tol_s;
        if (lb > lim_d) continue;
        if (lb > bound_d) bound_d = lb;
      }
      // A lower bound on the completions' latency, padded below by its rounding error.
      double lat_lb = n_l + rest_l - tol_l;
      if (has_mem) {
        const double lp = n_l + lp_at(lp_lm, k1, w0_lm + static_cast<double>(n_m)) - tol_lm;
        if (lp > lat_lb) lat_lb = lp;
        const double st = n_l + least_y(mem_lat_[k1], static_cast<double>(cap_m - n_m)) - tol_l2;
        if (st > lat_lb) lat_lb = st;
        if (lex_weight_ > 0 && have_choice && bound_d - tol_d >= best_d) {
          // Only a tie on drop can win: the rest's drop is at most best_d - n_d (+ rounding), so its latency is at
          // least (least lex_weight_ * drop + latency within the memory left) - lex_weight_ * that drop.
          const double rest_drop = best_d - n_d + 2 * tol_d + tol_s;
          const double lx = n_l + least_y(mem_lex_[k1], static_cast<double>(cap_m - n_m)) -
                            lex_weight_ * rest_drop - tol_x;
          if (lx > lat_lb) lat_lb = lx;
        }
      }
      if (bound_d - tol_d >= best_d && lat_lb > best_l) continue;
      if (only_ties(bound_d, lat_lb, n_m + suf_m[k1], order[k], x.index)) continue;
      if (at_leaf) {
        path[k] = &x;
        leaf(n_m);
      } else {
        children.push_back({bound > bound_d ? bound : bound_d, bound_d, n_d, n_l, n_m, q_r, lat_lb, &x});
      }
    }
    if (!children.empty()) {
      std::stable_sort(children.begin(), children.end(),
                       [](const Child& a, const Child& b) { return a.bound < b.bound; });
      for (const Child& c : children) {
        if (c.bound > best_d + tol_any) break;
        if (c.bound_d - tol_d >= best_d && c.lat_lb > best_l) continue;
        if (only_ties(c.bound_d, c.lat_lb, c.n_m + suf_m[k1], order[k], c.x->index)) continue;
        path[k] = c.x;
        fixed[order[k]] = c.x->index;
        self(self, k1, c.n_d, c.n_l, c.n_m, c.q_r);
        fixed[order[k]] = -1;
      }
    }
  };
  dfs(dfs, 0, 0.0, 0.0, 0, 0.0);
  if (!have_choice) return std::nullopt;
  Solution s;
  s.choice = best_choice;
  s.latency_ms = best_l;
  s.memory_bytes = best_m;
  s.accuracy_drop = best_d;
  return s;
}

}  // namespace lc
