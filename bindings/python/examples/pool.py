"""Serve a 40-token prompt through a page pool, then the same prompt again from the prefix cache."""
import numpy as np

import kvpages

cfg = kvpages.Config.create(num_hidden_layers=2, num_kv_heads=2, max_model_length=64, head_dim=128,
                            page_size=16, dtype=kvpages.DTYPE_F32, budget_bytes=1 << 20)
with kvpages.Cache(cfg) as cache, kvpages.Pool(cache) as pool:  # the pool closes first
    prompt = list(range(100, 140))
    a, _ = pool.add_sequence(prompt)
    req = pool.batch_request(a)                     # BatchRequest(0, 40, [3 page ids, copied])
    md, order = kvpages.Metadata.build(cfg, [req])
    key = np.arange(40 * 2 * 128, dtype=np.float32).reshape(40, 2, 128)
    for layer in range(2):
        cache.concatenate(layer, key, -key, md)
    md.close()
    pool.set_computed(a, 40)                        # full pages enter the prefix cache
    b, reused = pool.add_sequence(prompt)
    print("reused", reused, "tokens")               # 32: two full pages
    assert pool.page_table(b)[:2] == pool.page_table(a)[:2]
    kids = pool.fork(b, 2)                          # share every page, copy-on-write on append
    print("refcount of the first page:", pool.page_state(req.page_ids[0])[0])  # 4
    for seq in [a, b] + kids:
        pool.free_sequence(seq)
    pool.check_invariants()
    print(pool.stats())
    try:
        pool.free_sequence(a)
    except kvpages.NotFound as e:
        print(e.name, e.message)                    # ... is stale: its sequence was freed ...
