// Errors inside the runtime: a status code (the C ABI's lc_status) and a one-line message.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace lc {

enum class Code : int {
  ok = 0,
  error = 1,             // a user error, as Python's LegoCompileError (bundle, manifest, selection, argument values)
  infeasible = 2,        // no selection fits the budget (Python's InfeasibleBudgetError)
  engine = 3,            // the engine backend failed to load or run an engine
  invalid_argument = 4,  // a programming error at the C ABI: a null pointer, a bad index or size
  out_of_memory = 5,
  internal = 6,
};

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

inline Error user_error(const std::string& message) { return Error(Code::error, message); }

// InfeasibleBudgetError: carries what the message is built from (in end-to-end terms: overhead included).
class Infeasible : public Error {
 public:
  Infeasible(const std::string& message, double min_latency_ms, std::int64_t min_memory_bytes)
      : Error(Code::infeasible, message), min_latency_ms(min_latency_ms), min_memory_bytes(min_memory_bytes) {}
  double min_latency_ms;
  std::int64_t min_memory_bytes;
};

}  // namespace lc
