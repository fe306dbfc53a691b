package kvpages

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"unsafe"
)

// wantStatus fails unless err is an *Error of status s whose message contains every part.
func wantStatus(t *testing.T, err error, s Status, parts ...string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, s) || e.Status != s || e.Name != s.Error() || e.Message == "" {
		t.Fatalf("want %v with a message, got %v", s, err)
	}
	for _, p := range parts {
		if !strings.Contains(e.Message, p) {
			t.Fatalf("message %q lacks %q", e.Message, p)
		}
	}
}

func TestEnumsAndStatus(t *testing.T) {
	for name, want := range map[string]Dtype{"bf16": DtypeBF16, "bfloat16": DtypeBF16, "fp32": DtypeF32,
		"float16": DtypeF16, "fp8": DtypeF8E5M2, "fp8_e4m3fn": DtypeF8E4M3FN} {
		if d, err := ParseDtype(name); err != nil || d != want {
			t.Fatalf("%s: %v %v", name, d, err)
		}
	}
	_, err := ParseDtype("int8")
	wantStatus(t, err, ErrNotFound)
	if DtypeBF16.String() != "bf16" || DtypeF8E5M2.String() != "fp8_e5m2" || Dtype(99).String() != "Dtype(99)" {
		t.Fatal(DtypeBF16, DtypeF8E5M2, Dtype(99))
	}
	if DtypeBF16.Bits() != 16 || DtypeF8E4M3FN.Bits() != 8 || Dtype(99).Bits() != 0 {
		t.Fatal("bits")
	}
	if p, err := DtypeF8E5M2.Packing(); err != nil || p != 4 {
		t.Fatal(p, err)
	}
	if l, err := ParseLayout("v2"); err != nil || l != LayoutV2 || LayoutV3.String() != "v3" {
		t.Fatal(l, err)
	}
	_, err = ParseLayout("v4")
	wantStatus(t, err, ErrNotFound)
	if CUDA(1).String() != "cuda:1" || CPU.String() != "cpu" || !(Device{}).IsCPU() {
		t.Fatal(CUDA(1), CPU)
	}
	var s Status
	if !errors.As(newError(ErrOutOfPages, "x"), &s) || s != ErrOutOfPages || ErrOutOfPages.Error() != "KVP_ERR_OUT_OF_PAGES" {
		t.Fatal(s)
	}
	if errors.Is(newError(ErrOutOfPages, "x"), ErrNotFound) {
		t.Fatal("codes must differ")
	}
}

func TestVersionChecks(t *testing.T) {
	if VersionNumber() < 10300 || VersionNumber()/10000 != 1 || !strings.Contains(BuildInfo(), Version()) {
		t.Fatal(VersionNumber(), BuildInfo())
	}
	if HeaderVersion > VersionNumber() {
		t.Fatalf("headers %d newer than the library %d", HeaderVersion, VersionNumber())
	}
	wantStatus(t, CheckABIVersion(20000), ErrVersionMismatch)
	wantStatus(t, CheckABIVersion(VersionNumber()+1), ErrVersionMismatch)
}

func TestIntegerHelpers(t *testing.T) {
	if v, err := CDiv(-1, 4); err != nil || v != 0 {
		t.Fatal(v, err)
	}
	_, err := CDiv(1, 0)
	wantStatus(t, err, ErrInvalidArgument)
	if v, err := AlignToMultiple(130, 128); err != nil || v != 256 {
		t.Fatal(v, err)
	}
	if PreviousPowerOf2(100) != 64 || PreviousPowerOf2(0) != 0 {
		t.Fatal("previous power of 2")
	}
	if v, err := PageSizeBytes(128, 8, 128, DtypeBF16); err != nil || v != 128*16*128*2 {
		t.Fatal(v, err)
	}
	if v, err := NumSlicesPerKVCacheUpdatePage(1 << 20); err != nil || v != 16 {
		t.Fatal(v, err)
	}
}

