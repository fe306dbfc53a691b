"""Fused attention: write one request's 3 new tokens into layer 0 and attend 4 query heads (grouped
over the 2 KV heads) to them in the same call."""
import numpy as np

import kvpages

cfg = kvpages.Config.create(num_hidden_layers=2, num_kv_heads=2, max_model_length=64, head_dim=128,
                            page_size=16, dtype=kvpages.DTYPE_F32, budget_bytes=1 << 20)
with kvpages.Cache(cfg) as cache:
    md, order = kvpages.Metadata.build(cfg, [(0, 3, [1])])  # 3 new tokens into page 1
    key = np.arange(3 * 2 * 128, dtype=np.float32).reshape(3, 2, 128)
    queries = np.zeros((3, 4, 128), dtype=np.float32)  # zero queries: every visible key weighs the same
    out = cache.attention(0, queries, key, -key, md, softmax_scale=128 ** -0.5)  # out=None: a new array
    # Token 2 sees tokens 0-2 (causal): the mean of their values (-5, -261, -517).
    print("token 2, head 0, lane 5 =", out[2, 0, 5])
    try:
        cache.attention(0, queries, None, None, md, out, sliding_window=-1)  # out is written in place
    except kvpages.InvalidArgument as e:
        print(e.name, e.message)
    md.close()
