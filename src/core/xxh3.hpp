// XXH3 for checksums of large buffers (blobs, blocks): Debian's libxxhash is built with the x86
// dispatcher; routing the XXH3 calls through it makes them use AVX2/AVX-512 where the CPU has
// them (about 2x the SSE2 baseline). The hashes are the same either way.
#pragma once

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack: hashing never allocates
#include <xxhash.h>
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>
#endif
#endif
