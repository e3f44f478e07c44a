// Unit tests for src/io: .npy and safetensors round trips, float16/bfloat16 conversions, and
// one test per rejected input, each checking that the one-line error names the problem.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "error.hpp"
#include "io/atomic_write.hpp"
#include "io/checkpoint.hpp"
#include "io/dtype.hpp"
#include "io/mapped_file.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace saescale::io;

namespace {

const unsigned char* bytes_of(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A .npy image with a hand-written header dict, padded the way NumPy pads it.
std::string make_npy(const std::string& dict, const std::string& payload, int major = 1) {
  const size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  header.append(63 - (prefix + header.size()) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  for (size_t i = 0; i < prefix - 8; ++i) {
    out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  }
  return out + header + payload;
}

// A safetensors image with the given header text and data section.
std::string make_st(const std::string& header, const std::string& payload, uint64_t len) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  return out + header + payload;
}
std::string make_st(const std::string& header, const std::string& payload) {
  return make_st(header, payload, header.size());
}

// Runs f, which must throw saescale::Error whose one-line message names path and word.
void expect_error(const std::function<void()>& f, const std::string& path,
                  const std::string& word) {
  try {
    f();
    ADD_FAILURE() << "expected saescale::Error mentioning '" << word << "'";
  } catch (const saescale::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(word), std::string::npos) << "message: " << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message: " << msg;
  }
}

void expect_npy_error(const std::string& image, const std::string& word) {
  expect_error([&] { parse_npy(bytes_of(image), image.size(), "x.npy"); }, "x.npy", word);
}

void expect_st_error(const std::string& image, const std::string& word) {
  expect_error([&] { parse_safetensors(bytes_of(image), image.size(), "x.st"); }, "x.st", word);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = fs::temp_directory_path() / ("saescale_test_io_" + std::to_string(::getpid()) + "_" +
                                        test + "_" + std::to_string(seed_));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Normally distributed, so never all zeros, with a spread of exponents.
  std::vector<float> random_floats(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }

  unsigned seed_ = 0;
  std::mt19937 rng_;
  fs::path dir_;
};

#define TRACE_SEED() SCOPED_TRACE("random seed " + std::to_string(seed_))

TEST_F(IoTest, NpyF32RoundTripIsBitwiseExact) {
  TRACE_SEED();
  const std::vector<std::vector<int64_t>> shapes = {{7}, {5, 3}, {2, 3, 4}, {}, {1, 1}, {33, 17}};
  for (const auto& shape : shapes) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    std::vector<float> values = random_floats(n, 100.0f);
    const std::string file = path("a.npy");
    write_npy(file, values.data(), shape);

    MappedFile m(file);
    NpyInfo info = parse_npy(m.data(), m.size(), file);
    EXPECT_EQ(info.dtype, DType::F32);
    EXPECT_EQ(info.shape, shape);
    EXPECT_EQ(info.data_bytes, n * 4);
    EXPECT_EQ(info.data_offset % 64, 0u);  // NumPy's alignment, header ends in '\n'
    EXPECT_EQ(m.data()[info.data_offset - 1], '\n');
    std::vector<float> back(n);
    convert_to_float(info.dtype, m.data() + info.data_offset, n, back.data());
    EXPECT_TRUE(same_bits(values, back));
  }
}

TEST_F(IoTest, NpyZeroSizedArray) {
  const std::string file = path("z.npy");
  write_npy(file, nullptr, {0, 4});
  MappedFile m(file);
  NpyInfo info = parse_npy(m.data(), m.size(), file);
  EXPECT_EQ(info.shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(info.data_bytes, 0u);
}

TEST_F(IoTest, NpyF16ParseAndConvert) {
  TRACE_SEED();
  std::vector<float> values = random_floats(6 * 9, 50.0f);
  std::vector<uint16_t> halves(values.size());
  for (size_t i = 0; i < values.size(); ++i) halves[i] = float_to_half(values[i]);
  const std::string file = path("h.npy");
  write_npy_f16(file, halves.data(), {6, 9});

  MappedFile m(file);
  NpyInfo info = parse_npy(m.data(), m.size(), file);
  EXPECT_EQ(info.dtype, DType::F16);
  EXPECT_EQ(info.shape, (std::vector<int64_t>{6, 9}));
  std::vector<float> back(values.size());
  convert_to_float(info.dtype, m.data() + info.data_offset, back.size(), back.data());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(back[i], half_to_float(halves[i]));
    EXPECT_LE(std::fabs(back[i] - values[i]), std::fabs(values[i]) * (1.0f / 2048) + 1e-7f);
  }
}

