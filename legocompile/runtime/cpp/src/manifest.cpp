#include "manifest.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "error.hpp"
#include "pyfmt.hpp"

namespace lc {
namespace {

using json = nlohmann::ordered_json;  // keeps the document's key order, as Python's dict does

constexpr const char* kManifest = "manifest.json";

// ------------------------------------------------------------------------------------------ repr of JSON values
std::string repr(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "None";
    case json::value_t::boolean:
      return v.get<bool>() ? "True" : "False";
    case json::value_t::number_integer:
      return std::to_string(v.get<std::int64_t>());
    case json::value_t::number_unsigned:
      return std::to_string(v.get<std::uint64_t>());
    case json::value_t::number_float:
      return py_float_repr(v.get<double>());
    case json::value_t::string:
      return py_str_repr(v.get_ref<const std::string&>());
    case json::value_t::array: {
      std::string out = "[";
      bool first = true;
      for (const auto& item : v) {
        if (!first) out += ", ";
        out += repr(item);
        first = false;
      }
      return out + "]";
    }
    case json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, item] : v.items()) {
        if (!first) out += ", ";
        out += py_str_repr(key) + ": " + repr(item);
        first = false;
      }
      return out + "}";
    }
    default:
      return "None";
  }
}

std::string describe(const json& v) {  // manifest._describe
  const std::string text = repr(v);
  return utf8_length(text) <= 40 ? text : utf8_prefix(text, 37) + "...";
}

// ------------------------------------------------------------------------------------------ schema walking
struct SchemaError {
  std::string message;  // ManifestError's text, e.g. "manifest.blocks[0]: missing key 'sha256'"
};

struct Field {
  const char* name;
  bool required;
};

// _parse's checks on an object: a dict, no unknown key (the first in sorted order is named).
const json& object(const json& doc, const std::string& where, std::initializer_list<Field> fields) {
  if (!doc.is_object()) throw SchemaError{where + ": expected an object, got " + describe(doc)};
  std::vector<std::string> unknown;
  for (const auto& [key, _] : doc.items()) {
    bool known = false;
    for (const auto& f : fields) known = known || key == f.name;
    if (!known) unknown.push_back(key);
  }
  if (!unknown.empty()) {
    std::sort(unknown.begin(), unknown.end());  // byte order of UTF-8 = code point order, as Python sorts
    throw SchemaError{where + ": unknown key " + py_quote(unknown.front())};
  }
  return doc;
}

// The value of a field, or nullptr for an absent optional field; raises "missing key" for an absent required one.
const json* get(const json& doc, const Field& f, const std::string& where) {
  const auto it = doc.find(f.name);
  if (it == doc.end()) {
    if (f.required) throw SchemaError{where + ": missing key " + py_quote(f.name)};
    return nullptr;
  }
  return &*it;
}

std::string str(const json& v, const std::string& where) {
  if (!v.is_string()) throw SchemaError{where + ": expected a string, got " + describe(v)};
  return v.get<std::string>();
}

std::int64_t integer(const json& v, const std::string& where) {
  if (!v.is_number_integer()) throw SchemaError{where + ": expected an integer, got " + describe(v)};
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    return u > static_cast<std::uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(u);
  }
  return v.get<std::int64_t>();
}

double number(const json& v, const std::string& where) {
  if (!v.is_number()) throw SchemaError{where + ": expected a number, got " + describe(v)};
  return v.get<double>();
}

void any_object(const json& v, const std::string& where) {  // dict[str, Any]
  if (!v.is_object()) throw SchemaError{where + ": expected an object, got " + describe(v)};
}

std::vector<std::pair<std::string, std::string>> str_map(const json& v, const std::string& where) {
  any_object(v, where);
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [key, item] : v.items()) out.emplace_back(key, str(item, where + "[" + py_quote(key) + "]"));
  return out;
}

const json& list(const json& v, const std::string& where) {
  if (!v.is_array()) throw SchemaError{where + ": expected a list, got " + describe(v)};
  return v;
}

std::string at(const std::string& where, std::size_t k) { return where + "[" + std::to_string(k) + "]"; }

