// The Redis store: one string value per block, named "<prefix><32 hex digits of the key>" and
// holding the block's frame (core/store_frame: header, then block), so every read verifies it;
// in one server or a Redis Cluster (core/redis_client). Redis bounds itself (maxmemory and its
// eviction policy), so the store reports no usage (-1) and drops nothing itself.
#include <cstring>

#include "core/redis_client.hpp"
#include "core/store.hpp"
#include "core/store_frame.hpp"
#include "util/error.hpp"

namespace kvp::detail {
namespace {

// A listing cursor: the master in the high bits, that master's SCAN cursor in the low ones.
constexpr int kMasterShift = 48;
constexpr uint64_t kScanMask = (uint64_t{1} << kMasterShift) - 1;
constexpr size_t kScrubPage = 256;

class RedisStore final : public Store {
 public:
  RedisStore(const RedisUrl& url, uint32_t timeout_ms, const HostAllocator& a)
      : alloc_(a), prefix_(url.prefix), pattern_(a), client_(url, timeout_ms, a), cmd_(a), name_(a) {
    for (char c : prefix_) {  // SCAN MATCH: the prefix literally (glob characters escaped), then anything
      if (std::strchr("*?[]\\", c) != nullptr) pattern_ += '\\';
      pattern_ += c;
    }
    pattern_ += '*';
  }

 private:
  const HostString& name_of(const StoreKey& k) {
    char hex[32];
    k.to_hex(hex);
    name_.assign(prefix_).append(hex, sizeof hex);
    return name_;
  }

  RedisReply run(const HostString& name, const RedisCommand& cmd) { return client_.run(name.data(), name.size(), cmd); }

  RedisReply run_on(const StoreKey& k, const char* verb) {
    const HostString& name = name_of(k);
    cmd_.start(2).arg(verb).arg(name.data(), name.size());
    return run(name, cmd_);
  }

  static FrameFault check_value(const StoreKey& k, const redisReply& r) {
    const auto* f = reinterpret_cast<const uint8_t*>(r.str);
    if (const FrameFault e = check_frame_header(f, r.len, k)) return e;
    return check_frame_block(f, f + kFrameHeaderBytes, r.len - kFrameHeaderBytes);
  }

  // Deletes a damaged value (as far as the server lets it) and throws the fault.
  [[noreturn]] void damaged(const StoreKey& k, const FrameFault& e) {
    const HostString name = name_of(k);
    try {
      run_on(k, "DEL");
    } catch (const error&) {  // the fault is what the caller needs to hear
    }
    fail(e.code, "kvp_store: the Redis value '%s' is damaged (%s): deleted", name.c_str(), e.what);
  }

  static void expect(const redisReply& r, int type, const char* command) {
    if (r.type != type) fail(KVP_ERR_IO, "kvp_store: Redis answered %s with an unexpected reply (type %d)", command, r.type);
  }

  void do_put(const StoreKey& k, const void* data, size_t n) override {
    uint8_t h[kFrameHeaderBytes];
    write_frame_header(h, k, data, n);
    const HostString& name = name_of(k);
    cmd_.start(3).arg("SET").arg(name.data(), name.size()).arg(h, sizeof h, data, n);
    expect(*run(name, cmd_), REDIS_REPLY_STATUS, "SET");
  }

  bool do_get(const StoreKey& k, void* dst, size_t cap, size_t* size) override {
    const RedisReply r = run_on(k, "GET");
    if (r->type == REDIS_REPLY_NIL) return false;
    expect(*r, REDIS_REPLY_STRING, "GET");
    if (const FrameFault e = check_value(k, *r)) damaged(k, e);
    *size = r->len - kFrameHeaderBytes;
    if (cap < *size) fail(KVP_ERR_BUFFER_TOO_SMALL, "kvp_store_get: the block has %zu bytes but capacity is %zu", *size, cap);
    if (*size > 0) std::memcpy(dst, r->str + kFrameHeaderBytes, *size);
    return true;
  }

  void do_exists(const StoreKey* keys, size_t n, uint8_t* found) override {
    HostVector<HostString> names(alloc_);
    HostVector<RedisCommand> cmds(alloc_);
    HostVector<RedisReply> replies(alloc_);
    names.reserve(n);
    cmds.reserve(n);
    replies.resize(n);
    for (size_t i = 0; i < n; ++i) {
      names.push_back(name_of(keys[i]));
      cmds.emplace_back(alloc_);
      cmds.back().start(2).arg("EXISTS").arg(names[i].data(), names[i].size());
    }
    client_.run_batch(names.data(), cmds.data(), n, replies.data());
    for (size_t i = 0; i < n; ++i) {
      expect(*replies[i], REDIS_REPLY_INTEGER, "EXISTS");
      found[i] = replies[i]->integer != 0;
    }
  }

