package kvpages

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var k1, k2, k3 = StoreKey{1}, StoreKey{2}, StoreKey{3}

func TestMemoryStoreRoundTripAndStats(t *testing.T) {
	s, err := NewMemoryStore(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(k1, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(k2, bytes.Repeat([]byte{7}, 100)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(k1); err != nil || string(got) != "hello" {
		t.Fatalf("Get(k1) = %q, %v", got, err)
	}
	if got, err := s.Get(k2); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{7}, 100)) {
		t.Fatalf("Get(k2) = %v, %v", got, err)
	}
	if found, err := s.Exists([]StoreKey{k1, k3, k2}); err != nil || !reflect.DeepEqual(found, []bool{true, false, true}) {
		t.Fatalf("Exists = %v, %v", found, err)
	}
	if err := s.Remove(k1); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.Remove(k1), ErrNotFound, "KVP_ERR_NOT_FOUND")
	if _, err := s.Get(k1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a removed key: %v", err)
	}
	st, err := s.Stats()
	want := StoreStats{Blocks: 1, Bytes: 100, MaxBytes: 1 << 20, Puts: 2, Hits: 2, Misses: 1}
	if err != nil || st != want {
		t.Fatalf("Stats = %+v, %v; want %+v", st, err, want)
	}
	if r, err := s.Scrub(); err != nil || r != (ScrubReport{BlocksChecked: 1}) {
		t.Fatalf("Scrub = %+v, %v", r, err)
	}
}

func TestDirectoryStoreSurvivesCloseAndReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "blocks")
	s, err := OpenDirectoryStore(dir, 1<<20, StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(k1, []byte("first block")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(k2, []byte("second block")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(dir, hex.EncodeToString(k2[:])+".kvpb")
	s, err = OpenDirectoryStore(dir, 1<<20, StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st, _ := s.Stats(); st.Blocks != 2 {
		t.Fatalf("reopened store holds %d blocks, want 2", st.Blocks)
	}
	if got, err := s.Get(k1); err != nil || string(got) != "first block" {
		t.Fatalf("Get(k1) after reopen = %q, %v", got, err)
	}
	raw, err := os.ReadFile(second)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 0xFF
	if err := os.WriteFile(second, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := s.Scrub()
	if err != nil || r != (ScrubReport{BlocksChecked: 2, BlocksDamaged: 1, BytesFreed: int64(len(raw))}) {
		t.Fatalf("Scrub = %+v, %v", r, err)
	}
	if found, _ := s.Exists([]StoreKey{k1, k2}); !reflect.DeepEqual(found, []bool{true, false}) {
		t.Fatalf("Exists after scrub = %v", found)
	}
}

func tierPrompt(base int32, n int) []int32 {
	toks := make([]int32, n)
	for i := range toks {
		toks[i] = base + int32(i)
	}
	return toks
}

func TestPoolMemoryTierRestoresEvictedPrefixPages(t *testing.T) {
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: poolLayers, NumKVHeads: heads, MaxModelLength: maxLen,
		HeadDim: headDim, PageSize: page, Dtype: DtypeF32, BudgetBytes: 8 * poolLayers * page * 2 * heads * headDim * 4})
	if err != nil {
		t.Fatal(err)
	}
	store, err := NewMemoryStore(1 << 24)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cache, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	p, err := NewPool(cache, PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.AddStore(store); err != nil {
		t.Fatal(err)
	}
	run := func(toks []int32) SeqID { // 7 usable pages: a prompt of n tokens holds ceil(n/16)
		seq, _, err := p.AddSequence(toks, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		writePending(t, p, cfg, []pending{{seq, toks}})
		return seq
	}
	promptA := tierPrompt(1000, 40)                      // 2 full pages and a partial one
	if err := p.FreeSequence(run(promptA)); err != nil { // its 2 full pages stay cached
		t.Fatal(err)
	}
	run(tierPrompt(5000, 64))      // 4 pages
	c := run(tierPrompt(7000, 48)) // 3 pages: 1 free, A's 2 evicted to the tier
	st, err := p.TierStats(0)
	if err != nil || st.NumTiers != 1 || st.BlocksWritten != 2 || st.Hits != 0 || st.Errors != 0 {
		t.Fatalf("after the evictions: %+v, %v", st, err)
	}
	if ss, _ := store.Stats(); ss.Blocks != 2 {
		t.Fatalf("store holds %d blocks, want 2", ss.Blocks)
	}
	if err := p.FreeSequence(c); err != nil {
		t.Fatal(err)
	}
	a, reused, err := p.AddSequence(promptA, 0, false) // the same prompt: its prefix comes from the tier
	if err != nil || reused != 32 {
		t.Fatalf("AddSequence(A again) reused %d, %v; want 32", reused, err)
	}
	st, _ = p.TierStats(0)
	if st.Hits != 2 || st.RestoredTokens != 32 || st.Rejected != 0 || st.BytesRead == 0 || st.Lookups != st.Hits+st.Misses {
		t.Fatalf("after the restore: %+v", st)
	}
	checkTokens(t, p, a, promptA, 0, 32) // the bytes computed the first time
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	checkEvictedBlocks(t, store)
	_, err = p.TierStats(1)
	if e := wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT"); !strings.Contains(e.Message, "tier") {
		t.Fatalf("message %q does not name the tier", e.Message)
	}
	wantErr(t, p.AddStore(store), ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT") // already a tier
	if st, _ := p.TierStats(0); st.NumTiers != 1 {
		t.Fatalf("a failed AddStore changed the tiers: %+v", st)
	}
}

// checkEvictedBlocks lists the store's blocks and inspects each (since 1.5): a pool's evicted
// pages of one config, chained, their checksums whole; a damaged or cut block is refused or flagged.
func checkEvictedBlocks(t *testing.T, store *Store) {
	keys, err := store.List()
	ss, _ := store.Stats()
	if err != nil || len(keys) < 2 || int64(len(keys)) != ss.Blocks {
		t.Fatalf("List = %d keys, %v; the store holds %d", len(keys), err, ss.Blocks)
	}
	chained := false
	var first BlockInfo
	for i, k := range keys {
		block, err := store.Get(k)
		if err != nil {
			t.Fatal(err)
		}
		info, err := InspectBlock(block)
		if err != nil || info.Key != k || info.FormatVersion != 1 || info.PageSize != page || info.NumLayers != poolLayers ||
			info.Salt != 0 || !info.ChecksumOK || info.BlockBytes != uint64(len(block)) {
			t.Fatalf("InspectBlock(%x) = %+v, %v", k, info, err)
		}
		if i == 0 {
			first = info
		} else if info.Fingerprint != first.Fingerprint {
			t.Fatalf("two configs in one pool's blocks: %x, %x", info.Fingerprint, first.Fingerprint)
		}
		for _, other := range keys {
			chained = chained || info.Parent == other
		}
		if i == 0 {
			block[len(block)-20] ^= 1
			if info, err := InspectBlock(block); err != nil || info.ChecksumOK {
				t.Fatalf("a flipped bit: %+v, %v", info, err)
			}
			_, err = InspectBlock(block[:len(block)-1])
			wantErr(t, err, ErrFormatTruncated, "KVP_ERR_FORMAT_TRUNCATED")
		}
	}
	if !chained {
		t.Fatal("no block's parent is another block (A's second page follows its first)")
	}
	_, err = InspectBlock([]byte("not a block"))
	if e := wantErr(t, err, ErrFormatMagic, "KVP_ERR_FORMAT_MAGIC"); !strings.Contains(e.Message, "KVPB") {
		t.Fatalf("message %q", e.Message)
	}
}

func TestListEveryStore(t *testing.T) {
	mem, err := NewMemoryStore(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	dir, err := OpenDirectoryStore(filepath.Join(t.TempDir(), "d"), 1<<20, StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, s := range []*Store{mem, dir} {
		if keys, err := s.List(); err != nil || len(keys) != 0 {
			t.Fatalf("List of an empty store = %v, %v", keys, err)
		}
		want := map[StoreKey]bool{}
		for i := 0; i < 300; i++ { // more than one page of 256
			k := StoreKey{byte(i), byte(i >> 8), 7}
			want[k] = true
			if err := s.Put(k, []byte{1}); err != nil {
				t.Fatal(err)
			}
		}
		keys, err := s.List()
		if err != nil || len(keys) != len(want) {
			t.Fatalf("List = %d keys, %v; want %d", len(keys), err, len(want))
		}
		for _, k := range keys {
			if !want[k] {
				t.Fatalf("List returned %x twice or never put", k)
			}
			delete(want, k)
		}
	}
	mem.Close()
	_, err = mem.List()
	wantErr(t, err, ErrInvalidHandle, "KVP_ERR_INVALID_HANDLE")
}

func TestPoolDirectoryTierWritesAsynchronouslyAndFlushes(t *testing.T) {
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: poolLayers, NumKVHeads: heads, MaxModelLength: maxLen,
		HeadDim: headDim, PageSize: page, Dtype: DtypeF32, BudgetBytes: 8 * poolLayers * page * 2 * heads * headDim * 4})
	if err != nil {
		t.Fatal(err)
	}
	store, err := OpenDirectoryStore(t.TempDir(), 1<<24, StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	promptA := tierPrompt(1000, 40) // 2 full pages and a partial one
	newPool := func(o PoolOptions) (*Cache, *Pool) {
		cache, err := NewCache(cfg)
		if err != nil {
			t.Fatal(err)
		}
		p, err := NewPool(cache, o)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.AddStore(store); err != nil {
			t.Fatal(err)
		}
		return cache, p
	}
	cache, p := newPool(PoolOptions{WriteQueueBytes: 1 << 20})
	seq, _, err := p.AddSequence(promptA, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	writePending(t, p, cfg, []pending{{seq, promptA}})
	if err := p.FlushTiers(false); err != nil { // nothing queued: the cached pages stay unwritten
		t.Fatal(err)
	}
	if st, _ := p.TierStats(0); st.BlocksWritten != 0 {
		t.Fatalf("FlushTiers(false) wrote cached pages: %+v", st)
	}
	for i := 0; i < 2; i++ { // the second flush finds them held by tier 0: nothing rewritten
		if err := p.FlushTiers(true); err != nil {
			t.Fatal(err)
		}
		if st, _ := p.TierStats(0); st.BlocksWritten != 2 || st.Errors != 0 || st.Dropped != 0 {
			t.Fatalf("FlushTiers(true) #%d: %+v", i, st)
		}
	}
	if ss, _ := store.Stats(); ss.Puts != 2 {
		t.Fatalf("store got %d puts, want 2", ss.Puts)
	}
	p.Close()
	cache.Close()
	cache, p = newPool(PoolOptions{}) // as after a restart: the prefix comes back from disk
	defer cache.Close()
	defer p.Close()
	a, reused, err := p.AddSequence(promptA, 0, false)
	if err != nil || reused != 32 {
		t.Fatalf("AddSequence(A) in a fresh pool reused %d, %v; want 32", reused, err)
	}
	checkTokens(t, p, a, promptA, 0, 32)
}

func TestStoreBadInputChangesNothing(t *testing.T) {
	_, err := NewMemoryStore(0)
	wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")
	_, err = OpenDirectoryStore(filepath.Join(t.TempDir(), "missing", "blocks"), 1<<20, StoreOptions{})
	if e := wantErr(t, err, ErrIO, "KVP_ERR_IO"); !strings.Contains(e.Message, "missing") {
		t.Fatalf("message %q does not name the path", e.Message)
	}
	s, err := NewMemoryStore(64)
	if err != nil {
		t.Fatal(err)
	}
	e := wantErr(t, s.Put(k1, make([]byte, 65)), ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")
	if !strings.Contains(e.Message, "65") || !strings.Contains(e.Message, "64") {
		t.Fatalf("message %q does not give the sizes", e.Message)
	}
	if st, _ := s.Stats(); st.Blocks != 0 || st.Puts != 0 {
		t.Fatalf("a refused put changed the store: %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.Put(k1, nil), ErrInvalidHandle, "KVP_ERR_INVALID_HANDLE")
}

// Without a server: a bad URL and a refused connection (ErrUnsupported in a build without
// Redis); with one (KVP_TEST_REDIS_URL, scripts/with-redis.sh), a round trip.
func TestRedisStoreBadURLRefusedServerAndRoundTrip(t *testing.T) {
	if !strings.Contains(BuildInfo(), "redis=on") {
		_, err := OpenRedisStore("redis://127.0.0.1:6379", StoreOptions{})
		wantErr(t, err, ErrUnsupported, "KVP_ERR_UNSUPPORTED")
		return
	}
	_, err := OpenRedisStore("redis://no-port", StoreOptions{})
	if e := wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT"); !strings.Contains(e.Message, "Redis URL") {
		t.Fatalf("message %q", e.Message)
	}
	_, err = OpenRedisStore("redis://127.0.0.1:1", StoreOptions{TimeoutMs: 200})
	if e := wantErr(t, err, ErrIO, "KVP_ERR_IO"); !strings.Contains(e.Message, "127.0.0.1:1") {
		t.Fatalf("message %q does not name the server", e.Message)
	}
	url := os.Getenv("KVP_TEST_REDIS_URL")
	if url == "" {
		t.Skip("KVP_TEST_REDIS_URL not set (scripts/with-redis.sh starts a server)")
	}
	s, err := OpenRedisStore(url+"?prefix=go:", StoreOptions{TimeoutMs: 500})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(k1, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(k1)
	if err != nil || string(got) != "abc" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	if st, _ := s.Stats(); st.Blocks != -1 || st.Puts != 1 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Remove(k1); err != nil {
		t.Fatal(err)
	}
}

func TestSavedSequenceRestoresIntoAnotherPool(t *testing.T) {
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: poolLayers, NumKVHeads: heads, MaxModelLength: maxLen,
		HeadDim: headDim, PageSize: page, Dtype: DtypeF32, BudgetBytes: 8 * poolLayers * page * 2 * heads * headDim * 4})
	if err != nil {
		t.Fatal(err)
	}
	newPool := func() *Pool {
		cache, err := NewCache(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cache.Close() })
		p, err := NewPool(cache, PoolOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	pa, pb := newPool(), newPool()
	prompt := tierPrompt(1000, 40) // 2 full pages and 8 tokens
	a, _, err := pa.AddSequence(prompt, 3, false)
	if err != nil {
		t.Fatal(err)
	}
	writePending(t, pa, cfg, []pending{{a, prompt}})
	blob, err := pa.SaveSequence(a)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "seq.kvpq")
	if err := pa.SaveSequenceFile(a, path, false); err != nil {
		t.Fatal(err)
	}
	if raw, err := os.ReadFile(path); err != nil || !bytes.Equal(raw, blob) {
		t.Fatalf("the file is not the blob: %v", err)
	}
	if _, _, err := pb.AddSequence(tierPrompt(9000, 20), 0, false); err != nil { // other page ids in B
		t.Fatal(err)
	}
	b, err := pb.RestoreSequence(blob, -1)
	if err != nil {
		t.Fatal(err)
	}
	if n, computed, err := pb.Length(b); err != nil || n != 40 || computed != 40 {
		t.Fatalf("restored length %d computed %d, %v", n, computed, err)
	}
	checkTokens(t, pb, b, prompt, 0, 40)
	c, err := pb.RestoreSequenceFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	pagesB, _ := pb.PageTable(b)
	pagesC, _ := pb.PageTable(c)
	if pagesC[0] != pagesB[0] || pagesC[1] != pagesB[1] || pagesC[2] == pagesB[2] {
		t.Fatalf("full pages not shared: %v %v", pagesB, pagesC)
	}
	bad := append([]byte(nil), blob...)
	bad[len(bad)-1] ^= 1
	before, _ := pb.Stats()
	_, err = pb.RestoreSequence(bad, -1)
	if e := wantErr(t, err, ErrFormatChecksum, "KVP_ERR_FORMAT_CHECKSUM"); !strings.Contains(e.Message, "block 2 of 3") {
		t.Fatalf("message %q does not name the block", e.Message)
	}
	_, err = pb.RestoreSequence(blob, 1)
	wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")
	if after, _ := pb.Stats(); after != before {
		t.Fatalf("a failed restore changed the pool: %+v, was %+v", after, before)
	}
	if err := pb.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
