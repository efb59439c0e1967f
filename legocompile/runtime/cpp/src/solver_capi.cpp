// A C ABI over lc::PreparedCosts alone (solver.cpp, problem.cpp, pyfmt.cpp; no ONNX Runtime, nlohmann or
// OpenSSL), for legocompile/optimize/solver.py, which loads it with ctypes (setup.py builds it at install time as
// legocompile/optimize/_native_solver*.so). The table comes as flat arrays in block order; the choice goes back as
// option indices. No exception crosses the ABI: every call returns a status, with a one-line message written to
// the caller's buffer (so the calls share no state and are thread-safe on a const handle).
//
//   lc_solver_prepare(n, counts, latency_ms, memory_bytes, drop, &handle, msg, msg_size)
//   lc_solver_solve(handle, has_latency, latency_ms, has_memory, memory_bytes, choice, &min_lat, &min_mem, msg, ..)
//   lc_solver_free(handle)
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <string>

#include "error.hpp"
#include "solver.hpp"

#define LC_SOLVER_API extern "C" __attribute__((visibility("default")))

enum : int {
  LC_SOLVER_OK = 0,
  LC_SOLVER_ERROR = 1,       // bad arguments or a table the solver rejects; the message says why
  LC_SOLVER_INFEASIBLE = 2,  // no selection fits: the least latency and memory are written
  LC_SOLVER_INTERNAL = 3,    // out of memory or an unexpected exception
};

struct lc_solver {
  lc::PreparedCosts impl;
  explicit lc_solver(const lc::CostTable& costs) : impl(costs) {}
};

namespace {

void write_message(char* buffer, std::size_t size, const std::string& text) {
  if (buffer == nullptr || size == 0) return;
  const std::size_t n = text.size() < size - 1 ? text.size() : size - 1;
  std::memcpy(buffer, text.data(), n);
  buffer[n] = '\0';
}

struct Failure {
  int status;
  std::string message;
};

template <class F>
int guarded(char* message, std::size_t message_size, F&& f) {
  write_message(message, message_size, "");
  try {
    f();
    return LC_SOLVER_OK;
  } catch (const Failure& e) {
    write_message(message, message_size, e.message);
    return e.status;
  } catch (const lc::Error& e) {
    write_message(message, message_size, e.what());
    return LC_SOLVER_ERROR;
  } catch (const std::bad_alloc&) {
    write_message(message, message_size, "out of memory");
    return LC_SOLVER_INTERNAL;
  } catch (const std::exception& e) {
    write_message(message, message_size, std::string("internal error: ") + e.what());
    return LC_SOLVER_INTERNAL;
  } catch (...) {
    write_message(message, message_size, "internal error");
    return LC_SOLVER_INTERNAL;
  }
}

void check(bool ok, const std::string& what) {
  if (!ok) throw Failure{LC_SOLVER_ERROR, what};
}

}  // namespace

// Prepares a table of n_blocks blocks; block b has counts[b] options, their costs stored one block after another
// in latency_ms, memory_bytes and drop. On success *out is a handle for lc_solver_free.
LC_SOLVER_API int lc_solver_prepare(std::int32_t n_blocks, const std::int32_t* counts, const double* latency_ms,
                                    const std::int64_t* memory_bytes, const double* drop, lc_solver** out,
                                    char* message, std::size_t message_size) {
  return guarded(message, message_size, [&] {
    check(out != nullptr, "the output handle is NULL");
    *out = nullptr;
    check(n_blocks > 0, "the cost table has no blocks");
    check(counts != nullptr && latency_ms != nullptr && memory_bytes != nullptr && drop != nullptr,
          "a cost array is NULL");
    lc::CostTable costs(static_cast<std::size_t>(n_blocks));
    std::size_t k = 0;
    for (std::int32_t b = 0; b < n_blocks; ++b) {
      check(counts[b] > 0, "block " + std::to_string(b) + " has no options");
      for (std::int32_t o = 0; o < counts[b]; ++o, ++k) {
        const lc::Cost c{latency_ms[k], memory_bytes[k], drop[k]};
        check(std::isfinite(c.latency_ms) && c.latency_ms >= 0 && c.memory_bytes >= 0 &&
                  std::isfinite(c.accuracy_drop),
              "costs[" + std::to_string(b) + "][" + std::to_string(o) + "] is out of range");
        costs[static_cast<std::size_t>(b)].push_back(c);
      }
    }
    *out = new lc_solver(costs);
  });
}

// The optimum under the bounds (has_*: 0 for unbounded): choice[b] for every block. LC_SOLVER_INFEASIBLE writes
// the least achievable latency and memory (either pointer may be NULL).
LC_SOLVER_API int lc_solver_solve(const lc_solver* solver, std::int32_t has_latency, double latency_ms,
                                  std::int32_t has_memory, std::int64_t memory_bytes, std::int32_t* choice,
                                  double* min_latency_ms, std::int64_t* min_memory_bytes, char* message,
                                  std::size_t message_size) {
  return guarded(message, message_size, [&] {
    check(solver != nullptr && choice != nullptr, "the handle or the choice array is NULL");
    check(!has_latency || !std::isnan(latency_ms), "the latency bound is NaN");
    std::optional<double> lat;
    std::optional<std::int64_t> mem;
    if (has_latency) lat = latency_ms;
    if (has_memory) mem = memory_bytes;
    try {
      const lc::Solution s = solver->impl.solve(lat, mem);
      for (std::size_t b = 0; b < s.choice.size(); ++b) choice[b] = static_cast<std::int32_t>(s.choice[b]);
    } catch (const lc::SolverInfeasible& e) {
      if (min_latency_ms != nullptr) *min_latency_ms = e.min_latency_ms;
      if (min_memory_bytes != nullptr) *min_memory_bytes = e.min_memory_bytes;
      throw Failure{LC_SOLVER_INFEASIBLE, "no selection fits the budget"};
    }
  });
}

LC_SOLVER_API void lc_solver_free(lc_solver* solver) { delete solver; }

#ifndef LC_SOLVER_SOURCE_HASH
#define LC_SOLVER_SOURCE_HASH ""
#endif
// sha256 of the sources this library was compiled from (setup.py); Python refuses a library whose hash differs.
LC_SOLVER_API const char* lc_solver_source_hash(void) { return LC_SOLVER_SOURCE_HASH; }
