#include "pyfmt.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace lc {
namespace {

// Decodes one code point at `i` (advancing it). An invalid byte decodes as Python's surrogateescape does
// (U+DC80 + byte), which repr() shows as "\udcXX".
char32_t next_code_point(const std::string& s, std::size_t& i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  auto invalid = [&]() {
    ++i;
    return static_cast<char32_t>(0xDC00 + b0);
  };
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int len = 0;
  char32_t cp = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return invalid();
  }
  if (i + len > s.size()) return invalid();
  for (int k = 1; k < len; ++k) {
    const unsigned char b = byte(i + k);
    if ((b & 0xC0) != 0x80) return invalid();
    cp = (cp << 6) | (b & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
    return invalid();
  i += len;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool printable(char32_t c) {
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  if (c <= 0xA0 || c == 0xAD) return false;  // C1 controls, no-break space (Zs), soft hyphen (Cf)
  if ((c >= 0x600 && c <= 0x605) || c == 0x61C || c == 0x6DD || c == 0x70F || c == 0x8E2) return false;
  if (c == 0x1680 || c == 0x180E) return false;
  if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F)) return false;
  if (c == 0x3000 || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB) || c == 0xFFFE || c == 0xFFFF) return false;
  if (c >= 0xD800 && c <= 0xF8FF) return false;  // surrogates, private use
  if (c == 0x110BD || c == 0x110CD || (c >= 0x1BCA0 && c <= 0x1BCA3) || (c >= 0x1D173 && c <= 0x1D17A)) return false;
  if (c == 0xE0001 || (c >= 0xE0020 && c <= 0xE007F) || c >= 0xF0000) return false;
  return true;
}

bool py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

}  // namespace

std::string py_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  std::string s(buf, res.ptr);
  const bool negative = s[0] == '-';
  if (negative) s.erase(0, 1);
  const auto e = s.find('e');
  std::string digits;
  for (std::size_t k = 0; k < e; ++k)
    if (s[k] != '.') digits += s[k];
  const int exponent = std::atoi(s.c_str() + e + 1);
  const int decpt = exponent + 1;  // value = 0.DIGITS * 10**decpt
  const int n = static_cast<int>(digits.size());
  std::string out;
  if (decpt <= -4 || decpt > 16) {
    out = digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  } else if (decpt <= 0) {
    out = "0." + std::string(static_cast<std::size_t>(-decpt), '0') + digits;
  } else if (decpt >= n) {
    out = digits + std::string(static_cast<std::size_t>(decpt - n), '0') + ".0";
  } else {
    out = digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return negative ? "-" + out : out;
}

std::string py_str_repr(const std::string& utf8) {
  const bool single = utf8.find('\'') != std::string::npos;
  const bool dbl = utf8.find('"') != std::string::npos;
  const char quote = (single && !dbl) ? '"' : '\'';
  std::string out(1, quote);
  for (std::size_t i = 0; i < utf8.size();) {
    const char32_t c = next_code_point(utf8, i);
    char esc[16];
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (printable(c)) {
      append_utf8(out, c);
    } else {
      if (c <= 0xFF)
        std::snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned>(c));
      else if (c <= 0xFFFF)
        std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
      else
        std::snprintf(esc, sizeof esc, "\\U%08x", static_cast<unsigned>(c));
      out += esc;
    }
  }
  out += quote;
  return out;
}

bool py_isprintable(const std::string& utf8) {
  for (std::size_t i = 0; i < utf8.size();)
    if (!printable(next_code_point(utf8, i))) return false;
  return true;
}

std::string py_quote(const std::string& utf8) {
  return py_isprintable(utf8) ? "'" + utf8 + "'" : py_str_repr(utf8);
}

std::string py_fixed(double value, int decimals) {
  if (std::isnan(value)) return "nan";
  std::vector<char> buf(400 + static_cast<std::size_t>(decimals));
  std::snprintf(buf.data(), buf.size(), "%.*f", decimals, value);
  return buf.data();
}

std::string utf8_prefix(const std::string& utf8, std::size_t count) {
  std::size_t i = 0;
  for (std::size_t k = 0; k < count && i < utf8.size(); ++k) next_code_point(utf8, i);
  return utf8.substr(0, i);
}

std::size_t utf8_length(const std::string& utf8) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < utf8.size(); ++n) next_code_point(utf8, i);
  return n;
}

bool utf8_valid(const std::string& bytes, std::size_t* error_at) {
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t at = i;
    const char32_t c = next_code_point(bytes, i);
    if (c >= 0xDC80 && c <= 0xDCFF && i == at + 1 && static_cast<unsigned char>(bytes[at]) >= 0x80) {
      if (error_at) *error_at = at;
      return false;
    }
  }
  return true;
}

std::string py_collapse_whitespace(const std::string& utf8) {
  std::string out;
  bool pending = false;
  for (std::size_t i = 0; i < utf8.size();) {
    const std::size_t at = i;
    const char32_t c = next_code_point(utf8, i);
    if (py_space(c)) {
      pending = !out.empty();
      continue;
    }
    if (pending) out += ' ';
    pending = false;
    out.append(utf8, at, i - at);
  }
  return out;
}

std::string py_path_str(const std::string& path) {
  std::string root;
  if (path.rfind("//", 0) == 0 && path.rfind("///", 0) != 0)
    root = "//";
  else if (!path.empty() && path[0] == '/')
    root = "/";
  std::string out = root;
  std::size_t start = 0;
  bool first = true;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (!part.empty() && part != ".") {
      if (!first) out += '/';
      out += part;
      first = false;
    }
    start = end + 1;
  }
  return out.empty() ? "." : out;
}

std::string py_path_join(const std::string& base, const std::string& rel) {
  return py_path_str(base + "/" + rel);
}

}  // namespace lc