TEST_F(IoTest, NpyHeaderVariantsParse) {
  TRACE_SEED();
  std::vector<float> v = random_floats(6);
  const std::string payload(reinterpret_cast<const char*>(v.data()), 24);
  const std::string one(reinterpret_cast<const char*>(v.data()), 4);
  struct Case {
    std::string dict, payload;
    int major;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", payload, 1, {2, 3}},
      {"{'shape':(2,3),'fortran_order':False,'descr':'<f4'}", payload, 1, {2, 3}},
      {"{ \"descr\" : \"<f4\" , 'shape' : ( 6 , ) , 'fortran_order' : False }", payload, 1, {6}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6L,), }", payload, 1, {6}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", one, 1, {}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", payload, 2, {3, 2}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 6), }", payload, 3, {1, 6}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.dict);
    const std::string image = make_npy(c.dict, c.payload, c.major);
    NpyInfo info = parse_npy(bytes_of(image), image.size(), "x.npy");
    EXPECT_EQ(info.shape, c.shape);
    EXPECT_EQ(info.data_offset + info.data_bytes, image.size());
  }
}

TEST(DTypeTest, HalfKnownBitPatterns) {
  const float sub_min = std::ldexp(1.0f, -24);
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.5f), 0xc100);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // halfway to 2^16 rounds to even: inf
  EXPECT_EQ(float_to_half(1e10f), 0x7c00);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_half(sub_min), 0x0001);
  EXPECT_EQ(float_to_half(1023 * sub_min), 0x03ff);
  EXPECT_EQ(float_to_half(sub_min / 2), 0x0000);     // tie rounds to even (zero)
  EXPECT_EQ(float_to_half(sub_min * 1.5f), 0x0002);  // tie rounds to even (2)
  EXPECT_EQ(float_to_half(sub_min * 0.75f), 0x0001);
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, down to even
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, up to even
  EXPECT_EQ(float_to_half(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_half(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  const uint16_t nan = float_to_half(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);

  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc100), -2.5f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), sub_min);
  EXPECT_EQ(half_to_float(0x83ff), -1023 * sub_min);
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7c01)));
  EXPECT_TRUE(std::signbit(half_to_float(0x8000)));

  // Every non-NaN half survives float and back.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0) continue;
    ASSERT_EQ(float_to_half(half_to_float(static_cast<uint16_t>(h))), h) << h;
  }
}

#if defined(__FLT16_MAX__)
// The compiler's own float -> _Float16 conversion rounds to nearest even: an independent oracle.
TEST(DTypeTest, HalfMatchesCompilerFloat16) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("random seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng());
    const float f = bits_float(bits);
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t ref;
    std::memcpy(&ref, &h, 2);
    ASSERT_EQ(float_to_half(f), ref) << std::hex << bits;
  }
}
#endif

TEST(DTypeTest, Bf16KnownBitPatterns) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.5f), 0xc020);
  EXPECT_EQ(float_to_bf16(bits_float(0x3f808000)), 0x3f80);  // tie, down to even
  EXPECT_EQ(float_to_bf16(bits_float(0x3f818000)), 0x3f82);  // tie, up to even
  EXPECT_EQ(float_to_bf16(bits_float(0x3f808001)), 0x3f81);
  EXPECT_EQ(float_to_bf16(bits_float(0x00010000)), 0x0001);  // subnormal
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  // A NaN whose payload is only in the low 16 bits must not become inf.
  const uint16_t nan = float_to_bf16(bits_float(0x7f800001));
  EXPECT_TRUE(std::isnan(bf16_to_float(nan)));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));

  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xc020), -2.5f);
  EXPECT_EQ(bf16_to_float(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(float_bits(bf16_to_float(0x0001)), 0x00010000u);
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if ((b & 0x7f80) == 0x7f80 && (b & 0x007f) != 0) continue;
    ASSERT_EQ(float_to_bf16(bf16_to_float(static_cast<uint16_t>(b))), b) << b;
  }
}

