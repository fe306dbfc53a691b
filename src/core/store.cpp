#include "core/store.hpp"

#include <cstddef>
#include <cstring>

#include "util/error.hpp"
#include "util/options.hpp"

namespace kvp::detail {

StoreKey StoreKey::from(const kvp_store_key& k) noexcept {
  StoreKey s;
  for (int i = 7; i >= 0; --i) {
    s.lo = (s.lo << 8) | k.bytes[i];
    s.hi = (s.hi << 8) | k.bytes[8 + i];
  }
  return s;
}

kvp_store_key StoreKey::to_c() const noexcept {
  kvp_store_key k;
  for (int i = 0; i < 8; ++i) {
    k.bytes[i] = static_cast<uint8_t>(lo >> (8 * i));
    k.bytes[8 + i] = static_cast<uint8_t>(hi >> (8 * i));
  }
  return k;
}

void StoreKey::to_hex(char* hex) const noexcept {
  static const char kHex[] = "0123456789abcdef";
  const kvp_store_key c = to_c();
  for (size_t i = 0; i < 16; ++i) {
    hex[2 * i] = kHex[c.bytes[i] >> 4];
    hex[2 * i + 1] = kHex[c.bytes[i] & 15];
  }
}

bool StoreKey::from_hex(const char* hex, StoreKey* key) noexcept {
  kvp_store_key k;
  for (size_t i = 0; i < 32; ++i) {
    const char c = hex[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    k.bytes[i / 2] = static_cast<uint8_t>(i % 2 == 0 ? d << 4 : k.bytes[i / 2] | d);
  }
  *key = from(k);
  return true;
}

// ---------------------------------------------------------------------------------------------
// The generic front: one lock, counters.

template <class F>
auto Store::counted(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const error& e) {
    if (e.code() != KVP_ERR_NOT_FOUND && e.code() != KVP_ERR_BUFFER_TOO_SMALL) ++errors_;
    throw;
  } catch (...) {
    ++errors_;
    throw;
  }
}

void Store::put(const StoreKey& k, const void* data, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  counted([&] { do_put(k, data, n); });
  ++puts_;
}

void Store::put_adopt(const StoreKey& k, HostBytes& block) {
  std::lock_guard<std::mutex> lock(mu_);
  counted([&] { do_put_adopt(k, block); });
  ++puts_;
}

bool Store::get(const StoreKey& k, void* dst, size_t cap, size_t* size) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool hit = counted([&] { return do_get(k, dst, cap, size); });
  ++(hit ? hits_ : misses_);
  return hit;
}

void Store::exists(const StoreKey* keys, size_t n, uint8_t* found) {
  std::lock_guard<std::mutex> lock(mu_);
  counted([&] { do_exists(keys, n, found); });
}

bool Store::remove(const StoreKey& k) {
  std::lock_guard<std::mutex> lock(mu_);
  return counted([&] { return do_remove(k); });
}

kvp_store_stats Store::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  const Usage u = do_usage();
  kvp_store_stats st;
  std::memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  st.blocks = u.blocks;
  st.bytes = u.bytes;
  st.max_bytes = u.max_bytes;
  st.puts = puts_;
  st.hits = hits_;
  st.misses = misses_;
  st.errors = errors_;
  st.evictions = evictions_;
  return st;
}

kvp_store_scrub_report Store::scrub() {
  std::lock_guard<std::mutex> lock(mu_);
  return counted([&] { return do_scrub(); });
}

size_t Store::list(uint64_t* cursor, StoreKey* keys, size_t cap) {
  std::lock_guard<std::mutex> lock(mu_);
  return counted([&] { return do_list(cursor, keys, cap); });
}

size_t Store::do_list(uint64_t*, StoreKey*, size_t) {
  fail(KVP_ERR_UNSUPPORTED, "kvp_store_list: this store cannot list its keys (a plug-in store without a list callback)");
}

uint64_t ListOrder::add(const StoreKey& k) {
  by_number_.emplace_hint(by_number_.end(), next_, k);
  return next_++;
}

size_t ListOrder::list(uint64_t* cursor, StoreKey* keys, size_t cap) const {
  size_t n = 0;
  auto it = by_number_.lower_bound(*cursor);
  for (; it != by_number_.end() && n < cap; ++it) keys[n++] = it->second;
  *cursor = it == by_number_.end() ? 0 : it->first;
  return n;
}

