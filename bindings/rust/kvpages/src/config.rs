//! Configuration, memory budgeting and planning (`kvpages/config.h`, `kvpages/json.h`).
use std::mem::{size_of, MaybeUninit};

use crate::{check, invalid, sys, Device, Dtype, Layout, Result};

/// How [`Config::create`] turns device statistics into a budget (`KVP_BUDGET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BudgetMode {
    /// `max(0, floor(free * utilization) - margin)`, as the reference.
    #[default]
    Free,
    /// `max(0, floor(limit * utilization) - used - margin)`.
    Total,
}

impl BudgetMode {
    fn to_raw(self) -> u32 {
        match self {
            BudgetMode::Free => sys::KVP_BUDGET_FREE,
            BudgetMode::Total => sys::KVP_BUDGET_TOTAL,
        }
    }
}

/// Memory statistics of one device (`kvp_memory_stats`); 0 means absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    pub bytes_limit: i64,
    pub bytes_reservable_limit: i64,
    pub bytes_total: i64,
    pub bytes_in_use: i64,
    pub bytes_reserved: i64,
    /// The device reported statistics; `false` = skip it.
    pub valid: bool,
}

impl MemoryStats {
    fn to_raw(self) -> sys::kvp_memory_stats {
        sys::kvp_memory_stats {
            bytes_limit: self.bytes_limit,
            bytes_reservable_limit: self.bytes_reservable_limit,
            bytes_total: self.bytes_total,
            bytes_in_use: self.bytes_in_use,
            bytes_reserved: self.bytes_reserved,
            valid: self.valid as u32,
            _reserved: 0,
        }
    }

    fn from_raw(s: &sys::kvp_memory_stats) -> MemoryStats {
        MemoryStats {
            bytes_limit: s.bytes_limit,
            bytes_reservable_limit: s.bytes_reservable_limit,
            bytes_total: s.bytes_total,
            bytes_in_use: s.bytes_in_use,
            bytes_reserved: s.bytes_reserved,
            valid: s.valid != 0,
        }
    }
}

/// `kvp_device_memory_stats`: the host's memory (`/proc/meminfo`) or a CUDA device's.
pub fn device_memory_stats(device: Device) -> Result<MemoryStats> {
    let (ty, id) = device.to_raw();
    let mut out = sys::kvp_memory_stats::default();
    check(unsafe { sys::kvp_device_memory_stats(ty, id, &mut out) })?;
    Ok(MemoryStats::from_raw(&out))
}

/// `kvp_hbm_budget_bytes`: the reference's per-device budget over device statistics (the
/// minimum over the valid ones; 4 GiB when none is valid).
pub fn hbm_budget_bytes(stats: &[MemoryStats], utilization: f64, mode: BudgetMode, safety_margin_bytes: i64)
    -> Result<i64> {
    let raw: Vec<sys::kvp_memory_stats> = stats.iter().map(|s| s.to_raw()).collect();
    let n = u32::try_from(raw.len()).map_err(|_| invalid(format!("{} device statistics", raw.len())))?;
    let mut out = 0;
    check(unsafe { sys::kvp_hbm_budget_bytes(raw.as_ptr(), n, utilization, mode.to_raw(), safety_margin_bytes, &mut out) })?;
    Ok(out)
}

