//! Element types: the [`Dtype`] enum, the 16- and 8-bit float newtypes ([`Bf16`], [`F16`],
//! [`F8E4M3Fn`], [`F8E5M2`]) and conversions through `kvp_convert` (the cache's own rounding:
//! nearest, ties to even, no saturation), so the bytes a conversion produces are the bytes the
//! cache stores.
use std::fmt;
use std::os::raw::c_void;
use std::str::FromStr;

use crate::{check, invalid, sys, Error, Result};

/// Element type of cache pages or of input data (`KVP_DTYPE_*`).
///
/// ```
/// use kvpages::Dtype;
/// assert_eq!("bfloat16".parse::<Dtype>().unwrap(), Dtype::Bf16);
/// assert_eq!((Dtype::Bf16.name(), Dtype::Bf16.bits()), ("bf16", 16));
/// assert_eq!("int8".parse::<Dtype>().unwrap_err().kind(), kvpages::ErrorKind::NotFound);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// IEEE binary32 ("fp32").
    F32,
    /// IEEE binary16 ("fp16").
    F16,
    /// bfloat16 ("bf16"), the default storage type.
    #[default]
    Bf16,
    /// 8-bit float e4m3fn, finite only, max 448 ("fp8_e4m3fn").
    F8E4M3Fn,
    /// 8-bit float e5m2 with inf/NaN ("fp8_e5m2", alias "fp8").
    F8E5M2,
    /// IEEE binary64 ("fp64"): known by name only, not a storage type.
    F64,
    /// fp8 e4m3 "fnuz": known by name only.
    F8E4M3Fnuz,
    /// fp8 e4m3 bias 11 "fnuz": known by name only.
    F8E4M3B11Fnuz,
    /// fp8 e5m2 "fnuz": known by name only.
    F8E5M2Fnuz,
}

const DTYPES: [(Dtype, sys::kvp_dtype); 9] = [
    (Dtype::F32, sys::KVP_DTYPE_F32),
    (Dtype::F16, sys::KVP_DTYPE_F16),
    (Dtype::Bf16, sys::KVP_DTYPE_BF16),
    (Dtype::F8E4M3Fn, sys::KVP_DTYPE_F8_E4M3FN),
    (Dtype::F8E5M2, sys::KVP_DTYPE_F8_E5M2),
    (Dtype::F64, sys::KVP_DTYPE_F64),
    (Dtype::F8E4M3Fnuz, sys::KVP_DTYPE_F8_E4M3FNUZ),
    (Dtype::F8E4M3B11Fnuz, sys::KVP_DTYPE_F8_E4M3B11FNUZ),
    (Dtype::F8E5M2Fnuz, sys::KVP_DTYPE_F8_E5M2FNUZ),
];

impl Dtype {
    /// The `KVP_DTYPE_*` value.
    pub fn to_raw(self) -> sys::kvp_dtype {
        DTYPES.iter().find(|(d, _)| *d == self).map(|(_, r)| *r).unwrap_or(sys::KVP_DTYPE_INVALID)
    }

    /// The dtype of a `KVP_DTYPE_*` value; [`ErrorKind::NotFound`](crate::ErrorKind) otherwise.
    pub fn from_raw(raw: sys::kvp_dtype) -> Result<Dtype> {
        DTYPES.iter().find(|(_, r)| *r == raw).map(|(d, _)| *d).ok_or_else(|| {
            Error::new(sys::KVP_ERR_NOT_FOUND, format!("{raw} is not a KVP_DTYPE_* value"))
        })
    }

    /// The canonical reference name (`kvp_dtype_name`): "bf16", "fp8_e5m2", ….
    pub fn name(self) -> &'static str {
        // SAFETY: kvp_dtype_name returns a static string for every known dtype.
        let p = unsafe { sys::kvp_dtype_name(self.to_raw()) };
        unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap_or("?")
    }

    /// Width in bits (`kvp_dtype_bits`): 32, 16, 8 or 64.
    pub fn bits(self) -> u32 {
        unsafe { sys::kvp_dtype_bits(self.to_raw()) }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        self.bits() as usize / 8
    }

    /// Elements per 32-bit word (`kvp_dtype_packing`): 1, 2 or 4; an error for fp64.
    pub fn packing(self) -> Result<i64> {
        let mut out = 0i64;
        check(unsafe { sys::kvp_dtype_packing(self.to_raw(), &mut out) })?;
        Ok(out)
    }
}

