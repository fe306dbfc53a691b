package kvpages

/*
#include <stdlib.h>
#include <string.h>
#include <kvpages.h>
*/
import "C"

import (
	"unsafe"
)

// BudgetMode selects how a memory budget is computed from device statistics (KVP_BUDGET_*).
type BudgetMode uint32

// Budget modes: free memory times the utilisation (the reference's default), or the limit
// times the utilisation minus what is in use.
const (
	BudgetFree  BudgetMode = C.KVP_BUDGET_FREE
	BudgetTotal BudgetMode = C.KVP_BUDGET_TOTAL
)

// ConfigFlags are KVP_CONFIG_FLAG_* bits.
type ConfigFlags uint32

// Config flags.
const (
	// ConfigReferenceBudget sizes pages with the reference's unpadded formula.
	ConfigReferenceBudget ConfigFlags = C.KVP_CONFIG_FLAG_REFERENCE_BUDGET
	// ConfigNoSafetyMargin budgets without a safety margin.
	ConfigNoSafetyMargin ConfigFlags = C.KVP_CONFIG_FLAG_NO_SAFETY_MARGIN
)

// Budgeting defaults of the reference.
const (
	DefaultSafetyMargin = int64(C.KVP_DEFAULT_SAFETY_MARGIN) // 256 MiB
	FallbackBudget      = int64(C.KVP_FALLBACK_BUDGET)       // 4 GiB, when no device reports statistics
)

// MemoryStats are one device's memory statistics (kvp_memory_stats); zero fields are absent.
type MemoryStats struct {
	BytesLimit, BytesReservableLimit, BytesTotal, BytesInUse, BytesReserved int64
	Valid                                                                   bool // false: skip this device
}

func (m MemoryStats) c() C.kvp_memory_stats {
	s := C.kvp_memory_stats{bytes_limit: C.int64_t(m.BytesLimit), bytes_reservable_limit: C.int64_t(m.BytesReservableLimit),
		bytes_total: C.int64_t(m.BytesTotal), bytes_in_use: C.int64_t(m.BytesInUse), bytes_reserved: C.int64_t(m.BytesReserved)}
	if m.Valid {
		s.valid = 1
	}
	return s
}

// DeviceMemoryStats reads a device's memory statistics (kvp_device_memory_stats): the host's
// total and available memory for the CPU, cudaMemGetInfo for a CUDA device.
func DeviceMemoryStats(dev Device) (MemoryStats, error) {
	var s C.kvp_memory_stats
	err := call(func() C.kvp_status { return C.kvp_device_memory_stats(dev.ctype(), C.int32_t(dev.ID), &s) })
	return MemoryStats{BytesLimit: int64(s.bytes_limit), BytesReservableLimit: int64(s.bytes_reservable_limit),
		BytesTotal: int64(s.bytes_total), BytesInUse: int64(s.bytes_in_use), BytesReserved: int64(s.bytes_reserved),
		Valid: s.valid != 0}, err
}

// HBMBudgetBytes is the reference's per-device budget over device statistics
// (kvp_hbm_budget_bytes): the minimum over the valid devices, FallbackBudget when none.
func HBMBudgetBytes(stats []MemoryStats, utilization float64, mode BudgetMode, safetyMargin int64) (int64, error) {
	cs := make([]C.kvp_memory_stats, len(stats))
	for i, s := range stats {
		cs[i] = s.c()
	}
	var out C.int64_t
	err := call(func() C.kvp_status {
		return C.kvp_hbm_budget_bytes((*C.kvp_memory_stats)(slicePtr(cs)), C.uint32_t(len(cs)), C.double(utilization),
			C.uint32_t(mode), C.int64_t(safetyMargin), &out)
	})
	return int64(out), err
}

