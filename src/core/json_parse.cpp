// JSON -> config and runtime metadata (the reference's from_json). nlohmann's SAX parser (an
// iterative parser, no recursion) feeds a reader that keeps only the top-level fields it was asked
// for, straight into host-allocator storage; nothing is kept of other fields, no document tree is
// built, and nesting deeper than kMaxDepth is refused.
#include <cstdio>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/json.hpp"
#include "core/metadata.hpp"
#include "util/error.hpp"

namespace kvp::detail::json {
namespace {

using Json = nlohmann::json;  // only its SAX parser is used: no document is built
constexpr int kMaxDepth = 64;
static_assert(kMaxDepth == 64, "the depth error message says 64 levels");
constexpr size_t kMaxTokenEcho = 32;

// One top-level field. Scalars keep their value; arrays keep their integers flattened in `items`
// and, per element, -1 (a scalar) or its length (a row of scalars).
struct Field {
  const char* name = nullptr;
  enum Kind { kAbsent, kNull, kBool, kInt, kUnsigned, kFloat, kString, kArray, kOther } kind = kAbsent;
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  HostString s;
  HostVector<int64_t> items;
  HostVector<int64_t> shape;
  bool deep = false;            // an array nested deeper than rows, or an object inside the array
  const char* bad_type = nullptr;  // first array scalar that is not an int32: its type ...
  char bad_value[32] = {0};         // ... or its value when it is an integer out of range
  int64_t bad_elem = -1, bad_sub = -1;

  static const char* type_of(Kind k) {
    switch (k) {
      case kNull: return "null";
      case kBool: return "a boolean";
      case kInt:
      case kUnsigned: return "an integer";
      case kFloat: return "a number with a fraction or exponent";
      case kString: return "a string";
      case kArray: return "a list";
      default: return "an object";
    }
  }
};

class Reader final : public nlohmann::json_sax<Json> {
 public:
  Reader(Field* fields, size_t n) : fields_(fields), n_(n) {}
  bool not_object = false;
  HostString error;  // a parse error or the depth limit

  bool null() override { return scalar(Field::kNull, 0, 0, 0); }
  bool boolean(bool) override { return scalar(Field::kBool, 0, 0, 0); }
  bool number_integer(number_integer_t v) override { return scalar(Field::kInt, v, 0, 0); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(Field::kUnsigned, 0, v, 0); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(Field::kFloat, 0, 0, v); }
  bool string(string_t& v) override {
    if (depth_ == 1 && cur_ != nullptr) cur_->s.assign(v.data(), v.size());
    return scalar(Field::kString, 0, 0, 0);
  }
  bool binary(binary_t&) override { return scalar(Field::kOther, 0, 0, 0); }
  bool key(string_t& k) override {
    if (depth_ != 1) return true;
    cur_ = nullptr;
    for (size_t f = 0; f < n_; ++f)
      if (k.size() == std::strlen(fields_[f].name) && k == fields_[f].name) cur_ = &fields_[f];
    if (cur_ != nullptr) {  // a repeated key: the last one wins
      const char* name = cur_->name;
      *cur_ = Field{};
      cur_->name = name;
    }
    return true;
  }
  bool start_object(std::size_t) override { return open(false); }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(true); }
  bool end_array() override { return close(); }
  // The parser's message, its copy of the last token (which may be the whole rest of the text,
  // an unterminated string) cut to kMaxTokenEcho bytes.
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    static constexpr char kLastRead[] = "; last read: '";
    const std::string what = e.what();
    const size_t at = what.find(kLastRead);
    error = "malformed JSON: ";
    error.append(what, 0, at);
    if (at == std::string::npos) return false;
    const size_t token = at + sizeof kLastRead - 1;
    size_t end = what.rfind("'; expected ");  // the token's closing quote
    if (end == std::string::npos || end < token) end = what.size() - 1;
    const size_t len = end - token;
    error.append(what, at, token - at + (len < kMaxTokenEcho ? len : kMaxTokenEcho));
    if (len > kMaxTokenEcho) error += "...";
    error.append(what, end, std::string::npos);
    return false;
  }