TensorSpec tensor_spec(const json& doc, const std::string& where) {
  static const Field name{"name", true}, shape{"shape", true}, dtype{"dtype", false};
  object(doc, where, {name, shape, dtype});
  TensorSpec t;
  t.name = str(*get(doc, name, where), where + ".name");
  const json& dims = list(*get(doc, shape, where), where + ".shape");
  for (std::size_t k = 0; k < dims.size(); ++k) t.shape.push_back(integer(dims[k], at(where + ".shape", k)));
  if (const json* v = get(doc, dtype, where)) t.dtype = str(*v, where + ".dtype");
  return t;
}

OptionEntry option_entry(const json& doc, const std::string& w) {
  static const Field variant{"variant", true}, sparsity{"sparsity", true}, precision{"precision", true},
      backend{"backend", true}, engine{"engine", true}, sha256{"sha256", true}, onnx{"onnx", true},
      params{"params", true}, export_err{"export_max_abs_err", true}, latency{"latency_ms", true},
      p90{"latency_p90_ms", true}, memory{"memory_bytes", true}, drop{"accuracy_drop", true},
      out_err{"output_max_abs_err", false}, gate{"accuracy_gate", false}, excluded{"excluded", false};
  object(doc, w, {variant, sparsity, precision, backend, engine, sha256, onnx, params, export_err, latency, p90,
                  memory, drop, out_err, gate, excluded});
  OptionEntry o;
  o.variant = str(*get(doc, variant, w), w + ".variant");
  if (const json& v = *get(doc, sparsity, w); !v.is_null()) o.sparsity = number(v, w + ".sparsity");
  o.precision = str(*get(doc, precision, w), w + ".precision");
  o.backend = str(*get(doc, backend, w), w + ".backend");
  o.engine = str(*get(doc, engine, w), w + ".engine");
  o.sha256 = str(*get(doc, sha256, w), w + ".sha256");
  o.onnx = str(*get(doc, onnx, w), w + ".onnx");
  o.params = integer(*get(doc, params, w), w + ".params");
  o.export_max_abs_err = number(*get(doc, export_err, w), w + ".export_max_abs_err");
  o.latency_ms = number(*get(doc, latency, w), w + ".latency_ms");
  o.latency_p90_ms = number(*get(doc, p90, w), w + ".latency_p90_ms");
  o.memory_bytes = integer(*get(doc, memory, w), w + ".memory_bytes");
  o.accuracy_drop = number(*get(doc, drop, w), w + ".accuracy_drop");
  if (const json* v = get(doc, out_err, w)) o.output_max_abs_err = number(*v, w + ".output_max_abs_err");
  if (const json* v = get(doc, gate, w); v && !v->is_null()) any_object(*v, w + ".accuracy_gate");
  if (const json* v = get(doc, excluded, w); v && !v->is_null()) o.excluded = str(*v, w + ".excluded");
  return o;
}

BlockEntry block_entry(const json& doc, const std::string& w) {
  static const Field name{"name", true}, input{"input", true}, output{"output", true}, options{"options", true},
      extra{"extra_outputs", false};
  object(doc, w, {name, input, output, options, extra});
  BlockEntry b;
  b.name = str(*get(doc, name, w), w + ".name");
  b.input = tensor_spec(*get(doc, input, w), w + ".input");
  b.output = tensor_spec(*get(doc, output, w), w + ".output");
  const json& opts = list(*get(doc, options, w), w + ".options");
  for (std::size_t k = 0; k < opts.size(); ++k) b.options.push_back(option_entry(opts[k], at(w + ".options", k)));
  if (const json* v = get(doc, extra, w)) {
    const json& specs = list(*v, w + ".extra_outputs");
    for (std::size_t k = 0; k < specs.size(); ++k)
      b.extra_outputs.push_back(tensor_spec(specs[k], at(w + ".extra_outputs", k)));
  }
  return b;
}

LateNumber late_number(const json* v, const char* key) {
  LateNumber n;
  if (v == nullptr) {
    n.problem = std::string("the manifest's teacher has no ") + py_quote(key);
  } else if (v->is_number()) {
    n.value = v->get<double>();
  } else if (v->is_boolean()) {
    n.value = v->get<bool>() ? 1.0 : 0.0;
  } else {
    n.problem = std::string("the manifest's teacher ") + py_quote(key) + " is not a number: " + describe(*v);
  }
  return n;
}

