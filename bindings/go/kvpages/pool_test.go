package kvpages

import (
	"errors"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

const (
	poolLayers = 2
	maxLen     = 64
)

// kv is the key of token id tok at position pos (values are its negation); exact in f32.
func kv(tok int32, pos, layer, h, d int) float32 {
	return float32(((int(tok)*64+pos)*1024 + layer*512 + h*128 + d))
}

type pending struct {
	seq  SeqID
	toks []int32
}

// writePending writes the pending tokens of seqs into every layer through the pool's batch
// requests, then declares them computed.
func writePending(t *testing.T, p *Pool, cfg *Config, seqs []pending) {
	t.Helper()
	reqs := make([]BatchRequest, len(seqs))
	rows := 0
	for i, s := range seqs {
		r, err := p.BatchRequest(s.seq)
		if err != nil {
			t.Fatal(err)
		}
		reqs[i] = r
		rows += int(r.NumScheduled)
	}
	md, err := BuildMetadata(cfg, reqs, nil)
	if err != nil {
		t.Fatal(err)
	}
	order := md.Order()
	defer md.Close()
	for layer := 0; layer < poolLayers; layer++ {
		key := make([]float32, 0, rows*heads*headDim)
		for _, i := range order {
			r := reqs[i]
			for pos := int(r.NumComputed); pos < int(r.NumComputed+r.NumScheduled); pos++ {
				for h := 0; h < heads; h++ {
					for d := 0; d < headDim; d++ {
						key = append(key, kv(seqs[i].toks[pos], pos, layer, h, d))
					}
				}
			}
		}
		value := make([]float32, len(key))
		for i, x := range key {
			value[i] = -x
		}
		if err := p.Cache().Concatenate(uint32(layer), key, value, [3]int{rows, heads, headDim}, md); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range seqs {
		if err := p.SetComputed(s.seq, int(reqs[i].NumComputed+reqs[i].NumScheduled)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkTokens checks that positions [from, to) of seq read back, through the views and its
// page table, as the token ids toks written at those positions.
func checkTokens(t *testing.T, p *Pool, seq SeqID, toks []int32, from, to int) {
	t.Helper()
	pages, err := p.PageTable(seq)
	if err != nil {
		t.Fatal(err)
	}
	for layer := 0; layer < poolLayers; layer++ {
		keys, err := p.Cache().View(uint32(layer), ViewKeys)
		if err != nil {
			t.Fatal(err)
		}
		values, _ := p.Cache().View(uint32(layer), ViewValues)
		for pos := from; pos < to; pos++ {
			pg, row := int64(pages[pos/page]), int64(pos%page)
			for h := 0; h < heads; h++ {
				for d := 0; d < headDim; d += 7 {
					want := kv(toks[pos], pos, layer, h, d)
					k, ok1 := keys.F32(pg, row, int64(h), int64(d))
					v, ok2 := values.F32(pg, row, int64(h), int64(d))
					if !ok1 || !ok2 || k != want || v != -want {
						t.Fatalf("pos %d layer %d h %d d %d: key %v value %v, want %v", pos, layer, h, d, k, v, want)
					}
				}
			}
		}
	}
}

func mustStats(t *testing.T, p *Pool) PoolStats {
	t.Helper()
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.FreePages+st.EvictablePages+st.UsedPages != st.TotalPages {
		t.Fatalf("unbalanced stats %+v", st)
	}
	return st
}

func mustState(t *testing.T, p *Pool, page int32) (uint32, uint32) {
	t.Helper()
	rc, fl, err := p.PageState(page)
	if err != nil {
		t.Fatal(err)
	}
	return rc, fl
}

func wantErr(t *testing.T, err error, sentinel Status, name string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, sentinel) || e.Name != name || e.Message == "" {
		t.Fatalf("want %s with a message, got %v", name, err)
	}
	return e
}

func TestPoolScenario(t *testing.T) {
	cfg := newConfig(t)
	cache, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	p, err := NewPool(cache, PoolOptions{MaxSequences: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st0 := mustStats(t, p)
	if st0.TotalPages != cfg.NumPages()-1 || st0.FreePages != st0.TotalPages || st0.PageSize != page ||
		st0.MaxPagesPerSequence != 4 || st0.MaxSequences != 64 {
		t.Fatalf("initial stats %+v", st0)
	}

	// Sequence a: a 40-token prompt written through the batch request, then computed.
	promptA := make([]int32, 40)
	for i := range promptA {
		promptA[i] = int32(100 + i)
	}
	a, reused, err := p.AddSequence(promptA, 0, false)
	if err != nil || reused != 0 {
		t.Fatal(reused, err)
	}
	req, _ := p.BatchRequest(a)
	pagesA, _ := p.PageTable(a)
	if req.NumComputed != 0 || req.NumScheduled != 40 || len(pagesA) != 3 || !reflect.DeepEqual(req.PageIDs, pagesA) {
		t.Fatalf("request %+v, page table %v", req, pagesA)
	}
	writePending(t, p, cfg, []pending{{a, promptA}})
	if l, c, err := p.Length(a); l != 40 || c != 40 || err != nil {
		t.Fatal(l, c, err)
	}
	checkTokens(t, p, a, promptA, 0, 40)
	slots, err := p.Slots(a, 14, 4)
	if want := []int32{pagesA[0]*16 + 14, pagesA[0]*16 + 15, pagesA[1] * 16, pagesA[1]*16 + 1}; err != nil ||
		!reflect.DeepEqual(slots, want) {
		t.Fatalf("slots %v (%v), want %v", slots, err, want)
	}

	// Sequence b: the same first 32 tokens, so its first two pages are a's (bytes included).
	promptB := append(append([]int32{}, promptA[:32]...), 500, 501, 502, 503, 504, 505, 506, 507)
	b, reused, err := p.AddSequence(promptB, 0, false)
	if err != nil || reused != 32 {
		t.Fatalf("reused %d, %v", reused, err)
	}
	pagesB, _ := p.PageTable(b)
	if len(pagesB) != 3 || pagesB[0] != pagesA[0] || pagesB[1] != pagesA[1] || pagesB[2] == pagesA[2] {
		t.Fatalf("page tables %v and %v", pagesA, pagesB)
	}
	checkTokens(t, p, b, promptA, 0, 32)
	if req, _ := p.BatchRequest(b); req.NumComputed != 32 || req.NumScheduled != 8 {
		t.Fatalf("request %+v", req)
	}
	writePending(t, p, cfg, []pending{{b, promptB}})
	checkTokens(t, p, b, promptB, 0, 40)
	checkTokens(t, p, a, promptA, 0, 40)
	for _, pg := range pagesA[:2] {
		if rc, fl := mustState(t, p, pg); rc != 2 || fl != PageFlagIndexed {
			t.Fatalf("page %d: refcount %d flags %d", pg, rc, fl)
		}
	}
	if rc, fl := mustState(t, p, pagesA[2]); rc != 1 || fl != 0 {
		t.Fatalf("tail page: refcount %d flags %d", rc, fl)
	}
	if _, fl := mustState(t, p, 0); fl&PageFlagNull == 0 {
		t.Fatal("page 0 is not the null page")
	}
	if st := mustStats(t, p); st.UsedPages != 4 || st.IndexedPages != 2 || st.NumSequences != 2 ||
		st.PromptTokens != 80 || st.ReusedTokens != 32 {
		t.Fatalf("stats %+v", st)
	}

	// Fork b twice: every page of b gains two references; the first append copies the tail.
	children, err := p.Fork(b, 2)
	if err != nil || len(children) != 2 || children[0] == children[1] || children[0] == b {
		t.Fatal(children, err)
	}
	if l, c, _ := p.Length(children[0]); l != 40 || c != 40 {
		t.Fatal(l, c)
	}
	if pt, _ := p.PageTable(children[1]); !reflect.DeepEqual(pt, pagesB) {
		t.Fatal(pt)
	}
	if rc, _ := mustState(t, p, pagesB[0]); rc != 4 {
		t.Fatal("shared prefix refcount", rc)
	}
	if rc, _ := mustState(t, p, pagesB[2]); rc != 3 {
		t.Fatal("tail refcount", rc)
	}
	if err := p.Append(children[0], []int32{900}); err != nil {
		t.Fatal(err)
	}
	pagesC, _ := p.PageTable(children[0])
	if pagesC[0] != pagesB[0] || pagesC[1] != pagesB[1] || pagesC[2] == pagesB[2] {
		t.Fatalf("after copy-on-write %v vs %v", pagesC, pagesB)
	}
	if rc, _ := mustState(t, p, pagesB[2]); rc != 2 {
		t.Fatal("tail refcount after copy-on-write", rc)
	}
	if st := mustStats(t, p); st.CowCopies != 1 || st.UsedPages != 5 || st.NumSequences != 4 {
		t.Fatalf("stats %+v", st)
	}
	checkTokens(t, p, children[0], promptB, 0, 40) // the copied tail holds b's K/V
	if err := p.Truncate(children[0], 40); err != nil {
		t.Fatal(err)
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}

	// CopyPages: a free page receives a's first page, in every layer.
	free := int32(-1)
	for pg := int32(1); pg < int32(cfg.NumPages()); pg++ {
		if _, fl := mustState(t, p, pg); fl == PageFlagFree {
			free = pg
			break
		}
	}
	if err := cache.CopyPages([]int32{pagesA[0]}, []int32{free}); err != nil {
		t.Fatal(err)
	}
	for layer := uint32(0); layer < poolLayers; layer++ {
		keys, _ := cache.View(layer, ViewKeys)
		for row := int64(0); row < page; row++ {
			x, _ := keys.F32(int64(free), row, 1, 5)
			y, _ := keys.F32(int64(pagesA[0]), row, 1, 5)
			if x != y || x == 0 {
				t.Fatalf("copied page row %d: %v vs %v", row, x, y)
			}
		}
	}
	wantErr(t, cache.CopyPages([]int32{free}, []int32{free}), ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")

	// Free everything: full computed pages stay cached (evictable), the rest is free.
	for _, s := range []SeqID{a, b, children[0], children[1]} {
		if err := p.FreeSequence(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if st := mustStats(t, p); st.UsedPages != 0 || st.NumSequences != 0 || st.EvictablePages != 2 || st.IndexedPages != 2 {
		t.Fatalf("stats after freeing %+v", st)
	}
	if rc, fl := mustState(t, p, pagesA[0]); rc != 0 || fl != PageFlagIndexed {
		t.Fatal(rc, fl)
	}

	// Error paths: each reports its code and a message, and changes nothing.
	before := mustStats(t, p)
	e := wantErr(t, p.FreeSequence(a), ErrNotFound, "KVP_ERR_NOT_FOUND")
	if e.Status != 3 || errors.Is(e, ErrOutOfPages) {
		t.Fatalf("%+v", e)
	}
	_, _, err = p.Length(a)
	wantErr(t, err, ErrNotFound, "KVP_ERR_NOT_FOUND")
	wantErr(t, p.Append(b, []int32{1}), ErrNotFound, "KVP_ERR_NOT_FOUND")
	if st := mustStats(t, p); st != before {
		t.Fatalf("stale ids changed the pool: %+v", st)
	}
	tooLong := make([]int32, maxLen+1)
	_, _, err = p.AddSequence(tooLong, 0, false)
	if e := wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT"); !strings.Contains(e.Message, "65") {
		t.Fatalf("message %q", e.Message)
	}
	if st := mustStats(t, p); st != before {
		t.Fatalf("a rejected prompt changed the pool: %+v", st)
	}
	_, _, err = p.PageState(int32(cfg.NumPages()))
	wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")

	// Out of pages: fill the pool with full-length sequences until one no longer fits.
	var live []SeqID
	for {
		toks := make([]int32, maxLen)
		for i := range toks {
			toks[i] = int32(10000 + 100*len(live) + i)
		}
		before := mustStats(t, p)
		s, reused, err := p.AddSequence(toks, 7, false)
		if err != nil {
			e := wantErr(t, err, ErrOutOfPages, "KVP_ERR_OUT_OF_PAGES")
			if e.Status != 65 || errors.Is(e, ErrNotFound) {
				t.Fatalf("%+v", e)
			}
			if st := mustStats(t, p); st != before {
				t.Fatalf("a failed add changed the pool: %+v vs %+v", st, before)
			}
			break
		}
		if reused != 0 {
			t.Fatal("reused", reused)
		}
		live = append(live, s)
		if len(live) >= 64 {
			t.Fatal("never ran out of pages")
		}
	}
	if st := mustStats(t, p); st.UsedPages != int64(4*len(live)) || st.FreePages+st.EvictablePages >= 4 {
		t.Fatalf("full pool %+v", st)
	}
	for _, s := range live {
		if err := p.FreeSequence(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.ClearPrefixCache(); err != nil {
		t.Fatal(err)
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if st := mustStats(t, p); st.FreePages != st.TotalPages || st.EvictablePages != 0 || st.IndexedPages != 0 {
		t.Fatalf("after clearing %+v", st)
	}
}

func TestPoolOptionsAndReuseAll(t *testing.T) {
	cfg := newConfig(t)
	cache, _ := NewCache(cfg)
	defer cache.Close()
	toks := make([]int32, 32)
	for i := range toks {
		toks[i] = int32(i)
	}
	np, err := NewPool(cache, PoolOptions{MaxSequences: 4, NoPrefixCache: true})
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := np.AddSequence(toks, 0, false)
	writePending(t, np, cfg, []pending{{s, toks}})
	np.FreeSequence(s)
	if _, reused, err := np.AddSequence(toks, 0, true); reused != 0 || err != nil {
		t.Fatal(reused, err)
	}
	if st := mustStats(t, np); st.IndexedPages != 0 {
		t.Fatalf("%+v", st)
	}
	np.Close()

	p, err := NewPool(cache, PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s, _, _ = p.AddSequence(toks, 3, false)
	writePending(t, p, cfg, []pending{{s, toks}})
	for _, c := range []struct {
		salt     uint64
		reuseAll bool
		want     int
	}{{3, false, 16}, {3, true, 32}, {4, true, 0}} {
		if _, reused, err := p.AddSequence(toks, c.salt, c.reuseAll); reused != c.want || err != nil {
			t.Fatalf("%+v: reused %d, %v", c, reused, err)
		}
	}
	if ch, err := p.Fork(s, 0); len(ch) != 0 || err != nil {
		t.Fatal(ch, err)
	}
	_, err = NewPool(cache, PoolOptions{MaxSequences: 1 << 21})
	wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")
	if err := p.SetComputed(s, -1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
}

func TestPoolCloseReleasesOnceAndOrdersWithCache(t *testing.T) {
	cfg := newConfig(t)
	cache, _ := NewCache(cfg)
	p, err := NewPool(cache, PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Cache() != cache {
		t.Fatal("the pool does not keep its cache")
	}
	s, _, err := p.AddSequence([]int32{1, 2, 3}, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	// The cache closed first: calls that need it fail cleanly (API armor); Close still works.
	cache.Close()
	wantErr(t, p.Append(s, []int32{4}), ErrInvalidHandle, "KVP_ERR_INVALID_HANDLE")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal("second Close must be a no-op:", err)
	}
	_, err = p.Stats()
	wantErr(t, err, ErrInvalidHandle, "KVP_ERR_INVALID_HANDLE")
	_, err = NewPool(cache, PoolOptions{})
	wantErr(t, err, ErrInvalidHandle, "KVP_ERR_INVALID_HANDLE")
}

// makePoolGarbage creates n caches, each with a pool over it, and drops them all at once
// (so no C address is reused while they are being created); it returns their C pointers.
//
//go:noinline
func makePoolGarbage(t *testing.T, cfg *Config, n int) (caches, pools []uintptr) {
	var keep []*Pool
	for i := 0; i < n; i++ {
		c, err := NewCache(cfg)
		if err != nil {
			t.Fatal(err)
		}
		p, err := NewPool(c, PoolOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := p.AddSequence([]int32{1, 2, 3}, 0, false); err != nil {
			t.Fatal(err)
		}
		keep = append(keep, p)
		caches = append(caches, uintptr(unsafe.Pointer(c.p)))
		pools = append(pools, uintptr(unsafe.Pointer(p.p)))
	}
	runtime.KeepAlive(keep)
	return caches, pools
}

// Unreachable pools are finalized, and always before their cache (the pool references it).
func TestPoolFinalizerRunsBeforeCacheFinalizer(t *testing.T) {
	cfg := newConfig(t)
	var mu sync.Mutex
	pending := map[uintptr]bool{}
	poolOf := map[uintptr]uintptr{} // cache pointer -> its pool's pointer
	var bad []string
	finalizedHook = func(raw uintptr) {
		mu.Lock()
		defer mu.Unlock()
		if pl, ok := poolOf[raw]; ok && pending[pl] {
			bad = append(bad, "a cache was finalized before its pool")
		}
		delete(pending, raw)
	}
	defer func() { finalizedHook = nil }()
	mu.Lock()
	caches, pools := makePoolGarbage(t, cfg, 10)
	for i, c := range caches {
		pending[c], pending[pools[i]] = true, true
		poolOf[c] = pools[i]
	}
	mu.Unlock()
	left := func() int { mu.Lock(); defer mu.Unlock(); return len(pending) }
	for deadline := time.Now().Add(10 * time.Second); left() > 0 && time.Now().Before(deadline); {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(pending) != 0 || len(bad) != 0 {
		t.Fatalf("%d of 20 handles not released; %v", len(pending), bad)
	}
}

func TestPoolDataParallelShards(t *testing.T) {
	cfg, err := NewConfig(ConfigOptions{NumHiddenLayers: 2, NumKVHeads: heads, MaxModelLength: 64, HeadDim: headDim,
		PageSize: page, Dtype: DtypeF32, BudgetBytes: 1 << 20, DataParallelSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	half := int32(cfg.NumPages() / 2)
	cache, _ := NewCache(cfg)
	defer cache.Close()
	p, err := NewPool(cache, PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s0, _ := p.ShardStats(0)
	s1, _ := p.ShardStats(1)
	if s0.NumShards != 2 || s0.FirstPage != 1 || s0.EndPage != half || s1.FirstPage != half || s1.EndPage != 2*half {
		t.Fatalf("%+v %+v", s0, s1)
	}
	toks := []int32{1, 2, 3, 4, 5}
	a, _, err := p.AddSequence(toks, 0, false) // shard 1 has one more free page
	if sh, _ := p.SequenceShard(a); err != nil || sh != 1 {
		t.Fatal(sh, err)
	}
	b, _, err := p.AddSequenceInShard(toks, 0, false, 0)
	if sh, _ := p.SequenceShard(b); err != nil || sh != 0 {
		t.Fatal(sh, err)
	}
	if pt, _ := p.PageTable(b); len(pt) != 1 || pt[0] < 1 || pt[0] >= half {
		t.Fatal(pt)
	}
	before := mustStats(t, p)
	_, _, err = p.AddSequenceInShard(toks, 0, false, 2)
	if e := wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT"); !strings.Contains(e.Message, "shard 2 is out of range") {
		t.Fatal(e.Message)
	}
	_, err = p.ShardStats(2)
	wantErr(t, err, ErrInvalidArgument, "KVP_ERR_INVALID_ARGUMENT")
	if after := mustStats(t, p); after != before {
		t.Fatalf("%+v != %+v", after, before)
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
