// Element types the loaders accept, and exact conversions between them and float32.
// All multi-byte values in .npy / .safetensors files are little-endian and are read with
// memcpy, which is only correct on a little-endian host.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "saescale::io assumes a little-endian host"
#endif

namespace saescale::io {

enum class DType { F32, F16, BF16, F64 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::F64:
      return 8;
  }
  return 0;
}

// The safetensors spelling.
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F64:
      return "F64";
  }
  return "?";
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));       // inf, NaN payload
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (mant << 13));  // rebias 15->127
  // Zero or subnormal: mant * 2^-24, exactly representable in float.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
  return sign != 0 ? -v : v;
}

// Round to nearest even; overflow goes to inf, NaN stays NaN (quiet).
inline uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds past 65504 to inf
  if (a >= 0x38800000u) {                       // normal half (>= 2^-14)
    uint32_t m = a - (112u << 23);
    m += 0xfffu + ((m >> 13) & 1u);  // a carry into the exponent is the correct rounding
    return sign | static_cast<uint16_t>(m >> 13);
  }
  if (a <= 0x33000000u) return sign;  // <= 2^-25 rounds to (signed) zero
  // Subnormal half: round(value / 2^-24) with value = mant24 * 2^(e - 150).
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - (a >> 23);  // in [14, 24] here
  uint32_t r = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (r & 1u) != 0)) ++r;
  return sign | static_cast<uint16_t>(r);
}

inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// Round to nearest even; NaN is kept NaN by forcing the quiet bit (truncation alone could
// turn a NaN with only low payload bits into inf).
inline uint16_t float_to_bf16(float f) {
  uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// Converts n little-endian elements at src (any alignment) to float32.
inline void convert_to_float(DType t, const unsigned char* src, size_t n, float* dst) {
  switch (t) {
    case DType::F32:
      if (n != 0) std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, sizeof v);
        dst[i] = t == DType::F16 ? half_to_float(v) : bf16_to_float(v);
      }
      return;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, sizeof v);
        dst[i] = static_cast<float>(v);
      }
      return;
  }
}

}  // namespace saescale::io
