#include "io/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "error.hpp"
#include "io/atomic_write.hpp"
#include "io/mapped_file.hpp"

namespace saescale::io {

namespace {

// Same limit as the reference Rust implementation; a larger value means a corrupt file.
constexpr uint64_t kMaxHeaderLen = 100'000'000;

// JSON-quoted, so odd tensor names cannot break the one-line error message.
std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

bool parse_dtype(const std::string& s, DType* t) {
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::F64}) {
    if (s == dtype_name(d)) {
      *t = d;
      return true;
    }
  }
  return false;
}

// Byte count of a tensor, or false on overflow / negative dims.
bool tensor_bytes(const std::vector<int64_t>& shape, size_t itemsize, size_t* bytes) {
  size_t n = itemsize;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) n = 0;
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

// A JSON value that is a non-negative integer, else false.
bool get_uint(const nlohmann::json& j, uint64_t* v) {
  if (j.is_number_unsigned()) {
    *v = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *v = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* bytes;
  size_t nbytes;
};

void write_raw(const std::string& path, const std::vector<RawTensor>& tensors,
               const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  size_t offset = 0;
  for (const RawTensor& t : tensors) {
    const std::string what = path + ": cannot write tensor " + quoted(t.name) + ": ";
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      throw Error(what + "duplicate or reserved name");
    }
    size_t expect = 0;
    if (!tensor_bytes(t.shape, dtype_size(t.dtype), &expect) || expect != t.nbytes) {
      throw Error(what + "data has " + std::to_string(t.nbytes) +
                  " bytes, which does not match its shape and dtype");
    }
    // Packed back to back: the reference implementation rejects gaps between tensors.
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(uint64_t{text.size()} >> (8 * i));
  write_file_atomic(path, [&](std::FILE* f) {
    std::fwrite(len, 1, sizeof len, f);
    std::fwrite(text.data(), 1, text.size(), f);
    for (const RawTensor& t : tensors) {
      if (t.nbytes != 0) std::fwrite(t.bytes, 1, t.nbytes, f);
    }
  });
}

}  // namespace

