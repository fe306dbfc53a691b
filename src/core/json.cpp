// Config <-> JSON with the reference's key names, order, separators and number formatting
// (SPEC.md §8.1). Parsing uses nlohmann::json; writing is done by hand so that the text is byte
// for byte what Python's json.dumps(to_dict()) produces.
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "core/metadata.hpp"
#include "core/serialize.hpp"
#include "kvpages/types.h"
#include "util/error.hpp"

namespace kvp::detail::json {

std::string py_float_repr(double v) {
  if (!std::isfinite(v)) fail(KVP_ERR_INVALID_ARGUMENT, "non-finite value %g has no JSON representation", v);
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  // Shortest round-trip digits in scientific form: d[.ddd]e±XX.
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string s(buf, r.ptr);
  std::string out;
  size_t i = 0;
  if (s[0] == '-') {
    out.push_back('-');
    i = 1;
  }
  const size_t epos = s.find('e');
  std::string digits;
  for (size_t k = i; k < epos; ++k)
    if (s[k] != '.') digits.push_back(s[k]);
  const int exp10 = std::stoi(s.substr(epos + 1));
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 >= 0) {
      const size_t int_len = static_cast<size_t>(exp10) + 1;
      if (digits.size() <= int_len) {
        out += digits + std::string(int_len - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_len) + "." + digits.substr(int_len);
      }
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    out += e;
  }
  return out;
}

std::string config_to_json(const kvp_config& c, const char* fn) {
  const char* ver = kvp_layout_name(c.version);
  if (ver == nullptr)
    fail(KVP_ERR_NOT_FOUND, "%s: layout version %u has no name (expected KVP_LAYOUT_V2 or KVP_LAYOUT_V3)", fn,
         static_cast<unsigned>(c.version));
  const char* dt = kvp_dtype_name(c.kvdtype);
  if (dt == nullptr) fail(KVP_ERR_NOT_FOUND, "%s: dtype %u has no name", fn, static_cast<unsigned>(c.kvdtype));
  if (!std::isfinite(c.hbm_utilization))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: hbm_utilization %g is not finite and has no JSON representation", fn,
         c.hbm_utilization);
  std::string s = "{";
  auto put_int = [&](const char* key, int64_t v) {
    s += '"';
    s += key;
    s += "\": ";
    s += std::to_string(static_cast<long long>(v));
    s += ", ";
  };
  put_int("num_hidden_layers", c.num_hidden_layers);
  put_int("max_model_length", c.max_model_length);
  put_int("num_kv_heads", c.num_kv_heads);
  put_int("k_headdim", c.k_headdim);
  put_int("v_headdim", c.v_headdim);
  s += "\"hbm_utilization\": " + py_float_repr(c.hbm_utilization) + ", ";
  put_int("page_size", c.page_size);
  put_int("num_pages", c.num_pages);
  put_int("max_num_pages_per_req", c.max_num_pages_per_req);
  put_int("num_slices_per_kv_cache_update_page", c.num_slices_per_kv_cache_update_page);
  put_int("max_num_tokens", c.max_num_tokens);
  put_int("max_num_reqs", c.max_num_reqs);
  s += "\"version\": \"";
  s += ver;
  s += "\", \"_kvdtype_str\": \"";
  s += dt;
  s += "\"}";
  return s;
}

namespace {

using nlohmann::json;

int64_t get_int(const json& o, const char* key, bool required, int64_t def, const char* fn) {
  const auto it = o.find(key);
  if (it == o.end()) {
    if (required) fail(KVP_ERR_INVALID_ARGUMENT, "%s: missing required field '%s'", fn, key);
    return def;
  }
  if (it->is_number_unsigned()) {
    const uint64_t u = it->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' = %llu does not fit in int64", fn, key,
           static_cast<unsigned long long>(u));
    return static_cast<int64_t>(u);
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be an integer, got %s", fn, key, it->dump().c_str());
}

std::string get_str(const json& o, const char* key, const char* def, const char* fn) {
  const auto it = o.find(key);
  if (it == o.end()) return def;
  if (!it->is_string())
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a string, got %s", fn, key, it->dump().c_str());
  return it->get<std::string>();
}

}  // namespace

