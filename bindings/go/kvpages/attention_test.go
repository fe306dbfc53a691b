package kvpages

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

// Cache.Attention on the worked example E1 of ATTENTION.md §13: v3, GQA 2:1 (Hkv 1, Hq 2), D 4,
// page size 4, an f32 cache of exactly 8 pages, σ 0.5; a decode row of context 6 (pages 3, 7) and
// a fresh prefill of 3 tokens (page 5).
const (
	aHq, aHkv, aD, aS = 2, 1, 4, 4
	aLayer            = uint32(1)
)

var (
	// Cached positions 0-4 of request 0 ([pos][d]).
	e1CtxK = []float32{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0}
	e1CtxV = []float32{1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4, 1, 1, 1, 1}
	// The step's T = 4 rows: r 0 = request 0 at p 5, r 1-3 = request 1 at p 0-2 ([r][head][d]).
	e1Q = []float32{2, 0, 0, 0, 0, 0, 2, 2, 1, 1, 0, 0, 0, 0, 1, 1, 1, -1, 1, -1, 2, 0, 0, 0, 0, 2, 0, 2, 1, 1, 1, 1}
	e1K = []float32{0.5, 0.5, 0.5, 0.5, 1, 0, 1, 0, 0, 1, 0, 1, 1, 1, -1, -1}
	e1V = []float32{2, -2, 2, -2, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0}
	e1  = []float32{0.866015, 0.140882, 0.893948, 0.339191, 0.666667, -0.218431, 1.308078, 0.577020,
		1, 0, 0, 0, 1, 0, 0, 0,
		0.880797, 0.119203, 0, 0, 0.731059, 0.268941, 0, 0,
		0.106507, 0.786986, 0.106507, 0, 0.422319, 0.422319, 0.155362, 0}
	// E3: E1 with logits_soft_cap 2 (the correct values).
	e3 = []float32{0.858565, 0.129843, 0.908200, 0.336628, 0.666667, -0.193173, 1.287872, 0.571968,
		1, 0, 0, 0, 1, 0, 0, 0,
		0.863947, 0.136053, 0, 0, 0.715904, 0.284096, 0, 0,
		0.151818, 0.696364, 0.151818, 0, 0.417217, 0.417217, 0.165566, 0}
	e1Shape = [4]int{4, aHq, aHkv, aD}
	scaled  = &AttentionOptions{SoftmaxScale: 0.5}
)

// attentionConfig is a two-layer f32 config with exactly 8 pages: the budget is 8 pages of the
// true page size, measured on a probe cache.
func attentionConfig(t *testing.T) *Config {
	t.Helper()
	o := ConfigOptions{NumHiddenLayers: 2, NumKVHeads: aHkv, MaxModelLength: 16, HeadDim: aD, PageSize: aS,
		Dtype: DtypeF32, BudgetBytes: 1 << 20}
	probeCfg, err := NewConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	probe, err := NewCache(probeCfg)
	if err != nil {
		t.Fatal(err)
	}
	layerBytes, _ := probe.LayerBytes()
	probe.Close()
	o.BudgetBytes = 2 * 8 * int64(layerBytes) / probeCfg.NumPages()
	cfg, err := NewConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NumPages() != 8 {
		t.Fatalf("%d pages, want 8", cfg.NumPages())
	}
	return cfg
}

// cacheWithContext writes request 0's five cached tokens (page 3 rows 0-3, page 7 row 0).
func cacheWithContext(t *testing.T, cfg *Config) *Cache {
	t.Helper()
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 5, []int32{3, 7}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if err := c.Concatenate(aLayer, e1CtxK, e1CtxV, [3]int{5, aHkv, aD}, md); err != nil {
		t.Fatal(err)
	}
	return c
}

