package kvpages

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

const (
	heads   = 2
	headDim = 128
	page    = 16
)

func newConfig(t *testing.T) *Config {
	t.Helper()
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: 2, NumKVHeads: heads, MaxModelLength: 64, HeadDim: headDim,
		PageSize: page, Dtype: DtypeF32, BudgetBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func token(tk, h, d int) float32 { return float32(tk*1000 + h*256 + d) }

// writeBatch writes a 3-token prefill (page 1) and a decode token at position 5 (page 2) into
// layer 1 and returns the metadata and the keys.
func writeBatch(t *testing.T, c *Cache, cfg *Config) (*Metadata, []float32, []float32) {
	t.Helper()
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 3, []int32{1}}, {5, 1, []int32{2}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	order := md.Order()
	if len(order) != 2 || order[0] != 1 || order[1] != 0 {
		t.Fatalf("order %v, want [1 0] (decode first)", order)
	}
	key := make([]float32, 0, 4*heads*headDim)
	for tk := 0; tk < 4; tk++ {
		for h := 0; h < heads; h++ {
			for d := 0; d < headDim; d++ {
				key = append(key, token(tk, h, d))
			}
		}
	}
	value := make([]float32, len(key))
	for i, x := range key {
		value[i] = -x
	}
	if err := c.Concatenate(1, key, value, [3]int{4, heads, headDim}, md); err != nil {
		t.Fatal(err)
	}
	return md, key, value
}

func TestVersion(t *testing.T) {
	if err := CheckABI(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(Version(), "1.") {
		t.Fatalf("version %q", Version())
	}
}

func TestConcatenateThenReadBackThroughViews(t *testing.T) {
	cfg := newConfig(t)
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	md, _, _ := writeBatch(t, c, cfg)
	defer md.Close()
	keys, err := c.View(1, ViewKeys)
	if err != nil {
		t.Fatal(err)
	}
	values, _ := c.View(1, ViewValues)
	other, _ := c.View(0, ViewKeys)
	if s := keys.Shape(); len(s) != 4 || s[0] != cfg.NumPages() || s[1] != page || s[2] != heads || s[3] != headDim {
		t.Fatalf("shape %v", s)
	}
	for h := int64(0); h < heads; h++ {
		for d := int64(0); d < headDim; d++ {
			check := func(v *View, want float32, idx ...int64) {
				got, ok := v.F32(idx...)
				if !ok || got != want {
					t.Fatalf("at %v: got %v (ok %v), want %v", idx, got, ok, want)
				}
			}
			check(keys, token(0, int(h), int(d)), 2, 5, h, d)
			check(values, -token(0, int(h), int(d)), 2, 5, h, d)
			for tk := int64(0); tk < 3; tk++ {
				check(keys, token(int(tk)+1, int(h), int(d)), 1, tk, h, d)
				check(values, -token(int(tk)+1, int(h), int(d)), 1, tk, h, d)
			}
			check(keys, 0, 2, 4, h, d)
			check(keys, 0, 1, 3, h, d)
			check(other, 0, 1, 0, h, d)
		}
	}
	if _, ok := keys.F32(cfg.NumPages(), 0, 0, 0); ok {
		t.Fatal("out-of-range index accepted")
	}
}

func TestErrorPath(t *testing.T) {
	cfg := newConfig(t)
	c, _ := NewCache(cfg)
	defer c.Close()
	md, key, value := writeBatch(t, c, cfg)
	defer md.Close()
	keys, _ := c.View(1, ViewKeys)
	before, _ := keys.F32(1, 0, 0, 5)
	err := c.Concatenate(2, key, value, [3]int{4, heads, headDim}, md)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
	if e.Name != "KVP_ERR_INVALID_ARGUMENT" || !strings.Contains(e.Message, "layer 2") {
		t.Fatalf("error %+v", e)
	}
	if after, _ := keys.F32(1, 0, 0, 5); after != before {
		t.Fatal("cache changed by a failed call")
	}
	if _, err := NewConfig(ConfigOptions{}); !errors.Is(err, ErrInvalidArgument) || err.(*Error).Message == "" {
		t.Fatalf("empty options: %v", err)
	}
}

func TestCloseReleasesOnce(t *testing.T) {
	c, _ := NewCache(newConfig(t))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal("second Close must be a no-op:", err)
	}
	if _, err := c.View(0, ViewPages); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("use after Close: %v", err)
	}
}

