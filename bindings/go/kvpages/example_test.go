package kvpages_test

import (
	"bytes"
	"context"
	"fmt"
	"math"

	"kvpages.dev/go/kvpages"
)

// Plan a small f32 cache, write one request's 3 new tokens into layer 0, read a key back.
func Example() {
	cfg, err := kvpages.NewConfig(kvpages.ConfigOptions{NumHiddenLayers: 2, NumKVHeads: 2, MaxModelLength: 64,
		HeadDim: 128, PageSize: 16, Dtype: kvpages.DtypeF32, BudgetBytes: 1 << 20})
	if err != nil {
		panic(err)
	}
	cache, err := kvpages.NewCache(cfg)
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	md, err := kvpages.BuildMetadata(cfg, []kvpages.BatchRequest{{NumComputed: 0, NumScheduled: 3, PageIDs: []int32{1}}}, nil)
	if err != nil {
		panic(err)
	}
	defer md.Close()
	key := make([]float32, 3*2*128)
	value := make([]float32, len(key))
	for i := range key {
		key[i], value[i] = float32(i), -float32(i)
	}
	if err := cache.Concatenate(0, key, value, [3]int{3, 2, 128}, md); err != nil {
		panic(err)
	}
	keys, _ := cache.View(0, kvpages.ViewKeys) // [pages, page_size, heads, head_dim]
	x, _ := keys.F32(1, 2, 1, 5)
	fmt.Println("token 2, head 1, lane 5 =", x)
	_, err = cache.View(9, kvpages.ViewKeys)
	fmt.Println(err.(*kvpages.Error).Name)
	// Output:
	// token 2, head 1, lane 5 = 645
	// KVP_ERR_INVALID_ARGUMENT
}

// Serve two prompts through a page pool: the second reuses the first one's computed prefix.
func ExamplePool() {
	cfg, err := kvpages.NewConfig(kvpages.ConfigOptions{NumHiddenLayers: 2, NumKVHeads: 2, MaxModelLength: 64,
		HeadDim: 128, PageSize: 16, Dtype: kvpages.DtypeF32, BudgetBytes: 1 << 20})
	if err != nil {
		panic(err)
	}
	cache, err := kvpages.NewCache(cfg)
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	pool, err := kvpages.NewPool(cache, kvpages.PoolOptions{MaxSequences: 8})
	if err != nil {
		panic(err)
	}
	defer pool.Close()          // runs before cache.Close (defers run last in, first out)
	prompt := make([]int32, 40) // 40 tokens: pages of 16, 16 and 8
	for i := range prompt {
		prompt[i] = int32(100 + i)
	}
	seq, reused, err := pool.AddSequence(prompt, 0, false)
	if err != nil {
		panic(err)
	}
	// Write the K/V of the tokens the pool has pending (all 40 here) into every layer.
	req, _ := pool.BatchRequest(seq) // NumComputed 0, NumScheduled 40, 3 page ids
	md, err := kvpages.BuildMetadata(cfg, []kvpages.BatchRequest{req}, nil)
	if err != nil {
		panic(err)
	}
	defer md.Close()
	key := make([]float32, 40*2*128)
	for layer := uint32(0); layer < 2; layer++ {
		if err := cache.Concatenate(layer, key, key, [3]int{40, 2, 128}, md); err != nil {
			panic(err)
		}
	}
	pool.SetComputed(seq, 40) // the two full pages enter the prefix cache
	other, hit, _ := pool.AddSequence(prompt[:36], 0, false)
	fmt.Println("reused", reused, "then", hit)
	a, _ := pool.PageTable(seq)
	b, _ := pool.PageTable(other)
	fmt.Println(a, b)
	pool.FreeSequence(seq)
	pool.FreeSequence(other)
	err = pool.FreeSequence(seq) // errors.Is(err, kvpages.ErrNotFound)
	fmt.Println(err.(*kvpages.Error).Name)
	st, _ := pool.Stats()
	fmt.Println(st.FreePages+st.EvictablePages+st.UsedPages == st.TotalPages)
	// Output:
	// reused 0 then 32
	// [1 2 3] [1 2 4]
	// KVP_ERR_NOT_FOUND
	// true
}