 private:
  bool open(bool array) {
    if (depth_ == 0 && !array) {
      depth_ = 1;
      return true;
    }
    if (depth_ == 0) {
      not_object = true;
      return false;
    }
    if (++depth_ > kMaxDepth) {
      error = "the JSON text is nested deeper than 64 levels";
      return false;
    }
    if (cur_ == nullptr) return true;
    if (depth_ == 2) {
      cur_->kind = array ? Field::kArray : Field::kOther;
    } else if (depth_ == 3 && array && cur_->kind == Field::kArray) {
      cur_->shape.push_back(0);
    } else {
      cur_->deep = true;
    }
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }
  bool scalar(Field::Kind kind, int64_t i, uint64_t u, double d) {
    if (depth_ == 0) {
      not_object = true;
      return false;
    }
    if (cur_ == nullptr || cur_->deep) return true;
    if (depth_ == 1) {
      cur_->kind = kind;
      cur_->i = i;
      cur_->u = u;
      cur_->d = d;
      return true;
    }
    if (cur_->kind != Field::kArray) return true;  // inside an object value: kOther already
    if (depth_ == 2) cur_->shape.push_back(-1);
    else if (depth_ == 3) ++cur_->shape.back();
    else return true;
    element(kind, i, u);
    return true;
  }
  // An array scalar: kept when it is an int32; the first other one is remembered.
  void element(Field::Kind kind, int64_t i, uint64_t u) {
    const bool is_int = kind == Field::kInt || kind == Field::kUnsigned;
    const bool fits = kind == Field::kInt ? (i >= std::numeric_limits<int32_t>::min() && i <= std::numeric_limits<int32_t>::max())
                                          : (kind == Field::kUnsigned && u <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max()));
    if (is_int && fits) {
      cur_->items.push_back(kind == Field::kInt ? i : static_cast<int64_t>(u));
      return;
    }
    cur_->items.push_back(0);
    if (cur_->bad_elem >= 0) return;
    cur_->bad_elem = static_cast<int64_t>(cur_->shape.size()) - 1;
    cur_->bad_sub = depth_ == 3 ? cur_->shape.back() - 1 : -1;
    if (!is_int) {
      cur_->bad_type = Field::type_of(kind);
    } else if (kind == Field::kInt) {
      std::snprintf(cur_->bad_value, sizeof cur_->bad_value, "%lld", static_cast<long long>(i));
    } else {
      std::snprintf(cur_->bad_value, sizeof cur_->bad_value, "%llu", static_cast<unsigned long long>(u));
    }
  }

  Field* fields_;
  size_t n_;
  Field* cur_ = nullptr;
  int depth_ = 0;
};

// Parses `text` keeping the named top-level fields (fields[i].name set by the caller).
void read_fields(const char* text, size_t len, Field* fields, size_t n, const char* fn) {
  Reader r(fields, n);
  if (Json::sax_parse(text, text + len, &r)) return;
  if (r.not_object) fail(KVP_ERR_INVALID_ARGUMENT, "%s: the JSON text is not an object", fn);
  fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s", fn, r.error.c_str());
}

int64_t get_int(const Field& f, bool required, int64_t def, const char* fn) {
  switch (f.kind) {
    case Field::kAbsent:
      if (required) fail(KVP_ERR_INVALID_ARGUMENT, "%s: missing required field '%s'", fn, f.name);
      return def;
    case Field::kInt:
      return f.i;
    case Field::kUnsigned:
      if (f.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' = %llu does not fit in int64", fn, f.name,
             static_cast<unsigned long long>(f.u));
      return static_cast<int64_t>(f.u);
    default:
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be an integer, got %s", fn, f.name, Field::type_of(f.kind));
  }
}

const char* get_str(const Field& f, const char* def, const char* fn) {
  if (f.kind == Field::kAbsent) return def;
  if (f.kind != Field::kString)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a string, got %s", fn, f.name, Field::type_of(f.kind));
  if (std::strlen(f.s.c_str()) != f.s.size())
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' contains a NUL character", fn, f.name);
  return f.s.c_str();
}

double get_number(const Field& f, double def, const char* fn) {
  switch (f.kind) {
    case Field::kAbsent: return def;
    case Field::kInt: return static_cast<double>(f.i);
    case Field::kUnsigned: return static_cast<double>(f.u);
    case Field::kFloat: return f.d;
    default:
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a number, got %s", fn, f.name, Field::type_of(f.kind));
  }
}