/// Inputs of [`Config::create`] (`kvp_config_options`): the model shape and how to budget
/// memory. Zero (and `false`, empty, the enum defaults) means "default" for every field.
///
/// The budget comes, in this order, from `budget_bytes`, from `memory_stats`, or from the
/// statistics of `device`, the device the cache will live on ([`Cache::new`](crate::Cache::new)
/// creates the cache there).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigOptions {
    /// Layers, > 0 (required).
    pub num_hidden_layers: i64,
    /// KV heads of the whole model, > 0 (required).
    pub num_kv_heads: i64,
    /// Longest sequence in tokens, > 0 (required).
    pub max_model_length: i64,
    /// Head dim (`kv_head_dim_size`); required unless `k_headdim` is set.
    pub head_dim: i64,
    /// Key head dim; 0 = `head_dim`.
    pub k_headdim: i64,
    /// Value head dim; 0 = `head_dim`. Must equal the key head dim.
    pub v_headdim: i64,
    /// Fraction of the device memory to budget, (0, 1]; 0 = 0.9.
    pub hbm_utilization: f64,
    /// Tokens per page; 0 = 128.
    pub page_size: i64,
    /// Storage dtype (default bf16).
    pub dtype: Dtype,
    /// Layout version (default v3).
    pub layout: Layout,
    /// How statistics become a budget.
    pub budget_mode: BudgetMode,
    /// Size pages with the reference's unpadded formula (`KVP_CONFIG_FLAG_REFERENCE_BUDGET`).
    pub reference_budget: bool,
    /// No safety margin (`KVP_CONFIG_FLAG_NO_SAFETY_MARGIN`).
    pub no_safety_margin: bool,
    /// > 0: the per-device budget in bytes, no statistics read.
    pub budget_bytes: i64,
    /// Bytes kept free; 0 = 256 MiB (see `no_safety_margin`).
    pub safety_margin_bytes: i64,
    /// Injected device statistics; empty = read those of `device`.
    pub memory_stats: Vec<MemoryStats>,
    /// The device whose memory is budgeted and where [`Cache::new`](crate::Cache::new) puts the
    /// cache (default the CPU).
    pub device: Device,
    /// Devices the KV heads are sharded over (tensor parallelism); 0 = 1. Resolved as the
    /// reference does: kept, the dtype upcast (bf16, then fp32) or the heads replicated
    /// ([`Plan::head_sharding`], [`Config::sharding_message`]); the budget is multiplied by the
    /// effective shards.
    pub kv_head_shards: i64,
    /// Data-parallel page shards (since 1.3); 0 = 1. The budget is multiplied by it and
    /// `num_pages` is a multiple of it.
    pub data_parallel_size: i64,
    /// Hint: tokens per step; 0 = unset.
    pub max_num_tokens: i64,
    /// Hint: concurrent requests; 0 = unset.
    pub max_num_reqs: i64,
}

impl ConfigOptions {
    fn to_raw(&self, stats: &[sys::kvp_memory_stats]) -> Result<sys::kvp_config_options> {
        let mut o = MaybeUninit::<sys::kvp_config_options>::zeroed();
        check(unsafe { sys::kvp_config_options_init(o.as_mut_ptr(), size_of::<sys::kvp_config_options>() as u32) })?;
        let mut o = unsafe { o.assume_init() };
        let (device_type, device_id) = self.device.to_raw();
        o.num_hidden_layers = self.num_hidden_layers;
        o.num_kv_heads = self.num_kv_heads;
        o.max_model_length = self.max_model_length;
        o.kv_head_dim_size = self.head_dim;
        o.k_headdim = self.k_headdim;
        o.v_headdim = self.v_headdim;
        o.hbm_utilization = self.hbm_utilization;
        o.page_size = self.page_size;
        o.kvdtype = self.dtype.to_raw();
        o.version = self.layout.to_raw();
        o.budget_mode = self.budget_mode.to_raw();
        o.flags = if self.reference_budget { sys::KVP_CONFIG_FLAG_REFERENCE_BUDGET } else { 0 }
            | if self.no_safety_margin { sys::KVP_CONFIG_FLAG_NO_SAFETY_MARGIN } else { 0 };
        o.budget_bytes = self.budget_bytes;
        o.safety_margin_bytes = self.safety_margin_bytes;
        if !stats.is_empty() {
            o.memory_stats = stats.as_ptr();
            o.num_memory_stats = u32::try_from(stats.len()).map_err(|_| invalid("too many memory statistics"))?;
        }
        o.device_type = device_type;
        o.device_id = device_id;
        o.kv_head_shards = self.kv_head_shards;
        o.data_parallel_size = self.data_parallel_size;
        o.max_num_tokens = self.max_num_tokens;
        o.max_num_reqs = self.max_num_reqs;
        Ok(o)
    }
}

/// A cache configuration (`kvp_config`, a plain value) and the device it was budgeted for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub(crate) raw: sys::kvp_config,
    pub(crate) device: Device,
}

/// Planning numbers of a config (`kvp_plan`): what fits, before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// Pages per layer, including the reserved null page 0.
    pub num_pages: i64,
    /// Pages a pool can hand out (`num_pages - 1`).
    pub usable_pages: i64,
    pub page_size: i64,
    /// True bytes of one page over all layers (K and V, padding included).
    pub bytes_per_page: i64,
    /// The reference's unpadded bytes of one page over all layers.
    pub reference_bytes_per_page: i64,
    pub bytes_per_token: i64,
    /// Bytes the cache allocates.
    pub total_bytes: i64,
    /// Tokens that fit: `usable_pages * page_size`.
    pub token_capacity: i64,
    /// Sequences of `max_model_length` that fit.
    pub max_concurrent_seqs: i64,
    /// The reference's SMEM page-table bound.
    pub max_num_seqs: i64,
    /// Data-parallel page shards (since 1.3).
    pub data_parallel_size: i64,
    /// Effective KV-head shards (since 1.3).
    pub kv_head_shards: i64,
    /// KV-head shards asked for; differs from `kv_head_shards` when replicated (since 1.3).
    pub requested_kv_head_shards: i64,
    /// What the resolution decided: `sys::KVP_HEAD_SHARDING_*` (since 1.3).
    pub head_sharding: u32,
    /// Storage groups (v3) or combined heads (v2) of every page one device holds (since 1.3).
    pub units_per_device: i64,
    /// Pages each data-parallel shard owns (since 1.3).
    pub pages_per_device: i64,
    /// Bytes each device allocates (since 1.3).
    pub bytes_per_device: i64,
}