// Fused attention: write one request's 3 new tokens into layer 0 and attend 4 query heads
// (grouped over the 2 KV heads) to them in the same call.
func ExampleCache_Attention() {
	cfg, err := kvpages.NewConfig(kvpages.ConfigOptions{NumHiddenLayers: 2, NumKVHeads: 2, MaxModelLength: 64,
		HeadDim: 128, PageSize: 16, Dtype: kvpages.DtypeF32, BudgetBytes: 1 << 20})
	if err != nil {
		panic(err)
	}
	cache, err := kvpages.NewCache(cfg)
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	md, err := kvpages.BuildMetadata(cfg, []kvpages.BatchRequest{{NumComputed: 0, NumScheduled: 3, PageIDs: []int32{1}}}, nil)
	if err != nil {
		panic(err)
	}
	defer md.Close()
	key := make([]float32, 3*2*128)
	value := make([]float32, len(key))
	for i := range key {
		key[i], value[i] = float32(i), -float32(i)
	}
	queries := make([]float32, 3*4*128) // zero queries: every visible key weighs the same
	out := make([]float32, len(queries))
	opts := &kvpages.AttentionOptions{SoftmaxScale: float32(1 / math.Sqrt(128))}
	if err := cache.Attention(0, queries, key, value, [4]int{3, 4, 2, 128}, md, opts, out); err != nil {
		panic(err)
	}
	// Token 2 sees tokens 0-2 (causal): the mean of their values (-5, -261, -517).
	fmt.Println("token 2, head 0, lane 5 =", out[(2*4+0)*128+5])
	opts.SlidingWindow = -1
	err = cache.Attention(0, queries, nil, nil, [4]int{3, 4, 2, 128}, md, opts, out)
	fmt.Println(err.(*kvpages.Error).Name)
	// Output:
	// token 2, head 0, lane 5 = -261
	// KVP_ERR_INVALID_ARGUMENT
}

// A mixed batch in bf16, the default dtype: keys and values are given per request, in the order
// of the requests; the builder's decode-first row order is applied for you. Then the used pages
// go through an io.Writer into a new cache.
func ExampleConcatenateRequests() {
	cfg, err := kvpages.NewConfig(kvpages.ConfigOptions{NumHiddenLayers: 1, NumKVHeads: 1, MaxModelLength: 64,
		HeadDim: 128, PageSize: 16, BudgetBytes: 1 << 20})
	if err != nil {
		panic(err)
	}
	cache, _ := kvpages.NewCache(cfg)
	defer cache.Close()
	reqs := []kvpages.BatchRequest{
		{NumComputed: 0, NumScheduled: 2, PageIDs: []int32{1}}, // prefill
		{NumComputed: 4, NumScheduled: 1, PageIDs: []int32{2}}, // decode at position 4
	}
	md, err := kvpages.BuildMetadata(cfg, reqs, nil)
	if err != nil {
		panic(err)
	}
	defer md.Close()
	fill := func(x float32, tokens int) []kvpages.BF16 {
		v := make([]float32, tokens*128)
		for i := range v {
			v[i] = x
		}
		return kvpages.FromFloat32[kvpages.BF16](v)
	}
	keys := [][]kvpages.BF16{fill(1.5, 2), fill(-3, 1)}
	if err := kvpages.ConcatenateRequests(cache, 0, keys, keys, md); err != nil {
		panic(err)
	}
	view, _ := cache.View(0, kvpages.ViewKeys)
	a, _ := view.F32(1, 1, 0, 0) // request 0, token 1
	b, _ := view.F32(2, 4, 0, 0) // request 1, position 4
	fmt.Println("rows", md.Order(), "keys", a, b)

	var blob bytes.Buffer
	if err := cache.Save(context.Background(), &blob, &kvpages.SaveOptions{PageIDs: []int32{1, 2}}); err != nil {
		panic(err)
	}
	loaded, err := kvpages.Load(context.Background(), &blob, nil)
	if err != nil {
		panic(err)
	}
	defer loaded.Close()
	view, _ = loaded.View(0, kvpages.ViewKeys)
	b, _ = view.F32(2, 4, 0, 0)
	fmt.Println("loaded", view.Dtype(), b)
	// Output:
	// rows [1 0] keys 1.5 -3
	// loaded bf16 -3
}