impl FromStr for Dtype {
    type Err = Error;

    /// `kvp_dtype_from_string`: every spelling of the reference ("bf16", "bfloat16", "fp8", …).
    fn from_str(s: &str) -> Result<Dtype> {
        let name = std::ffi::CString::new(s).map_err(|_| invalid(format!("dtype name {s:?} contains NUL")))?;
        let mut raw = 0;
        check(unsafe { sys::kvp_dtype_from_string(name.as_ptr(), &mut raw) })?;
        Dtype::from_raw(raw)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Storage layout version of the pages (`KVP_LAYOUT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Plain layout `[pages, page_size, 2*kv_heads, head_dim]` ("v2").
    V2,
    /// Packed layout `[pages, page_size, groups, packing, storage_head_dim]` ("v3"), the default.
    #[default]
    V3,
}

impl Layout {
    /// The `KVP_LAYOUT_*` value.
    pub fn to_raw(self) -> sys::kvp_layout {
        match self {
            Layout::V2 => sys::KVP_LAYOUT_V2,
            Layout::V3 => sys::KVP_LAYOUT_V3,
        }
    }

    /// The layout of a `KVP_LAYOUT_*` value (`KVP_LAYOUT_DEFAULT` is v3).
    pub fn from_raw(raw: sys::kvp_layout) -> Result<Layout> {
        match raw {
            sys::KVP_LAYOUT_V2 => Ok(Layout::V2),
            sys::KVP_LAYOUT_V3 | sys::KVP_LAYOUT_DEFAULT => Ok(Layout::V3),
            _ => Err(Error::new(sys::KVP_ERR_NOT_FOUND, format!("{raw} is not a KVP_LAYOUT_* value"))),
        }
    }

    /// "v2" or "v3" (`kvp_layout_name`).
    pub fn name(self) -> &'static str {
        let p = unsafe { sys::kvp_layout_name(self.to_raw()) };
        unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap_or("?")
    }
}

impl FromStr for Layout {
    type Err = Error;

    /// `kvp_layout_from_string`: "v2" or "v3".
    fn from_str(s: &str) -> Result<Layout> {
        let name = std::ffi::CString::new(s).map_err(|_| invalid(format!("layout name {s:?} contains NUL")))?;
        let mut raw = 0;
        check(unsafe { sys::kvp_layout_from_string(name.as_ptr(), &mut raw) })?;
        Layout::from_raw(raw)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! float_newtype {
    ($(#[$doc:meta])* $name:ident($bits:ty), $dtype:expr) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name($bits);

        impl $name {
            /// The value with this bit pattern (little-endian in the cache).
            pub const fn from_bits(bits: $bits) -> $name {
                $name(bits)
            }

            /// The bit pattern.
            pub const fn to_bits(self) -> $bits {
                self.0
            }

            /// Rounds an f32 the way the cache stores it (`kvp_convert`: nearest, ties to even,
            /// subnormals kept, no saturation).
            pub fn from_f32(x: f32) -> $name {
                let mut out = [$name(0)];
                convert(&[x], &mut out).expect("kvp_convert of a supported dtype pair");
                out[0]
            }

            /// The exact f32 value (`kvp_convert`).
            pub fn to_f32(self) -> f32 {
                let mut out = [0f32];
                convert(&[self], &mut out).expect("kvp_convert of a supported dtype pair");
                out[0]
            }
        }

        impl From<$name> for f32 {
            fn from(x: $name) -> f32 {
                x.to_f32()
            }
        }

        impl Element for $name {
            const DTYPE: Dtype = $dtype;
        }

        impl private::Sealed for $name {}
    };
}

float_newtype!(
    /// A bfloat16 value (the bits of one cache element).
    ///
    /// ```
    /// use kvpages::Bf16;
    /// assert_eq!(Bf16::from_f32(1.5).to_bits(), 0x3fc0);
    /// assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0); // ties to even
    /// ```
    Bf16(u16),
    Dtype::Bf16
);
float_newtype!(
    /// An IEEE binary16 value.
    F16(u16),
    Dtype::F16
);
float_newtype!(
    /// An fp8 e4m3fn value (finite only; out of range becomes NaN).
    F8E4M3Fn(u8),
    Dtype::F8E4M3Fn
);
float_newtype!(
    /// An fp8 e5m2 value (out of range becomes infinity).
    F8E5M2(u8),
    Dtype::F8E5M2
);

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
}

/// A Rust type that is one element of a [`Dtype`]: `f32`, [`F16`], [`Bf16`], [`F8E4M3Fn`],
/// [`F8E5M2`]. Sealed; the types are plain bits (`repr(transparent)` for the newtypes).
pub trait Element: Copy + Default + fmt::Debug + private::Sealed + 'static {
    /// The dtype of this type.
    const DTYPE: Dtype;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

/// An element type [`Cache::concatenate`](crate::Cache::concatenate) accepts as input: f32,
/// f16 or bf16 (the cache converts to its own dtype).
pub trait InputElement: Element {}
impl InputElement for f32 {}
impl InputElement for F16 {}
impl InputElement for Bf16 {}

/// Converts `src` into `dst` (`kvp_convert`, the cache's rounding), element by element.
///
/// ```
/// use kvpages::{convert, Bf16};
/// let mut b = [Bf16::default(); 2];
/// convert(&[1.0f32, -2.5], &mut b)?;
/// let mut f = [0f32; 2];
/// convert(&b, &mut f)?;
/// assert_eq!(f, [1.0, -2.5]);
/// # Ok::<(), kvpages::Error>(())
/// ```
pub fn convert<S: Element, D: Element>(src: &[S], dst: &mut [D]) -> Result<()> {
    if src.len() != dst.len() {
        return Err(invalid(format!("convert: {} source elements, {} destination elements", src.len(), dst.len())));
    }
    // SAFETY: both slices hold `len` elements of the dtypes named (Element types are plain bits).
    unsafe { convert_raw(src.as_ptr() as *const c_void, S::DTYPE, dst.as_mut_ptr() as *mut c_void, D::DTYPE, src.len()) }
}

/// Converts raw little-endian element bytes of one dtype into another (`kvp_convert`).
/// `src.len()` must be a multiple of the source element size and `dst` must have room for the
/// same number of elements of `dst_dtype`. fp64 and the fnuz fp8 types are
/// [`ErrorKind::Unsupported`](crate::ErrorKind).
pub fn convert_bytes(src: &[u8], src_dtype: Dtype, dst: &mut [u8], dst_dtype: Dtype) -> Result<()> {
    let (s, d) = (src_dtype.size_bytes().max(1), dst_dtype.size_bytes().max(1));
    let count = src.len() / s;
    if src.len() % s != 0 || dst.len() != count * d {
        return Err(invalid(format!(
            "convert_bytes: {} bytes of {src_dtype} into {} bytes of {dst_dtype}",
            src.len(),
            dst.len()
        )));
    }
    unsafe { convert_raw(src.as_ptr() as *const c_void, src_dtype, dst.as_mut_ptr() as *mut c_void, dst_dtype, count) }
}

/// Converts a slice of any element type to f32.
pub fn to_f32_vec<T: Element>(src: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    convert(src, &mut out).expect("kvp_convert to f32 of a storage dtype");
    out
}

/// Rounds f32 values to an element type the way the cache stores them.
pub fn from_f32_slice<T: Element>(src: &[f32]) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    convert(src, &mut out).expect("kvp_convert from f32 to a storage dtype");
    out
}

/// # Safety
/// `src` holds `count` elements of `s`, `dst` has room for `count` elements of `d`.
pub(crate) unsafe fn convert_raw(src: *const c_void, s: Dtype, dst: *mut c_void, d: Dtype, count: usize) -> Result<()> {
    check(sys::kvp_convert(src, s.to_raw(), dst, d.to_raw(), count))
}