kvp_store_scrub_report Store::do_scrub() {
  fail(KVP_ERR_UNSUPPORTED, "kvp_store_scrub: a plug-in store cannot be scrubbed by kvpages (it checks its own blocks)");
}

// ---------------------------------------------------------------------------------------------
// Plug-in stores: a callback's status other than OK becomes an error with the callback's name.

namespace {

class PluginStore final : public Store {
 public:
  explicit PluginStore(const kvp_store_vtable& vt) noexcept : vt_(vt) {}
  ~PluginStore() override {
    if (owns_ && vt_.destroy != nullptr) vt_.destroy(vt_.user_data);
  }
  // From now on the store owns user_data (destroy is called with the store).
  void take_ownership() noexcept { owns_ = true; }

 private:
  static void check(kvp_status st, const char* callback) {
    if (st != KVP_OK)
      fail(st, "kvp_store: the plug-in store's %s callback returned %s", callback, status_name(st));
  }
  void do_put(const StoreKey& k, const void* data, size_t n) override {
    const kvp_store_key key = k.to_c();
    check(vt_.put(vt_.user_data, &key, data, n), "put");
  }
  bool do_get(const StoreKey& k, void* dst, size_t cap, size_t* size) override {
    const kvp_store_key key = k.to_c();
    const kvp_status st = vt_.get(vt_.user_data, &key, dst, cap, size);
    if (st == KVP_ERR_NOT_FOUND) return false;
    check(st, "get");
    if (*size > cap)
      fail(KVP_ERR_INTERNAL, "kvp_store: the plug-in store's get callback returned OK with size %zu above capacity %zu",
           *size, cap);
    return true;
  }
  void do_exists(const StoreKey* keys, size_t n, uint8_t* found) override {
    if (n == 0) return;
    HostVector<kvp_store_key> ck(n, kvp_store_key{}, HostAllocator());
    for (size_t i = 0; i < n; ++i) ck[i] = keys[i].to_c();
    check(vt_.exists(vt_.user_data, ck.data(), n, found), "exists");
    for (size_t i = 0; i < n; ++i) found[i] = found[i] != 0;
  }
  bool do_remove(const StoreKey& k) override {
    const kvp_store_key key = k.to_c();
    const kvp_status st = vt_.remove(vt_.user_data, &key);
    if (st == KVP_ERR_NOT_FOUND) return false;
    check(st, "remove");
    return true;
  }
  size_t do_list(uint64_t* cursor, StoreKey* keys, size_t cap) override {
    if (vt_.list == nullptr) return Store::do_list(cursor, keys, cap);
    HostVector<kvp_store_key> ck(cap, kvp_store_key{}, HostAllocator());
    uint64_t next = *cursor;
    size_t n = 0;
    check(vt_.list(vt_.user_data, &next, ck.data(), cap, &n), "list");
    if (n > cap)
      fail(KVP_ERR_INTERNAL, "kvp_store: the plug-in store's list callback returned OK with %zu keys above capacity %zu",
           n, cap);
    for (size_t i = 0; i < n; ++i) keys[i] = StoreKey::from(ck[i]);
    *cursor = next;
    return n;
  }

  kvp_store_vtable vt_;
  bool owns_ = false;
};

}  // namespace

kvp_store* create_plugin_store(const kvp_store_vtable* in, const char* fn) {
  const kvp_store_vtable vt = read_versioned(in, offsetof(kvp_store_vtable, list), KVP_STORE_VTABLE_VERSION, fn,
                                             "kvp_store_vtable");
  const char* missing = vt.put == nullptr      ? "put"
                        : vt.get == nullptr    ? "get"
                        : vt.exists == nullptr ? "exists"
                        : vt.remove == nullptr ? "remove"
                                               : nullptr;
  if (missing != nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: kvp_store_vtable.%s must not be NULL", fn, missing);
  const HostAllocator alloc;
  HostPtr<PluginStore> impl = make_host<PluginStore>(alloc, vt);
  PluginStore* raw = impl.get();
  kvp_store* h = handle_new<kvp_store>(HostPtr<Store>(std::move(impl)));  // on failure: no destroy call
  raw->take_ownership();
  return h;
}

}  // namespace kvp::detail