/// Derived geometry of a config (`kvp_layout_info`).
pub type LayoutInfo = sys::kvp_layout_info;

/// Which slice of a sharded config a cache or a blob holds (`kvp_shard_info`, since 1.4): its
/// tensor and data ranks, the combined entries, KV heads and global pages it holds.
pub type ShardInfo = sys::kvp_shard_info;

pub(crate) fn empty_shard_info() -> ShardInfo {
    ShardInfo { struct_size: size_of::<ShardInfo>() as u32, ..Default::default() }
}

impl Config {
    /// `kvp_config_create`: validates the options and derives the number of pages from the
    /// memory budget (see [`ConfigOptions`]). Nothing is allocated.
    ///
    /// ```
    /// use kvpages::{Config, ConfigOptions, Dtype};
    /// let cfg = Config::create(&ConfigOptions {
    ///     num_hidden_layers: 32, num_kv_heads: 8, head_dim: 128, max_model_length: 8192,
    ///     dtype: Dtype::Bf16, budget_bytes: 4 << 30, ..Default::default()
    /// })?;
    /// let plan = cfg.plan()?;
    /// assert_eq!(plan.bytes_per_page, 32 * 2 * 8 * 128 * 2 * 128);
    /// assert!(plan.total_bytes <= 4 << 30);
    /// # Ok::<(), kvpages::Error>(())
    /// ```
    pub fn create(options: &ConfigOptions) -> Result<Config> {
        let stats: Vec<sys::kvp_memory_stats> = options.memory_stats.iter().map(|s| s.to_raw()).collect();
        let opts = options.to_raw(&stats)?;
        let mut raw = Self::empty_record();
        check(unsafe { sys::kvp_config_create(&opts, &mut raw) })?;
        Ok(Config { raw, device: options.device })
    }

    /// An empty record that opts in to the version this crate mirrors (`struct_size` and
    /// `abi_version` set, as `KVP_CONFIG_INIT` does): a function that writes a record writes all
    /// of it, where it would write only version 1 into a record without them.
    pub(crate) fn empty_record() -> sys::kvp_config {
        sys::kvp_config {
            struct_size: size_of::<sys::kvp_config>() as u32,
            abi_version: sys::KVP_CONFIG_VERSION,
            ..Default::default()
        }
    }

    /// A record with the reference defaults (`kvp_config_init`: page 128, utilization 0.9, v3,
    /// bf16, -1 for the derived fields, 0 for the model fields), to fill by hand and pass to
    /// [`Config::from_raw`].
    pub fn default_record() -> sys::kvp_config {
        let mut raw = sys::kvp_config::default();
        // Cannot fail with this crate's own struct size.
        unsafe { sys::kvp_config_init(&mut raw, size_of::<sys::kvp_config>() as u32) };
        raw
    }