void parse_manifest(const json& doc, Manifest& m) {
  static const Field schema{"schema_version", true}, model{"model", true}, input{"input", true},
      blocks{"blocks", true}, teacher{"teacher", true}, device{"device", true}, tools{"tools", true},
      settings{"settings", true}, additivity{"additivity", false}, extra{"extra", false}, files{"files", false};
  const std::string w = "manifest";
  object(doc, w, {schema, model, input, blocks, teacher, device, tools, settings, additivity, extra, files});
  m.schema_version = integer(*get(doc, schema, w), w + ".schema_version");
  m.model = str(*get(doc, model, w), w + ".model");
  m.input = tensor_spec(*get(doc, input, w), w + ".input");
  const json& bl = list(*get(doc, blocks, w), w + ".blocks");
  for (std::size_t k = 0; k < bl.size(); ++k) m.blocks.push_back(block_entry(bl[k], at(w + ".blocks", k)));
  const json& t = *get(doc, teacher, w);
  any_object(t, w + ".teacher");
  any_object(*get(doc, device, w), w + ".device");
  str_map(*get(doc, tools, w), w + ".tools");
  const json& s = *get(doc, settings, w);
  any_object(s, w + ".settings");
  if (const json* v = get(doc, additivity, w); v && !v->is_null()) any_object(*v, w + ".additivity");
  if (const json* v = get(doc, extra, w)) any_object(*v, w + ".extra");
  if (const json* v = get(doc, files, w)) m.files = str_map(*v, w + ".files");

  const auto acc = t.find("accuracy");
  m.teacher_accuracy = late_number(acc == t.end() ? nullptr : &*acc, "accuracy");
  const auto over = t.find("chain_overhead_ms");
  if (over == t.end()) {
    m.chain_overhead_ms.value = 0.0;
  } else {
    m.chain_overhead_ms = late_number(&*over, "chain_overhead_ms");
  }
  const auto profile = s.find("profile");
  if (profile != s.end() && profile->is_object()) {
    const auto threads = profile->find("threads");
    if (threads != profile->end() && threads->is_number_integer() && threads->get<std::int64_t>() > 0)
      m.profile_threads = static_cast<int>(std::min<std::int64_t>(threads->get<std::int64_t>(), 1024));
  }
}

// ------------------------------------------------------------------------------------------ paths (posixpath)
std::string pjoin(const std::string& a, const std::string& b) {  // posixpath.join(a, b)
  if (!b.empty() && b[0] == '/') return b;
  if (a.empty() || a.back() == '/') return a + b;
  return a + "/" + b;
}

std::pair<std::string, std::string> psplit(const std::string& p) {  // posixpath.split
  const std::size_t i = p.rfind('/') == std::string::npos ? 0 : p.rfind('/') + 1;
  std::string head = p.substr(0, i), tail = p.substr(i);
  if (!head.empty() && head.find_first_not_of('/') != std::string::npos)
    while (!head.empty() && head.back() == '/') head.pop_back();
  return {head, tail};
}

std::string normpath(const std::string& path) {  // posixpath.normpath
  if (path.empty()) return ".";
  std::size_t slashes = path[0] == '/' ? 1 : 0;
  if (path.rfind("//", 0) == 0 && path.rfind("///", 0) != 0) slashes = 2;
  std::vector<std::string> comps;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string c = path.substr(start, end - start);
    start = end + 1;
    if (c.empty() || c == ".") continue;
    if (c != ".." || (slashes == 0 && comps.empty()) || (!comps.empty() && comps.back() == "..")) {
      comps.push_back(c);
    } else if (!comps.empty()) {
      comps.pop_back();
    }
  }
  std::string out(slashes, '/');
  for (std::size_t k = 0; k < comps.size(); ++k) out += (k ? "/" : "") + comps[k];
  return out.empty() ? "." : out;
}

struct LoopError {};

