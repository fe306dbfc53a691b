// Config and runtime metadata -> JSON with the reference's key names, order, separators and
// number formatting (SPEC.md §8.1): written by hand so that the text is byte for byte what
// Python's json.dumps(to_dict()) produces. Reading is in json_parse.cpp.
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/json.hpp"
#include "core/metadata.hpp"
#include "util/error.hpp"

namespace kvp::detail::json {
namespace {

void append_int(HostString& s, long long v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%lld", v);
  s += buf;
}

}  // namespace

HostString py_float_repr(double v) {
  if (!std::isfinite(v)) fail(KVP_ERR_INVALID_ARGUMENT, "non-finite value %g has no JSON representation", v);
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  // Shortest round-trip digits in scientific form: d[.ddd]e±XX.
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  HostString s(buf, r.ptr);
  HostString out;
  size_t i = 0;
  if (s[0] == '-') {
    out.push_back('-');
    i = 1;
  }
  const size_t epos = s.find('e');
  HostString digits;
  for (size_t k = i; k < epos; ++k)
    if (s[k] != '.') digits.push_back(s[k]);
  const int exp10 = static_cast<int>(std::strtol(s.c_str() + epos + 1, nullptr, 10));
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 >= 0) {
      const size_t int_len = static_cast<size_t>(exp10) + 1;
      if (digits.size() <= int_len) {
        out += digits + HostString(int_len - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_len) + "." + digits.substr(int_len);
      }
    } else {
      out += "0." + HostString(static_cast<size_t>(-exp10 - 1), '0') + digits;
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

HostString config_to_json(const kvp_config& c, const char* fn) {
  const char* ver = layout_name(c.version);
  if (ver == nullptr)
    fail(KVP_ERR_NOT_FOUND, "%s: layout version %u has no name (expected KVP_LAYOUT_V2 or KVP_LAYOUT_V3)", fn,
         static_cast<unsigned>(c.version));
  const char* dt = dtype_name(c.kvdtype);
  if (dt == nullptr) fail(KVP_ERR_NOT_FOUND, "%s: dtype %u has no name", fn, static_cast<unsigned>(c.kvdtype));
  if (!std::isfinite(c.hbm_utilization))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: hbm_utilization %g is not finite and has no JSON representation", fn,
         c.hbm_utilization);
  HostString s = "{";
  auto put_int = [&](const char* key, int64_t v) {
    s += '"';
    s += key;
    s += "\": ";
    append_int(s, static_cast<long long>(v));
    s += ", ";
  };
  put_int("num_hidden_layers", c.num_hidden_layers);
  put_int("max_model_length", c.max_model_length);
  put_int("num_kv_heads", c.num_kv_heads);
  put_int("k_headdim", c.k_headdim);
  put_int("v_headdim", c.v_headdim);
  s += "\"hbm_utilization\": " + py_float_repr(c.hbm_utilization) + ", ";
  // The reference's later keys, where its HEAD writes them; only for a sharded record, so an
  // unsharded one is the seed's text byte for byte.
  const Sharding sh = sharding_of(c);
  const bool sharded = sh.dp > 1 || sh.shards > 1 || c.requested_kv_head_shards != 0 || c.requested_kvdtype != 0;
  if (sharded) {
    put_int("data_parallel_size", sh.dp);
    put_int("kv_head_shards", sh.shards);
  }
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
  s += '"';
  // kvpages' own record of what the sharding resolution changed (the reference ignores them).
  if (c.requested_kv_head_shards != 0) {
    s += ", \"requested_kv_head_shards\": ";
    append_int(s, static_cast<long long>(c.requested_kv_head_shards));
  }
  if (c.requested_kvdtype != 0) {
    const char* req = dtype_name(c.requested_kvdtype);
    if (req == nullptr)
      fail(KVP_ERR_NOT_FOUND, "%s: requested_kvdtype %u has no name", fn, static_cast<unsigned>(c.requested_kvdtype));
    s += ", \"requested_kvdtype\": \"";
    s += req;
    s += '"';
  }
  s += '}';
  return s;
}

// ---- runtime metadata --------------------------------------------------------------------------

namespace {

void put_list(HostString& s, const int32_t* p, int64_t n) {
  s += '[';
  for (int64_t i = 0; i < n; ++i) {
    if (i != 0) s += ", ";
    append_int(s, p[i]);
  }
  s += ']';
}

void put_rows(HostString& s, const int32_t* p, int64_t rows, int64_t cols) {
  s += '[';
  for (int64_t r = 0; r < rows; ++r) {
    if (r != 0) s += ", ";
    put_list(s, p + r * cols, cols);
  }
  s += ']';
}

}  // namespace

HostString metadata_to_json(const kvp_metadata* md, const char* fn) {
  const MetadataArrays& d = metadata_from(md, fn).arrays();
  if (d.device_type != KVP_DEVICE_CPU)
    fail(KVP_ERR_UNSUPPORTED, "%s: the metadata arrays live on a CUDA device; copy them to the host first", fn);
  HostString s = "{\"pages_tables\": ";
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
  if (d.token_starts != nullptr) opt("token_starts", d.token_starts, d.token_starts_len);  // kvpages' own field
  const char* ver = layout_name(d.version == KVP_LAYOUT_DEFAULT ? KVP_LAYOUT_V3 : d.version);
  s += ", \"version\": \"";
  s += ver != nullptr ? ver : "v3";
  s += "\", \"num_slices_per_kv_cache_update_page\": ";
  if (d.num_slices_per_page > 0)
    append_int(s, d.num_slices_per_page);
  else
    s += "null";
  s += ", \"page_size\": ";
  append_int(s, d.page_size);
  s += ", \"prefill_chunk_size\": 512}";
  return s;
}

}  // namespace kvp::detail::json
