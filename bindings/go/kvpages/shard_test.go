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
