#include "core/redis_client.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "util/error.hpp"

namespace kvp::detail {
namespace {

constexpr int kMaxRedirects = 5;
constexpr uint16_t kNumSlots = 16384;

// The decimal number of exactly the characters [p, e) if it is in [lo, hi]; -1 otherwise.
long parse_number(const char* p, const char* e, long lo, long hi) {
  long v = 0;
  if (p == e || e - p > 9) return -1;
  for (; p < e; ++p) {
    if (*p < '0' || *p > '9') return -1;
    v = v * 10 + (*p - '0');
  }
  return v >= lo && v <= hi ? v : -1;
}
int parse_port(const char* p, const char* e) { return static_cast<int>(parse_number(p, e, 1, 65535)); }

// A MOVED or ASK error reply: "MOVED <slot> <host>:<port>".
struct Redirect {
  bool ask;
  uint16_t slot;
  const char* host;
  size_t host_len;
  int port;
};
bool parse_redirect(const redisReply& r, Redirect* d) {
  if (r.type != REDIS_REPLY_ERROR) return false;
  const char* s = r.str;
  const char* e = r.str + r.len;
  if (r.len > 6 && std::strncmp(s, "MOVED ", 6) == 0) {
    d->ask = false;
    s += 6;
  } else if (r.len > 4 && std::strncmp(s, "ASK ", 4) == 0) {
    d->ask = true;
    s += 4;
  } else {
    return false;
  }
  const char* sp = std::find(s, e, ' ');
  const char* colon = sp;
  for (const char* p = sp; p < e; ++p)
    if (*p == ':') colon = p;
  const long slot = parse_number(s, sp, 0, kNumSlots - 1);
  if (sp == e || colon == sp || slot < 0) return false;
  d->slot = static_cast<uint16_t>(slot);
  d->host = sp + 1;
  d->host_len = static_cast<size_t>(colon - sp - 1);
  d->port = parse_port(colon + 1, e);
  return d->host_len > 0 && d->port > 0;
}

// hiredis writes with write(): to a server that has gone, that raises SIGPIPE, which would end
// the host process. While one lives, the thread blocks SIGPIPE; one raised meanwhile is consumed.
class SigpipeBlock {
 public:
  SigpipeBlock() noexcept {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlock() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      const struct timespec none = {0, 0};
      while (sigtimedwait(&pipe_, nullptr, &none) == -1 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_, old_;
  bool was_pending_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// URLs and slots

RedisUrl parse_redis_url(const char* url, const HostAllocator& a, const char* fn) {
  RedisUrl u{false, HostVector<RedisUrl::Endpoint>(a), 0, HostString("kvp:", a)};
  static const char kSingle[] = "redis://", kCluster[] = "redis+cluster://";
  const char* p;
  if (std::strncmp(url, kSingle, sizeof kSingle - 1) == 0) {
    p = url + sizeof kSingle - 1;
  } else if (std::strncmp(url, kCluster, sizeof kCluster - 1) == 0) {
    p = url + sizeof kCluster - 1;
    u.cluster = true;
  } else {
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: '%s' is not a Redis URL (redis://HOST:PORT[/DB] or redis+cluster://HOST:PORT[,HOST:PORT...], "
         "then optionally ?prefix=STR)", fn, url);
  }
  const char* end = p + std::strlen(p);
  if (const char* q = std::strchr(p, '?')) {
    static const char kPrefix[] = "prefix=";
    if (std::strncmp(q + 1, kPrefix, sizeof kPrefix - 1) != 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: bad Redis URL '%s': the only parameter is ?prefix=STR", fn, url);
    u.prefix.assign(q + 1 + sizeof kPrefix - 1);
    end = q;
  }
  const char* slash = std::find(p, end, '/');
  if (slash != end) {
    if (u.cluster) fail(KVP_ERR_INVALID_ARGUMENT, "%s: bad Redis URL '%s': a cluster has no database number", fn, url);
    const char* d = slash + 1;
    const long db = parse_number(d, end, 0, INT_MAX);
    if (db < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: bad Redis URL '%s': the database must be a number", fn, url);
    u.db = static_cast<int>(db);
  }
  for (const char* h = p; h <= slash;) {
    const char* e = std::find(h, slash, ',');
    const char* colon = e;
    for (const char* c = h; c < e; ++c)
      if (*c == ':') colon = c;
    const int port = colon == e ? -1 : parse_port(colon + 1, e);
    if (colon == h || port < 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: bad Redis URL '%s': '%.*s' is not HOST:PORT (port 1 to 65535)", fn, url,
           static_cast<int>(e - h), h);
    u.seeds.push_back(RedisUrl::Endpoint{HostString(h, colon, a), port});
    h = e + 1;
  }
  if (!u.cluster && u.seeds.size() != 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: bad Redis URL '%s': redis:// names one server (redis+cluster:// several)", fn,
         url);
  return u;
}

uint16_t redis_key_slot(const char* key, size_t n) noexcept {
  const char* open = static_cast<const char*>(std::memchr(key, '{', n));
  if (open != nullptr) {
    const char* close = static_cast<const char*>(std::memchr(open + 1, '}', static_cast<size_t>(key + n - open - 1)));
    if (close != nullptr && close > open + 1) {
      key = open + 1;
      n = static_cast<size_t>(close - open - 1);
    }
  }
  uint16_t crc = 0;  // CRC16-XMODEM: polynomial 0x1021, initial value 0
  for (size_t i = 0; i < n; ++i) {
    crc ^= static_cast<uint16_t>(static_cast<uint8_t>(key[i]) << 8);
    for (int b = 0; b < 8; ++b) crc = static_cast<uint16_t>(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
  }
  return crc & (kNumSlots - 1);
}

// ---------------------------------------------------------------------------------------------
// Commands

void RedisCommand::length(char type, size_t n) {
  char tmp[32];
  const int k = std::snprintf(tmp, sizeof tmp, "%c%zu\r\n", type, n);
  buf_.append(tmp, static_cast<size_t>(k));
}

RedisCommand& RedisCommand::start(size_t argc) {
  buf_.clear();
  length('*', argc);
  return *this;
}

RedisCommand& RedisCommand::arg(const void* p, size_t n) { return arg(p, n, nullptr, 0); }

RedisCommand& RedisCommand::arg(const char* s) { return arg(s, std::strlen(s)); }

RedisCommand& RedisCommand::arg(const void* p1, size_t n1, const void* p2, size_t n2) {
  length('$', n1 + n2);
  buf_.append(static_cast<const char*>(p1), n1);
  if (n2 > 0) buf_.append(static_cast<const char*>(p2), n2);
  buf_.append("\r\n", 2);
  return *this;
}

// ---------------------------------------------------------------------------------------------
// Connections

RedisClient::RedisClient(const RedisUrl& url, uint32_t timeout_ms, const HostAllocator& a)
    : alloc_(a), cluster_(url.cluster), db_(url.db), timeout_ms_(timeout_ms), nodes_(a),
      num_seeds_(url.seeds.size()), slots_(a), masters_(a), asking_(a) {
  timeout_.tv_sec = static_cast<time_t>(timeout_ms / 1000);
  timeout_.tv_usec = static_cast<suseconds_t>(timeout_ms % 1000) * 1000;
  for (const RedisUrl::Endpoint& e : url.seeds) nodes_.push_back(Node{e.host, e.port});
  asking_.start(1).arg("ASKING");
  try {
    if (cluster_) {
      refresh_map();
    } else {
      connect(0);
    }
  } catch (...) {
    for (size_t i = 0; i < nodes_.size(); ++i) drop(i);
    throw;
  }
}

RedisClient::~RedisClient() {
  for (size_t i = 0; i < nodes_.size(); ++i) drop(i);
}

void RedisClient::drop(size_t node) noexcept {
  if (nodes_[node].ctx != nullptr) redisFree(nodes_[node].ctx);
  nodes_[node].ctx = nullptr;
}

void RedisClient::io_failure(size_t node, const char* what) {
  char reason[160];
  Node& n = nodes_[node];
  const redisContext* c = n.ctx;
  // hiredis: a wait that timed out reads EAGAIN, a connect that timed out ETIMEDOUT.
  const bool timed_out = c != nullptr && c->err == REDIS_ERR_IO &&
                         (std::strstr(c->errstr, "temporarily unavailable") || std::strstr(c->errstr, "timed out"));
  if (timed_out) {
    std::snprintf(reason, sizeof reason, "no answer within %u ms", timeout_ms_);
    ++n.timeouts;
    n.retry_at = Clock::now() + std::chrono::milliseconds(uint64_t{timeout_ms_} << std::min(n.timeouts - 1, kMaxBackoffShift));
  } else {
    std::snprintf(reason, sizeof reason, "%s", c != nullptr && c->errstr[0] != '\0' ? c->errstr : "connection lost");
  }
  drop(node);
  map_stale_ = cluster_;  // a node that failed may have been replaced
  fail(KVP_ERR_IO, "kvp_store: Redis %s:%d: %s: %s", n.host.c_str(), n.port, what, reason);
}

void RedisClient::check_not_skipped(size_t node) {
  const Node& n = nodes_[node];
  if (n.timeouts == 0) return;
  const Clock::time_point now = Clock::now();
  if (now >= n.retry_at) return;
  const long long left = std::chrono::ceil<std::chrono::milliseconds>(n.retry_at - now).count();
  map_stale_ = cluster_;  // its slots may have moved to a replica meanwhile
  fail(KVP_ERR_IO, "kvp_store: Redis %s:%d: skipped: no answer within %u ms %u time(s) in a row; tried again in %lld ms",
       n.host.c_str(), n.port, timeout_ms_, n.timeouts, left);
}

redisContext* RedisClient::connect(size_t node) {
  Node& n = nodes_[node];
  if (n.ctx != nullptr) return n.ctx;
  check_not_skipped(node);
  n.ctx = redisConnectWithTimeout(n.host.c_str(), n.port, timeout_);
  if (n.ctx == nullptr) fail(KVP_ERR_OUT_OF_MEMORY, "kvp_store: out of memory connecting to Redis");
  if (n.ctx->err != 0) io_failure(node, "cannot connect");
  if (redisSetTimeout(n.ctx, timeout_) != REDIS_OK) io_failure(node, "cannot set the timeout");
  if (db_ != 0) {
    char db[16];
    std::snprintf(db, sizeof db, "%d", db_);
    RedisCommand select(alloc_);
    select.start(2).arg("SELECT").arg(db);
    const RedisCommand* cmds[1] = {&select};
    const RedisReply r = exchange(node, cmds, 1);
    check_error(node, *r);
  }
  return n.ctx;
}

void RedisClient::send(size_t node, const RedisCommand& cmd) {
  redisContext* c = connect(node);
  if (redisAppendFormattedCommand(c, cmd.data(), cmd.size()) != REDIS_OK) io_failure(node, "cannot queue a command");
}

RedisReply RedisClient::receive(size_t node) {
  const SigpipeBlock no_sigpipe;  // redisGetReply writes what send queued
  void* r = nullptr;
  if (redisGetReply(nodes_[node].ctx, &r) != REDIS_OK) io_failure(node, "no reply");
  nodes_[node].timeouts = 0;
  return RedisReply(static_cast<redisReply*>(r));
}

RedisReply RedisClient::exchange(size_t node, const RedisCommand* const* cmds, size_t n) {
  for (size_t i = 0; i < n; ++i) send(node, *cmds[i]);
  RedisReply last;
  for (size_t i = 0; i < n; ++i) last = receive(node);
  return last;
}

void RedisClient::check_error(size_t node, const redisReply& r) {
  if (r.type == REDIS_REPLY_ERROR)
    fail(KVP_ERR_IO, "kvp_store: Redis %s:%d answered: %.*s", nodes_[node].host.c_str(), nodes_[node].port,
         static_cast<int>(std::min<size_t>(r.len, 200)), r.str);
}

// ---------------------------------------------------------------------------------------------
// The cluster's slot map

size_t RedisClient::node_index(const char* host, size_t host_len, int port) {
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].port == port && nodes_[i].host.size() == host_len && nodes_[i].host.compare(0, host_len, host, host_len) == 0)
      return i;
  if (nodes_.size() >= kNoNode) fail(KVP_ERR_IO, "kvp_store: Redis Cluster: too many nodes");
  nodes_.push_back(Node{HostString(host, host_len, alloc_), port});
  return nodes_.size() - 1;
}

void RedisClient::refresh_map() {
  RedisCommand cmd(alloc_);
  cmd.start(2).arg("CLUSTER").arg("SLOTS");
  const RedisCommand* cmds[1] = {&cmd};
  HostString last_error("no node to ask", alloc_);
  for (size_t asked = 0; asked < nodes_.size(); ++asked) {
    RedisReply r;
    try {
      r = exchange(asked, cmds, 1);
    } catch (const error& e) {
      if (e.code() != KVP_ERR_IO) throw;
      last_error.assign(e.what());
      continue;
    }
    check_error(asked, *r);
    HostVector<uint16_t> slots(kNumSlots, kNoNode, alloc_);
    for (size_t i = 0; i < r->elements; ++i) {
      const redisReply* range = r->element[i];
      if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 || range->element[2]->type != REDIS_REPLY_ARRAY ||
          range->element[2]->elements < 2)
        fail(KVP_ERR_IO, "kvp_store: Redis %s:%d: unexpected CLUSTER SLOTS reply", nodes_[asked].host.c_str(),
             nodes_[asked].port);
      const redisReply* master = range->element[2];
      const long long lo = range->element[0]->integer, hi = range->element[1]->integer;
      // An empty host is the node that answered.
      const bool self = master->element[0]->len == 0;
      const size_t node = node_index(self ? nodes_[asked].host.c_str() : master->element[0]->str,
                                     self ? nodes_[asked].host.size() : master->element[0]->len,
                                     static_cast<int>(master->element[1]->integer));
      for (long long s = std::max(0ll, lo); s <= hi && s < kNumSlots; ++s) slots[static_cast<size_t>(s)] = static_cast<uint16_t>(node);
    }
    HostVector<size_t> masters(alloc_);
    for (uint16_t n : slots)
      if (n != kNoNode && std::find(masters.begin(), masters.end(), n) == masters.end()) masters.push_back(n);
    std::sort(masters.begin(), masters.end(), [&](size_t a, size_t b) {
      const int c = nodes_[a].host.compare(nodes_[b].host);
      return c != 0 ? c < 0 : nodes_[a].port < nodes_[b].port;
    });
    slots_.swap(slots);
    masters_.swap(masters);
    map_stale_ = false;
    return;
  }
  fail(KVP_ERR_IO, "kvp_store: Redis Cluster: no node answered CLUSTER SLOTS (last: %s)", last_error.c_str());
}

size_t RedisClient::route(const char* key, size_t key_len) {
  if (!cluster_) return 0;
  if (map_stale_) refresh_map();
  const uint16_t slot = redis_key_slot(key, key_len);
  if (slots_[slot] == kNoNode) {
    map_stale_ = true;
    fail(KVP_ERR_IO, "kvp_store: Redis Cluster: no node serves hash slot %u", static_cast<unsigned>(slot));
  }
  return slots_[slot];
}

// ---------------------------------------------------------------------------------------------
// Commands with redirects

RedisReply RedisClient::run(const char* key, size_t key_len, const RedisCommand& cmd) {
  size_t node = route(key, key_len);
  bool asking = false;
  for (int hop = 0;; ++hop) {
    const RedisCommand* cmds[2] = {&asking_, &cmd};
    RedisReply r = asking ? exchange(node, cmds, 2) : exchange(node, cmds + 1, 1);
    Redirect d;
    if (!cluster_ || !parse_redirect(*r, &d)) {
      check_error(node, *r);
      return r;
    }
    if (hop == kMaxRedirects)
      fail(KVP_ERR_IO, "kvp_store: Redis Cluster: more than %d redirects for key '%.*s' (last: %.*s)", kMaxRedirects,
           static_cast<int>(key_len), key, static_cast<int>(std::min<size_t>(r->len, 200)), r->str);
    node = node_index(d.host, d.host_len, d.port);
    asking = d.ask;
    if (!d.ask) {  // the slot has moved for good: the map is out of date
      refresh_map();
      slots_[d.slot] = static_cast<uint16_t>(node);
    }
  }
}

void RedisClient::run_batch(const HostString* keys, const RedisCommand* cmds, size_t n, RedisReply* replies) {
  HostVector<size_t> node_of(n, 0, alloc_);
  for (size_t i = 0; i < n; ++i) node_of[i] = route(keys[i].data(), keys[i].size());
  HostVector<uint8_t> busy(nodes_.size(), 0, alloc_);
  try {  // every node's commands first, then the replies: one pipeline per node
    for (size_t i = 0; i < n; ++i) {
      busy[node_of[i]] = 1;
      send(node_of[i], cmds[i]);
    }
    for (size_t i = 0; i < n; ++i) replies[i] = receive(node_of[i]);
  } catch (...) {  // replies still queued on a connection would answer the next command: close it
    for (size_t node = 0; node < busy.size(); ++node)
      if (busy[node]) drop(node);
    throw;
  }
  for (size_t i = 0; i < n; ++i) {
    Redirect d;
    if (cluster_ && parse_redirect(*replies[i], &d)) {
      replies[i] = run(keys[i].data(), keys[i].size(), cmds[i]);
    } else {
      check_error(node_of[i], *replies[i]);
    }
  }
}

size_t RedisClient::num_masters() {
  if (!cluster_) return 1;
  if (map_stale_) refresh_map();
  return masters_.size();
}

RedisReply RedisClient::run_on_master(size_t master, const RedisCommand& cmd) {
  if (master >= num_masters())
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store: Redis Cluster: no master %zu (the cluster has changed)", master);
  const size_t node = cluster_ ? masters_[master] : 0;
  const RedisCommand* cmds[1] = {&cmd};
  RedisReply r = exchange(node, cmds, 1);
  check_error(node, *r);
  return r;
}

}  // namespace kvp::detail
