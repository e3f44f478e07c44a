#include "io/npy.hpp"

#include <cstring>
#include <limits>

#include "error.hpp"
#include "io/atomic_write.hpp"

namespace saescale::io {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// NumPy itself refuses headers over 10000 bytes by default; anything near 1 MiB is corrupt.
constexpr size_t kMaxHeaderLen = 1 << 20;

// Keeps error messages on one line whatever bytes the file contains.
std::string printable(const std::string& s) {
  std::string out;
  for (char c : s) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

// Number of bytes of a C-order array, or false on overflow / negative dims.
bool array_bytes(const std::vector<int64_t>& shape, size_t itemsize, size_t* bytes) {
  size_t n = itemsize;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) n = 0;  // checked first so (huge, huge, 0) is not an overflow
  }
  for (int64_t d : shape) {
    if (n != 0 && static_cast<uint64_t>(d) > std::numeric_limits<size_t>::max() / n) {
      return false;
    }
    n *= static_cast<size_t>(d);
  }
  *bytes = n;
  return true;
}

// Minimal parser for the Python dict literal NumPy writes, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (1024, 64), }
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  void parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      std::string key = string_lit();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr" && !have_descr) {
        *descr = string_lit();
        have_descr = true;
      } else if (key == "fortran_order" && !have_fortran) {
        *fortran = boolean();
        have_fortran = true;
      } else if (key == "shape" && !have_shape) {
        *shape = tuple();
        have_shape = true;
      } else {
        fail("unexpected or repeated key '" + printable(key) + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after '}'");
    if (!have_descr || !have_fortran || !have_shape) {
      fail("header must have keys 'descr', 'fortran_order' and 'shape'");
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    const std::string shown = s_.substr(0, s_.find_last_not_of(" \n") + 1);  // drop padding
    throw Error(path_ + ": malformed npy header at offset " + std::to_string(pos_) + ": " + what +
                " (header: " + printable(shown) + ")");
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string string_lit() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  int64_t integer() {
    if (peek() == '-') fail("negative dimension in shape");
    if (peek() < '0' || peek() > '9') fail("expected an integer in shape");
    int64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      int digit = peek() - '0';
      if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("dimension too large");
      v = v * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L') ++pos_;  // Python 2 long suffix
    return v;
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    skip_ws();
    while (peek() != ')') {
      dims.push_back(integer());
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        skip_ws();
      } else if (peek() != ')') {
        fail("expected ',' or ')' in shape");
      }
    }
    ++pos_;
    return dims;
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

uint32_t read_le(const unsigned char* p, int n) {
  uint32_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_npy_impl(const std::string& path, const char* descr, size_t itemsize, const void* data,
                    const std::vector<int64_t>& shape) {
  size_t bytes = 0;
  if (!array_bytes(shape, itemsize, &bytes)) {
    throw Error(path + ": cannot write npy: invalid shape " + shape_str(shape));
  }
  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': " + shape_str(shape) + ", }";
  // NumPy pads so that the data starts on a 64-byte boundary; the header ends with '\n'.
  const size_t prefix = kMagicLen + 2 + 2;
  header.append(63 - (prefix + header.size()) % 64, ' ');
  header += '\n';
  if (header.size() > 0xffff) throw Error(path + ": cannot write npy: too many dimensions");
  std::string head(kMagic, kMagicLen);
  head += '\x01';  // version 1.0: 2-byte little-endian header length
  head += '\x00';
  head += static_cast<char>(header.size() & 0xff);
  head += static_cast<char>(header.size() >> 8);
  head += header;
  write_file_atomic(path, [&](std::FILE* f) {
    std::fwrite(head.data(), 1, head.size(), f);
    if (bytes != 0) std::fwrite(data, 1, bytes, f);
  });
}

}  // namespace

NpyInfo parse_npy(const unsigned char* data, size_t size, const std::string& path) {
  if (size < kMagicLen || std::memcmp(data, kMagic, kMagicLen) != 0) {
    throw Error(path + ": not a .npy file (bad magic; expected \\x93NUMPY)");
  }
  if (size < kMagicLen + 2) throw Error(path + ": truncated: file ends inside the npy preamble");
  const int major = data[6], minor = data[7];
  size_t len_bytes;
  if (major == 1 && minor == 0) {
    len_bytes = 2;
  } else if ((major == 2 || major == 3) && minor == 0) {
    len_bytes = 4;
  } else {
    throw Error(path + ": unsupported npy format version " + std::to_string(major) + "." +
                std::to_string(minor) + " (supported: 1.0, 2.0, 3.0)");
  }
  const size_t prefix = kMagicLen + 2 + len_bytes;
  if (size < prefix) throw Error(path + ": truncated: file ends inside the npy preamble");
  const size_t header_len = read_le(data + 8, static_cast<int>(len_bytes));
  if (header_len > kMaxHeaderLen || header_len > size - prefix) {
    throw Error(path + ": invalid npy header length " + std::to_string(header_len) + " (file has " +
                std::to_string(size) + " bytes)");
  }
  std::string header(reinterpret_cast<const char*>(data + prefix), header_len);
  std::string descr;
  bool fortran = false;
  NpyInfo info{};
  HeaderParser(header, path).parse(&descr, &fortran, &info.shape);

  if (descr == "<f4") {
    info.dtype = DType::F32;
  } else if (descr == "<f2") {
    info.dtype = DType::F16;
  } else {
    throw Error(path + ": unsupported dtype '" + printable(descr) +
                "' (accepted: '<f4' little-endian float32, '<f2' little-endian float16)");
  }
  if (fortran) {
    throw Error(path + ": Fortran order not supported, save with np.ascontiguousarray");
  }
  if (!array_bytes(info.shape, dtype_size(info.dtype), &info.data_bytes)) {
    throw Error(path + ": shape " + shape_str(info.shape) + " is too large (size overflows)");
  }
  info.data_offset = prefix + header_len;
  const size_t available = size - info.data_offset;
  const std::string expect = "header says shape " + shape_str(info.shape) + " of " + descr + " (" +
                             std::to_string(info.data_bytes) + " bytes)";
  if (available < info.data_bytes) {
    throw Error(path + ": truncated: " + expect + " but the file has " + std::to_string(available) +
                " bytes after the header");
  }
  if (available > info.data_bytes) {
    throw Error(path + ": has " + std::to_string(available - info.data_bytes) +
                " trailing bytes: " + expect + " but the file has " + std::to_string(available) +
                " bytes after the header");
  }
  return info;
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  write_npy_impl(path, "<f4", sizeof(float), data, shape);
}

void write_npy_f16(const std::string& path, const uint16_t* data,
                   const std::vector<int64_t>& shape) {
  write_npy_impl(path, "<f2", sizeof(uint16_t), data, shape);
}

}  // namespace saescale::io
