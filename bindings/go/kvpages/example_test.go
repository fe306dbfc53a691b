package kvpages_test

import (
	"fmt"

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
	md, _, err := kvpages.BuildMetadata(cfg, []kvpages.BatchRequest{{NumComputed: 0, NumScheduled: 3, PageIDs: []int32{1}}})
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