// posixpath._joinrealpath (non-strict): returns (path, ok); ok=false after a symlink loop.
std::pair<std::string, bool> join_realpath(std::string path, std::string rest,
                                           std::map<std::string, std::optional<std::string>>& seen, int depth) {
  if (depth > 200) throw LoopError{};  // Python would hit its recursion limit: a loop all the same
  if (!rest.empty() && rest[0] == '/') {
    rest = rest.substr(1);
    path = "/";
  }
  while (!rest.empty()) {
    const std::size_t pos = rest.find('/');
    const std::string name = rest.substr(0, pos);
    rest = pos == std::string::npos ? "" : rest.substr(pos + 1);
    if (name.empty() || name == ".") continue;
    if (name == "..") {
      if (!path.empty()) {
        auto [head, tail] = psplit(path);
        path = head;
        if (tail == "..") path = pjoin(pjoin(path, ".."), "..");
      } else {
        path = "..";
      }
      continue;
    }
    const std::string newpath = pjoin(path, name);
    struct stat st {};
    const bool is_link = ::lstat(newpath.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
    if (!is_link) {
      path = newpath;
      continue;
    }
    const auto it = seen.find(newpath);
    if (it != seen.end()) {
      if (it->second) {
        path = *it->second;
        continue;
      }
      return {pjoin(newpath, rest), false};
    }
    seen[newpath] = std::nullopt;
    std::string target(4096, '\0');
    const ssize_t n = ::readlink(newpath.c_str(), target.data(), target.size());
    if (n < 0) throw LoopError{};  // os.readlink raised: safe_path reports "cannot be resolved"
    target.resize(static_cast<std::size_t>(n));
    auto [resolved, ok] = join_realpath(path, target, seen, depth + 1);
    if (!ok) return {pjoin(resolved, rest), false};
    path = resolved;
    seen[newpath] = path;
  }
  return {path, true};
}

// Path(p).resolve() (non-strict), throwing LoopError where Python raises RuntimeError / OSError.
std::string resolve(const std::string& p) {
  std::map<std::string, std::optional<std::string>> seen;
  std::string path = join_realpath("", p, seen, 0).first;
  if (path.empty() || path[0] != '/') {
    std::string cwd(4096, '\0');
    if (::getcwd(cwd.data(), cwd.size()) == nullptr) throw LoopError{};
    cwd.resize(std::strlen(cwd.c_str()));
    path = pjoin(cwd, path);
  }
  path = normpath(path);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ELOOP) throw LoopError{};
  return py_path_str(path);
}

Error unsafe(const std::string& root, const std::string& rel, const std::string& reason) {
  return user_error(root + ": unsafe path " + py_quote(rel) + " in manifest: " + reason);
}

// safe_path(root, rel): the resolved path, after the lexical and the symlink checks.
std::string safe_path(const std::string& root, const std::string& rel) {
  const std::string reason = unsafe_reason(rel);
  if (!reason.empty()) throw unsafe(root, rel, reason);
  std::string base, path;
  try {
    base = resolve(root);
    path = resolve(py_path_join(root, rel));
  } catch (const LoopError&) {
    throw unsafe(root, rel, "cannot be resolved (symlink loop)");
  }
  const bool inside = base == "/" ? (path.size() > 1 && path[0] == '/')
                                  : (path.size() > base.size() && path.compare(0, base.size(), base) == 0 &&
                                     path[base.size()] == '/');
  if (!inside) throw unsafe(root, rel, "leads outside the bundle (symlink)");
  return path;
}

// ------------------------------------------------------------------------------------------ files
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

int open_regular(const std::string& root, const std::string& rel, Fd& holder) {
  const std::string path = safe_path(root, rel);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) throw user_error(root + ": file missing: " + rel);
    throw user_error(root + ": not a regular file: " + rel);
  }
  holder.fd = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) throw user_error(root + ": not a regular file: " + rel);
  return fd;
}

Error mismatch(const std::string& root, const std::string& rel) {
  return user_error(root + ": checksum mismatch for " + rel + " (file changed after the build); rebuild the bundle");
}

