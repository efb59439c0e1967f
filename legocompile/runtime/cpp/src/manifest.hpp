// The bundle's manifest (schema 2) and the verifying reader: the rules and the one-line messages of
// legocompile/bundle/reader.py and manifest.py (see the list in reader.py's docstring).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lc {

inline constexpr int kSchemaVersion = 2;

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;  // dimension 0 is the dynamic batch axis
  std::string dtype = "float32";
};

struct OptionEntry {
  std::string variant;
  std::optional<double> sparsity;
  std::string precision;
  std::string backend;
  std::string engine;  // bundle-relative path, listed in Manifest::files
  std::string sha256;
  std::string onnx;
  std::int64_t params = 0;
  double export_max_abs_err = 0;
  double latency_ms = 0;
  double latency_p90_ms = 0;
  std::int64_t memory_bytes = 0;
  double accuracy_drop = 0;
  double output_max_abs_err = 0;
  std::optional<std::string> excluded;  // set: never selectable (Python's selectable())
};

struct BlockEntry {
  std::string name;
  TensorSpec input;
  TensorSpec output;
  std::vector<OptionEntry> options;
  std::vector<TensorSpec> extra_outputs;  // a last block's outputs after the first (a model returning a tuple)
  // Index of options[variant/precision]; throws Python's "block 'b' has no option v/p; it has ..." error.
  std::size_t option_index(const std::string& variant, const std::string& precision) const;
};

// A manifest value that Python reads with float(...) later (teacher accuracy, chain overhead): the number, or
// why it is not one (reported when it is used, as Python does).
struct LateNumber {
  std::optional<double> value;
  std::string problem;
};

struct Manifest {
  std::int64_t schema_version = 0;
  std::string model;
  TensorSpec input;
  std::vector<BlockEntry> blocks;
  LateNumber teacher_accuracy;     // teacher["accuracy"]
  LateNumber chain_overhead_ms;    // teacher.get("chain_overhead_ms", 0.0)
  int profile_threads = 0;         // settings["profile"]["threads"], 0 when absent
  std::vector<std::pair<std::string, std::string>> files;  // in manifest order: path -> sha256
  std::string text;                // manifest.json as read (UTF-8)
};

// str(Path(path)) and read_bundle(path, verify=verify): throws lc::Error (Code::error) with the Python message.
Manifest read_bundle(const std::string& path, bool verify);

// read_verified_bytes(root, rel, sha256): the file's bytes, read once and checked.
std::vector<unsigned char> read_verified_bytes(const std::string& root, const std::string& rel,
                                               const std::string& sha256);

// sha256 of bytes, lower-case hex (OpenSSL).
std::string sha256_hex(const unsigned char* data, std::size_t size);

// unsafe_reason(rel): why rel is not a safe bundle-relative path (lexically), or "" when it is.
std::string unsafe_reason(const std::string& rel);

}  // namespace lc