kvp_config config_from_json(const char* text, size_t len, const char* fn) {
  json o;
  try {
    o = json::parse(text, text + len);
  } catch (const json::exception& e) {
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: malformed JSON: %s", fn, e.what());
  }
  if (!o.is_object()) fail(KVP_ERR_INVALID_ARGUMENT, "%s: the JSON text is not an object", fn);
  kvp_config c;
  std::memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.abi_version = KVP_CONFIG_VERSION;
  c.num_hidden_layers = get_int(o, "num_hidden_layers", true, 0, fn);
  c.max_model_length = get_int(o, "max_model_length", true, 0, fn);
  c.num_kv_heads = get_int(o, "num_kv_heads", true, 0, fn);
  c.k_headdim = get_int(o, "k_headdim", true, 0, fn);
  c.v_headdim = get_int(o, "v_headdim", true, 0, fn);
  c.hbm_utilization = 0.9;
  if (const auto it = o.find("hbm_utilization"); it != o.end()) {
    if (!it->is_number())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: field 'hbm_utilization' must be a number, got %s", fn, it->dump().c_str());
    c.hbm_utilization = it->get<double>();
  }
  c.page_size = get_int(o, "page_size", false, 128, fn);
  c.num_pages = get_int(o, "num_pages", false, -1, fn);
  c.max_num_pages_per_req = get_int(o, "max_num_pages_per_req", false, -1, fn);
  c.num_slices_per_kv_cache_update_page = get_int(o, "num_slices_per_kv_cache_update_page", false, -1, fn);
  c.max_num_tokens = get_int(o, "max_num_tokens", false, -1, fn);
  c.max_num_reqs = get_int(o, "max_num_reqs", false, -1, fn);
  const std::string ver = get_str(o, "version", "v3", fn);
  if (kvp_layout_from_string(ver.c_str(), &c.version) != KVP_OK)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown version \"%s\" (expected \"v2\" or \"v3\")", fn, ver.c_str());
  const std::string dt = get_str(o, "_kvdtype_str", "bf16", fn);
  if (kvp_dtype_from_string(dt.c_str(), &c.kvdtype) != KVP_OK)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown _kvdtype_str \"%s\"", fn, dt.c_str());
  return c;
}

}  // namespace kvp::detail::json

// ---- runtime metadata --------------------------------------------------------------------------

namespace kvp::detail::json {
namespace {

// Converts a status of a public call made from inside the library into an exception.
void check_call(kvp_status st, const char* fn) {
  if (st != KVP_OK) throw error(st, format("%s: %s", fn, kvp_last_error_message()));
}

void put_list(std::string& s, const int32_t* p, int64_t n) {
  s += '[';
  for (int64_t i = 0; i < n; ++i) {
    if (i != 0) s += ", ";
    s += std::to_string(p[i]);
  }
  s += ']';
}

void put_rows(std::string& s, const int32_t* p, int64_t rows, int64_t cols) {
  s += '[';
  for (int64_t r = 0; r < rows; ++r) {
    if (r != 0) s += ", ";
    put_list(s, p + r * cols, cols);
  }
  s += ']';
}

// Reads an optional list of int32 (null/missing -> empty, present = true).
std::vector<int32_t> get_list(const json& o, const char* key, bool* present, const char* fn) {
  std::vector<int32_t> v;
  *present = false;
  const auto it = o.find(key);
  if (it == o.end() || it->is_null()) return v;
  if (!it->is_array()) fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a list of integers or null", fn, key);
  *present = true;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    if (!e.is_number_integer())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s[%zu] must be an integer, got %s", fn, key, i, e.dump().c_str());
    const bool neg = e.is_number_unsigned() ? false : e.get<int64_t>() < 0;
    const int64_t x = neg ? e.get<int64_t>() : static_cast<int64_t>(std::min<uint64_t>(e.get<uint64_t>(), 1ull << 40));
    if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max())
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s[%zu] = %s does not fit in int32", fn, key, i, e.dump().c_str());
    v.push_back(static_cast<int32_t>(x));
  }
  return v;
}