struct Sha256 {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  Sha256() {
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1)
      throw Error(Code::internal, "OpenSSL: cannot start a sha256 digest");
  }
  ~Sha256() { EVP_MD_CTX_free(ctx); }
  void update(const void* data, std::size_t n) {
    if (EVP_DigestUpdate(ctx, data, n) != 1) throw Error(Code::internal, "OpenSSL: sha256 update failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx, digest, &len) != 1) throw Error(Code::internal, "OpenSSL: sha256 final failed");
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int k = 0; k < len; ++k) {
      out += digits[digest[k] >> 4];
      out += digits[digest[k] & 15];
    }
    return out;
  }
};

// Reads the whole file (EAGAIN is impossible on a regular file); keep = false only hashes it.
std::string hash_fd(int fd, const std::string& root, const std::string& rel, std::vector<unsigned char>* keep) {
  Sha256 h;
  std::vector<unsigned char> chunk(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw user_error(root + ": not a regular file: " + rel);
    }
    if (n == 0) break;
    h.update(chunk.data(), static_cast<std::size_t>(n));
    if (keep) keep->insert(keep->end(), chunk.data(), chunk.data() + n);
  }
  return h.hex();
}

void check_file(const std::string& root, const std::string& rel, const std::string& sha256) {
  Fd holder;
  const int fd = open_regular(root, rel, holder);
  if (hash_fd(fd, root, rel, nullptr) != sha256) throw mismatch(root, rel);
}

bool is_sha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string json_error_detail(const std::string& what) {
  // nlohmann: "[json.exception.parse_error.101] parse error at line 1, column 1: syntax error ..."
  std::string detail = what;
  const auto close = detail.find("] ");
  if (detail.rfind("[json.exception.", 0) == 0 && close != std::string::npos) detail = detail.substr(close + 2);
  const auto nl = detail.find('\n');
  return nl == std::string::npos ? detail : detail.substr(0, nl);
}

}  // namespace

