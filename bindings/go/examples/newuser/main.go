// Command newuser is what a new user of the Go binding writes first: plan a 32-layer,
// 8-KV-head, head-dim-128 bf16 cache with a 4 GiB budget, create it, write two prefills and
// three decodes in one mixed batch, read the keys back, save the used pages to a file, load
// them into a new cache and compare. It exits non-zero if anything differs.
//
// Run it from bindings/go/examples with PKG_CONFIG_PATH naming the installed kvpages.pc:
//
//	go run ./newuser
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"kvpages.dev/go/kvpages"
)

const (
	layers  = 32
	kvHeads = 8
	headDim = 128
	row     = kvHeads * headDim // elements of one token of one layer
)

// The step: two prefills and three decodes, interleaved. The builder puts the decodes first;
// ConcatenateRequests takes the keys per request, so that order never matters here.
var requests = []kvpages.BatchRequest{
	{NumComputed: 0, NumScheduled: 5, PageIDs: []int32{1}},      // prefill of 5 tokens
	{NumComputed: 9, NumScheduled: 1, PageIDs: []int32{2}},      // decode at position 9
	{NumComputed: 0, NumScheduled: 3, PageIDs: []int32{3}},      // prefill of 3 tokens
	{NumComputed: 130, NumScheduled: 1, PageIDs: []int32{4, 5}}, // decode at 130: page 5, row 2
	{NumComputed: 1, NumScheduled: 1, PageIDs: []int32{6}},      // decode at position 1
}

var usedPages = []int32{1, 2, 3, 4, 5, 6}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "newuser:", err)
		os.Exit(1)
	}
}

func run() error {
	if err := kvpages.CheckABI(); err != nil {
		return err
	}
	cfg, err := kvpages.NewConfig(kvpages.ConfigOptions{NumHiddenLayers: layers, NumKVHeads: kvHeads, HeadDim: headDim,
		MaxModelLength: 8192, Dtype: kvpages.DtypeBF16, BudgetBytes: 4 << 30, Device: kvpages.CPU})
	if err != nil {
		return err
	}
	plan, err := cfg.Plan()
	if err != nil {
		return err
	}
	fmt.Printf("plan: %d pages of %d tokens, %d bytes per token, %d tokens fit in %.2f GiB\n",
		plan.NumPages, plan.PageSize, plan.BytesPerToken, plan.TokenCapacity, float64(plan.TotalBytes)/(1<<30))
	cache, err := kvpages.NewCache(cfg) // on cfg.Device(), the device the budget came from
	if err != nil {
		return err
	}
	defer cache.Close()
	if err := writeStep(cfg, cache); err != nil {
		return err
	}
	if err := check(cache); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	fmt.Println("read back: every key and value matches what was written")

	path := filepath.Join(os.TempDir(), fmt.Sprintf("kvpages-newuser-%d.kvp", os.Getpid()))
	defer os.Remove(path)
	if err := cache.SaveFile(path, &kvpages.SaveOptions{PageIDs: usedPages}); err != nil {
		return err
	}
	info, err := kvpages.InspectFile(path, true)
	if err != nil {
		return err
	}
	fmt.Printf("saved pages %d..%d (%d pages, %d bytes)\n", info.FirstPageID, info.LastPageID, info.NumStoredPages, info.TotalBytes)
	loaded, err := kvpages.NewCache(cfg)
	if err != nil {
		return err
	}
	defer loaded.Close()
	if err := loaded.LoadFileInto(path, nil); err != nil {
		return err
	}
	if err := check(loaded); err != nil {
		return fmt.Errorf("loaded cache: %w", err)
	}
	fmt.Println("loaded into a new cache: identical")
	return nil
}

// token is the key (sign 1) or value (sign -1) of request r's token t in a layer: small
// integers, so exactly representable in bf16.
func token(layer, r, t int, sign float32) []kvpages.BF16 {
	x := make([]float32, row)
	for e := range x {
		x[e] = sign * float32((layer+7*r+3*t+e%16)%200)
	}
	return kvpages.FromFloat32[kvpages.BF16](x)
}

func perRequest(layer int, sign float32) [][]kvpages.BF16 {
	out := make([][]kvpages.BF16, len(requests))
	for r, req := range requests {
		for t := 0; t < int(req.NumScheduled); t++ {
			out[r] = append(out[r], token(layer, r, t, sign)...)
		}
	}
	return out
}

func writeStep(cfg *kvpages.Config, cache *kvpages.Cache) error {
	md, err := kvpages.BuildMetadata(cfg, requests, nil)
	if err != nil {
		return err
	}
	defer md.Close()
	fmt.Println("rows hold requests", md.Order(), "(decodes first)")
	for layer := 0; layer < layers; layer++ {
		err := kvpages.ConcatenateRequests(cache, uint32(layer), perRequest(layer, 1), perRequest(layer, -1), md)
		if err != nil {
			return err
		}
	}
	return nil
}

// check compares, at every written position of every layer of cache, the keys and values with
// what writeStep wrote (bf16 bits, and as f32), and checks that the slot after each request's
// last token is empty.
func check(cache *kvpages.Cache) error {
	for layer := 0; layer < layers; layer++ {
		for _, kind := range []kvpages.ViewKind{kvpages.ViewKeys, kvpages.ViewValues} {
			view, err := cache.View(uint32(layer), kind)
			if err != nil {
				return err
			}
			sign := float32(1)
			if kind == kvpages.ViewValues {
				sign = -1
			}
			if err := compareView(view, layer, sign); err != nil {
				return fmt.Errorf("layer %d: %w", layer, err)
			}
		}
	}
	return nil
}

func compareView(view *kvpages.View, layer int, sign float32) error {
	bits := make([]kvpages.BF16, headDim)
	f32 := make([]float32, headDim)
	for r, req := range requests {
		for t := 0; t <= int(req.NumScheduled); t++ {
			pos := int(req.NumComputed) + t
			page, slot := int64(req.PageIDs[pos/128]), int64(pos%128)
			for h := 0; h < kvHeads; h++ {
				if err := kvpages.ReadView(view, bits, page, slot, int64(h), 0); err != nil {
					return err
				}
				if err := view.ReadF32(f32, page, slot, int64(h), 0); err != nil {
					return err
				}
				want := make([]kvpages.BF16, headDim) // past the request: never written
				if t < int(req.NumScheduled) {
					want = token(layer, r, t, sign)[h*headDim : (h+1)*headDim]
				}
				if !reflect.DeepEqual(bits, want) || !reflect.DeepEqual(f32, kvpages.ToFloat32(want)) {
					return fmt.Errorf("request %d token %d head %d: got %v…, want %v…", r, t, h, f32[:4], kvpages.ToFloat32(want[:4]))
				}
			}
		}
	}
	return nil
}
