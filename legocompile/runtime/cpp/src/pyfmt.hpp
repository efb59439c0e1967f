// Python-compatible text: the C++ runtime's error messages are the Python reader's, character for character.
#pragma once

#include <cstdint>
#include <string>

namespace lc {

// repr(float): shortest round-trip digits, exponent form outside 1e-4 <= |x| < 1e16 ("1e-05", "2.0", "inf").
std::string py_float_repr(double value);

// repr(str) of UTF-8 text (quotes chosen as Python does; escapes for what str.isprintable() rejects).
std::string py_str_repr(const std::string& utf8);

// str.isprintable() (exact for ASCII and Latin-1; Unicode categories approximated for the rest).
bool py_isprintable(const std::string& utf8);

// legocompile.bundle.manifest.quote: 'text' for a printable string, else repr(text).
std::string py_quote(const std::string& utf8);

// f"{value:.{decimals}f}" (both correctly rounded, half to even on exact ties).
std::string py_fixed(double value, int decimals);

// The first `count` code points of UTF-8 text, and the number of code points.
std::string utf8_prefix(const std::string& utf8, std::size_t count);
std::size_t utf8_length(const std::string& utf8);

// Whether `bytes` is valid UTF-8 as Python's strict decoder reads it (no overlongs, no surrogates).
bool utf8_valid(const std::string& bytes, std::size_t* error_at = nullptr);

// " ".join(text.split()): whitespace runs collapsed (ASCII and the common Unicode spaces), ends trimmed.
std::string py_collapse_whitespace(const std::string& utf8);

// str(pathlib.PurePosixPath(text)): repeated slashes and '.' components dropped, "" -> ".", "//x" kept.
std::string py_path_str(const std::string& path);

// str(Path(a) / b) for a relative b.
std::string py_path_join(const std::string& base, const std::string& rel);

}  // namespace lc