TEST(DTypeTest, ConvertHandlesUnalignedSource) {
  const float f[3] = {1.5f, -2.25f, 1e-3f};
  const double d[3] = {1.5, -2.25, 1e-3};
  const uint16_t h[3] = {0x3c00, 0xc100, 0x0001};
  const uint16_t b[3] = {0x3f80, 0xc020, 0x4049};
  unsigned char buf[1 + sizeof d];
  float out[3];

  std::memcpy(buf + 1, f, sizeof f);
  convert_to_float(DType::F32, buf + 1, 3, out);
  EXPECT_EQ(std::vector<float>(out, out + 3), std::vector<float>(f, f + 3));
  std::memcpy(buf + 1, d, sizeof d);
  convert_to_float(DType::F64, buf + 1, 3, out);
  EXPECT_EQ(std::vector<float>(out, out + 3), std::vector<float>({1.5f, -2.25f, 1e-3f}));
  std::memcpy(buf + 1, h, sizeof h);
  convert_to_float(DType::F16, buf + 1, 3, out);
  EXPECT_EQ(std::vector<float>(out, out + 3),
            std::vector<float>({1.0f, -2.5f, std::ldexp(1.0f, -24)}));
  std::memcpy(buf + 1, b, sizeof b);
  convert_to_float(DType::BF16, buf + 1, 3, out);
  EXPECT_EQ(std::vector<float>(out, out + 3), std::vector<float>({1.0f, -2.5f, 3.140625f}));
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
}

TEST_F(IoTest, SafetensorsRoundTripIsExact) {
  TRACE_SEED();
  const std::vector<NamedTensor> tensors = {
      {"W_enc", {5, 7}, random_floats(35)},
      {"b_enc", {7}, random_floats(7)},  // 28 bytes: the next tensor starts 4-aligned
      {"W_dec", {7, 5}, random_floats(35, 10.0f)},
      {"threshold", {}, random_floats(1)},
      {"empty", {0, 3}, {}},
  };
  const std::map<std::string, std::string> metadata = {{"format", "saescale"},
                                                       {"config", "{\"k\": 32}"}};
  const std::string file = path("m.safetensors");
  write_safetensors(file, tensors, metadata);

  std::vector<NamedTensor> back = read_safetensors(file);
  ASSERT_EQ(back.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(back[i].name, tensors[i].name);
    EXPECT_EQ(back[i].shape, tensors[i].shape);
    EXPECT_TRUE(same_bits(back[i].values, tensors[i].values)) << tensors[i].name;
  }

  MappedFile m(file);
  SafetensorsInfo info = parse_safetensors(m.data(), m.size(), file);
  EXPECT_EQ(info.metadata, metadata);
  ASSERT_NE(info.find("threshold"), nullptr);
  EXPECT_TRUE(info.find("threshold")->shape.empty());
  EXPECT_EQ(info.find("W_dec")->dtype, DType::F32);
  EXPECT_EQ(info.find("nope"), nullptr);

  // The header length is a multiple of 8, the header is plain JSON, data is packed to the end.
  const std::string raw = read_bytes(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  nlohmann::json header = nlohmann::json::parse(raw.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["format"], "saescale");
  EXPECT_EQ(header["W_enc"]["dtype"], "F32");
  EXPECT_EQ(header["threshold"]["shape"], nlohmann::json::array());
  EXPECT_EQ(raw.size(), 8 + n + (35 + 7 + 35 + 1) * 4);
}

TEST_F(IoTest, SafetensorsReadsBf16F16F64) {
  TRACE_SEED();
  std::vector<float> values = random_floats(15, 3.0f);
  std::vector<uint16_t> bf(15), hf(15);
  std::vector<double> df(15);
  for (size_t i = 0; i < 15; ++i) {
    bf[i] = float_to_bf16(values[i]);
    hf[i] = float_to_half(values[i]);
    df[i] = values[i];
  }
  const std::string f1 = path("bf.safetensors"), f2 = path("hf.safetensors"),
                    f3 = path("df.safetensors");
  write_safetensors_raw(f1, "x", DType::BF16, {3, 5}, bf.data(), 30);
  write_safetensors_raw(f2, "x", DType::F16, {3, 5}, hf.data(), 30);
  write_safetensors_raw(f3, "x", DType::F64, {15}, df.data(), 120);

  std::vector<NamedTensor> b = read_safetensors(f1), h = read_safetensors(f2),
                           d = read_safetensors(f3);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].shape, (std::vector<int64_t>{3, 5}));
  ASSERT_EQ(b[0].values.size(), 15u);
  ASSERT_EQ(h[0].values.size(), 15u);
  for (size_t i = 0; i < 15; ++i) {
    EXPECT_EQ(b[0].values[i], bf16_to_float(bf[i]));
    EXPECT_EQ(h[0].values[i], half_to_float(hf[i]));
    EXPECT_EQ(d[0].values[i], values[i]);
  }
  MappedFile m(f1);
  EXPECT_EQ(parse_safetensors(m.data(), m.size(), f1).tensors[0].dtype, DType::BF16);
}

