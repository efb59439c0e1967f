#include "problem.hpp"

#include <cmath>
#include <utility>

#include "pyfmt.hpp"

namespace lc {

double fsum(const double* values, std::size_t count) {
  // CPython's math_fsum for finite inputs (the runtime's costs are validated finite).
  std::vector<double> p;
  p.reserve(32);
  for (std::size_t k = 0; k < count; ++k) {
    double x = values[k];
    std::size_t i = 0;
    for (std::size_t j = 0; j < p.size(); ++j) {
      double y = p[j];
      if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
      const double hi = x + y;
      const double yr = hi - x;
      const double lo = y - yr;
      if (lo != 0.0) p[i++] = lo;
      x = hi;
    }
    p.resize(i);
    p.push_back(x);
  }
  double hi = 0.0;
  std::size_t n = p.size();
  if (n > 0) {
    double lo = 0.0;
    hi = p[--n];
    while (n > 0) {
      const double x = hi;
      const double y = p[--n];
      hi = x + y;
      const double yr = hi - x;
      lo = y - yr;
      if (lo != 0.0) break;
    }
    if (n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0))) {
      const double y = lo * 2.0;
      const double x = hi + y;
      const double yr = x - hi;
      if (y == yr) hi = x;
    }
  }
  return hi;
}

namespace {

int decimals_for(double value, int decimals) {
  if (value != 0 && std::fabs(value) < 1) {
    const int need = 1 - static_cast<int>(std::floor(std::log10(std::fabs(value))));
    if (need > decimals) decimals = need;
  }
  return decimals < 9 ? decimals : 9;
}

int decimals_to_tell_apart(double a, double b, int decimals) {
  while (decimals < 9 && a != b && py_fixed(a, decimals) == py_fixed(b, decimals)) ++decimals;
  return decimals;
}

}  // namespace

std::string format_ms(double latency_ms, const double* other_ms) {
  int decimals = decimals_for(latency_ms, 2);
  if (other_ms != nullptr) {
    const int other = decimals_for(*other_ms, 2);
    decimals = decimals_to_tell_apart(latency_ms, *other_ms, decimals > other ? decimals : other);
  }
  return py_fixed(latency_ms, decimals);
}

std::string format_mb(double memory_bytes, const double* other_bytes) {
  const double mb = memory_bytes / 1e6;
  int decimals = decimals_for(mb, 1);
  if (other_bytes != nullptr) {
    const double other_mb = *other_bytes / 1e6;
    const int other = decimals_for(other_mb, 1);
    decimals = decimals_to_tell_apart(mb, other_mb, decimals > other ? decimals : other);
  }
  return py_fixed(mb, decimals);
}

std::string infeasible_message(std::optional<double> latency_ms, std::optional<std::int64_t> memory_bytes,
                               double min_latency_ms, std::int64_t min_memory_bytes) {
  const bool latency_ok = !latency_ms || min_latency_ms <= *latency_ms;
  const bool memory_ok = !memory_bytes || min_memory_bytes <= *memory_bytes;
  const double min_mem = static_cast<double>(min_memory_bytes);
  const double mem = memory_bytes ? static_cast<double>(*memory_bytes) : 0.0;
  std::vector<std::string> asked, found;
  if (latency_ms) {
    asked.push_back("latency \u2264 " + format_ms(*latency_ms, &min_latency_ms) + " ms");
    found.push_back("the fastest selection takes " + format_ms(min_latency_ms, &*latency_ms) + " ms");
  }
  if (memory_bytes) {
    asked.push_back("memory \u2264 " + format_mb(mem, &min_mem) + " MB");
    const std::string smallest = found.empty() ? "the smallest selection" : "the smallest";
    found.push_back(smallest + " takes " + format_mb(min_mem, &mem) + " MB");
  }
  auto join = [](const std::vector<std::string>& parts, const std::string& sep) {
    std::string out;
    for (std::size_t k = 0; k < parts.size(); ++k) out += (k ? sep : "") + parts[k];
    return out;
  };
  std::string message = "no selection fits " + (asked.empty() ? std::string("the budget") : join(asked, " and ")) +
                        ": " + join(found, ", ");
  if (latency_ok && memory_ok) {
    message += "; each bound can be met alone but not both together (relax either)";
  } else {
    std::vector<std::string> relax;
    if (!latency_ok)
      relax.push_back("the latency budget to at least " + format_ms(min_latency_ms, &*latency_ms) + " ms");
    if (!memory_ok) relax.push_back("the memory budget to at least " + format_mb(min_mem, &mem) + " MB");
    message += " (raise " + join(relax, " and ") + ")";
  }
  return message;
}

}  // namespace lc
