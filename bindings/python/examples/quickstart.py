"""Plan a small f32 cache, write one request's 3 new tokens into layer 0, read them back."""
import numpy as np

import kvpages

cfg = kvpages.Config.create(num_hidden_layers=2, num_kv_heads=2, max_model_length=64, head_dim=128,
                            page_size=16, dtype="f32", budget_bytes=1 << 20)
with kvpages.Cache(cfg) as cache:
    md, order = kvpages.Metadata.build(cfg, [(0, 3, [1])])  # 3 new tokens into page 1
    key = np.arange(3 * 2 * 128, dtype=np.float32).reshape(3, 2, 128)
    cache.concatenate(0, key, -key, md)
    md.close()
    keys = cache.numpy(0, kvpages.View.KEYS)  # zero-copy [pages, page_size, heads, head_dim]
    print("token 2, head 1, lane 5 =", keys[1, 2, 1, 5])  # 645.0
    assert (keys[1, :3] == key).all()
    via_dlpack = np.from_dlpack(cache.export_dlpack(0, kvpages.View.KEYS))  # read-only in numpy
    assert (via_dlpack == keys).all()
    try:
        cache.numpy(9)
    except ValueError as e:  # kvpages.InvalidArgument
        print(e.name, e.message)
    del keys, via_dlpack  # arrays pin the cache; release them before closing it