// Reads an optional list of rows of int32 with equal lengths.
std::vector<int32_t> get_rows(const json& o, const char* key, bool* present, int64_t* rows, int64_t* cols,
                              const char* fn) {
  std::vector<int32_t> v;
  *present = false;
  *rows = *cols = 0;
  const auto it = o.find(key);
  if (it == o.end() || it->is_null()) return v;
  if (!it->is_array()) fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a list of rows or null", fn, key);
  *present = true;
  *rows = static_cast<int64_t>(it->size());
  for (size_t r = 0; r < it->size(); ++r) {
    json row_obj = json::object();
    row_obj["row"] = (*it)[r];
    bool p = false;
    std::string name = format("%s[%zu]", key, r);
    if (!(*it)[r].is_array()) fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s must be a list of integers", fn, name.c_str());
    std::vector<int32_t> row = get_list(row_obj, "row", &p, fn);
    if (r == 0) *cols = static_cast<int64_t>(row.size());
    if (static_cast<int64_t>(row.size()) != *cols)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s has %zu entries but row 0 has %lld (rows must have equal lengths)", fn,
           name.c_str(), row.size(), static_cast<long long>(*cols));
    v.insert(v.end(), row.begin(), row.end());
  }
  return v;
}

}  // namespace

std::string metadata_to_json(const kvp_metadata* md, const char* fn) {
  kvp_metadata_desc d;
  std::memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  (void)metadata_from(md, fn);  // handle check (and misuse report) under the caller's name
  check_call(kvp_metadata_get_desc(md, &d), fn);
  if (d.device_type == KVP_DEVICE_CUDA)
    fail(KVP_ERR_UNSUPPORTED, "%s: the metadata arrays live on a CUDA device; copy them to the host first", fn);
  std::string s = "{\"pages_tables\": ";
  if (d.pages_tables == nullptr) s += "null";
  else put_rows(s, d.pages_tables, d.num_reqs, d.pages_per_req);
  auto opt = [&](const char* key, const int32_t* p, int64_t n) {
    s += ", \"";
    s += key;
    s += "\": ";
    if (p == nullptr) s += "null";
    else put_list(s, p, n);
  };
  opt("context_lens", d.context_lens, d.context_lens_len);
  opt("query_start_loc", d.query_start_loc, d.query_start_loc_len);
  opt("num_seqs", d.num_seqs, d.num_seqs_len);
  s += ", \"slot_mapping\": ";
  if (d.slot_mapping == nullptr) s += "null";
  else put_rows(s, d.slot_mapping, 3, d.num_slices);
  opt("position_ids", d.position_ids, d.position_ids_len);
  opt("request_distribution", d.request_distribution, d.request_distribution_len);
  opt("num_kv_update_slices", d.num_kv_update_slices, d.num_kv_update_slices_len);
  const char* ver = kvp_layout_name(d.version == KVP_LAYOUT_DEFAULT ? KVP_LAYOUT_V3 : d.version);
  s += ", \"version\": \"";
  s += ver != nullptr ? ver : "v3";
  s += "\", \"num_slices_per_kv_cache_update_page\": ";
  s += d.num_slices_per_kv_cache_update_page > 0 ? std::to_string(d.num_slices_per_kv_cache_update_page) : "null";
  s += ", \"page_size\": " + std::to_string(d.page_size) + ", \"prefill_chunk_size\": 512}";
  return s;
}