const TensorInfo* SafetensorsInfo::find(const std::string& name) const {
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

SafetensorsInfo parse_safetensors(const unsigned char* data, size_t size, const std::string& path) {
  if (size < 8) {
    throw Error(path + ": not a safetensors file: shorter than 8 bytes (" + std::to_string(size) +
                " bytes)");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderLen || n > size - 8) {
    throw Error(path + ": invalid safetensors header length " + std::to_string(n) + " (file has " +
                std::to_string(size) + " bytes, limit " + std::to_string(kMaxHeaderLen) + ")");
  }
  nlohmann::json header;
  std::set<std::string> keys;
  std::string duplicate;  // a top-level key given twice (JSON parsers keep the last silently)
  try {
    header = nlohmann::json::parse(
        data + 8, data + 8 + n,
        [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (event == nlohmann::json::parse_event_t::key && depth == 1 && duplicate.empty() &&
              !keys.insert(parsed.get<std::string>()).second)
            duplicate = parsed.get<std::string>();
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": safetensors header is not valid JSON: " + one_line(e.what()));
  }
  if (!duplicate.empty())
    throw Error(path + ": safetensors header names " + io::quoted(duplicate) + " twice");
  if (!header.is_object()) throw Error(path + ": safetensors header is not a JSON object");

  SafetensorsInfo info;
  const size_t data_start = 8 + n;
  const size_t data_size = size - data_start;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw Error(path + ": __metadata__ is not a JSON object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          throw Error(path + ": __metadata__ value for " + quoted(k) + " is not a string");
        }
        info.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = path + ": tensor " + quoted(name) + ": ";
    if (!value.is_object()) throw Error(what + "entry is not a JSON object");
    TensorInfo t;
    t.name = name;

    auto dt = value.find("dtype");
    if (dt == value.end() || !dt->is_string()) throw Error(what + "missing string \"dtype\"");
    if (!parse_dtype(dt->get<std::string>(), &t.dtype)) {
      throw Error(what + "unsupported dtype " + quoted(dt->get<std::string>()) +
                  " (supported: F32, F16, BF16, F64)");
    }

    auto sh = value.find("shape");
    if (sh == value.end() || !sh->is_array()) throw Error(what + "missing array \"shape\"");
    for (const auto& d : *sh) {
      uint64_t v = 0;
      if (!get_uint(d, &v) || v > uint64_t{std::numeric_limits<int64_t>::max()}) {
        // Not the whole shape: a hostile one can nest deep enough to exhaust the stack in dump().
        throw Error(what + "shape must hold non-negative integers (element " +
                    std::to_string(t.shape.size()) + " is " +
                    (d.is_primitive() ? d.dump() : std::string("an ") + d.type_name()) + ")");
      }
      t.shape.push_back(static_cast<int64_t>(v));
    }
    size_t bytes = 0;
    if (!tensor_bytes(t.shape, dtype_size(t.dtype), &bytes)) {
      throw Error(what + "shape " + sh->dump() + " is too large (size overflows)");
    }

    auto off = value.find("data_offsets");
    uint64_t b = 0, e = 0;
    if (off == value.end() || !off->is_array() || off->size() != 2 || !get_uint((*off)[0], &b) ||
        !get_uint((*off)[1], &e) || b > e) {
      throw Error(what + "\"data_offsets\" must be [begin, end] with 0 <= begin <= end");
    }
    if (e > data_size) {
      throw Error(what + "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                  "] run past the end of the file (data section has " + std::to_string(data_size) +
                  " bytes)");
    }
    if (e - b != bytes) {
      throw Error(what + "data_offsets span " + std::to_string(e - b) + " bytes but shape " +
                  sh->dump() + " of " + dtype_name(t.dtype) + " needs " + std::to_string(bytes) +
                  " bytes");
    }
    t.begin = data_start + b;
    t.end = data_start + e;
    info.tensors.push_back(std::move(t));
  }
  std::sort(info.tensors.begin(), info.tensors.end(), [](const TensorInfo& x, const TensorInfo& y) {
    return x.begin != y.begin ? x.begin < y.begin : x.name < y.name;
  });
  for (size_t i = 1; i < info.tensors.size(); ++i)
    if (info.tensors[i].begin < info.tensors[i - 1].end)
      throw Error(path + ": tensors " + io::quoted(info.tensors[i - 1].name) + " and " +
                  io::quoted(info.tensors[i].name) + " overlap in the data section");
  return info;
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<RawTensor> raw;
  for (const NamedTensor& t : tensors) {
    size_t count = 0;
    if (!tensor_bytes(t.shape, 1, &count) || count != t.values.size()) {
      throw Error(path + ": cannot write tensor " + quoted(t.name) + ": it has " +
                  std::to_string(t.values.size()) + " values, which does not match its shape");
    }
    raw.push_back({t.name, DType::F32, t.shape, t.values.data(), count * sizeof(float)});
  }
  write_raw(path, raw, metadata);
}

std::vector<NamedTensor> read_safetensors(const std::string& path) {
  MappedFile file(path);
  SafetensorsInfo info = parse_safetensors(file.data(), file.size(), path);
  std::vector<NamedTensor> out;
  for (const TensorInfo& t : info.tensors) {
    const size_t count = (t.end - t.begin) / dtype_size(t.dtype);
    NamedTensor nt{t.name, t.shape, std::vector<float>(count)};
    convert_to_float(t.dtype, file.data() + t.begin, count, nt.values.data());
    out.push_back(std::move(nt));
  }
  return out;
}

void write_safetensors_raw(const std::string& path, const std::string& name, DType dtype,
                           const std::vector<int64_t>& shape, const void* bytes, size_t nbytes) {
  write_raw(path, {{name, dtype, shape, bytes, nbytes}}, {});
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string r = "[";
  for (size_t i = 0; i < shape.size(); ++i) r += (i ? ", " : "") + std::to_string(shape[i]);
  return r + "]";
}

}  // namespace saescale::io