// ConfigOptions are the inputs of NewConfig (every field of kvp_config_options); zero means
// default for every field. The budget is read from Device, the device the cache will live on
// (the CPU by default), unless BudgetBytes or MemoryStats is given; NewCache then creates the
// cache on that same device.
type ConfigOptions struct {
	NumHiddenLayers, NumKVHeads, MaxModelLength int64 // required
	HeadDim                                     int64 // head dim for budgeting; 0 = KHeadDim
	KHeadDim, VHeadDim                          int64 // 0 = HeadDim; must be equal
	HBMUtilization                              float64
	PageSize                                    int64  // tokens per page; 0 = 128
	Dtype                                       Dtype  // 0 = bf16
	Layout                                      Layout // 0 = v3
	BudgetMode                                  BudgetMode
	Flags                                       ConfigFlags
	BudgetBytes                                 int64         // > 0: this budget per device, no statistics read
	SafetyMarginBytes                           int64         // 0 = 256 MiB (ConfigNoSafetyMargin for none)
	MemoryStats                                 []MemoryStats // injected statistics instead of the device's
	Device                                      Device        // where the cache will live: its memory is budgeted
	KVHeadShards                                int64         // devices the KV heads are sharded over (tensor parallelism; kept, upcast or replicated); 0 = 1
	DataParallelSize                            int64         // data-parallel page shards (since 1.3); 0 = 1
	MaxNumTokens, MaxNumReqs                    int64         // hints stored in the config; 0 = unset
}

// Config is a validated cache configuration (a copy of kvp_config) and the device it was
// budgeted for.
type Config struct {
	raw    C.kvp_config
	device Device
}

// emptyRecord is a zeroed kvp_config that opts in to the version these bindings mirror
// (struct_size and abi_version set, as KVP_CONFIG_INIT does): a function that writes a record
// writes all of it, where it would write only version 1 into a record without them.
func emptyRecord() C.kvp_config {
	var raw C.kvp_config
	raw.struct_size = C.uint32_t(unsafe.Sizeof(raw))
	raw.abi_version = C.KVP_CONFIG_VERSION
	return raw
}

func (o *ConfigOptions) fill(opts *C.kvp_config_options, stats *C.kvp_memory_stats) {
	opts.num_hidden_layers = C.int64_t(o.NumHiddenLayers)
	opts.num_kv_heads = C.int64_t(o.NumKVHeads)
	opts.max_model_length = C.int64_t(o.MaxModelLength)
	opts.kv_head_dim_size = C.int64_t(o.HeadDim)
	opts.k_headdim = C.int64_t(o.KHeadDim)
	opts.v_headdim = C.int64_t(o.VHeadDim)
	opts.hbm_utilization = C.double(o.HBMUtilization)
	opts.page_size = C.int64_t(o.PageSize)
	opts.kvdtype = C.kvp_dtype(o.Dtype)
	opts.version = C.kvp_layout(o.Layout)
	opts.budget_mode = C.uint32_t(o.BudgetMode)
	opts.flags = C.uint32_t(o.Flags)
	opts.budget_bytes = C.int64_t(o.BudgetBytes)
	opts.safety_margin_bytes = C.int64_t(o.SafetyMarginBytes)
	opts.memory_stats = stats
	opts.num_memory_stats = C.uint32_t(len(o.MemoryStats))
	opts.device_type = o.Device.ctype()
	opts.device_id = C.int32_t(o.Device.ID)
	opts.kv_head_shards = C.int64_t(o.KVHeadShards)
	opts.data_parallel_size = C.int64_t(o.DataParallelSize)
	opts.max_num_tokens = C.int64_t(o.MaxNumTokens)
	opts.max_num_reqs = C.int64_t(o.MaxNumReqs)
}