kvp_metadata* metadata_from_json(const char* text, size_t len, const char* fn) {
  json o;
  try {
    o = json::parse(text, text + len);
  } catch (const json::exception& e) {
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: malformed JSON: %s", fn, e.what());
  }
  if (!o.is_object()) fail(KVP_ERR_INVALID_ARGUMENT, "%s: the JSON text is not an object", fn);
  const std::string ver = get_str(o, "version", "v3", fn);
  kvp_layout layout = KVP_LAYOUT_V3;
  if (kvp_layout_from_string(ver.c_str(), &layout) != KVP_OK)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown version \"%s\" (expected \"v2\" or \"v3\")", fn, ver.c_str());
  const bool v2 = layout == KVP_LAYOUT_V2;
  const int64_t page_size = get_int(o, "page_size", false, 0, fn);
  if (page_size < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_size must be >= 0, got %lld", fn, static_cast<long long>(page_size));

  bool has_pt, has_cl, has_ql, has_ns, has_sm, has_pi, has_rd, has_nk;
  int64_t R = 0, P = 0, sm_rows = 0, N = 0;
  std::vector<int32_t> pt = get_rows(o, "pages_tables", &has_pt, &R, &P, fn);
  std::vector<int32_t> cl = get_list(o, "context_lens", &has_cl, fn);
  std::vector<int32_t> ql = get_list(o, "query_start_loc", &has_ql, fn);
  std::vector<int32_t> ns = get_list(o, "num_seqs", &has_ns, fn);
  std::vector<int32_t> sm = get_rows(o, "slot_mapping", &has_sm, &sm_rows, &N, fn);
  std::vector<int32_t> pi = get_list(o, "position_ids", &has_pi, fn);
  std::vector<int32_t> rd = get_list(o, "request_distribution", &has_rd, fn);
  std::vector<int32_t> nk = get_list(o, "num_kv_update_slices", &has_nk, fn);

  if (!has_pt) {
    if (has_cl) R = static_cast<int64_t>(cl.size());
    else if (has_ql && !ql.empty()) R = static_cast<int64_t>(ql.size()) - 1;
  }
  int64_t T = 0;
  if (v2 && has_sm) {
    if (sm_rows != 3) fail(KVP_ERR_INVALID_ARGUMENT, "%s: slot_mapping must have 3 rows, got %lld", fn, static_cast<long long>(sm_rows));
    T = N;
  } else if (has_pi) {
    T = static_cast<int64_t>(pi.size());
  }
  auto need_len = [&](bool has, const std::vector<int32_t>& v, int64_t want, const char* key) {
    if (has && static_cast<int64_t>(v.size()) != want)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: '%s' has %zu entries but %lld are expected for this shape", fn, key, v.size(),
           static_cast<long long>(want));
  };
  need_len(has_cl, cl, R, "context_lens");
  need_len(has_ql, ql, R + 1, "query_start_loc");
  need_len(has_ns, ns, 1, "num_seqs");
  need_len(has_pi, pi, T, "position_ids");
  if (v2) {
    if (has_rd) fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata has no request_distribution", fn);
    need_len(has_nk, nk, 1, "num_kv_update_slices");
  } else {
    if (has_sm) fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata has no slot_mapping", fn);
    if (has_nk) fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata has no num_kv_update_slices", fn);
    need_len(has_rd, rd, 3, "request_distribution");
  }

  kvp_metadata* h = nullptr;
  check_call(kvp_metadata_create_empty(layout, T, R, P, page_size, &h), fn);
  try {
    // The handle owns host arrays of exactly these shapes; fill them.
    auto fill = [&](kvp_metadata_field f, const std::vector<int32_t>& v, bool has) {
      if (!has || v.empty()) return;
      const int32_t* p = nullptr;
      int64_t n = 0;
      check_call(kvp_metadata_get_array(h, f, &p, &n), fn);
      if (p == nullptr || n != static_cast<int64_t>(v.size()))
        fail(KVP_ERR_INTERNAL, "%s: metadata array %u has %lld entries, expected %zu", fn, f, static_cast<long long>(n),
             v.size());
      std::memcpy(const_cast<int32_t*>(p), v.data(), v.size() * sizeof(int32_t));
    };
    fill(KVP_METADATA_PAGES_TABLES, pt, has_pt);
    fill(KVP_METADATA_CONTEXT_LENS, cl, has_cl);
    fill(KVP_METADATA_QUERY_START_LOC, ql, has_ql);
    fill(KVP_METADATA_NUM_SEQS, ns, has_ns);
    fill(KVP_METADATA_POSITION_IDS, pi, has_pi);
    if (v2) {
      fill(KVP_METADATA_SLOT_MAPPING, sm, has_sm);
      fill(KVP_METADATA_NUM_KV_UPDATE_SLICES, nk, has_nk);
    } else {
      fill(KVP_METADATA_REQUEST_DISTRIBUTION, rd, has_rd);
    }
  } catch (...) {
    kvp_metadata_destroy(h);
    throw;
  }
  return h;
}

}  // namespace kvp::detail::json
