// lc_run: open a bundle, select under a budget, run N inferences on an .npy input, switch the budget mid-run,
// and print the selections, latency percentiles, the switch time and each output's checksum.
//
//   lc_run BUNDLE --input x.npy [--latency-ms L] [--memory-mb M] [-n 200]
//          [--switch-latency-ms L2] [--switch-memory-mb M2] [--threads T]
//
// The input is a float32 (or float64) C-order array shaped (batch, ...the bundle's input shape...).
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "legocompile/runtime.hpp"

namespace {

struct Npy {
  std::vector<std::int64_t> shape;
  std::vector<float> data;
};

// A minimal .npy (v1-3) reader: little-endian float32/float64, C order.
Npy read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error(path + ": not an .npy file");
  const int major = static_cast<unsigned char>(bytes[6]);
  std::size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    if (bytes.size() < 12) throw std::runtime_error(path + ": truncated header");
    for (int k = 0; k < 4; ++k) header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + k])) << (8 * k);
    offset = 12;
  }
  if (offset + header_len > bytes.size()) throw std::runtime_error(path + ": truncated header");
  const std::string header = bytes.substr(offset, header_len);
  auto value = [&](const std::string& key) {
    const auto at = header.find("'" + key + "'");
    if (at == std::string::npos) throw std::runtime_error(path + ": header has no " + key);
    return header.substr(header.find(':', at) + 1);
  };
  const std::string descr = value("descr");
  const bool f32 = descr.find("<f4") != std::string::npos;
  const bool f64 = descr.find("<f8") != std::string::npos;
  if (!f32 && !f64) throw std::runtime_error(path + ": only little-endian float32/float64 arrays are read");
  if (value("fortran_order").find("True") < value("fortran_order").find(','))
    throw std::runtime_error(path + ": Fortran-order arrays are not read");
  std::string dims = value("shape");
  dims = dims.substr(dims.find('(') + 1, dims.find(')') - dims.find('(') - 1);
  Npy out;
  std::size_t count = 1;
  for (char* p = dims.data(); *p;) {
    char* end = nullptr;
    const long long d = std::strtoll(p, &end, 10);
    if (end == p) {
      ++p;
      continue;
    }
    out.shape.push_back(d);
    count *= static_cast<std::size_t>(d);
    p = end;
  }
  const std::size_t data_at = offset + header_len;
  const std::size_t width = f32 ? 4 : 8;
  if (bytes.size() - data_at < count * width) throw std::runtime_error(path + ": truncated data");
  out.data.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    if (f32) {
      std::memcpy(&out.data[i], bytes.data() + data_at + 4 * i, 4);
    } else {
      double d;
      std::memcpy(&d, bytes.data() + data_at + 8 * i, 8);
      out.data[i] = static_cast<float>(d);
    }
  }
  return out;
}

std::uint64_t fnv1a64(const void* data, std::size_t size) {
  std::uint64_t h = 1469598103934665603ULL;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

void print_selection(const char* label, const legocompile::Selection& s) {
  std::printf("%s:", label);
  for (const auto& c : s.blocks) std::printf(" %s=%s/%s", c.block.c_str(), c.variant.c_str(), c.precision.c_str());
  std::printf("\npredicted: latency_ms=%.6f memory_bytes=%" PRId64 " accuracy=%.6f\n", s.predicted.latency_ms,
              s.predicted.memory_bytes, s.predicted.accuracy);
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

int usage() {
  std::fprintf(stderr,
               "usage: lc_run BUNDLE --input X.npy [--latency-ms L] [--memory-mb M] [-n N] "
               "[--switch-latency-ms L2] [--switch-memory-mb M2] [--threads T]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string bundle, input;
  legocompile::Budget budget, switch_budget;
  bool has_budget = false, has_switch = false;
  int n = 200, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "lc_run: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--input") input = next();
    else if (a == "--latency-ms") budget.latency(std::atof(next())), has_budget = true;
    else if (a == "--memory-mb") budget.memory(std::atof(next())), has_budget = true;
    else if (a == "--switch-latency-ms") switch_budget.latency(std::atof(next())), has_switch = true;
    else if (a == "--switch-memory-mb") switch_budget.memory(std::atof(next())), has_switch = true;
    else if (a == "-n") n = std::atoi(next());
    else if (a == "--threads") threads = std::atoi(next());
    else if (!a.empty() && a[0] != '-' && bundle.empty()) bundle = a;
    else return usage();
  }
  if (bundle.empty() || input.empty() || n < 1) return usage();
  try {
    legocompile::Options options;
    options.threads = threads;
    legocompile::Runtime rt = legocompile::Runtime::open(bundle, options);
    const Npy x = read_npy(input);
    if (x.shape.empty()) throw std::runtime_error(input + ": a batch axis is needed");
    const std::size_t batch = static_cast<std::size_t>(x.shape[0]);
    // One buffer per output: a model whose forward returns several tensors (detection, pose heads) has several.
    std::vector<std::vector<float>> ys;
    std::vector<legocompile::span<float>> outs;
    for (std::size_t k = 0; k < rt.num_outputs(); ++k) ys.emplace_back(rt.output_size(k, batch));
    for (auto& y : ys) outs.emplace_back(y.data(), y.size());
    print_selection("selection", has_budget ? rt.select(budget) : rt.selection());

    using clock = std::chrono::steady_clock;
    std::vector<double> us;
    double switch_us = 0;
    for (int k = 0; k < n; ++k) {
      if (has_switch && k == n / 2) {
        const auto t0 = clock::now();
        const legocompile::Selection s = rt.select(switch_budget);
        switch_us = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
        std::printf("switched at call %d (%.1f us)\n", k, switch_us);
        print_selection("selection", s);
      }
      const auto t0 = clock::now();
      rt.run_outputs(x.data, batch, outs);
      us.push_back(std::chrono::duration<double, std::micro>(clock::now() - t0).count());
    }
    std::printf("calls: %d batch: %zu\n", n, batch);
    std::printf("latency_us: p50=%.1f p90=%.1f p99=%.1f\n", percentile(us, 0.5), percentile(us, 0.9),
                percentile(us, 0.99));
    for (std::size_t k = 0; k < ys.size(); ++k) {
      double sum = 0;
      for (float v : ys[k]) sum += v;
      const std::string label = k == 0 ? "output" : "output " + std::to_string(k);
      std::printf("%s: elements=%zu sum=%.9g fnv1a64=%016" PRIx64 "\n", label.c_str(), ys[k].size(), sum,
                  fnv1a64(ys[k].data(), ys[k].size() * sizeof(float)));
    }
  } catch (const legocompile::InfeasibleBudget& e) {
    std::fprintf(stderr, "lc_run: infeasible: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lc_run: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