// The first bad element of an array field, as an error.
[[noreturn]] void bad_element(const Field& f, const char* fn) {
  char at[48];
  if (f.bad_sub >= 0)
    std::snprintf(at, sizeof at, "[%lld][%lld]", ll(f.bad_elem), ll(f.bad_sub));
  else
    std::snprintf(at, sizeof at, "[%lld]", ll(f.bad_elem));
  if (f.bad_type != nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s%s must be an integer, got %s", fn, f.name, at, f.bad_type);
  fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s%s = %s does not fit in int32", fn, f.name, at, f.bad_value);
}

// An optional list of int32 (null or missing: absent).
bool get_list(const Field& f, const char* fn) {
  if (f.kind == Field::kAbsent || f.kind == Field::kNull) return false;
  if (f.kind != Field::kArray || f.deep)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a list of integers or null", fn, f.name);
  for (size_t e = 0; e < f.shape.size(); ++e)
    if (f.shape[e] >= 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s[%zu] must be an integer, got a list", fn, f.name, e);
  if (f.bad_elem >= 0) bad_element(f, fn);
  return true;
}

// An optional list of rows of int32 with equal lengths; sets rows and cols.
bool get_rows(const Field& f, int64_t* rows, int64_t* cols, const char* fn) {
  *rows = *cols = 0;
  if (f.kind == Field::kAbsent || f.kind == Field::kNull) return false;
  if (f.kind != Field::kArray || f.deep)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: field '%s' must be a list of rows or null", fn, f.name);
  *rows = static_cast<int64_t>(f.shape.size());
  for (size_t r = 0; r < f.shape.size(); ++r) {
    if (f.shape[r] < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s[%zu] must be a list of integers", fn, f.name, r);
    if (r == 0) *cols = f.shape[0];
    if (f.shape[r] != *cols)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s[%zu] has %lld entries but row 0 has %lld (rows must have equal lengths)", fn,
           f.name, r, ll(f.shape[r]), ll(*cols));
  }
  if (f.bad_elem >= 0) bad_element(f, fn);
  return true;
}

template <size_t N>
Field* field(Field (&fields)[N], const char* name) {
  for (Field& f : fields)
    if (std::strcmp(f.name, name) == 0) return &f;
  return nullptr;  // not reached: callers name fields of the table
}

}  // namespace

kvp_config config_from_json(const char* text, size_t len, const char* fn) {
  constexpr size_t kFields = 18;
  Field fs[kFields];
  const char* names[kFields] = {"num_hidden_layers", "max_model_length", "num_kv_heads", "k_headdim", "v_headdim",
                                "hbm_utilization", "page_size", "num_pages", "max_num_pages_per_req",
                                "num_slices_per_kv_cache_update_page", "max_num_tokens", "max_num_reqs", "version",
                                "_kvdtype_str", "data_parallel_size", "kv_head_shards", "requested_kv_head_shards",
                                "requested_kvdtype"};
  for (size_t i = 0; i < kFields; ++i) fs[i].name = names[i];
  read_fields(text, len, fs, kFields, fn);
  kvp_config c;
  std::memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.abi_version = KVP_CONFIG_VERSION;
  c.num_hidden_layers = get_int(fs[0], true, 0, fn);
  c.max_model_length = get_int(fs[1], true, 0, fn);
  c.num_kv_heads = get_int(fs[2], true, 0, fn);
  c.k_headdim = get_int(fs[3], true, 0, fn);
  c.v_headdim = get_int(fs[4], true, 0, fn);
  c.hbm_utilization = get_number(fs[5], 0.9, fn);
  c.page_size = get_int(fs[6], false, 128, fn);
  c.num_pages = get_int(fs[7], false, -1, fn);
  c.max_num_pages_per_req = get_int(fs[8], false, -1, fn);
  c.num_slices_per_kv_cache_update_page = get_int(fs[9], false, -1, fn);
  c.max_num_tokens = get_int(fs[10], false, -1, fn);
  c.max_num_reqs = get_int(fs[11], false, -1, fn);
  const char* ver = get_str(fs[12], "v3", fn);
  if (std::strcmp(ver, "v3") != 0 && std::strcmp(ver, "v2") != 0)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown version \"%.64s\" (expected \"v2\" or \"v3\")", fn, ver);
  c.version = layout_from_name(ver, fn);
  const char* dt = get_str(fs[13], "bf16", fn);
  try {
    c.kvdtype = dtype_from_name(dt, fn);
  } catch (const error&) {
    fail(KVP_ERR_NOT_FOUND, "%s: unknown _kvdtype_str \"%.64s\"", fn, dt);
  }
  // Shard counts are at least 1 in JSON (0 means "1" only in a version-1 binary record), so an
  // unsharded record, written without these keys, reads back as it was.
  c.data_parallel_size = get_int(fs[14], false, 1, fn);
  c.kv_head_shards = get_int(fs[15], false, 1, fn);
  if (c.data_parallel_size < 1 || c.kv_head_shards < 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: data_parallel_size %lld and kv_head_shards %lld must be at least 1", fn,
         static_cast<long long>(c.data_parallel_size), static_cast<long long>(c.kv_head_shards));
  c.requested_kv_head_shards = get_int(fs[16], false, 0, fn);
  if (fs[17].kind != Field::kAbsent) {
    const char* req = get_str(fs[17], "", fn);
    try {
      c.requested_kvdtype = dtype_from_name(req, fn);
    } catch (const error&) {
      fail(KVP_ERR_NOT_FOUND, "%s: unknown requested_kvdtype \"%.64s\"", fn, req);
    }
  }
  return c;
}