// NewConfig calls kvp_config_create: it derives the number of pages from the budget.
func NewConfig(o ConfigOptions) (*Config, error) {
	// The options point at the statistics, so both live in C memory (cgo forbids Go memory
	// that holds a Go pointer).
	opts := (*C.kvp_config_options)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvp_config_options{}))))
	defer C.free(unsafe.Pointer(opts))
	var stats *C.kvp_memory_stats
	if n := len(o.MemoryStats); n > 0 {
		stats = (*C.kvp_memory_stats)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.kvp_memory_stats{}))))
		defer C.free(unsafe.Pointer(stats))
		cs := unsafe.Slice(stats, n)
		for i, m := range o.MemoryStats {
			cs[i] = m.c()
		}
	}
	cfg := &Config{raw: emptyRecord(), device: o.Device}
	if cfg.device.Type == 0 {
		cfg.device.Type = DeviceCPU
	}
	err := call(func() C.kvp_status {
		if st := C.kvp_config_options_init(opts, C.uint32_t(unsafe.Sizeof(*opts))); st != C.KVP_OK {
			return st
		}
		o.fill(opts, stats)
		return C.kvp_config_create(opts, &cfg.raw)
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// ConfigRecord is every field of a kvp_config, as plain values. -1 means "not computed".
type ConfigRecord struct {
	NumHiddenLayers, MaxModelLength, NumKVHeads, KHeadDim, VHeadDim int64
	HBMUtilization                                                  float64
	PageSize, NumPages, MaxNumPagesPerReq                           int64
	NumSlicesPerKVCacheUpdatePage                                   int64
	MaxNumTokens, MaxNumReqs                                        int64
	Layout                                                          Layout
	Dtype                                                           Dtype
	// Sharding (since 1.3): data-parallel page shards, effective KV-head shards, and what the
	// resolution changed (0 / DtypeDefault: nothing).
	DataParallelSize, KVHeadShards, RequestedKVHeadShards int64
	RequestedDtype                                        Dtype
}

// DefaultConfigRecord is the reference's defaults (kvp_config_init): page 128, utilisation 0.9,
// v3, bf16, -1 for derived fields, 0 for the model fields.
func DefaultConfigRecord() ConfigRecord {
	var raw C.kvp_config
	must(call(func() C.kvp_status { return C.kvp_config_init(&raw, C.uint32_t(unsafe.Sizeof(raw))) }))
	return (&Config{raw: raw}).Record()
}

// Record is a copy of every field of the config.
func (c *Config) Record() ConfigRecord {
	r := &c.raw
	return ConfigRecord{NumHiddenLayers: int64(r.num_hidden_layers), MaxModelLength: int64(r.max_model_length),
		NumKVHeads: int64(r.num_kv_heads), KHeadDim: int64(r.k_headdim), VHeadDim: int64(r.v_headdim),
		HBMUtilization: float64(r.hbm_utilization), PageSize: int64(r.page_size), NumPages: int64(r.num_pages),
		MaxNumPagesPerReq: int64(r.max_num_pages_per_req), NumSlicesPerKVCacheUpdatePage: int64(r.num_slices_per_kv_cache_update_page),
		MaxNumTokens: int64(r.max_num_tokens), MaxNumReqs: int64(r.max_num_reqs), Layout: Layout(r.version), Dtype: Dtype(r.kvdtype),
		DataParallelSize: int64(r.data_parallel_size), KVHeadShards: int64(r.kv_head_shards),
		RequestedKVHeadShards: int64(r.requested_kv_head_shards), RequestedDtype: Dtype(r.requested_kvdtype)}
}

func (r *ConfigRecord) raw() C.kvp_config {
	var c C.kvp_config
	must(call(func() C.kvp_status { return C.kvp_config_init(&c, C.uint32_t(unsafe.Sizeof(c))) }))
	c.num_hidden_layers, c.max_model_length = C.int64_t(r.NumHiddenLayers), C.int64_t(r.MaxModelLength)
	c.num_kv_heads, c.k_headdim, c.v_headdim = C.int64_t(r.NumKVHeads), C.int64_t(r.KHeadDim), C.int64_t(r.VHeadDim)
	c.hbm_utilization, c.page_size, c.num_pages = C.double(r.HBMUtilization), C.int64_t(r.PageSize), C.int64_t(r.NumPages)
	c.max_num_pages_per_req = C.int64_t(r.MaxNumPagesPerReq)
	c.num_slices_per_kv_cache_update_page = C.int64_t(r.NumSlicesPerKVCacheUpdatePage)
	c.max_num_tokens, c.max_num_reqs = C.int64_t(r.MaxNumTokens), C.int64_t(r.MaxNumReqs)
	c.version, c.kvdtype = C.kvp_layout(r.Layout), C.kvp_dtype(r.Dtype)
	c.data_parallel_size, c.kv_head_shards = C.int64_t(r.DataParallelSize), C.int64_t(r.KVHeadShards)
	c.requested_kv_head_shards, c.requested_kvdtype = C.int64_t(r.RequestedKVHeadShards), C.kvp_dtype(r.RequestedDtype)
	return c
}

// ConfigFromRecord checks a record (kvp_config_validate) and returns it as a Config for dev.
func ConfigFromRecord(r ConfigRecord, dev Device) (*Config, error) {
	c := &Config{raw: r.raw(), device: dev}
	if c.device.Type == 0 {
		c.device.Type = DeviceCPU
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks the config (kvp_config_validate): a config read from JSON is not checked
// until this is called.
func (c *Config) Validate() error {
	return call(func() C.kvp_status { return C.kvp_config_validate(&c.raw) })
}

// Device is the device the config was budgeted for; NewCache creates the cache there.
func (c *Config) Device() Device { return c.device }

// NumPages is the number of pages per layer (including the null page 0).
func (c *Config) NumPages() int64 { return int64(c.raw.num_pages) }

// PageSize is the number of tokens per page.
func (c *Config) PageSize() int64 { return int64(c.raw.page_size) }

// Dtype is the storage dtype.
func (c *Config) Dtype() Dtype { return Dtype(c.raw.kvdtype) }

// KVHeadShards is the number of KV-head shards after the resolution (since 1.3; 1 = none).
func (c *Config) KVHeadShards() int64 { return max1(int64(c.raw.kv_head_shards)) }

// DataParallelSize is the number of data-parallel page shards (since 1.3; 1 = none).
func (c *Config) DataParallelSize() int64 { return max1(int64(c.raw.data_parallel_size)) }

func max1(v int64) int64 {
	if v < 1 {
		return 1
	}
	return v
}

// ShardInfo says which slice of a sharded config a cache or a blob holds (kvp_shard_info, since
// 1.4): the tensor and data ranks, the combined entries [SlotBegin, SlotEnd), the KV heads
// (HeadBegin is row 0 of a local key/value tensor), the keys and values held, and the global
// pages [PageBegin, PageEnd) of GlobalPages.
type ShardInfo struct {
	TPRank, TPSize, DPRank, DPSize int32
	SlotBegin, SlotEnd             int64
	HeadBegin, HeadEnd             int64
	KeyHeadBegin, KeyHeadEnd       int64
	ValueHeadBegin, ValueHeadEnd   int64
	PageBegin, PageEnd             int64
	GlobalPages                    int64
}

func shardInfo(s *C.kvp_shard_info) ShardInfo {
	return ShardInfo{TPRank: int32(s.tp_rank), TPSize: int32(s.tp_size), DPRank: int32(s.dp_rank),
		DPSize: int32(s.dp_size), SlotBegin: int64(s.slot_begin), SlotEnd: int64(s.slot_end),
		HeadBegin: int64(s.head_begin), HeadEnd: int64(s.head_end), KeyHeadBegin: int64(s.key_head_begin),
		KeyHeadEnd: int64(s.key_head_end), ValueHeadBegin: int64(s.value_head_begin),
		ValueHeadEnd: int64(s.value_head_end), PageBegin: int64(s.page_begin), PageEnd: int64(s.page_end),
		GlobalPages: int64(s.global_pages)}
}

// Shard describes the slice shard (tpRank, dpRank) of the config holds, without creating it
// (kvp_config_get_shard, since 1.4; NewShard creates it).
func (c *Config) Shard(tpRank, dpRank int32) (ShardInfo, error) {
	var si C.kvp_shard_info
	si.struct_size = C.uint32_t(unsafe.Sizeof(si))
	if err := call(func() C.kvp_status { return C.kvp_config_get_shard(&c.raw, C.int32_t(tpRank), C.int32_t(dpRank), &si) }); err != nil {
		return ShardInfo{}, err
	}
	return shardInfo(&si), nil
}

// Plan are the planning numbers of a config (kvp_plan): what fits before anything is allocated.
type Plan struct {
	NumPages, UsablePages, PageSize          int64
	BytesPerPage, ReferenceBytesPerPage      int64 // over all layers, K and V
	BytesPerToken, TotalBytes, TokenCapacity int64
	MaxConcurrentSeqs, MaxNumSeqs            int64
	// Since 1.3: the sharding resolution.
	DataParallelSize, KVHeadShards, RequestedKVHeadShards int64
	HeadSharding                                          uint32 // KVP_HEAD_SHARDING_*: 0 none, 1 keep, 2 upcast, 3 replicate
	RequestedDtype, Dtype                                 Dtype
	UnitsPerDevice, PagesPerDevice, BytesPerDevice        int64
	ShardingMessage                                       string // the resolution in words
}

// Plan calls kvp_config_plan.
func (c *Config) Plan() (Plan, error) {
	var p C.kvp_plan
	p.struct_size = C.uint32_t(unsafe.Sizeof(p))
	if err := call(func() C.kvp_status { return C.kvp_config_plan(&c.raw, &p) }); err != nil {
		return Plan{}, err
	}
	return Plan{NumPages: int64(p.num_pages), UsablePages: int64(p.usable_pages), PageSize: int64(p.page_size),
		BytesPerPage: int64(p.bytes_per_page), ReferenceBytesPerPage: int64(p.reference_bytes_per_page),
		BytesPerToken: int64(p.bytes_per_token), TotalBytes: int64(p.total_bytes), TokenCapacity: int64(p.token_capacity),
		MaxConcurrentSeqs: int64(p.max_concurrent_seqs), MaxNumSeqs: int64(p.max_num_seqs),
		DataParallelSize: int64(p.data_parallel_size), KVHeadShards: int64(p.kv_head_shards),
		RequestedKVHeadShards: int64(p.requested_kv_head_shards), HeadSharding: uint32(p.head_sharding),
		RequestedDtype: Dtype(p.requested_kvdtype), Dtype: Dtype(p.kvdtype), UnitsPerDevice: int64(p.units_per_device),
		PagesPerDevice: int64(p.pages_per_device), BytesPerDevice: int64(p.bytes_per_device),
		ShardingMessage: C.GoString(&p.sharding_message[0])}, nil
}

// LayoutInfo is the geometry of a layer's buffer (kvp_layout_info).
type LayoutInfo struct {
	IsH64                                                        bool // v3 head_dim-64 layout ([K|V] in 128 lanes)
	KVHeadPacking, StorageNumCombinedKVHeads, StorageNumKVGroups int64
	StorageHeadDim, Itemsize                                     int64
	Shape                                                        []int64 // a layer's pages: 5 dims for v3, 4 for v2
	LayerBytes, PageBytesPerLayer, MaxNumSeqs                    int64
}

func layoutInfo(li *C.kvp_layout_info) LayoutInfo {
	shape := make([]int64, int(li.ndim))
	for i := range shape {
		shape[i] = int64(li.shape[i])
	}
	return LayoutInfo{IsH64: li.is_h64 != 0, KVHeadPacking: int64(li.kv_head_packing),
		StorageNumCombinedKVHeads: int64(li.storage_num_combined_kv_heads), StorageNumKVGroups: int64(li.storage_num_kv_groups),
		StorageHeadDim: int64(li.storage_head_dim), Itemsize: int64(li.itemsize), Shape: shape,
		LayerBytes: int64(li.layer_bytes), PageBytesPerLayer: int64(li.page_bytes_per_layer), MaxNumSeqs: int64(li.max_num_seqs)}
}

// LayoutInfo calls kvp_config_get_layout.
func (c *Config) LayoutInfo() (LayoutInfo, error) {
	var li C.kvp_layout_info
	li.struct_size = C.uint32_t(unsafe.Sizeof(li))
	if err := call(func() C.kvp_status { return C.kvp_config_get_layout(&c.raw, &li) }); err != nil {
		return LayoutInfo{}, err
	}
	return layoutInfo(&li), nil
}

// PaddedNumSlices is the reference's get_padded_num_slices (kvp_config_padded_num_slices);
// numTokens or maxNumReqs ≤ 0 take the defaults.
func (c *Config) PaddedNumSlices(numTokens, maxNumReqs int64) (int64, error) {
	var out C.int64_t
	err := call(func() C.kvp_status {
		return C.kvp_config_padded_num_slices(&c.raw, C.int64_t(numTokens), C.int64_t(maxNumReqs), &out)
	})
	return int64(out), err
}

// MarshalJSON writes the reference's to_json() text (kvp_config_to_json).
func (c *Config) MarshalJSON() ([]byte, error) {
	var need C.size_t
	err := call(func() C.kvp_status { return C.kvp_config_to_json(&c.raw, nil, 0, &need) })
	if err != nil && !isStatus(err, ErrBufferTooSmall) {
		return nil, err
	}
	buf := make([]byte, int(need))
	var n C.size_t
	err = call(func() C.kvp_status {
		return C.kvp_config_to_json(&c.raw, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
	})
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// UnmarshalJSON reads a config like the reference's from_json() (kvp_config_from_json):
// unknown keys are ignored and nothing is validated or recomputed; call Validate before use.
// The device becomes the CPU. On an error c is unchanged.
func (c *Config) UnmarshalJSON(text []byte) error {
	raw := emptyRecord()
	err := call(func() C.kvp_status {
		return C.kvp_config_from_json((*C.char)(slicePtr(text)), C.size_t(len(text)), &raw)
	})
	if err != nil {
		return err
	}
	c.raw, c.device = raw, CPU
	return nil
}

func isStatus(err error, s Status) bool {
	e, ok := err.(*Error)
	return ok && e.Status == s
}