// ------------------------------------------------------------------------------------------ public
std::string unsafe_reason(const std::string& rel) {
  if (rel.empty()) return "not a non-empty string";
  for (unsigned char c : rel)
    if (c < 32 || c == 127) return "contains a control character";
  if (rel.find('\\') != std::string::npos) return "contains a backslash";
  if (rel[0] == '/') return "absolute path";
  if (rel.size() >= 2 && rel[1] == ':' && ((rel[0] >= 'A' && rel[0] <= 'Z') || (rel[0] >= 'a' && rel[0] <= 'z')))
    return "starts with a drive letter";
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = rel.find('/', start);
    parts.push_back(rel.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  for (const auto& p : parts)
    if (p == "..") return "contains '..'";
  for (const auto& p : parts)
    if (p.empty() || p == ".") return "has an empty or '.' component";
  return "";
}

std::string sha256_hex(const unsigned char* data, std::size_t size) {
  Sha256 h;
  h.update(data, size);
  return h.hex();
}

std::size_t BlockEntry::option_index(const std::string& variant, const std::string& precision) const {
  for (std::size_t k = 0; k < options.size(); ++k)
    if (options[k].variant == variant && options[k].precision == precision) return k;
  std::string have;
  for (const auto& o : options) have += (have.empty() ? "" : ", ") + o.variant + "/" + o.precision;
  throw user_error("block " + py_str_repr(name) + " has no option " + variant + "/" + precision + "; it has " + have);
}

std::vector<unsigned char> read_verified_bytes(const std::string& root, const std::string& rel,
                                               const std::string& sha256) {
  Fd holder;
  const int fd = open_regular(root, rel, holder);
  std::vector<unsigned char> data;
  if (hash_fd(fd, root, rel, &data) != sha256) throw mismatch(root, rel);
  return data;
}

Manifest read_bundle(const std::string& path, bool verify) {
  const std::string root = py_path_str(path);
  const std::string manifest_path = py_path_join(root, kManifest);
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw user_error("bundle not found: " + root);
  if (::stat(manifest_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw user_error(root + " is not a legocompile bundle (no manifest.json)");

  Manifest m;
  {
    const std::string resolved = safe_path(root, kManifest);
    Fd holder;
    holder.fd = ::open(resolved.c_str(), O_RDONLY | O_CLOEXEC);
    if (holder.fd < 0) throw user_error(manifest_path + ": cannot be read (" + std::strerror(errno) + ")");
    char chunk[65536];
    for (;;) {
      const ssize_t n = ::read(holder.fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw user_error(manifest_path + ": cannot be read (" + std::strerror(errno) + ")");
      if (n == 0) break;
      m.text.append(chunk, static_cast<std::size_t>(n));
    }
  }
  std::size_t bad = 0;
  if (!utf8_valid(m.text, &bad)) {
    char detail[160];
    std::snprintf(detail, sizeof detail, "'utf-8' codec can't decode byte 0x%02x in position %zu",
                  static_cast<unsigned>(static_cast<unsigned char>(m.text[bad])), bad);
    throw user_error(manifest_path + ": not valid JSON (" + detail + ")");
  }
  if (m.text.rfind("\xEF\xBB\xBF", 0) == 0)  // Python's json.loads refuses a BOM; nlohmann would skip it
    throw user_error(manifest_path +
                     ": not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0))");
  json doc;
  try {
    doc = json::parse(m.text);
  } catch (const json::exception& e) {
    throw user_error(manifest_path + ": not valid JSON (" + json_error_detail(e.what()) + ")");
  }
  if (!doc.is_object()) throw user_error(manifest_path + ": malformed manifest: not a JSON object");
  {
    const auto v = doc.find("schema_version");
    const bool is_int = v != doc.end() && v->is_number_integer();
    const bool equal = v != doc.end() && v->is_number() && v->get<double>() == kSchemaVersion &&
                       (is_int || v->is_number_float());
    if (!equal) {
      const std::string shown = v == doc.end() ? "None" : describe(*v);
      const bool newer = is_int && (v->is_number_unsigned() ? v->get<std::uint64_t>() > kSchemaVersion
                                                            : v->get<std::int64_t>() > kSchemaVersion);
      throw user_error(root + ": bundle schema version " + shown + " is not supported (this legocompile reads " +
                       std::to_string(kSchemaVersion) + "); " +
                       (newer ? "upgrade legocompile to read it" : "rebuild the bundle with this version"));
    }
  }
  try {
    parse_manifest(doc, m);
  } catch (const SchemaError& e) {
    throw user_error(manifest_path + ": malformed manifest: " + e.message);
  }
  // Every path, before the cross-field rules (an unsafe path is the news): files first, then the options'.
  {
    std::vector<std::string> paths;
    for (const auto& [rel, _] : m.files) paths.push_back(rel);
    for (const auto& b : m.blocks)
      for (const auto& o : b.options) {
        paths.push_back(o.engine);
        paths.push_back(o.onnx);
      }
    std::vector<std::string> seen;
    for (const auto& rel : paths) {
      if (std::find(seen.begin(), seen.end(), rel) != seen.end()) continue;
      seen.push_back(rel);
      safe_path(root, rel);
    }
  }
  // check_consistency: the first problem.
  {
    for (std::size_t k = 0; k + 1 < m.blocks.size(); ++k)
      if (!m.blocks[k].extra_outputs.empty())
        throw user_error(manifest_path + ": malformed manifest: " + m.blocks[k].name +
                         ": only the last block may have several outputs (block boundaries are single tensors)");
    std::map<std::string, std::string> files(m.files.begin(), m.files.end());
    for (const auto& [rel, digest] : m.files)
      if (!is_sha256(digest)) {
        json d = digest;
        throw user_error(manifest_path + ": malformed manifest: files[" + py_quote(rel) +
                         "]: not a sha256 hex digest: " + describe(d));
      }
    for (const auto& b : m.blocks)
      for (const auto& o : b.options) {
        const std::string who = b.name + " " + o.variant + "/" + o.precision;
        for (const auto& [kind, rel] : {std::pair<std::string, std::string>{"engine", o.engine}, {"onnx", o.onnx}})
          if (!files.count(rel))
            throw user_error(manifest_path + ": malformed manifest: " + who + ": " + kind + " " + py_quote(rel) +
                             " is not listed in files");
        const auto it = files.find(o.engine);
        if (it != files.end() && it->second != o.sha256)
          throw user_error(manifest_path + ": malformed manifest: " + who + ": sha256 differs from files[" +
                           py_quote(o.engine) + "]");
      }
  }
  if (verify)
    for (const auto& [rel, sha256] : m.files) check_file(root, rel, sha256);
  return m;
}

}  // namespace lc