  bool do_remove(const StoreKey& k) override {
    const RedisReply r = run_on(k, "DEL");
    expect(*r, REDIS_REPLY_INTEGER, "DEL");
    return r->integer != 0;
  }

  // One SCAN step of a master from `at` (COUNT count): the keys it found that are the store's,
  // and the next SCAN cursor (0: that master is done).
  uint64_t scan(size_t master, uint64_t at, size_t count, HostVector<StoreKey>* found) {
    char at_s[24], count_s[24];
    std::snprintf(at_s, sizeof at_s, "%llu", static_cast<unsigned long long>(at));
    std::snprintf(count_s, sizeof count_s, "%zu", count);
    cmd_.start(6).arg("SCAN").arg(at_s).arg("MATCH").arg(pattern_.data(), pattern_.size()).arg("COUNT").arg(count_s);
    const RedisReply r = client_.run_on_master(master, cmd_);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
      fail(KVP_ERR_IO, "kvp_store: Redis answered SCAN with an unexpected reply");
    found->clear();
    for (size_t i = 0; i < r->element[1]->elements; ++i) {
      const redisReply* e = r->element[1]->element[i];
      StoreKey k;
      if (e->type == REDIS_REPLY_STRING && e->len == prefix_.size() + 32 &&
          std::memcmp(e->str, prefix_.data(), prefix_.size()) == 0 && StoreKey::from_hex(e->str + prefix_.size(), &k))
        found->push_back(k);
    }
    const unsigned long long next = std::strtoull(r->element[0]->str, nullptr, 10);
    if (next > kScanMask) fail(KVP_ERR_INTERNAL, "kvp_store: a Redis SCAN cursor of more than 48 bits (%llu)", next);
    return next;
  }

  // Walks the masters in order (a cursor names the master and its SCAN cursor). A SCAN step that
  // finds more keys than fit is retried with a smaller COUNT, or left to the next call.
  size_t do_list(uint64_t* cursor, StoreKey* keys, size_t cap) override {
    size_t master = static_cast<size_t>(*cursor >> kMasterShift), n = 0, count = cap;
    uint64_t at = *cursor & kScanMask;
    if (master >= client_.num_masters())
      fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store_list: cursor %llu names no master of this Redis store",
           static_cast<unsigned long long>(*cursor));
    HostVector<StoreKey> found(alloc_);
    while (n < cap) {
      const uint64_t next = scan(master, at, count, &found);
      if (found.size() > cap - n) {
        if (n > 0) break;  // this step again, next call
        if (count == 1)
          fail(KVP_ERR_BUFFER_TOO_SMALL, "kvp_store_list: one Redis SCAN step found %zu keys; list at least that many",
               found.size());
        count /= 2;
        continue;
      }
      std::copy(found.begin(), found.end(), keys + n);
      n += found.size();
      at = next;
      if (at == 0 && ++master == client_.num_masters()) {
        *cursor = 0;
        break;
      }
      *cursor = static_cast<uint64_t>(master) << kMasterShift | at;
    }
    return n;
  }

  kvp_store_scrub_report do_scrub() override {
    kvp_store_scrub_report rep;
    std::memset(&rep, 0, sizeof rep);
    rep.struct_size = sizeof rep;
    HostVector<StoreKey> page(kScrubPage, StoreKey{}, alloc_);
    uint64_t cursor = 0;
    do {
      const size_t n = do_list(&cursor, page.data(), page.size());
      for (size_t i = 0; i < n; ++i) {
        const RedisReply r = run_on(page[i], "GET");
        if (r->type == REDIS_REPLY_NIL) continue;  // removed meanwhile
        ++rep.blocks_checked;
        if (r->type == REDIS_REPLY_STRING && !check_value(page[i], *r)) continue;
        ++rep.blocks_damaged;
        rep.bytes_freed += static_cast<int64_t>(r->len);
        run_on(page[i], "DEL");
      }
    } while (cursor != 0);
    return rep;
  }

  HostAllocator alloc_;
  HostString prefix_, pattern_;
  RedisClient client_;
  RedisCommand cmd_;  // reused: a put's command holds the whole frame
  HostString name_;   // the last key's name
};

}  // namespace

HostPtr<Store> make_redis_store(const char* url, uint32_t timeout_ms, const HostAllocator& alloc, const char* fn) {
  const RedisUrl u = parse_redis_url(url, alloc, fn);
  return make_host<RedisStore>(alloc, u, timeout_ms, alloc);
}

bool redis_store_built() noexcept { return true; }

}  // namespace kvp::detail
