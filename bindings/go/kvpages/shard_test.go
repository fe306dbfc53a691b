package kvpages

import (
	"bytes"
	"path/filepath"
	"testing"
)

// Shards (since 1.4): the four shards of a TP 2 x DP 2 config hold their slices of the whole
// cache after the same batch; their blobs (in memory and in files) load into a new whole cache
// byte for byte; an incomplete set and a rank out of range fail with the library's message and
// change nothing.

const shardHeads = 4

func shardedConfig(t *testing.T) *Config {
	t.Helper()
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: 2, NumKVHeads: shardHeads, MaxModelLength: 64,
		HeadDim: headDim, PageSize: page, Dtype: DtypeBF16, KVHeadShards: 2, DataParallelSize: 2,
		BudgetBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// sliceOf is what a shard should hold of a whole cache's layer: its pages and, of every row,
// its combined entries (the layer is [page][row][combined entry][storage head dim]).
func sliceOf(whole []byte, wl LayoutInfo, si ShardInfo) []byte {
	rows, entries := wl.Shape[1], wl.StorageNumCombinedKVHeads
	entry := wl.StorageHeadDim * wl.Itemsize
	var out []byte
	for p := si.PageBegin; p < si.PageEnd; p++ {
		for r := int64(0); r < rows; r++ {
			at := ((p*rows+r)*entries + si.SlotBegin) * entry
			out = append(out, whole[at:at+(si.SlotEnd-si.SlotBegin)*entry]...)
		}
	}
	return out
}

func layers(t *testing.T, c *Cache) [][]byte {
	t.Helper()
	var out [][]byte
	for l := uint32(0); l < 2; l++ {
		b, err := c.ReadLayer(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestShardsHoldTheirSlicesAndTheirBlobsReshardIntoAWholeCache(t *testing.T) {
	cfg := shardedConfig(t)
	whole, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Close()
	if si, err := whole.Shard(); err != nil || si.TPSize != 1 || si.DPSize != 1 || si.PageEnd != cfg.NumPages() {
		t.Fatalf("whole cache's shard info %+v, %v", si, err)
	}
	var shards []*Cache
	for tp := int32(0); tp < 2; tp++ {
		for dp := int32(0); dp < 2; dp++ {
			s, err := NewShard(cfg, tp, dp)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got, err := s.Shard()
			want, err2 := cfg.Shard(tp, dp)
			if err != nil || err2 != nil || got != want || got.TPRank != tp || got.TPSize != 2 || got.DPRank != dp ||
				got.DPSize != 2 || got.HeadBegin != int64(2*tp) || got.HeadEnd != int64(2*tp+2) ||
				got.GlobalPages != cfg.NumPages() {
				t.Fatalf("shard (%d, %d): %+v, config says %+v (%v, %v)", tp, dp, got, want, err, err2)
			}
			shards = append(shards, s)
		}
	}

	// A prefill on data rank 0's pages 1-2 and one on data rank 1's second page, full K/V.
	rank1, err := cfg.Shard(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 20, []int32{1, 2}}, {0, 5, []int32{int32(rank1.PageBegin) + 1}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	const tokens = 25
	key, value := make([]float32, tokens*shardHeads*headDim), make([]float32, tokens*shardHeads*headDim)
	for i := range key {
		key[i] = float32(i%251)/8 - 15
		value[i] = -key[i]
	}
	for l := uint32(0); l < 2; l++ {
		for _, c := range append([]*Cache{whole}, shards...) {
			if err := c.Concatenate(l, key, value, [3]int{tokens, shardHeads, headDim}, md); err != nil {
				t.Fatal(err)
			}
		}
	}
	wl, err := whole.LayoutInfo()
	if err != nil {
		t.Fatal(err)
	}
	want := layers(t, whole)
	for l, w := range want {
		if bytes.Count(w, []byte{0}) == len(w) {
			t.Fatal("the batch wrote nothing")
		}
		for _, s := range shards {
			si, _ := s.Shard()
			if !bytes.Equal(layers(t, s)[l], sliceOf(w, wl, si)) {
				t.Fatalf("shard %+v, layer %d: not its slice of the whole cache", si, l)
			}
		}
	}

	// Two blobs in memory, two in files; each says which slice it holds.
	var set []Blob
	dir := t.TempDir()
	for i, s := range shards {
		blob, err := s.Serialize(nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := Inspect(blob, true)
		si, _ := s.Shard()
		if err != nil || info.Shard != si || info.Flags&FormatFlagShard == 0 {
			t.Fatalf("blob of shard %+v: %+v, %v", si, info, err)
		}
		if i < 2 {
			set = append(set, Blob{Data: blob})
			continue
		}
		path := filepath.Join(dir, "shard.kvps"+string(rune('0'+i)))
		if err := s.SaveFile(path, nil); err != nil {
			t.Fatal(err)
		}
		set = append(set, Blob{Path: path})
	}
	copied, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer copied.Close()
	if err := copied.LoadShards(set); err != nil {
		t.Fatal(err)
	}
	for l, got := range layers(t, copied) {
		if !bytes.Equal(got, want[l]) {
			t.Fatalf("layer %d of the re-sharded copy differs from the whole cache", l)
		}
	}

	// Without tensor rank 1's blobs the set does not cover the whole cache: nothing is written.
	target, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	wantStatus(t, target.LoadShards(set[:2]), ErrFormatMismatch, "kvp_deserialize_shards_into")
	for _, l := range layers(t, target) {
		if bytes.Count(l, []byte{0}) != len(l) {
			t.Fatal("a rejected set wrote to the cache")
		}
	}
}

func TestShardRankOutOfRange(t *testing.T) {
	cfg := shardedConfig(t)
	_, err := NewShard(cfg, 2, 0)
	wantStatus(t, err, ErrInvalidArgument, "tp_rank 2 is out of range [0, 2)")
	_, err = cfg.Shard(0, -1)
	wantStatus(t, err, ErrInvalidArgument, "dp_rank -1 is out of range [0, 2)")
}

// A cache group's shards, written with one call, hold the same slices as a whole cache given
// the same batch; they are borrowed (their Close leaves them in the group, the group's Close
// closes them) and a bad shard tensor is refused by name with no shard changed.
func TestCacheGroupShardsHoldTheirSlices(t *testing.T) {
	cfg := shardedConfig(t)
	g, err := NewCacheGroup(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if n, err := g.NumShards(); err != nil || n != 4 {
		t.Fatalf("NumShards: %d, %v", n, err)
	}
	whole, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Close()
	rank1, err := cfg.Shard(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	md, err := BuildMetadata(cfg, []BatchRequest{{0, 20, []int32{1, 2}}, {0, 5, []int32{int32(rank1.PageBegin) + 1}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	const tokens = 25
	shape := [3]int{tokens, shardHeads, headDim}
	key, value := make([]float32, tokens*shardHeads*headDim), make([]float32, tokens*shardHeads*headDim)
	for i := range key {
		key[i] = float32(i%241)/8 - 14
		value[i] = key[i] / 2
	}
	keys, values, shapes := [][]float32{key, key, key, key}, [][]float32{value, value, value, value}, [][3]int{shape, shape, shape, shape}
	for l := uint32(0); l < 2; l++ {
		if err := whole.Concatenate(l, key, value, shape, md); err != nil {
			t.Fatal(err)
		}
		if err := g.Concatenate(l, keys, values, shapes, md); err != nil {
			t.Fatal(err)
		}
	}
	wl, err := whole.LayoutInfo()
	if err != nil {
		t.Fatal(err)
	}
	want := layers(t, whole)
	if bytes.Count(want[0], []byte{0}) == len(want[0]) {
		t.Fatal("the batch wrote nothing")
	}
	holdsItsSlice := func(s *Cache) {
		t.Helper()
		si, err := s.Shard()
		if err != nil {
			t.Fatal(err)
		}
		for l, got := range layers(t, s) {
			if !bytes.Equal(got, sliceOf(want[l], wl, si)) {
				t.Fatalf("group shard %+v, layer %d: not its slice of the whole cache", si, l)
			}
		}
	}
	var shards []*Cache
	for tp := int32(0); tp < 2; tp++ {
		for dp := int32(0); dp < 2; dp++ {
			s, err := g.Shard(tp, dp)
			if err != nil {
				t.Fatal(err)
			}
			if si, _ := s.Shard(); si.TPRank != tp || si.DPRank != dp {
				t.Fatalf("Shard(%d, %d) is %+v", tp, dp, si)
			}
			holdsItsSlice(s)
			shards = append(shards, s)
		}
	}
	// A borrowed shard's Close only detaches it: the group still holds the shard.
	if same, _ := g.Shard(0, 0); same != shards[0] {
		t.Fatal("Shard(0, 0) twice gave two Caches")
	}
	if err := shards[0].Close(); err != nil {
		t.Fatal(err)
	}
	again, err := g.Shard(0, 0)
	if err != nil || again == shards[0] {
		t.Fatalf("Shard(0, 0) after Close: %v", err)
	}
	holdsItsSlice(again)

	// Shard 3's tensors with 3 heads (neither all 4 nor its own 2): refused, naming the shard.
	bad := make([]float32, tokens*3*headDim)
	badShapes := [][3]int{shape, shape, shape, {tokens, 3, headDim}}
	err = g.Concatenate(0, [][]float32{key, key, key, bad}, [][]float32{key, key, key, bad}, badShapes, md)
	wantStatus(t, err, ErrInvalidArgument, "shard 3 (tp 1, dp 1)")
	holdsItsSlice(again)
	_, err = g.Shard(2, 0)
	wantStatus(t, err, ErrInvalidArgument, "tp_rank 2 is out of range [0, 2)")

	// The group destroys every shard once and closes the Caches it handed out.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = again.ReadLayer(0)
	wantStatus(t, err, ErrInvalidHandle, "closed")
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = g.NumShards()
	wantStatus(t, err, ErrInvalidHandle, "closed")
}