// e1Step is the step's metadata: the decode row first, then the fresh prefill.
func e1Step(t *testing.T, cfg *Config) *Metadata {
	t.Helper()
	md, err := BuildMetadata(cfg, []BatchRequest{{5, 1, []int32{3, 7}}, {0, 3, []int32{5}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	order := md.Order()
	if len(order) != 2 || order[0] != 0 || order[1] != 1 {
		t.Fatalf("order %v", order)
	}
	return md
}

func filled(n int, x float32) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = x
	}
	return s
}

func assertClose(t *testing.T, got, want []float32, what string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); !(d <= 2e-5+2e-5*math.Abs(float64(want[i]))) {
			t.Fatalf("%s: element %d (row %d, head %d, lane %d) is %v, want %v", what, i, i/(aHq*aD), i/aD%aHq,
				i%aD, got[i], want[i])
		}
	}
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func readLayer(t *testing.T, c *Cache, layer uint32) []byte {
	t.Helper()
	b, err := c.ReadLayer(layer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reference is E1's context plus the step's tokens written by Concatenate.
func reference(t *testing.T, cfg *Config, md *Metadata) *Cache {
	t.Helper()
	c := cacheWithContext(t, cfg)
	if err := c.Concatenate(aLayer, e1K, e1V, [3]int{4, aHkv, aD}, md); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAttentionE1OutputAndFusedWrite(t *testing.T) {
	cfg := attentionConfig(t)
	c := cacheWithContext(t, cfg)
	defer c.Close()
	md := e1Step(t, cfg)
	defer md.Close()
	out := filled(4*aHq*aD, float32(math.NaN()))
	if err := c.Attention(aLayer, e1Q, e1K, e1V, e1Shape, md, scaled, out); err != nil {
		t.Fatal(err)
	}
	assertClose(t, out, e1, "E1")
	// The fused write stored the four new tokens: page 7 row 1, page 5 rows 0-2.
	keys, _ := c.View(aLayer, ViewKeys)
	values, _ := c.View(aLayer, ViewValues)
	for r, slot := range [][2]int64{{7, 1}, {5, 0}, {5, 1}, {5, 2}} {
		for d := int64(0); d < aD; d++ {
			k, ok1 := keys.F32(slot[0], slot[1], 0, d)
			v, ok2 := values.F32(slot[0], slot[1], 0, d)
			if !ok1 || !ok2 || k != e1K[r*aD+int(d)] || v != e1V[r*aD+int(d)] {
				t.Fatalf("row %d lane %d: key %v value %v", r, d, k, v)
			}
		}
	}
	if k, _ := keys.F32(7, 0, 0, 1); k != 1 {
		t.Fatalf("cached position 4 changed: %v", k)
	}
	// Same bytes as Concatenate with the same metadata; layer 0 untouched.
	ref := reference(t, cfg, md)
	defer ref.Close()
	if !bytes.Equal(readLayer(t, c, aLayer), readLayer(t, ref, aLayer)) {
		t.Fatal("the fused write differs from Concatenate")
	}
	if !bytes.Equal(readLayer(t, c, 0), make([]byte, len(readLayer(t, c, 0)))) {
		t.Fatal("layer 0 was written")
	}
}

func TestAttentionReadOnlyMatchesFused(t *testing.T) {
	cfg := attentionConfig(t)
	md := e1Step(t, cfg)
	defer md.Close()
	fused := cacheWithContext(t, cfg)
	defer fused.Close()
	want := filled(4*aHq*aD, 0)
	if err := fused.Attention(aLayer, e1Q, e1K, e1V, e1Shape, md, scaled, want); err != nil {
		t.Fatal(err)
	}
	c := reference(t, cfg, md) // a fresh copy written by Concatenate
	defer c.Close()
	before := readLayer(t, c, aLayer)
	out := filled(4*aHq*aD, 7)
	if err := c.Attention(aLayer, e1Q, nil, nil, e1Shape, md, scaled, out); err != nil {
		t.Fatal(err)
	}
	if !sameBits(out, want) {
		t.Fatalf("read-only %v\nfused %v", out, want)
	}
	assertClose(t, out, e1, "read-only E1")
	if !bytes.Equal(readLayer(t, c, aLayer), before) {
		t.Fatal("a read-only call wrote the cache")
	}
}

func TestAttentionPaddingRowsAreZero(t *testing.T) {
	cfg := attentionConfig(t)
	md := e1Step(t, cfg)
	defer md.Close()
	c := cacheWithContext(t, cfg)
	defer c.Close()
	// T = 6: rows 4 and 5 belong to no request (queries 9, keys and values 7).
	q := append(append([]float32{}, e1Q...), filled(2*aHq*aD, 9)...)
	k := append(append([]float32{}, e1K...), filled(2*aHkv*aD, 7)...)
	v := append(append([]float32{}, e1V...), filled(2*aHkv*aD, 7)...)
	out := filled(6*aHq*aD, float32(math.NaN()))
	if err := c.Attention(aLayer, q, k, v, [4]int{6, aHq, aHkv, aD}, md, scaled, out); err != nil {
		t.Fatal(err)
	}
	assertClose(t, out[:4*aHq*aD], e1, "E1 rows")
	if !sameBits(out[4*aHq*aD:], filled(2*aHq*aD, 0)) {
		t.Fatalf("padding rows %v, want +0", out[4*aHq*aD:])
	}
	ref := reference(t, cfg, md)
	defer ref.Close()
	if !bytes.Equal(readLayer(t, c, aLayer), readLayer(t, ref, aLayer)) {
		t.Fatal("padding rows were written")
	}
}

func TestAttentionOptionsReachTheLibrary(t *testing.T) {
	cfg := attentionConfig(t)
	md := e1Step(t, cfg)
	defer md.Close()
	c := reference(t, cfg, md)
	defer c.Close()
	out := filled(4*aHq*aD, 0)
	if err := c.Attention(aLayer, e1Q, nil, nil, e1Shape, md, &AttentionOptions{SoftmaxScale: 0.5, LogitsSoftCap: 2}, out); err != nil {
		t.Fatal(err)
	}
	assertClose(t, out, e3, "E3 (soft cap 2)")
	// Sinks of 0.5: row 1 (one key, logit 0.5 for both heads) becomes V/2.
	if err := c.Attention(aLayer, e1Q, nil, nil, e1Shape, md, &AttentionOptions{SoftmaxScale: 0.5, Sinks: []float32{0.5, 0.5}}, out); err != nil {
		t.Fatal(err)
	}
	assertClose(t, out[aHq*aD:2*aHq*aD], []float32{0.5, 0, 0, 0, 0.5, 0, 0, 0}, "row 1 with sinks")
	// nil options: the v3 default scale 1.0.
	def, one := filled(4*aHq*aD, 0), filled(4*aHq*aD, 0)
	if err := c.Attention(aLayer, e1Q, nil, nil, e1Shape, md, nil, def); err != nil {
		t.Fatal(err)
	}
	if err := c.Attention(aLayer, e1Q, nil, nil, e1Shape, md, &AttentionOptions{SoftmaxScale: 1}, one); err != nil {
		t.Fatal(err)
	}
	if !sameBits(def, one) || math.Abs(float64(def[0]-e1[0])) < 1e-3 {
		t.Fatalf("default scale: %v vs scale 1: %v", def[:4], one[:4])
	}
}

func TestAttentionErrorsChangeNothing(t *testing.T) {
	cfg := attentionConfig(t)
	md := e1Step(t, cfg)
	defer md.Close()
	c := cacheWithContext(t, cfg)
	defer c.Close()
	before := readLayer(t, c, aLayer)
	cases := []struct {
		name    string
		layer   uint32
		q, k, v []float32
		shape   [4]int
		opts    *AttentionOptions
		message string
	}{
		{"negative window", aLayer, e1Q, e1K, e1V, e1Shape, &AttentionOptions{SoftmaxScale: 0.5, SlidingWindow: -1}, "sliding_window is -1"},
		{"three sinks for two heads", aLayer, e1Q, e1K, e1V, e1Shape, &AttentionOptions{Sinks: []float32{0, 0, 0}}, "num_sinks is 3"},
		{"negative scale", aLayer, e1Q, e1K, e1V, e1Shape, &AttentionOptions{SoftmaxScale: -1}, "softmax_scale"},
		{"keys without values", aLayer, e1Q, e1K, nil, e1Shape, scaled, "both"},
		{"values without keys", aLayer, e1Q, nil, e1V, e1Shape, scaled, "both"},
		{"layer out of range", 2, e1Q, e1K, e1V, e1Shape, scaled, "layer 2"},
		{"two KV heads", aLayer, e1Q, e1Q, e1Q, [4]int{4, aHq, 2, aD}, scaled, "2 heads"},
		{"short keys", aLayer, e1Q, e1K[:12], e1V, e1Shape, scaled, "12 elements"},
		// A shape whose element count wraps around int is refused, not taken for empty slices.
		{"wrapping shape", aLayer, nil, nil, nil, [4]int{1 << 30, 1 << 27, 1, 128}, scaled, "0 elements"},
		{"negative shape", aLayer, nil, nil, nil, [4]int{-1, aHq, 1, aD}, scaled, "0 elements"},
	}
	for _, tc := range cases {
		out := filled(4*aHq*aD, 7)
		err := c.Attention(tc.layer, tc.q, tc.k, tc.v, tc.shape, md, tc.opts, out)
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) || e.Name != "KVP_ERR_INVALID_ARGUMENT" {
			t.Fatalf("%s: want ErrInvalidArgument, got %v", tc.name, err)
		}
		if !strings.Contains(e.Message, tc.message) {
			t.Fatalf("%s: message %q lacks %q", tc.name, e.Message, tc.message)
		}
		if !sameBits(out, filled(4*aHq*aD, 7)) {
			t.Fatalf("%s: out was written", tc.name)
		}
	}
	if !bytes.Equal(readLayer(t, c, aLayer), before) {
		t.Fatal("a failed call changed the cache")
	}
	c.Close()
	if err := c.Attention(aLayer, e1Q, e1K, e1V, e1Shape, md, scaled, filled(4*aHq*aD, 0)); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("closed cache: %v", err)
	}
}