    /// A config from a C record, checked with `kvp_config_validate` (for a CPU cache).
    pub fn from_raw(raw: sys::kvp_config) -> Result<Config> {
        let cfg = Config { raw, device: Device::Cpu };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `kvp_config_validate`: every field in range and consistent.
    pub fn validate(&self) -> Result<()> {
        check(unsafe { sys::kvp_config_validate(&self.raw) })
    }

    /// The same config for a cache on `device` (the budget is not recomputed).
    pub fn on_device(mut self, device: Device) -> Config {
        self.device = device;
        self
    }

    /// The device [`Cache::new`](crate::Cache::new) puts the cache on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The raw C record.
    pub fn raw(&self) -> &sys::kvp_config {
        &self.raw
    }

    /// Layers.
    pub fn num_hidden_layers(&self) -> i64 {
        self.raw.num_hidden_layers
    }

    /// KV heads per layer.
    pub fn num_kv_heads(&self) -> i64 {
        self.raw.num_kv_heads
    }

    /// Head dim (keys and values).
    pub fn head_dim(&self) -> i64 {
        self.raw.k_headdim
    }

    /// Longest sequence in tokens.
    pub fn max_model_length(&self) -> i64 {
        self.raw.max_model_length
    }

    /// Pages per layer, including the reserved null page 0.
    pub fn num_pages(&self) -> i64 {
        self.raw.num_pages
    }

    /// Tokens per page.
    pub fn page_size(&self) -> i64 {
        self.raw.page_size
    }

    /// Data-parallel page shards (since 1.3; 1 = none).
    pub fn data_parallel_size(&self) -> i64 {
        self.raw.data_parallel_size.max(1)
    }

    /// Effective KV-head shards after the resolution (since 1.3; 1 = none).
    pub fn kv_head_shards(&self) -> i64 {
        self.raw.kv_head_shards.max(1)
    }

    /// Pages one request may hold: `cdiv(max_model_length, page_size)`.
    pub fn max_num_pages_per_req(&self) -> i64 {
        self.raw.max_num_pages_per_req
    }

    /// Storage dtype.
    pub fn dtype(&self) -> Result<Dtype> {
        Dtype::from_raw(self.raw.kvdtype)
    }

    /// Layout version.
    pub fn layout_version(&self) -> Result<Layout> {
        Layout::from_raw(self.raw.version)
    }

    /// `kvp_config_get_layout`: the derived geometry.
    pub fn layout(&self) -> Result<LayoutInfo> {
        let mut li = LayoutInfo { struct_size: size_of::<LayoutInfo>() as u32, ..Default::default() };
        check(unsafe { sys::kvp_config_get_layout(&self.raw, &mut li) })?;
        Ok(li)
    }

    /// `kvp_config_get_shard` (since 1.4): the slice shard (`tp_rank`, `dp_rank`) of this config
    /// holds, without creating it; a rank out of range is [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    pub fn shard(&self, tp_rank: i32, dp_rank: i32) -> Result<ShardInfo> {
        let mut out = empty_shard_info();
        check(unsafe { sys::kvp_config_get_shard(&self.raw, tp_rank, dp_rank, &mut out) })?;
        Ok(out)
    }

    /// `kvp_config_plan`: what fits (pages, bytes, tokens, sequences).
    pub fn plan(&self) -> Result<Plan> {
        let p = self.raw_plan()?;
        Ok(Plan {
            data_parallel_size: p.data_parallel_size,
            kv_head_shards: p.kv_head_shards,
            requested_kv_head_shards: p.requested_kv_head_shards,
            head_sharding: p.head_sharding,
            units_per_device: p.units_per_device,
            pages_per_device: p.pages_per_device,
            bytes_per_device: p.bytes_per_device,
            num_pages: p.num_pages,
            usable_pages: p.usable_pages,
            page_size: p.page_size,
            bytes_per_page: p.bytes_per_page,
            reference_bytes_per_page: p.reference_bytes_per_page,
            bytes_per_token: p.bytes_per_token,
            total_bytes: p.total_bytes,
            token_capacity: p.token_capacity,
            max_concurrent_seqs: p.max_concurrent_seqs,
            max_num_seqs: p.max_num_seqs,
        })
    }

    /// The sharding resolution in words (`kvp_plan::sharding_message`), e.g. "upcast fp8_e4m3fn
    /// → bf16 because 2 storage groups do not split over 4 devices (…)".
    pub fn sharding_message(&self) -> Result<String> {
        let p = self.raw_plan()?;
        let bytes: Vec<u8> = p.sharding_message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn raw_plan(&self) -> Result<sys::kvp_plan> {
        let mut p = sys::kvp_plan { struct_size: size_of::<sys::kvp_plan>() as u32, ..Default::default() };
        check(unsafe { sys::kvp_config_plan(&self.raw, &mut p) })?;
        Ok(p)
    }

    /// `kvp_config_padded_num_slices`: the v2 slice capacity of a step (≤ 0 = the defaults).
    pub fn padded_num_slices(&self, num_tokens: i64, max_num_reqs: i64) -> Result<i64> {
        let mut out = 0;
        check(unsafe { sys::kvp_config_padded_num_slices(&self.raw, num_tokens, max_num_reqs, &mut out) })?;
        Ok(out)
    }

    /// `kvp_config_to_json`: the reference's `to_json()` text.
    pub fn to_json(&self) -> Result<String> {
        crate::metadata::json_text(|buf, cap, written| unsafe { sys::kvp_config_to_json(&self.raw, buf, cap, written) })
    }

    /// `kvp_config_from_json`: reads the reference's JSON (not validated: call
    /// [`Config::validate`]); the config is for a CPU cache.
    pub fn from_json(json: &str) -> Result<Config> {
        let mut raw = Self::empty_record();
        check(unsafe { sys::kvp_config_from_json(json.as_ptr() as *const _, json.len(), &mut raw) })?;
        Ok(Config { raw, device: Device::Cpu })
    }
}