kvp_metadata* metadata_from_json(const char* text, size_t len, const char* fn) {
  Field fs[11];
  const char* names[11] = {"version",      "page_size",    "pages_tables",         "context_lens",
                           "query_start_loc", "num_seqs", "slot_mapping",         "position_ids",
                           "request_distribution", "num_kv_update_slices", "token_starts"};
  for (size_t i = 0; i < 11; ++i) fs[i].name = names[i];
  read_fields(text, len, fs, 11, fn);
  const char* ver = get_str(*field(fs, "version"), "v3", fn);
  if (std::strcmp(ver, "v3") != 0 && std::strcmp(ver, "v2") != 0)
    fail(KVP_ERR_NOT_FOUND, "%s: unknown version \"%.64s\" (expected \"v2\" or \"v3\")", fn, ver);
  const kvp_layout layout = layout_from_name(ver, fn);
  const bool v2 = layout == KVP_LAYOUT_V2;
  const int64_t page_size = get_int(*field(fs, "page_size"), false, 0, fn);
  if (page_size < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_size must be >= 0, got %lld", fn, ll(page_size));

  const Field& pt = *field(fs, "pages_tables");
  const Field& cl = *field(fs, "context_lens");
  const Field& ql = *field(fs, "query_start_loc");
  const Field& ns = *field(fs, "num_seqs");
  const Field& sm = *field(fs, "slot_mapping");
  const Field& pi = *field(fs, "position_ids");
  const Field& rd = *field(fs, "request_distribution");
  const Field& nk = *field(fs, "num_kv_update_slices");
  const Field& ts = *field(fs, "token_starts");
  int64_t R = 0, P = 0, sm_rows = 0, N = 0;
  const bool has_pt = get_rows(pt, &R, &P, fn);
  const bool has_cl = get_list(cl, fn), has_ql = get_list(ql, fn), has_ns = get_list(ns, fn);
  const bool has_sm = get_rows(sm, &sm_rows, &N, fn);
  const bool has_pi = get_list(pi, fn), has_rd = get_list(rd, fn), has_nk = get_list(nk, fn);
  const bool has_ts = get_list(ts, fn);
  if (!has_pt) {
    if (has_cl) R = static_cast<int64_t>(cl.items.size());
    else if (has_ql && !ql.items.empty()) R = static_cast<int64_t>(ql.items.size()) - 1;
  }
  int64_t T = 0;
  if (v2 && has_sm) {
    if (sm_rows != 3) fail(KVP_ERR_INVALID_ARGUMENT, "%s: slot_mapping must have 3 rows, got %lld", fn, ll(sm_rows));
    T = N;
  } else if (has_pi) {
    T = static_cast<int64_t>(pi.items.size());
  }
  auto need_len = [&](bool has, const Field& f, int64_t want) {
    if (has && static_cast<int64_t>(f.items.size()) != want)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: '%s' has %zu entries but %lld are expected for this shape", fn, f.name,
           f.items.size(), ll(want));
  };
  need_len(has_cl, cl, R);
  need_len(has_ql, ql, R + 1);
  need_len(has_ns, ns, 1);
  need_len(has_pi, pi, T);
  need_len(has_ts, ts, R);
  if (v2) {
    if (has_rd) fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata has no request_distribution", fn);
    need_len(has_nk, nk, 1);
  } else {
    if (has_sm) fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata has no slot_mapping", fn);
    if (has_nk) fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata has no num_kv_update_slices", fn);
    need_len(has_rd, rd, 3);
  }

  HostPtr<Metadata> m = Metadata::empty(layout, T, R, P, page_size, fn, has_ts);
  const MetadataArrays& a = m->arrays();
  auto fill = [&](const int32_t* dst, const Field& f, bool has) {
    if (!has) return;
    int32_t* d = m->mut(dst);
    for (size_t k = 0; k < f.items.size(); ++k) d[k] = static_cast<int32_t>(f.items[k]);
  };
  fill(a.pages_tables, pt, has_pt);
  fill(a.context_lens, cl, has_cl);
  fill(a.query_start_loc, ql, has_ql);
  fill(a.num_seqs, ns, has_ns);
  fill(a.position_ids, pi, has_pi);
  fill(a.token_starts, ts, has_ts);
  if (v2) {
    fill(a.slot_mapping, sm, has_sm);
    fill(a.num_kv_update_slices, nk, has_nk);
  } else {
    fill(a.request_distribution, rd, has_rd);
  }
  return handle_new<kvp_metadata>(std::move(m));
}

}  // namespace kvp::detail::json