// makeGarbage creates a cache and a metadata handle and drops them, returning their C pointers.
// Not inlined, so no stack slot of the caller can keep the Go objects alive.
//
//go:noinline
func makeGarbage(t *testing.T, cfg *Config) (uintptr, uintptr) {
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 1, []int32{1}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return uintptr(unsafe.Pointer(c.p)), uintptr(unsafe.Pointer(md.p))
}

func TestFinalizerReleasesUnreachableHandles(t *testing.T) {
	cfg := newConfig(t)
	var mu sync.Mutex
	pending := map[uintptr]bool{}
	finalizedHook = func(raw uintptr) {
		mu.Lock()
		delete(pending, raw)
		mu.Unlock()
	}
	defer func() { finalizedHook = nil }()
	for i := 0; i < 20; i++ {
		c, md := makeGarbage(t, cfg)
		mu.Lock()
		pending[c] = true
		pending[md] = true
		mu.Unlock()
	}
	left := func() int { mu.Lock(); defer mu.Unlock(); return len(pending) }
	for deadline := time.Now().Add(10 * time.Second); left() > 0 && time.Now().Before(deadline); {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	if n := left(); n != 0 {
		t.Fatalf("%d of 40 unreachable handles were not released by their finalizers", n)
	}
}

// Errors are per OS thread: concurrent failing calls each see their own message.
func TestErrorsArePerThread(t *testing.T) {
	cfg := newConfig(t)
	c, _ := NewCache(cfg)
	defer c.Close()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(layer uint32) {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				_, err := c.View(layer, ViewPages)
				if err == nil || !strings.Contains(err.(*Error).Message, "layer "+string(rune('0'+layer))) {
					t.Errorf("layer %d: %v", layer, err)
					return
				}
			}
		}(uint32(2 + i))
	}
	wg.Wait()
}

func TestLayersCopyThroughTheHost(t *testing.T) {
	cfg := newConfig(t)
	a, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	md, _, _ := writeBatch(t, a, cfg)
	defer md.Close()
	bytes, err := a.ReadLayer(1)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := a.LayerBytes()
	nonzero := false
	for _, x := range bytes {
		nonzero = nonzero || x != 0
	}
	if len(bytes) != n || !nonzero {
		t.Fatalf("layer 1: %d bytes (want %d), any non-zero: %v", len(bytes), n, nonzero)
	}
	b, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteLayer(0, bytes); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.ReadLayer(0); string(got) != string(bytes) {
		t.Fatal("layer 0 differs from what was written")
	}
	// A wrong size or layer is refused and changes nothing.
	err = b.WriteLayer(0, bytes[1:])
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), strconv.Itoa(n)) {
		t.Fatalf("short write: %v", err)
	}
	if err := b.WriteLayer(2, bytes); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("layer 2: %v", err)
	}
	if got, _ := b.ReadLayer(0); string(got) != string(bytes) {
		t.Fatal("a refused write changed layer 0")
	}
}

// A cache lives on the device its config was budgeted for: without that CUDA device, budgeting
// from it fails, and so does creating a cache on it with an explicit budget.
func TestCudaCacheNeedsADevice(t *testing.T) {
	n, err := DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	opts := ConfigOptions{NumHiddenLayers: 2, NumKVHeads: heads, MaxModelLength: 64, HeadDim: headDim,
		PageSize: page, Dtype: DtypeF32, Device: CUDA(n)}
	if cfg, err := NewConfig(opts); cfg != nil || !errors.Is(err, ErrNoDevice) {
		t.Fatalf("budget from CUDA device %d of %d: config %v, error %v", n, n, cfg, err)
	}
	opts.BudgetBytes = 1 << 20
	cfg, err := NewConfig(opts)
	if err != nil || cfg.Device() != CUDA(n) {
		t.Fatalf("explicit budget: %v, %v", cfg, err)
	}
	c, err := NewCache(cfg)
	if c != nil || !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), strconv.Itoa(n)) {
		t.Fatalf("CUDA device %d of %d: cache %v, error %v", n, n, c, err)
	}
	if n > 0 {
		opts.Device, opts.BudgetBytes = CUDA(0), 0
		cfg, err := NewConfig(opts)
		if err != nil {
			t.Fatal(err)
		}
		g, err := NewCache(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if d, err := g.Device(); err != nil || d != CUDA(0) {
			t.Fatalf("device %v, %v", d, err)
		}
		if _, err := g.ReadLayer(0); err != nil {
			t.Fatal(err)
		}
		if err := g.AsyncError(); err != nil {
			t.Fatal(err)
		}
	}
}