TEST(NpyErrors, Rejected) {
  const std::string f4 = std::string(4 * 6, '\x01');
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  expect_npy_error(make_npy(good, f4.substr(0, 20)), "truncated");
  expect_npy_error(make_npy(good, f4.substr(0, 20)), "24 bytes");
  expect_npy_error(make_npy(good, f4 + "xyz"), "3 trailing bytes");
  expect_npy_error(std::string("\x93NUMPZ\x01\x00\x10\x00", 10) + std::string(80, ' '), "magic");
  expect_npy_error("PK\x03\x04", "magic");
  std::string big = make_npy(good, f4);
  big[8] = '\xff';  // header length 0xff4a > file size
  big[9] = '\xff';
  expect_npy_error(big, "header length");
  expect_npy_error(std::string("\x93NUMPY\x02\x00\xf0\xff\xff\xff", 12) + std::string(100, ' '),
                   "header length");
  std::string v9 = make_npy(good, f4);
  v9[6] = 9;
  expect_npy_error(v9, "version");
  expect_npy_error(make_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", f4),
                   "'<f4'");
  expect_npy_error(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", f4),
                   "unsupported dtype '>f4'");
  expect_npy_error(make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", f4),
                   "unsupported dtype");
  expect_npy_error(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f4),
                   "Fortran order not supported");
  expect_npy_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }", f4),
                   "negative");
  expect_npy_error(
      make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", f4),
      "overflow");
  expect_npy_error(make_npy("{'descr': '<f4', 'fortran_order': False}", f4), "malformed");
  expect_npy_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", f4),
                   "malformed");
  expect_npy_error(make_npy(good + " junk", f4), "malformed");
}

TEST(SafetensorsErrors, Rejected) {
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  const std::string data16(16, '\x02');
  ASSERT_NO_THROW(parse_safetensors(bytes_of(make_st(ok, data16)), 8 + ok.size() + 16, "x"));

  expect_st_error("\x05\x00\x00", "shorter than 8 bytes");
  expect_st_error(make_st(ok, data16, uint64_t{1} << 62), "header length");
  expect_st_error(make_st(ok, data16, ok.size() + 17), "header length");
  expect_st_error(make_st("{\"t\": [1, 2", data16), "not valid JSON");
  expect_st_error(make_st("[1, 2]", ""), "not a JSON object");
  expect_st_error(make_st(R"({"t":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", data16),
                  "unsupported dtype \"I64\"");
  expect_st_error(make_st(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}})", data16),
                  "past the end");
  expect_st_error(make_st(R"({"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", data16),
                  "needs 24 bytes");
  expect_st_error(make_st(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[8,0]}})", data16),
                  "data_offsets");
  expect_st_error(make_st(R"({"t":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}})", data16),
                  "non-negative");
  expect_st_error(make_st(R"({"t":{"dtype":"F32","data_offsets":[0,16]}})", data16), "\"t\"");
  expect_st_error(make_st(R"({"__metadata__":{"a":1}})", ""), "__metadata__");
}

TEST_F(IoTest, FileErrors) {
  const std::string missing = path("missing.npy");
  expect_error([&] { MappedFile m(missing); }, missing, "no such file");
  expect_error([&] { read_safetensors(missing); }, missing, "no such file");
  const std::string empty = path("empty.safetensors");
  write_bytes(empty, "");
  expect_error([&] { read_safetensors(empty); }, empty, "is empty");
  expect_error([&] { MappedFile m(dir_.string()); }, dir_.string(), "directory");

  const std::string st = path("bad.safetensors");
  write_bytes(st, make_st(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "short"));
  expect_error([&] { read_safetensors(st); }, "\"w\"", "past the end");

  expect_error(
      [&] {
        write_safetensors(path("w.safetensors"), {{"w", {2, 2}, {1, 2, 3}}});
      },
      "w.safetensors", "does not match");
  EXPECT_FALSE(fs::exists(path("w.safetensors")));
}

