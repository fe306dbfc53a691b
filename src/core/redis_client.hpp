// A small Redis client on hiredis for the Redis store (core/store_redis.cpp): one server, or a
// Redis Cluster routed here (hiredis 0.14 has no cluster support): CRC16 hash slots, the slot map
// from CLUSTER SLOTS, MOVED (refresh the map, retry) and ASK (ASKING, retry on the named node)
// redirects, bounded. Every connect and command is bounded by the timeout; a connection that
// failed is closed and reopened by the next call, except after a timeout: a node that did not
// answer in time is skipped (calls that need it fail at once) for the timeout, doubled after each
// further timeout in a row up to kMaxBackoffShift doublings, so that a silent node costs one
// timeout now and then rather than one per call. Not synchronised (the store's lock is held).
#pragma once

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "util/memory.hpp"

namespace kvp::detail {

// What a kvp_store_create_redis URL names.
struct RedisUrl {
  struct Endpoint {
    HostString host;
    int port;
  };
  bool cluster = false;
  HostVector<Endpoint> seeds;  // one for a single server
  int db = 0;
  HostString prefix;           // of every key ("kvp:" unless ?prefix= says otherwise)
};
// Parses "redis://HOST:PORT[/DB][?prefix=STR]" or "redis+cluster://HOST:PORT[,HOST:PORT...]
// [?prefix=STR]"; throws INVALID_ARGUMENT naming what is wrong.
RedisUrl parse_redis_url(const char* url, const HostAllocator& alloc, const char* function);

// The hash slot of a key: CRC16-XMODEM of the key, or of its {hash tag}, mod 16384.
uint16_t redis_key_slot(const char* key, size_t n) noexcept;

// A command in the Redis protocol, built in a reused buffer.
class RedisCommand {
 public:
  explicit RedisCommand(const HostAllocator& a) : buf_(a) {}
  RedisCommand& start(size_t argc);
  RedisCommand& arg(const void* p, size_t n);
  RedisCommand& arg(const char* s);
  // One argument of two parts (a frame: header, then block).
  RedisCommand& arg(const void* p1, size_t n1, const void* p2, size_t n2);
  const char* data() const noexcept { return buf_.data(); }
  size_t size() const noexcept { return buf_.size(); }

 private:
  void length(char type, size_t n);
  HostString buf_;
};

struct RedisReplyFree {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using RedisReply = std::unique_ptr<redisReply, RedisReplyFree>;

class RedisClient {
 public:
  // Connects (a cluster: loads the slot map); throws IO naming the server and the reason.
  RedisClient(const RedisUrl& url, uint32_t timeout_ms, const HostAllocator& alloc);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Runs a command on the node serving `key`, following redirects. A reply that is an error
  // other than a redirect throws IO with the server's text.
  RedisReply run(const char* key, size_t key_len, const RedisCommand& cmd);
  // Runs n commands, cmds[i] about keys[i], as one pipeline per node; replies[i] answers cmds[i]
  // (redirected ones are rerun one by one).
  void run_batch(const HostString* keys, const RedisCommand* cmds, size_t n, RedisReply* replies);
  // The masters, in a stable order (one for a single server), and a command run on one of them.
  size_t num_masters();
  RedisReply run_on_master(size_t master, const RedisCommand& cmd);

 private:
  using Clock = std::chrono::steady_clock;
  struct Node {
    HostString host;
    int port;
    redisContext* ctx = nullptr;
    uint32_t timeouts = 0;        // in a row (a reply resets it)
    Clock::time_point retry_at{};  // after a timeout: not tried before then
  };
  static constexpr uint16_t kNoNode = 0xFFFF;
  static constexpr uint32_t kMaxBackoffShift = 5;  // skipped for at most 32 timeouts

  redisContext* connect(size_t node);
  // Throws IO, without trying, while the node is skipped after a timeout.
  void check_not_skipped(size_t node);
  void drop(size_t node) noexcept;
  [[noreturn]] void io_failure(size_t node, const char* what);
  // Queues a command on a node (sent by the next receive); reads the node's next reply.
  void send(size_t node, const RedisCommand& cmd);
  RedisReply receive(size_t node);
  // Sends n commands to a node, then reads their n replies (a pipeline); returns the last.
  RedisReply exchange(size_t node, const RedisCommand* const* cmds, size_t n);
  size_t node_index(const char* host, size_t host_len, int port);
  void refresh_map();
  size_t route(const char* key, size_t key_len);
  void check_error(size_t node, const redisReply& r);

  HostAllocator alloc_;
  bool cluster_;
  int db_;
  struct timeval timeout_;
  uint32_t timeout_ms_;
  HostVector<Node> nodes_;  // the seeds first, then every node the map named
  size_t num_seeds_;
  HostVector<uint16_t> slots_;      // cluster: slot -> node, kNoNode when unknown
  HostVector<size_t> masters_;      // the nodes the map names, ordered by address
  bool map_stale_ = true;
  RedisCommand asking_;
};

}  // namespace kvp::detail