func TestConvertEveryDtype(t *testing.T) {
	src := []float32{0, 1.5, -2, 448, 1e-3}
	if got := ToFloat32(FromFloat32[BF16](src)); got[1] != 1.5 || got[2] != -2 || got[3] != 448 {
		t.Fatal(got)
	}
	if ToBF16(1).Float32() != 1 || uint16(ToBF16(1)) != 0x3f80 || uint16(ToF16(1)) != 0x3c00 {
		t.Fatal("bit patterns")
	}
	if ToF8E4M3FN(448).Float32() != 448 || !math.IsNaN(float64(ToF8E4M3FN(1000).Float32())) {
		t.Fatal("e4m3fn saturates to NaN, not to 448")
	}
	if !math.IsInf(float64(ToF8E5M2(1e6).Float32()), 1) || ToF16(65504).Float32() != 65504 {
		t.Fatal("e5m2 / f16 range")
	}
	dst := make([]F16, 2)
	wantStatus(t, Convert(dst, src), ErrInvalidArgument, "5 source")
	if dst[0] != 0 || dst[1] != 0 {
		t.Fatal("a refused conversion wrote")
	}
	bf := FromFloat32[BF16](src)
	f8 := make([]F8E5M2, len(bf))
	if err := Convert(f8, bf); err != nil || f8[1].Float32() != 1.5 {
		t.Fatal(f8, err)
	}
}

func TestConfigShardingResolution(t *testing.T) {
	// SPEC.md §7.3: 4 fp8 heads over 4 devices have 2 storage groups; bf16 has 4: upcast.
	o := ConfigOptions{NumHiddenLayers: 1, NumKVHeads: 4, MaxModelLength: 4096, HeadDim: 128, Dtype: DtypeF8E4M3FN,
		BudgetBytes: 1 << 20, Flags: ConfigNoSafetyMargin, KVHeadShards: 4, DataParallelSize: 2}
	cfg, err := NewConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Dtype() != DtypeBF16 || cfg.KVHeadShards() != 4 || cfg.DataParallelSize() != 2 || cfg.NumPages() != 32 {
		t.Fatalf("config %v %d %d %d", cfg.Dtype(), cfg.KVHeadShards(), cfg.DataParallelSize(), cfg.NumPages())
	}
	p, err := cfg.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if p.HeadSharding != 2 || p.RequestedDtype != DtypeF8E4M3FN || p.PagesPerDevice != 16 || p.BytesPerDevice != p.TotalBytes/8 ||
		!strings.HasPrefix(p.ShardingMessage, "upcast fp8_e4m3fn → bf16 because 2 storage groups") {
		t.Fatalf("plan %+v", p)
	}
	// The record carries the sharding through ConfigFromRecord (validated as resolved).
	r := cfg.Record()
	if r.DataParallelSize != 2 || r.KVHeadShards != 4 || r.RequestedDtype != DtypeF8E4M3FN {
		t.Fatalf("record %+v", r)
	}
	if back, err := ConfigFromRecord(r, CPU); err != nil || back.Record() != r {
		t.Fatalf("ConfigFromRecord: %v", err)
	}
	o.DataParallelSize = -1
	if _, err := NewConfig(o); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "data_parallel_size") {
		t.Fatalf("dp -1: %v", err)
	}
}

