// C++ unit tests, built with AddressSanitizer + UBSan by tests/test_cpp_runtime.py (LEGOCOMPILE_SANITIZE=ON).
//
//   lc_unit_tests [BUNDLE]   BUNDLE: a real bundle (ORT engines) for the runtime and thread tests
//
// Exit 0 and "N passed, 0 failed" when every check holds.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "legocompile/runtime.hpp"
#include "problem.hpp"
#include "pyfmt.hpp"
#include "solver.hpp"

namespace {

int g_passed = 0, g_failed = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (cond) {                                                            \
      ++g_passed;                                                          \
    } else {                                                               \
      ++g_failed;                                                          \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

#define CHECK_EQ(a, b)                                                                                  \
  do {                                                                                                  \
    const auto va = (a);                                                                                \
    const auto vb = (b);                                                                                \
    if (va == vb) {                                                                                     \
      ++g_passed;                                                                                       \
    } else {                                                                                            \
      ++g_failed;                                                                                       \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s != %s\n", __FILE__, __LINE__, #a, #b);           \
    }                                                                                                   \
  } while (0)

void test_python_text() {
  using lc::py_float_repr;
  CHECK_EQ(py_float_repr(1.0), "1.0");
  CHECK_EQ(py_float_repr(1e16), "1e+16");
  CHECK_EQ(py_float_repr(1e-5), "1e-05");
  CHECK_EQ(py_float_repr(0.0001), "0.0001");
  CHECK_EQ(py_float_repr(123.456), "123.456");
  CHECK_EQ(py_float_repr(-0.0), "-0.0");
  CHECK_EQ(py_float_repr(1.5e-7), "1.5e-07");
  CHECK_EQ(py_float_repr(1234567890123456.0), "1234567890123456.0");
  CHECK_EQ(py_float_repr(12345678901234567.0), "1.2345678901234568e+16");
  CHECK_EQ(py_float_repr(0.1), "0.1");
  CHECK_EQ(py_float_repr(1e22), "1e+22");
  CHECK_EQ(py_float_repr(5e-324), "5e-324");
  CHECK_EQ(py_float_repr(2.5e-05), "2.5e-05");
  CHECK_EQ(py_float_repr(100.0), "100.0");
  CHECK_EQ(py_float_repr(INFINITY), "inf");
  CHECK_EQ(py_float_repr(NAN), "nan");
  CHECK_EQ(lc::py_str_repr("a'b"), "\"a'b\"");
  CHECK_EQ(lc::py_str_repr("x\"y'z"), "'x\"y\\'z'");
  CHECK_EQ(lc::py_str_repr("\xc3\xa9\xc2\xa0\x01\xe2\x80\xa8\xf0\x9f\x98\x80"), "'\xc3\xa9\\xa0\\x01\\u2028\xf0\x9f\x98\x80'");
  CHECK_EQ(lc::py_str_repr("a\nb\\"), "'a\\nb\\\\'");
  CHECK_EQ(lc::py_quote("engines/b0/x.onnx"), "'engines/b0/x.onnx'");
  CHECK_EQ(lc::py_quote("a\tb"), "'a\\tb'");
  CHECK_EQ(lc::py_path_str("a//b/"), "a/b");
  CHECK_EQ(lc::py_path_str("./x/./y"), "x/y");
  CHECK_EQ(lc::py_path_str(""), ".");
  CHECK_EQ(lc::py_path_str("//x"), "//x");
  CHECK_EQ(lc::py_path_str("///x"), "/x");
  CHECK_EQ(lc::py_path_join(".", "manifest.json"), "manifest.json");
  CHECK_EQ(lc::py_collapse_whitespace("  a \n\t b  "), "a b");
  CHECK_EQ(lc::utf8_prefix("\xc3\xa9xyz", 2), "\xc3\xa9x");
  CHECK(!lc::utf8_valid("a\xff"));
  CHECK(!lc::utf8_valid("\xed\xa0\x80"));  // an encoded surrogate
  CHECK(lc::utf8_valid("\xf0\x9f\x98\x80"));
}

void test_formatting() {
  auto ms = [](double a) { return lc::format_ms(a); };
  auto ms2 = [](double a, double b) { return lc::format_ms(a, &b); };
  auto mb = [](double a) { return lc::format_mb(a); };
  auto mb2 = [](double a, double b) { return lc::format_mb(a, &b); };
  CHECK_EQ(ms(1.2345), "1.23");
  CHECK_EQ(ms(0.012345), "0.012");
  CHECK_EQ(ms2(1.0, 1.0000001), "1.0000000");
  CHECK_EQ(ms2(0.5, 0.49999), "0.50000");
  CHECK_EQ(ms(123.456), "123.46");
  CHECK_EQ(ms(0.0), "0.00");
  CHECK_EQ(ms(2.675), "2.67");
  CHECK_EQ(mb(1234567), "1.2");
  CHECK_EQ(mb(1000), "0.0010");
  CHECK_EQ(mb2(5000000, 5000001), "5.000000");
  CHECK_EQ(mb(12345678), "12.3");
  CHECK_EQ(lc::infeasible_message(0.5, 1000, 0.7, 2000),
           "no selection fits latency \u2264 0.50 ms and memory \u2264 0.0010 MB: the fastest selection takes 0.70 ms, "
           "the smallest takes 0.0020 MB (raise the latency budget to at least 0.70 ms and the memory budget to at "
           "least 0.0020 MB)");
  CHECK_EQ(lc::infeasible_message(0.5, std::nullopt, 0.7, 2000),
           "no selection fits latency \u2264 0.50 ms: the fastest selection takes 0.70 ms (raise the latency budget "
           "to at least 0.70 ms)");
  CHECK_EQ(lc::infeasible_message(0.8, 3000, 0.7, 2000),
           "no selection fits latency \u2264 0.80 ms and memory \u2264 0.0030 MB: the fastest selection takes 0.70 ms, "
           "the smallest takes 0.0020 MB; each bound can be met alone but not both together (relax either)");
}

void test_fsum() {
  std::vector<double> tenth(10, 0.1);
  CHECK_EQ(lc::fsum(tenth), 1.0);
  CHECK_EQ(lc::fsum({1e100, 1.0, -1e100}), 1.0);
  CHECK_EQ(lc::fsum({}), 0.0);
  CHECK_EQ(lc::fsum({1e16, 1.0, 1e-16}), 10000000000000002.0);  // Python: math.fsum([1e16, 1., 1e-16])
}

// The optimum by enumeration: least (fsum drop, fsum latency, memory, choice) among the selections that fit.
struct Key {
  double d, l;
  std::int64_t m;
  std::vector<std::size_t> choice;
};

bool brute(const lc::CostTable& t, std::optional<double> L, std::optional<std::int64_t> M, Key& best) {
  const std::size_t n = t.size();
  std::vector<std::size_t> idx(n, 0);
  bool found = false;
  for (;;) {
    std::vector<double> ds, ls;
    std::int64_t m = 0;
    for (std::size_t b = 0; b < n; ++b) {
      ds.push_back(t[b][idx[b]].accuracy_drop);
      ls.push_back(t[b][idx[b]].latency_ms);
      m += t[b][idx[b]].memory_bytes;
    }
    const double l = lc::fsum(ls), d = lc::fsum(ds);
    if ((!L || l <= *L) && (!M || m <= *M)) {
      const Key k{d, l, m, idx};
      if (!found || std::tie(k.d, k.l, k.m, k.choice) < std::tie(best.d, best.l, best.m, best.choice)) best = k;
      found = true;
    }
    std::size_t b = 0;
    while (b < n && ++idx[b] == t[b].size()) idx[b++] = 0;
    if (b == n) break;
  }
  return found;
}

void test_solver_against_enumeration() {
  std::mt19937_64 rng(12345);
  int agreed = 0, total = 0;
  for (int trial = 0; trial < 600; ++trial) {
    const int blocks = 1 + static_cast<int>(rng() % 5);
    const bool coarse = trial % 2 == 0;  // coarse values make ties (exact sums, equal drops)
    const bool identical = trial % 6 == 4;  // every block the same: ties by permutation
    // drops of 1e-40 next to ordinary ones: scaled to integers they need far more than 128 bits, so the solver
    // falls back to its float search
    const bool tiny = trial % 10 == 7;
    lc::CostTable table(blocks);
    for (auto& block : table) {
      if (identical && &block != &table[0]) {
        block = table[0];
        continue;
      }
      const int options = 1 + static_cast<int>(rng() % 5);
      for (int o = 0; o < options; ++o) {
        std::uniform_real_distribution<double> u(0, 1);
        const double lat = coarse ? 0.25 * static_cast<double>(1 + rng() % 8) : 0.05 + u(rng);
        const std::int64_t mem = coarse ? 1000 * static_cast<std::int64_t>(1 + rng() % 6)
                                        : 1000 + static_cast<std::int64_t>(rng() % 100000);
        double drop = coarse ? 0.125 * static_cast<double>(rng() % 5) : -std::log(1 - 0.3 * u(rng));
        if (tiny && rng() % 3 == 0) drop = 1e-40 * static_cast<double>(1 + rng() % 4);
        block.push_back({lat, mem, drop});
      }
    }
    const lc::PreparedCosts prepared(table);
    for (int k = 0; k < 16; ++k) {
      std::uniform_real_distribution<double> u(0, 1);
      std::optional<double> L;
      std::optional<std::int64_t> M;
      if (k < 10) {
        if (k % 3 != 1)
          L = prepared.min_latency_ms * 0.9 + u(rng) * (prepared.max_latency_ms - prepared.min_latency_ms * 0.9);
        if (k % 3 != 0)
          M = static_cast<std::int64_t>(static_cast<double>(prepared.min_memory_bytes) * 0.9 +
                                        u(rng) * static_cast<double>(prepared.max_memory_bytes - prepared.min_memory_bytes));
      } else {  // tight: the exact totals of a random selection (mostly both budgets: the drop-level staircases)
        std::vector<double> lats;
        std::int64_t mem = 0;
        for (const auto& block : table) {
          const lc::Cost& c = block[rng() % block.size()];
          lats.push_back(c.latency_ms);
          mem += c.memory_bytes;
        }
        if (k != 10) L = lc::fsum(lats);
        if (k != 11) M = mem;
      }
      Key want{};
      const bool feasible = brute(table, L, M, want);
      ++total;
      try {
        const lc::Solution s = prepared.solve(L, M);
        const std::vector<std::size_t> choice(s.choice.begin(), s.choice.end());
        if (feasible && s.accuracy_drop == want.d && s.latency_ms == want.l && s.memory_bytes == want.m &&
            choice == want.choice)
          ++agreed;
        else if (agreed + 20 > total)
          std::fprintf(stderr, "solver differs from enumeration (trial %d, budget %d)\n", trial, k);
      } catch (const lc::SolverInfeasible&) {
        if (!feasible) ++agreed;
      }
    }
  }
  CHECK_EQ(agreed, total);
}

// ---------------------------------------------------------------------------------------------- the runtime
void test_runtime(const std::string& bundle) {
  legocompile::Runtime rt = legocompile::Runtime::open(bundle);
  const std::size_t blocks = rt.num_blocks();
  CHECK(blocks >= 2);
  const std::size_t batch = 3;
  std::vector<float> x(rt.input_size(batch));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);

  // Two selections: the original, and the fastest.
  const legocompile::Selection original = rt.selection();
  std::vector<float> ref_a(rt.output_size(batch)), ref_b(rt.output_size(batch));
  rt.run(x, batch, ref_a);
  legocompile::Selection fast;
  try {
    rt.select(legocompile::Budget{}.latency(1e-9));
    CHECK(false);
  } catch (const legocompile::InfeasibleBudget& e) {
    CHECK(std::string(e.what()).rfind("no selection fits latency", 0) == 0);
  }
  std::vector<std::pair<std::string, std::string>> other;
  for (const auto& c : original.blocks) other.emplace_back(c.variant, c.precision);
  // The last block's fastest different option, if any: find one via plan() with a tight budget.
  double fastest = 0;
  CHECK_EQ(lc_min_totals(rt.handle(), &fastest, nullptr), LC_OK);
  legocompile::Selection p = rt.plan(legocompile::Budget{}.latency(fastest));
  for (std::size_t b = 0; b < blocks; ++b) other[b] = {p.blocks[b].variant, p.blocks[b].precision};
  rt.select(other);
  rt.run(x, batch, ref_b);
  const std::vector<std::pair<std::string, std::string>> sel_a = [&] {
    std::vector<std::pair<std::string, std::string>> v;
    for (const auto& c : original.blocks) v.emplace_back(c.variant, c.precision);
    return v;
  }();

  // Threads run while another switches between the two: every output is one selection's, never a mix.
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, runs{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 3; ++t)
    workers.emplace_back([&, t] {
      std::vector<float> y(rt.output_size(batch));
      std::vector<float> y1(rt.output_size(1));
      std::vector<float> x1(x.begin(), x.begin() + static_cast<long>(rt.input_size(1)));
      while (!stop.load()) {
        rt.run(x, batch, y);
        if (y != ref_a && y != ref_b) bad.fetch_add(1);
        if (t == 0) rt.run(x1, 1, y1);  // another batch size on the same thread
        runs.fetch_add(1);
      }
    });
  for (int k = 0; k < 40; ++k) rt.select(k % 2 ? sel_a : other);
  stop.store(true);
  for (auto& w : workers) w.join();
  CHECK_EQ(bad.load(), 0);
  CHECK(runs.load() > 0);

  // Errors at the C ABI: a null handle, a negative batch, a damaged path.
  CHECK_EQ(lc_run(nullptr, nullptr, 1, nullptr), LC_INVALID_ARGUMENT);
  CHECK(std::strlen(lc_last_error()) > 0);
  CHECK_EQ(lc_run(rt.handle(), x.data(), -1, ref_a.data()), LC_INVALID_ARGUMENT);
  lc_runtime* none = nullptr;
  CHECK_EQ(lc_open("/nonexistent/bundle", nullptr, &none), LC_ERROR);
  CHECK_EQ(std::string(lc_last_error()), "bundle not found: /nonexistent/bundle");
  CHECK(none == nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  test_python_text();
  test_formatting();
  test_fsum();
  test_solver_against_enumeration();
  if (argc > 1) {
    try {
      test_runtime(argv[1]);
    } catch (const std::exception& e) {
      ++g_failed;
      std::fprintf(stderr, "runtime test: %s\n", e.what());
    }
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