TEST_F(IoTest, MappedFileMoves) {
  const std::string file = path("m.bin");
  write_bytes(file, "hello");
  MappedFile a(file);
  const unsigned char* p = a.data();
  MappedFile b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), 5u);
  EXPECT_EQ(b.path(), file);
  EXPECT_EQ(std::memcmp(b.data(), "hello", 5), 0);
  MappedFile c(file);
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
}

TEST_F(IoTest, AtomicWriteLeavesNothingOnFailure) {
  const std::string file = path("out.txt");
  EXPECT_THROW(write_file_atomic(file,
                                 [](std::FILE* f) {
                                   std::fputs("partial", f);
                                   throw std::runtime_error("boom");
                                 }),
               std::runtime_error);
  EXPECT_FALSE(fs::exists(file));
  EXPECT_TRUE(fs::is_empty(dir_));

  // An existing file is kept intact by a failed rewrite and replaced by a successful one.
  write_text_atomic(file, "old\n");
  EXPECT_THROW(write_file_atomic(file, [](std::FILE*) { throw saescale::Error("no"); }),
               saescale::Error);
  EXPECT_EQ(read_bytes(file), "old\n");
  write_text_atomic(file, "new\n");
  EXPECT_EQ(read_bytes(file), "new\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);

  const std::string nodir = path("no/such/dir.txt");
  expect_error([&] { write_text_atomic(nodir, "x"); }, nodir, "cannot create");
}

// A rank file's sections carry CRC-32s and its header its rank, step and grid: any bit flipped in
// a section, and a file read as another rank's or another step's, are refused naming the file
// (and the section); the whole-file record the manifest keeps catches the rest.
TEST_F(IoTest, CheckpointRankFilesAreChecked) {
  const nlohmann::json grid = {{"dp", 2}, {"lp", 1}};
  CheckpointWriter w;
  const std::vector<float> params = random_floats(257), moment = random_floats(64), none;
  w.add("params", params.data(), params.size() * 4);
  w.add("adam_v", moment.data(), moment.size() * 4);
  w.add("adam_m", none.data(), 0);  // an empty section (Adam with beta1 = 0) between them
  w.state() = {{"next_step", 7}};
  const std::string file = path("rank-00001.bin");
  const RankFileRecord record = w.write(file, {1, 7, grid});
  EXPECT_EQ(record.bytes, fs::file_size(file));
  const std::string good = read_bytes(file);
  EXPECT_EQ(record.crc32, crc32(good.data(), good.size()));

  CheckpointReader ok(file, {1, 7, grid}, record);
  std::vector<float> back(params.size());
  ok.read("params", back.data(), back.size() * 4);
  EXPECT_EQ(back, params);
  EXPECT_EQ(ok.state()["next_step"], 7);

  expect_error([&] { CheckpointReader(file, {0, 7, grid}, std::nullopt); }, file, "rank 1");
  expect_error([&] { CheckpointReader(file, {1, 8, grid}, std::nullopt); }, file, "step 7");
  expect_error(
      [&] {
        CheckpointReader(file, {1, 7, {{"dp", 1}, {"lp", 2}}}, std::nullopt);
      },
      file, "grid");
  // One bit of each section, at a random place in it: its CRC-32 fails.
  const size_t data = good.size() - (params.size() + moment.size()) * 4;  // sections are last
  std::uniform_int_distribution<size_t> in_moment(0, moment.size() * 4 - 1),
      in_params(0, params.size() * 4 - 1);
  for (const auto& [section, at] :
       {std::pair<std::string, size_t>{"adam_v", data + in_moment(rng_)},  // sorted by name
        {"params", data + moment.size() * 4 + in_params(rng_)}}) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ (1 << (at % 8)));
    write_bytes(file, bad);
    expect_error(
        [&] {
          CheckpointReader(file, {1, 7, grid}, std::nullopt);
        },
        file, "section '" + section + "' fails its CRC-32");
    expect_error(
        [&] {
          CheckpointReader(file, {1, 7, grid}, record);
        },
        file, "not the one the manifest lists");
  }
}

}  // namespace