func TestConfigOptionsAndPlan(t *testing.T) {
	base := ConfigOptions{NumHiddenLayers: 32, NumKVHeads: 8, MaxModelLength: 8192, HeadDim: 128, BudgetBytes: 4 << 30}
	cfg, err := NewConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := cfg.Plan()
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Record()
	if r.Dtype != DtypeBF16 || r.Layout != LayoutV3 || r.PageSize != 128 || r.HBMUtilization != 0.9 ||
		plan.BytesPerPage != 32*2*8*128*128*2 || plan.NumPages != r.NumPages || plan.UsablePages != r.NumPages-1 ||
		plan.TotalBytes != plan.NumPages*plan.BytesPerPage || plan.NumPages*plan.BytesPerPage > 4<<30 ||
		cfg.Device() != CPU {
		t.Fatalf("%+v %+v", r, plan)
	}
	// Every option reaches C: shards double the budget, the reference budget and the flags,
	// injected statistics, hints, layout, dtype, explicit head dims.
	sharded := base
	sharded.KVHeadShards = 2
	if c2, err := NewConfig(sharded); err != nil || c2.NumPages() != 2*cfg.NumPages() {
		t.Fatal(c2.NumPages(), cfg.NumPages(), err)
	}
	stats := []MemoryStats{{BytesLimit: 8 << 30, BytesInUse: 1 << 30, Valid: true}}
	injected := ConfigOptions{NumHiddenLayers: 4, NumKVHeads: 2, MaxModelLength: 1024, KHeadDim: 64, VHeadDim: 64,
		HBMUtilization: 0.5, PageSize: 32, Dtype: DtypeF16, Layout: LayoutV2, BudgetMode: BudgetTotal,
		Flags: ConfigNoSafetyMargin | ConfigReferenceBudget, MemoryStats: stats, MaxNumTokens: 256, MaxNumReqs: 16}
	c3, err := NewConfig(injected)
	if err != nil {
		t.Fatal(err)
	}
	budget, err := HBMBudgetBytes(stats, 0.5, BudgetTotal, 0)
	if err != nil || budget != 3<<30 {
		t.Fatal(budget, err)
	}
	pageBytes := int64(2 * 4 * 32 * 2 * 64 * 2) // the reference's unpadded page over all layers
	r3 := c3.Record()
	if r3.NumPages != budget/pageBytes || r3.Layout != LayoutV2 || r3.Dtype != DtypeF16 || r3.KHeadDim != 64 ||
		r3.MaxNumTokens != 256 || r3.MaxNumReqs != 16 || r3.HBMUtilization != 0.5 {
		t.Fatalf("%+v (budget %d, page %d)", r3, budget, pageBytes)
	}
	if n, err := c3.PaddedNumSlices(0, 0); err != nil || n <= 0 {
		t.Fatal(n, err)
	}
	// Budgeting from the CPU (the default device) reads the host's statistics.
	host, err := DeviceMemoryStats(CPU)
	if err != nil || !host.Valid || host.BytesTotal <= 0 {
		t.Fatal(host, err)
	}
	fromHost := base
	fromHost.BudgetBytes, fromHost.MaxModelLength = 0, 128
	if c4, err := NewConfig(fromHost); err != nil || c4.NumPages() < 2 {
		t.Fatal(err)
	}
	li, err := cfg.LayoutInfo()
	if err != nil || li.StorageHeadDim != 128 || len(li.Shape) != 5 || li.LayerBytes != r.NumPages*li.PageBytesPerLayer {
		t.Fatalf("%+v %v", li, err)
	}
	// Bad options: the error names the field; nothing is returned.
	bad := base
	bad.HBMUtilization = 1.5
	c5, err := NewConfig(bad)
	if c5 != nil {
		t.Fatal("config from bad options")
	}
	wantStatus(t, err, ErrInvalidArgument, "utilization")
	bad = base
	bad.Dtype = Dtype(42)
	_, err = NewConfig(bad)
	wantStatus(t, err, ErrNotFound)
	// Records: defaults, round trip, validation.
	d := DefaultConfigRecord()
	if d.PageSize != 128 || d.NumPages != -1 || d.Dtype != DtypeBF16 {
		t.Fatalf("%+v", d)
	}
	if c6, err := ConfigFromRecord(r, CPU); err != nil || c6.Record() != r {
		t.Fatal(err)
	}
	r.NumPages = 0
	_, err = ConfigFromRecord(r, CPU)
	wantStatus(t, err, ErrInvalidArgument, "num_pages")
}

func TestConfigAndMetadataJSON(t *testing.T) {
	cfg := newConfig(t)
	text, err := json.Marshal(cfg)
	if err != nil || !strings.HasPrefix(string(text), `{"num_hidden_layers":2,`) || !strings.Contains(string(text), `"_kvdtype_str":"fp32"`) {
		t.Fatalf("%s %v", text, err)
	}
	raw, _ := cfg.MarshalJSON()
	if !strings.Contains(string(raw), `"num_hidden_layers": 2, `) {
		t.Fatalf("the reference's separators: %s", raw)
	}
	var back Config
	if err := json.Unmarshal(text, &back); err != nil || back.Record() != cfg.Record() || back.Validate() != nil {
		t.Fatal(err)
	}
	before := back.Record()
	err = back.UnmarshalJSON([]byte(`{"num_hidden_layers": "two"}`))
	wantStatus(t, err, ErrInvalidArgument, "num_hidden_layers")
	if back.Record() != before {
		t.Fatal("a refused JSON changed the config")
	}
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 3, []int32{1}}, {5, 1, []int32{2}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	// Decode first: request 1 is row 0. With BatchRequestOrder its token stays after request 0's.
	if f, n, ok := md.TokenRows(1); !ok || f != 0 || n != 1 {
		t.Fatalf("row order: request 1 at %d+%d", f, n)
	}
	mdr, err := BuildMetadata(cfg, []BatchRequest{{0, 3, []int32{1}}, {5, 1, []int32{2}}},
		&BatchOptions{Flags: BatchRequestOrder})
	if err != nil {
		t.Fatal(err)
	}
	defer mdr.Close()
	packed, err := PackRequests(mdr, [][]int{{1, 1, 1}, {2}}, 1)
	if f, n, ok := mdr.TokenRows(1); err != nil || !ok || f != 3 || n != 1 || !reflect.DeepEqual(packed, []int{1, 1, 1, 2}) {
		t.Fatalf("request order: request 1 at %d+%d, packed %v, %v", f, n, packed, err)
	}
	mtext, err := json.Marshal(md)
	if err != nil || !strings.Contains(string(mtext), `"context_lens":[6,3]`) {
		t.Fatalf("%s %v", mtext, err)
	}
	md2, err := MetadataFromJSON(mtext)
	if err != nil {
		t.Fatal(err)
	}
	defer md2.Close()
	a, _ := md.Arrays()
	b, _ := md2.Arrays()
	b.NumSlicesPerKVCacheUpdatePage = a.NumSlicesPerKVCacheUpdatePage // informational, not in the text
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("%+v\n%+v", a, b)
	}
	_, err = MetadataFromJSON([]byte(`{"context_lens": [1, "x"]}`))
	wantStatus(t, err, ErrInvalidArgument, "context_lens")
}

