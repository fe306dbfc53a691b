"""The "new user" program: plan a 32-layer, 8-KV-head, head-dim-128 bf16 cache with a 4 GiB
budget on the CPU, write two prefills and three decodes in one mixed batch, read the keys back,
save the used pages to a file, load them into a fresh cache and compare. Public API only; it
asserts what it prints (bindings/run-tests.sh runs it)."""
import os
import tempfile

import numpy as np

import kvpages

LAYERS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16

cfg = kvpages.Config.create(num_hidden_layers=LAYERS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                            max_model_length=4096, page_size=PAGE, dtype=kvpages.Dtype.BF16,
                            budget_bytes=4 << 30, device="cpu")
plan = cfg.plan()
print("plan: %d pages of %d tokens, %d tokens fit, %.2f GiB" % (plan.num_pages, plan.page_size,
                                                              plan.token_capacity, plan.total_bytes / 2**30))
assert plan.total_bytes <= 4 << 30

# (num_computed, num_scheduled, page table): two prefills, then three decodes.
requests = [kvpages.BatchRequest(0, 20, [1, 2]), kvpages.BatchRequest(0, 7, [3]),
            kvpages.BatchRequest(5, 1, [4]), kvpages.BatchRequest(16, 1, [5, 6]), kvpages.BatchRequest(3, 1, [7])]
used_pages = sorted({p for r in requests for p in r.page_ids})
rng = np.random.default_rng(0)


def new_tokens(n):
    """n tokens of keys in bf16 (values the cache stores exactly)."""
    return kvpages.convert(rng.standard_normal((n, KV_HEADS, HEAD_DIM), dtype=np.float32), "bf16")


with kvpages.Cache(cfg) as cache:
    md, order = kvpages.Metadata.build(cfg, requests)
    print("row order (decodes first):", order)
    assert order == [2, 3, 4, 0, 1]
    keys = [[new_tokens(r.num_scheduled) for r in requests] for _ in range(LAYERS)]
    for layer in range(LAYERS):  # per-request arrays; the binding packs them in row order
        cache.concatenate_requests(layer, keys[layer], keys[layer], md, dtype="bf16")
    md.close()

    def check(c):
        for layer in (0, 17, LAYERS - 1):
            for r, want in zip(requests, keys[layer]):
                got = c.read_tokens(layer, r.page_ids, r.num_computed, r.num_scheduled, "keys", "bf16")
                assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), (layer, r)

    check(cache)
    print("keys read back: bf16-exact, first key %r" % float(cache.read_tokens(0, [1], 0, 1)[0, 0, 0]))

    path = os.path.join(tempfile.mkdtemp(), "used-pages.kvp")
    cache.save(path, pages=used_pages)
    info = kvpages.inspect(path, verify=True)
    print("saved %d pages, %d bytes" % (info.num_stored_pages, info.total_bytes))
    assert info.num_stored_pages == len(used_pages) and info.config == cache.config

    with kvpages.Cache(cfg) as fresh:
        fresh.load_into(path)  # each stored page goes back to its own id
        check(fresh)
        for layer in (0, LAYERS - 1):
            assert np.array_equal(fresh.read(layer, "pages", "bf16", index=used_pages).view(np.uint16),
                                  cache.read(layer, "pages", "bf16", index=used_pages).view(np.uint16))
    os.remove(path)
print("loaded into a fresh cache: identical")