// bf16Config is a small bf16 cache config (the default dtype).
func bf16Config(t *testing.T) *Config {
	t.Helper()
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: 2, NumKVHeads: heads, MaxModelLength: 64, HeadDim: headDim,
		PageSize: page, BudgetBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// mixedBatch is 2 prefills and 3 decodes, interleaved so that the builder reorders them.
func mixedBatch() []BatchRequest {
	return []BatchRequest{
		{NumComputed: 0, NumScheduled: 5, PageIDs: []int32{1}},
		{NumComputed: 7, NumScheduled: 1, PageIDs: []int32{2}},
		{NumComputed: 0, NumScheduled: 20, PageIDs: []int32{3, 4}},
		{NumComputed: 16, NumScheduled: 1, PageIDs: []int32{5, 6}},
		{NumComputed: 2, NumScheduled: 1, PageIDs: []int32{7}},
	}
}

// perRequest are request i's keys: ±(i*32 + token + lane%4), the sign telling the heads apart;
// exact in bf16 (integers below 256 with at most 8 significant bits).
func perRequest(reqs []BatchRequest, sign float32) [][]float32 {
	out := make([][]float32, len(reqs))
	for i, r := range reqs {
		for tk := 0; tk < int(r.NumScheduled); tk++ {
			for e := 0; e < heads*headDim; e++ {
				out[i] = append(out[i], sign*float32((i*32+tk+e%4)*(1-2*(e/headDim))))
			}
		}
	}
	return out
}

func TestMixedBatchLandsWhereEachRequestSaysBF16(t *testing.T) {
	cfg := bf16Config(t)
	reqs := mixedBatch()
	md, err := BuildMetadata(cfg, reqs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if o := md.Order(); !reflect.DeepEqual(o, []int{1, 3, 4, 0, 2}) || md.NumTokens() != 28 {
		t.Fatalf("order %v, tokens %d", o, md.NumTokens())
	}
	if first, n, ok := md.TokenRows(2); !ok || first != 8 || n != 20 {
		t.Fatal(first, n, ok)
	}
	keys, values := perRequest(reqs, 1), perRequest(reqs, -1)
	a, _ := NewCache(cfg)
	defer a.Close()
	if err := ConcatenateRequests(a, 1, keys, values, md); err != nil {
		t.Fatal(err)
	}
	// Each request's token tk is at its position NumComputed+tk of its pages.
	kv, _ := a.View(1, ViewKeys)
	vv, _ := a.View(1, ViewValues)
	row := make([]float32, headDim)
	for i, r := range reqs {
		for tk := 0; tk < int(r.NumScheduled); tk++ {
			pos := int(r.NumComputed) + tk
			p := int64(r.PageIDs[pos/page])
			for h := 0; h < heads; h++ {
				want := keys[i][(tk*heads+h)*headDim : (tk*heads+h+1)*headDim]
				if err := kv.ReadF32(row, p, int64(pos%page), int64(h), 0); err != nil || !reflect.DeepEqual(row, want) {
					t.Fatalf("request %d token %d head %d: %v %v", i, tk, h, row[:4], err)
				}
				if x, ok := vv.F32(p, int64(pos%page), int64(h), 3); !ok || x != -want[3] {
					t.Fatalf("value of request %d token %d: %v", i, tk, x)
				}
			}
		}
	}
	// The same batch from bf16 bit patterns packed by hand with PackRequests writes the same
	// bytes (the C library converts f32 to bf16; bf16 input is copied as it is).
	b, _ := NewCache(cfg)
	defer b.Close()
	kb, vb := make([][]BF16, len(keys)), make([][]BF16, len(keys))
	for i := range keys {
		kb[i], vb[i] = FromFloat32[BF16](keys[i]), FromFloat32[BF16](values[i])
	}
	packedK, err := PackRequests(md, kb, heads*headDim)
	if err != nil {
		t.Fatal(err)
	}
	packedV, _ := PackRequests(md, vb, heads*headDim)
	if err := Concatenate(b, 1, packedK, packedV, [3]int{md.NumTokens(), heads, headDim}, md); err != nil {
		t.Fatal(err)
	}
	la, _ := a.ReadLayer(1)
	lb, _ := b.ReadLayer(1)
	if !bytes.Equal(la, lb) {
		t.Fatal("bf16 input and f32 input wrote different bytes")
	}
	bits := make([]BF16, headDim)
	kbv, _ := b.View(1, ViewKeys)
	if err := ReadView(kbv, bits, 3, 0, 1, 0); err != nil || !reflect.DeepEqual(bits, kb[2][(0*heads+1)*headDim:(0*heads+2)*headDim]) {
		t.Fatal("bf16 bits read back differ", err)
	}
	// Bad input: a request with the wrong token count is refused and nothing changes.
	keys[0] = keys[0][:len(keys[0])-1]
	err = ConcatenateRequests(a, 0, keys, values, md)
	wantStatus(t, err, ErrInvalidArgument, "request 0")
	if l0, _ := a.ReadLayer(0); bytes.Count(l0, []byte{0}) != len(l0) {
		t.Fatal("layer 0 changed")
	}
	err = ConcatenateRequests(a, 0, keys[:4], values[:4], md)
	wantStatus(t, err, ErrInvalidArgument, "4 per-request")
	other, _ := MetadataFromJSON(mustJSON(t, md))
	defer other.Close()
	_, err = PackRequests(other, kb, heads*headDim)
	wantStatus(t, err, ErrInvalidArgument, "row order")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestViewTypedWritesAndReads(t *testing.T) {
	for _, dt := range []Dtype{DtypeF32, DtypeF16, DtypeBF16, DtypeF8E4M3FN, DtypeF8E5M2} {
		cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: 1, NumKVHeads: heads, MaxModelLength: 64, HeadDim: headDim,
			PageSize: page, Dtype: dt, BudgetBytes: 1 << 20})
		if err != nil {
			t.Fatal(dt, err)
		}
		c, _ := NewCache(cfg)
		v, err := c.View(0, ViewValues)
		if err != nil || v.Dtype() != dt || v.Device() != CPU || len(v.Strides()) != 4 {
			t.Fatal(dt, err)
		}
		src := []float32{1, -2, 0.5, 3}
		if err := v.WriteF32(src, 1, 2, 1, 4); err != nil {
			t.Fatal(dt, err)
		}
		got := make([]float32, 4)
		if err := v.ReadF32(got, 1, 2, 1, 4); err != nil || !reflect.DeepEqual(got, src) {
			t.Fatal(dt, got, err)
		}
		if k, _ := c.View(0, ViewKeys); func() bool { x, _ := k.F32(1, 2, 1, 4); return x != 0 }() {
			t.Fatal(dt, "a value write reached the keys")
		}
		err = v.ReadF32(got, 1, 2, 1, headDim-3)
		wantStatus(t, err, ErrInvalidArgument, "outside shape")
		err = v.ReadF32(got, 1, 2, 1)
		wantStatus(t, err, ErrInvalidArgument, "3 indices")
		c.Close()
		wantStatus(t, v.ReadF32(got, 1, 2, 1, 4), ErrInvalidHandle)
	}
}

func TestMetadataArraysAndEmpty(t *testing.T) {
	cfg := newConfig(t)
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 3, []int32{1}}, {5, 1, []int32{2}}}, &BatchOptions{MaxNumReqs: 4, MaxNumTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	a, err := md.Arrays()
	if err != nil || a.NumReqs != 4 || len(a.PositionIDs) != 8 || !reflect.DeepEqual(a.RequestDistribution, []int32{1, 2, 2}) {
		t.Fatalf("%+v %v", a, err)
	}
	if qsl, _ := md.Array(MetadataQueryStartLoc); !reflect.DeepEqual(qsl, []int32{0, 1, 4, 4, 4}) {
		t.Fatal(qsl)
	}
	// A borrowed-array handle over the same arrays writes the same bytes.
	own, err := NewMetadata(a)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	c1, _ := NewCache(cfg)
	defer c1.Close()
	c2, _ := NewCache(cfg)
	defer c2.Close()
	key := make([]float32, 4*heads*headDim)
	for i := range key {
		key[i] = float32(i)
	}
	if err := c1.Concatenate(0, key, key, [3]int{4, heads, headDim}, md); err != nil {
		t.Fatal(err)
	}
	if err := c2.Concatenate(0, key, key, [3]int{4, heads, headDim}, own); err != nil {
		t.Fatal(err)
	}
	l1, _ := c1.ReadLayer(0)
	l2, _ := c2.ReadLayer(0)
	if !bytes.Equal(l1, l2) {
		t.Fatal("NewMetadata wrote other bytes")
	}
	_, err = BuildMetadata(cfg, []BatchRequest{{0, 3, []int32{1}}}, &BatchOptions{Flags: 1 << 9})
	wantStatus(t, err, ErrUnsupported)
	keep, err := BuildMetadata(cfg, []BatchRequest{{5, 1, []int32{2}}, {0, 3, []int32{1}}}, &BatchOptions{Flags: BatchKeepOrder})
	if err != nil || !reflect.DeepEqual(keep.Order(), []int{0, 1}) {
		t.Fatal(err)
	}
	keep.Close()
	empty, err := NewEmptyMetadata(LayoutV3, 4, 2, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if err := c2.Concatenate(0, make([]float32, 4*heads*headDim), key, [3]int{4, heads, headDim}, empty); err != nil {
		t.Fatal(err)
	}
	if l, _ := c2.ReadLayer(0); !bytes.Equal(l, l1) {
		t.Fatal("empty metadata wrote")
	}
	_, err = NewMetadata(MetadataArrays{ContextLens: []int32{1}, NumReqs: 2})
	wantStatus(t, err, ErrInvalidArgument)
}

// written is a small f32 cache with a batch written into layer 1.
func written(t *testing.T) (*Config, *Cache) {
	t.Helper()
	cfg := newConfig(t)
	c, _ := NewCache(cfg)
	md, _, _ := writeBatch(t, c, cfg)
	md.Close()
	return cfg, c
}

func sameLayers(t *testing.T, a, b *Cache) {
	t.Helper()
	for l := uint32(0); l < 2; l++ {
		x, _ := a.ReadLayer(l)
		y, err := b.ReadLayer(l)
		if err != nil || !bytes.Equal(x, y) {
			t.Fatalf("layer %d differs (%v)", l, err)
		}
	}
}

func TestSerializeWholeAndSelectedPages(t *testing.T) {
	_, c := written(t)
	defer c.Close()
	whole, err := c.Serialize(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := c.SerializedSize(nil); n != len(whole) {
		t.Fatal(n, len(whole))
	}
	info, err := Inspect(whole, true)
	if err != nil || info.NumStoredPages != uint64(c.mustConfig(t).NumPages()) || info.TotalBytes != uint64(len(whole)) ||
		info.Config.Record() != c.mustConfig(t).Record() {
		t.Fatalf("%+v %v", info, err)
	}
	back, err := Deserialize(whole, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	sameLayers(t, c, back)

	sel := &SaveOptions{PageIDs: []int32{2, 1}, ChunkBytes: 4096}
	part, err := c.Serialize(sel)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := Inspect(part, true); info.NumStoredPages != 2 || info.FirstPageID != 2 || info.ChunkBytes != 4096 {
		t.Fatalf("%+v", info)
	}
	none, _ := c.Serialize(&SaveOptions{PageIDs: []int32{}})
	if info, _ := Inspect(none, true); info.NumStoredPages != 0 {
		t.Fatalf("%+v", info)
	}
	// Into a fresh cache: the selected pages only, then at other ids.
	fresh, _ := NewCache(c.mustConfig(t))
	defer fresh.Close()
	if err := fresh.DeserializeInto(part, nil); err != nil {
		t.Fatal(err)
	}
	sameLayers(t, c, fresh)
	if err := fresh.DeserializeInto(part, []int32{4, 3}); err != nil { // the blob holds pages 2, 1
		t.Fatal(err)
	}
	kv, _ := fresh.View(1, ViewKeys)
	if x, _ := kv.F32(4, 5, 1, 7); x != token(0, 1, 7) {
		t.Fatal("page 2 did not land on page 4", x)
	}
	if x, _ := kv.F32(3, 2, 1, 7); x != token(3, 1, 7) {
		t.Fatal("page 1 did not land on page 3", x)
	}
	// Corrupt input: refused with the format error, target unchanged.
	before, _ := fresh.ReadLayer(1)
	bad := append([]byte(nil), part...)
	bad[len(bad)-10] ^= 1
	wantStatus(t, fresh.DeserializeInto(bad, nil), ErrFormatChecksum)
	_, err = Deserialize(bad[:len(bad)-1], nil)
	wantStatus(t, err, ErrFormatTruncated)
	_, err = Inspect([]byte("not a blob at all, definitely not"), false)
	wantStatus(t, err, ErrFormatMagic)
	if after, _ := fresh.ReadLayer(1); !bytes.Equal(before, after) {
		t.Fatal("a refused load changed the cache")
	}
	_, err = c.Serialize(&SaveOptions{PageIDs: []int32{1, 1}})
	wantStatus(t, err, ErrInvalidArgument)
	_, err = Deserialize(whole, &LoadOptions{MaxCacheBytes: 1024})
	wantStatus(t, err, ErrFormatMismatch)
}

func (c *Cache) mustConfig(t *testing.T) *Config {
	t.Helper()
	cfg, err := c.Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestSaveLoadFilesAndStreams(t *testing.T) {
	_, c := written(t)
	defer c.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.kvp")
	sel := &SaveOptions{PageIDs: []int32{1, 2}}
	if err := c.SaveFile(path, sel); err != nil {
		t.Fatal(err)
	}
	if info, err := InspectFile(path, true); err != nil || info.NumStoredPages != 2 {
		t.Fatal(info, err)
	}
	fromFile, err := LoadFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fromFile.Close()
	sameLayers(t, c, fromFile)
	into, _ := NewCache(c.mustConfig(t))
	defer into.Close()
	if err := into.LoadFileInto(path, nil); err != nil {
		t.Fatal(err)
	}
	sameLayers(t, c, into)
	_, err = LoadFile(filepath.Join(dir, "missing"), nil)
	wantStatus(t, err, ErrIO)

	var buf bytes.Buffer
	if err := c.Save(context.Background(), &buf, sel); err != nil {
		t.Fatal(err)
	}
	blob, _ := c.Serialize(sel)
	if !bytes.Equal(buf.Bytes(), blob) {
		t.Fatal("Save and Serialize differ")
	}
	buf.WriteString("trailing data stays in the stream")
	loaded, err := Load(context.Background(), iotestOneByte{&buf}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer loaded.Close()
	sameLayers(t, c, loaded)
	if rest, _ := io.ReadAll(&buf); string(rest) != "trailing data stays in the stream" {
		t.Fatalf("Load read past the blob: %q", rest)
	}
	target, _ := NewCache(c.mustConfig(t))
	defer target.Close()
	if err := target.LoadInto(context.Background(), bytes.NewReader(blob), nil); err != nil {
		t.Fatal(err)
	}
	sameLayers(t, c, target)
}

// iotestOneByte reads one byte at a time (a slow stream; Load must not over-read).
type iotestOneByte struct{ r io.Reader }

func (o iotestOneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

// cancelAfter cancels its context after n reads or writes.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
	r      io.Reader
	w      io.Writer
}

func (c *cancelAfter) tick() {
	if c.n--; c.n == 0 {
		c.cancel()
	}
}

func (c *cancelAfter) Write(p []byte) (int, error) { c.tick(); return c.w.Write(p) }
func (c *cancelAfter) Read(p []byte) (int, error)  { c.tick(); return c.r.Read(p) }

type failingWriter struct{}

var errDiskFull = errors.New("disk full")

func (failingWriter) Write([]byte) (int, error) { return 0, errDiskFull }

func TestSaveLoadHonourTheContext(t *testing.T) {
	_, c := written(t)
	defer c.Close()
	small := &SaveOptions{ChunkBytes: 4096}
	blob, _ := c.Serialize(small)

	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	err := c.Save(ctx, &cancelAfter{n: 2, cancel: cancel, w: &out}, small)
	if !errors.Is(err, context.Canceled) || out.Len() == 0 || out.Len() >= len(blob) {
		t.Fatalf("save: %v after %d of %d bytes", err, out.Len(), len(blob))
	}
	if err := c.Save(ctx, &out, nil); err != context.Canceled {
		t.Fatal("a done context must stop Save before it starts:", err)
	}
	if err := c.Save(context.Background(), failingWriter{}, nil); err != errDiskFull {
		t.Fatal("the writer's error must come back as it is:", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	got, err := Load(ctx, &cancelAfter{n: 3, cancel: cancel, r: bytes.NewReader(blob)}, nil)
	if got != nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("load: %v %v", got, err)
	}
	target, _ := NewCache(c.mustConfig(t))
	defer target.Close()
	ctx, cancel = context.WithCancel(context.Background())
	err = target.LoadInto(ctx, &cancelAfter{n: 5, cancel: cancel, r: bytes.NewReader(blob)}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if l, _ := target.ReadLayer(1); bytes.Count(l, []byte{0}) != len(l) {
		t.Fatal("a cancelled load changed the cache")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 0)
	defer cancel()
	if _, err := Load(ctx, bytes.NewReader(blob), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}

func TestDLPackExport(t *testing.T) {
	cfg := bf16Config(t)
	c, _ := NewCache(cfg)
	defer c.Close()
	v, _ := c.View(1, ViewKeys)
	x, err := c.ExportDLPack(1, ViewKeys)
	if err != nil {
		t.Fatal(err)
	}
	code, bits, lanes := x.DataType()
	if !reflect.DeepEqual(x.Shape(), v.Shape()) || !reflect.DeepEqual(x.Strides(), v.Strides()) || code != 4 || bits != 16 ||
		lanes != 1 || x.Device() != CPU || x.Data() != uintptr(v.t.data) || x.Pointer() == nil {
		t.Fatalf("%v %v %d/%d/%d %v", x.Shape(), x.Strides(), code, bits, lanes, x.Device())
	}
	x.Release()
	x.Release() // a no-op
	if x.Pointer() != nil || x.Shape() != nil {
		t.Fatal("released tensor still answers")
	}
	y, _ := c.ExportDLPack(0, ViewPages)
	p := y.Detach()
	if p == nil || y.Pointer() != nil {
		t.Fatal("detach")
	}
	// The consumer owns p now; this test is its consumer.
	AdoptDLPack(p).Release()
	_, err = c.ExportDLPack(2, ViewKeys)
	wantStatus(t, err, ErrInvalidArgument, "layer")
}

func TestHandleInteropAndMisuse(t *testing.T) {
	cfg := newConfig(t)
	c, _ := NewCache(cfg)
	// Hand the C handle over as C code would own it, then adopt it.
	raw := c.Handle()
	c.p = nil
	runtime.SetFinalizer(c, nil)
	adopted, err := FromHandle(raw)
	if err != nil || adopted.Handle() != raw {
		t.Fatal(err)
	}
	if cfg2, err := adopted.Config(); err != nil || cfg2.Record() != cfg.Record() {
		t.Fatal(err)
	}
	var seen []string
	SetMisuseHandler(func(what string) { seen = append(seen, what) })
	defer SetMisuseHandler(nil)
	adopted.Close()
	_, err = FromHandle(raw) // destroyed: refused, reported to the misuse handler
	wantStatus(t, err, ErrInvalidHandle)
	if len(seen) == 0 {
		t.Fatal("misuse handler not called")
	}
	var local int64
	_, err = FromHandle(unsafe.Pointer(&local))
	wantStatus(t, err, ErrInvalidHandle)
	md, _ := BuildMetadata(cfg, []BatchRequest{{0, 1, []int32{1}}}, nil)
	_, err = FromHandle(md.Handle()) // a metadata handle is not a cache
	wantStatus(t, err, ErrInvalidHandle)
	mraw := md.Handle()
	md.p = nil
	runtime.SetFinalizer(md, nil)
	m2, err := MetadataFromHandle(mraw)
	if err != nil || m2.Order() != nil {
		t.Fatal(err)
	}
	m2.Close()
	if c.Handle() != nil {
		t.Fatal("closed cache has a handle")
	}
}

func TestAsyncErrorOnCPU(t *testing.T) {
	c, _ := NewCache(newConfig(t))
	if err := c.AsyncError(); err != nil {
		t.Fatal(err)
	}
	if err := c.ClearAsyncError(); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Device(); err != nil || d != CPU {
		t.Fatal(d, err)
	}
	c.Close()
	wantStatus(t, c.AsyncError(), ErrInvalidHandle)
	wantStatus(t, c.ClearAsyncError(), ErrInvalidHandle)
}

func TestDeviceConcatenateNeedsACudaCache(t *testing.T) {
	cfg := newConfig(t)
	c, _ := NewCache(cfg)
	defer c.Close()
	md, _ := BuildMetadata(cfg, []BatchRequest{{0, 1, []int32{1}}}, nil)
	defer md.Close()
	k := DeviceTensor{Ptr: 4096, Dtype: DtypeF32, Shape: [3]int64{1, heads, headDim}, Device: CUDA(0)}
	err := c.ConcatenateDevice(0, k, k, md, 0)
	wantStatus(t, err, ErrInvalidArgument)
	if l, _ := c.ReadLayer(0); bytes.Count(l, []byte{0}) != len(l) {
		t.Fatal("changed")
	}
	v := k
	v.Shape[0] = 2
	wantStatus(t, c.ConcatenateDevice(0, k, v, md, 0), ErrInvalidArgument, "differ")
}
