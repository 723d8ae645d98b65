//! The project's own CPU matrix kernels: a weight [`Matrix`] kept in the type it was stored in
//! (f32, f16, bf16 or GGML quantized blocks) and multiplied by f32 activations, `y = x · Wᵀ`.
//!
//! Why not candle's: its quantized products hand work to a barrier pool whose threads spin
//! (decode collapses when the cores are shared), Q5_0/Q5_1 have no SIMD kernel, f32/f16 `m = 1`
//! products run on one thread, and bf16 weights are widened to f32 on every call
//! (`shared/reference/candle-cpu-speed.md`).
//!
//! Invariant: every output element is computed by the same sequence of floating-point operations
//! whatever the batch size, the row's place in the batch, the thread count or the chunking. The
//! reduction order depends only on `cols`, the stored type and the instruction set, so a prompt
//! scored in one batch and token by token gives bitwise the same logits. The instruction sets are
//! the portable code, AVX2 (with FMA and F16C) and AVX-512 (`avx512`), whose quantized kernels run
//! the AVX2 kernels' operations more at a time and so give their bits, and whose dense products
//! sum sixteen lanes per pair, an order of their own (`dense` documents each).
//!
//! Dense weights (f32, f16, bf16) are copied into panels of four rows interleaved eight values at
//! a time (`dense`): one stream through memory feeds four rows' running sums, and a tile of a
//! panel by three activation rows keeps its twelve sums in registers (on AVX-512, by six rows and
//! 24 sums). Copied from a mapped file
//! ([`Values::mapped`]), the file's pages are given back as they are copied (`memory`), so the
//! weights are held once.
//!
//! Quantized weights are multiplied as llama.cpp does: each activation row is quantized once to
//! 8-bit blocks (Q8_0, Q8_1 or Q8_K; with AVX2 in SIMD, bit for bit the portable quantizer), each
//! block's dot product is integer arithmetic, and only the per-block sums are scaled and added in
//! floating point. Q4_0, Q5_0 and Q8_0 weights are copied into panels of sixteen rows interleaved
//! four values at a time (`qpanel`), so that a register's sixteen lanes each sum one row's whole
//! block and one scaling step serves sixteen rows; their order is one chain of block steps per
//! pair, the same on every instruction set. The other quantized types are kept as stored, in
//! place.
//!
//! [`silu_times`] is a gated feed-forward block's `silu(gate) · up` in one pass, split over the
//! pool, each element bitwise candle's two operations.
//!
//! [`Attention`] is causal attention one query row at a time over exactly the keys it sees, under
//! the same invariant: a row's result does not depend on how many rows the call holds, so a
//! prompt prefilled in pieces gives the bits it gives prefilled whole.
//!
//! Nothing here runs on a GPU: [`Matrix::forward`] refuses other devices, and the caller keeps
//! candle's path there. Nothing here spins: threads are rayon's global pool, whose idle workers
//! sleep.

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dense;
mod gated;
mod memory;
mod qpanel;
mod quant;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use std::any::Any;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, bail};
use half::{bf16, f16};
use rayon::prelude::*;

use self::quant::Activations;

pub use self::attention::{Attention, Sequence};
pub use self::gated::silu_times;

/// Runs `f` on a thread of the pool the kernels split their products over, and returns what it
/// returns (a panic in `f` reaches the caller).
///
/// A product called from outside the pool hands its chunks to the pool and sleeps until they are
/// done: a sleeping worker is woken, and then the caller, for every product (some 170 per decoded
/// token of a 24-layer model). Called on a worker, a product keeps chunks for its own thread while
/// the others take the rest, and no thread sleeps or wakes unless the pool has run dry. Run a
/// whole forward pass through this, not each product: on two threads a 0.5 B model decoded
/// ×1.22–1.30 as fast in Q4_K_M and ×1.10–1.13 in F16, and prefilled ×1.08–1.33
/// (`xtask bench engine-child`, interleaved).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// A weight matrix of `rows` outputs × `cols` inputs, kept in the type it was stored in.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    held: Held,
}

/// How a [`Matrix`] holds its weights: dense types copied into panels (`dense`), Q4_0, Q5_0 and
/// Q8_0 blocks copied into panels of their own (`qpanel`), the other quantized blocks as stored,
/// in place where they were given so.
#[derive(Clone)]
enum Held {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Panels { kind: QuantKind, bytes: Vec<u8> },
    Quant { kind: QuantKind, bytes: Values<u8> },
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::F32(v) => write!(f, "{} f32 values in panels", v.len()),
            Held::F16(v) => write!(f, "{} f16 values in panels", v.len()),
            Held::Bf16(v) => write!(f, "{} bf16 values in panels", v.len()),
            Held::Panels { kind, bytes } => write!(f, "{} {} bytes in panels", bytes.len(), kind.name()),
            Held::Quant { kind, bytes } => write!(f, "{} {bytes:?}", kind.name()),
        }
    }
}

/// The weights of a [`Matrix`] as given to it, row-major, in the type they were stored in. Dense
/// values and Q4_0, Q5_0 and Q8_0 blocks are copied into the matrix's own layouts; the other
/// quantized blocks are kept as given.
#[derive(Debug, Clone)]
pub enum Storage {
    F32(Values<f32>),
    F16(Values<f16>),
    Bf16(Values<bf16>),
    /// GGML blocks, row after row, exactly as GGUF (and `QTensor::data()`) lays them out.
    Quant {
        kind: QuantKind,
        bytes: Values<u8>,
    },
}

/// The blocks the kernels multiply as stored, by GGML type.
fn quant_kind(dtype: GgmlDType) -> Option<QuantKind> {
    Some(match dtype {
        GgmlDType::Q4_0 => QuantKind::Q4_0,
        GgmlDType::Q4_1 => QuantKind::Q4_1,
        GgmlDType::Q5_0 => QuantKind::Q5_0,
        GgmlDType::Q5_1 => QuantKind::Q5_1,
        GgmlDType::Q8_0 => QuantKind::Q8_0,
        GgmlDType::Q2K => QuantKind::Q2K,
        GgmlDType::Q3K => QuantKind::Q3K,
        GgmlDType::Q4K => QuantKind::Q4K,
        GgmlDType::Q5K => QuantKind::Q5K,
        GgmlDType::Q6K => QuantKind::Q6K,
        _ => return None,
    })
}

/// A type any little-endian bit pattern of its size is a value of, as a file stores it.
pub trait Plain: Copy + Send + Sync + 'static {}
impl Plain for f32 {}
impl Plain for f16 {}
impl Plain for bf16 {}
impl Plain for u8 {}

/// A matrix's values: owned, or read in place from bytes their owner keeps where they are (a
/// memory-mapped model file), so that weights need no second copy in memory.
pub enum Values<T: Plain> {
    Owned(Vec<T>),
    Borrowed {
        /// Keeps the bytes alive and in place.
        owner: Arc<dyn Any + Send + Sync>,
        ptr: *const T,
        len: usize,
        /// Whether the bytes lie in a read-only file mapping, whose pages may be given back once
        /// copied ([`Values::mapped`]).
        mapped: bool,
    },
}

// SAFETY: a borrowed `Values` is a shared, read-only view of memory its owner (itself Send and
// Sync) keeps alive and unchanged; `T` is plain data.
unsafe impl<T: Plain> Send for Values<T> {}
// SAFETY: as above; nothing is ever written through the pointer.
unsafe impl<T: Plain> Sync for Values<T> {}

impl<T: Plain> Values<T> {
    /// `bytes` read in place as values of `T`, kept alive by `owner`; `None` where they cannot be
    /// (misaligned for `T`, not a whole number of values, or a big-endian machine), for the
    /// caller to copy instead.
    ///
    /// # Safety
    ///
    /// `bytes` must stay valid and unchanged, at the same address, for as long as `owner` lives
    /// (memory-mapped from a file nobody writes while it is mapped, say).
    pub unsafe fn borrowed(owner: Arc<dyn Any + Send + Sync>, bytes: &[u8]) -> Option<Values<T>> {
        let size = std::mem::size_of::<T>();
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
        if cfg!(target_endian = "big") || !aligned || !bytes.len().is_multiple_of(size) {
            return None;
        }
        Some(Values::Borrowed { owner, ptr: bytes.as_ptr().cast(), len: bytes.len() / size, mapped: false })
    }

    /// As [`Values::borrowed`], for bytes in a read-only mapping of a file: a matrix that copies
    /// them (dense values go into panels) gives their pages back as it goes, so a model's
    /// weights are not held twice while it loads (they stay in the page cache, shared).
    ///
    /// # Safety
    ///
    /// As [`Values::borrowed`], and the bytes must lie in a read-only mapping of a file, whose
    /// pages read the same after they are given back (never anonymous or heap memory, which
    /// would read as zeros).
    pub unsafe fn mapped(owner: Arc<dyn Any + Send + Sync>, bytes: &[u8]) -> Option<Values<T>> {
        // SAFETY: the caller's promise, passed on.
        let mut values = unsafe { Values::borrowed(owner, bytes) }?;
        if let Values::Borrowed { mapped, .. } = &mut values {
            *mapped = true;
        }
        Some(values)
    }

    /// Whether the values are read in place from their owner's bytes.
    pub fn is_borrowed(&self) -> bool {
        matches!(self, Values::Borrowed { .. })
    }
}

impl<T: Plain> std::ops::Deref for Values<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Values::Owned(v) => v,
            // SAFETY: `borrowed` checked the alignment and length, and its caller promised the
            // bytes stay valid and unchanged while `owner`, which this value holds, lives.
            Values::Borrowed { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T: Plain> From<Vec<T>> for Values<T> {
    fn from(v: Vec<T>) -> Self {
        Values::Owned(v)
    }
}

impl<T: Plain> Clone for Values<T> {
    fn clone(&self) -> Self {
        match self {
            Values::Owned(v) => Values::Owned(v.clone()),
            Values::Borrowed { owner, ptr, len, mapped } => {
                Values::Borrowed { owner: owner.clone(), ptr: *ptr, len: *len, mapped: *mapped }
            }
        }
    }
}

impl<T: Plain> std::fmt::Debug for Values<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.is_borrowed() { "borrowed" } else { "owned" };
        write!(f, "{} values ({how})", self.len())
    }
}

/// The GGML block types kept quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// The instruction set a product runs on. Detected once; tests force [`Isa::Scalar`] to compare,
/// and `cargo xtask bench kernels` times [`Isa::Avx2`] beside [`Isa::Avx512`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// The portable code.
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// [`Isa::Avx2`] and AVX-512 F, BW, DQ, VL and VNNI: the dense products and the batch
    /// products of the blocks of 32 run on their own kernels (`avx512`); the blocks' give the AVX2
    /// kernels' bits, the dense ones sum in sixteen lanes per pair, an order of their own.
    Avx512,
}

impl Isa {
    /// The best this CPU runs, detected on first use.
    pub fn detected() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if avx2::available() {
                return if avx512::available() { Isa::Avx512 } else { Isa::Avx2 };
            }
            Isa::Scalar
        })
    }
}

/// Below this many weights a product runs on the calling thread: waking a sleeping worker and
/// waiting for it costs tens of microseconds, about what one core needs for 512 K weights. (At
/// 64 K, every product of qa-tiny's 1.4 M-parameter models went to the pool and its cells decoded
/// ×0.76 as fast as on candle's inline kernels, `cargo xtask diff` on two certifications.)
const SERIAL_BELOW: usize = 512 * 1024;
/// The fewest weight bytes a parallel chunk holds, so a chunk's work outweighs its scheduling.
const MIN_CHUNK_BYTES: usize = 16 * 1024;
/// For `m > 1`, the most weight bytes a chunk holds, so it stays in L2 while every activation row
/// passes over it.
const MAX_CHUNK_BYTES: usize = 256 * 1024;

impl Matrix {
    /// A matrix from its parts; fails when the storage does not hold `rows × cols` values.
    pub fn new(rows: usize, cols: usize, storage: Storage) -> candle_core::Result<Matrix> {
        let (held, wanted) = match &storage {
            Storage::F32(v) => (v.len(), rows * cols),
            Storage::F16(v) => (v.len(), rows * cols),
            Storage::Bf16(v) => (v.len(), rows * cols),
            Storage::Quant { kind, bytes } => {
                let (values, size) = kind.block();
                if !cols.is_multiple_of(values) {
                    bail!(
                        "failed to build a {} matrix of {rows} × {cols}: its rows must be whole blocks of {values} values",
                        kind.name()
                    );
                }
                (bytes.len(), rows * cols / values * size)
            }
        };
        if held != wanted {
            bail!(
                "failed to build a {} matrix of {rows} × {cols}: the storage holds {held} elements, not {wanted}",
                storage_name(&storage)
            );
        }
        let held = match storage {
            Storage::F32(v) => {
                Held::F32(into_panels(rows, cols, v, |r, c, v, done| dense::pack(r, c, v, done)))
            }
            Storage::F16(v) => {
                Held::F16(into_panels(rows, cols, v, |r, c, v, done| dense::pack(r, c, v, done)))
            }
            Storage::Bf16(v) => {
                Held::Bf16(into_panels(rows, cols, v, |r, c, v, done| dense::pack(r, c, v, done)))
            }
            Storage::Quant { kind, bytes } if qpanel::holds(kind) => Held::Panels {
                kind,
                bytes: into_panels(rows, cols, bytes, |r, c, v, done| qpanel::pack(kind, r, c, v, done)),
            },
            Storage::Quant { kind, bytes } => Held::Quant { kind, bytes },
        };
        Ok(Matrix { rows, cols, held })
    }

    /// A 2-D candle tensor (rows, cols) as stored: F32, F16 and BF16 kept in their type; any other
    /// dtype converted to f32.
    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Matrix> {
        let (rows, cols) = t.dims2()?;
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        let storage = match t.dtype() {
            DType::F32 => Storage::F32(t.to_vec1::<f32>()?.into()),
            DType::F16 => Storage::F16(t.to_vec1::<f16>()?.into()),
            DType::BF16 => Storage::Bf16(t.to_vec1::<bf16>()?.into()),
            _ => Storage::F32(t.to_dtype(DType::F32)?.to_vec1::<f32>()?.into()),
        };
        Matrix::new(rows, cols, storage)
    }

    /// A GGUF matrix of `rows` × `cols` in GGML type `dtype` from `bytes`, its data in a read-only
    /// mapping of the file: quantized blocks are read in place (no second copy); dense values and
    /// Q4_0, Q5_0 and Q8_0 blocks are copied into panels with the file's pages given back as they
    /// go. `None` where the kernels do
    /// not keep `dtype` as stored ([`Matrix::from_qtensor`] dequantizes it) or the bytes are not
    /// aligned for it (the caller reads it out instead, [`Matrix::from_ggml_bytes`]).
    ///
    /// # Safety
    ///
    /// As [`Values::mapped`].
    pub unsafe fn from_ggml_mapped(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        owner: Arc<dyn Any + Send + Sync>,
        bytes: &[u8],
    ) -> Option<candle_core::Result<Matrix>> {
        // SAFETY: the caller's promise, passed on.
        let storage = unsafe {
            match dtype {
                GgmlDType::F32 => Values::mapped(owner, bytes).map(Storage::F32),
                GgmlDType::F16 => Values::mapped(owner, bytes).map(Storage::F16),
                GgmlDType::BF16 => Values::mapped(owner, bytes).map(Storage::Bf16),
                other => {
                    let kind = quant_kind(other)?;
                    Values::mapped(owner, bytes).map(|bytes| Storage::Quant { kind, bytes })
                }
            }
        }?;
        Some(Matrix::new(rows, cols, storage))
    }

    /// As [`Matrix::from_ggml_mapped`], copying the bytes out: for bytes not aligned for
    /// their type, or not to be kept. `None` where the kernels do not keep `dtype` as stored.
    pub fn from_ggml_bytes(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Option<candle_core::Result<Matrix>> {
        let storage = match dtype {
            GgmlDType::F32 => Storage::F32(le_values(bytes, f32::from_le_bytes).into()),
            GgmlDType::F16 => {
                Storage::F16(le_values(bytes, |b| f16::from_bits(u16::from_le_bytes(b))).into())
            }
            GgmlDType::BF16 => {
                Storage::Bf16(le_values(bytes, |b| bf16::from_bits(u16::from_le_bytes(b))).into())
            }
            other => Storage::Quant { kind: quant_kind(other)?, bytes: bytes.to_vec().into() },
        };
        Some(Matrix::new(rows, cols, storage))
    }

    /// Whether a GGML type is kept as stored (the rest is dequantized to f32).
    pub fn keeps(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) || quant_kind(dtype).is_some()
    }

    /// A GGUF tensor (2-D, shape (rows, cols)) as stored: F32/F16/BF16 dense, the quantized types
    /// of [`QuantKind`] as blocks (Q4_0, Q5_0 and Q8_0 in panels); any other GGML type
    /// dequantized to f32.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Matrix> {
        let (rows, cols) = q.shape().dims2()?;
        let kind = match q.dtype() {
            GgmlDType::F32 => {
                return Matrix::new(
                    rows,
                    cols,
                    Storage::F32(le_values(&q.data()?, f32::from_le_bytes).into()),
                );
            }
            GgmlDType::F16 => {
                let v = le_values(&q.data()?, |b| f16::from_bits(u16::from_le_bytes(b)));
                return Matrix::new(rows, cols, Storage::F16(v.into()));
            }
            GgmlDType::BF16 => {
                let v = le_values(&q.data()?, |b| bf16::from_bits(u16::from_le_bytes(b)));
                return Matrix::new(rows, cols, Storage::Bf16(v.into()));
            }
            other => match quant_kind(other) {
                Some(kind) => kind,
                None => return Matrix::from_tensor(&q.dequantize(&Device::Cpu)?),
            },
        };
        let bytes = match q.data()? {
            Cow::Borrowed(b) => b.to_vec(),
            Cow::Owned(b) => b,
        };
        Matrix::new(rows, cols, Storage::Quant { kind, bytes: bytes.into() })
    }

    /// Outputs: the length of a row of `y`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs: the length of a row of `x`.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the weights are read in place from their owner's bytes (a mapped file) rather
    /// than held in memory of their own: quantized blocks given in place are; dense values and
    /// Q8_0 blocks, copied into panels, never are.
    pub fn in_place(&self) -> bool {
        match &self.held {
            Held::F32(_) | Held::F16(_) | Held::Bf16(_) | Held::Panels { .. } => false,
            Held::Quant { bytes, .. } => bytes.is_borrowed(),
        }
    }

    /// Bytes the weights occupy in memory (a dense matrix's rows filled up to whole panels).
    pub fn bytes(&self) -> usize {
        match &self.held {
            Held::F32(v) => v.len() * 4,
            Held::F16(v) => v.len() * 2,
            Held::Bf16(v) => v.len() * 2,
            Held::Panels { bytes, .. } => bytes.len(),
            Held::Quant { bytes, .. } => bytes.len(),
        }
    }

    /// A short name of the stored type: "f32", "f16", "bf16", "q4_0", …, "q6_k".
    pub fn kind(&self) -> &'static str {
        match &self.held {
            Held::F32(_) => "f32",
            Held::F16(_) => "f16",
            Held::Bf16(_) => "bf16",
            Held::Panels { kind, .. } | Held::Quant { kind, .. } => kind.name(),
        }
    }

    /// One row dequantized into `out` (len cols): the embedding lookup. Panics when `row` is out
    /// of range or `out` is not `cols` long, as slice indexing does.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} of a matrix with {} rows", self.rows);
        assert_eq!(out.len(), self.cols, "a row of {} columns into {} values", self.cols, out.len());
        fn gather<T: Copy>(v: &[T], row: usize, out: &mut [f32], widen: impl Fn(T) -> f32) {
            let mut at = 0;
            for (offset, len) in dense::row_pieces(row, out.len()) {
                for (o, &w) in out[at..at + len].iter_mut().zip(&v[offset..offset + len]) {
                    *o = widen(w);
                }
                at += len;
            }
        }
        match &self.held {
            Held::F32(v) => gather(v, row, out, |w| w),
            Held::F16(v) => gather(v, row, out, f16::to_f32),
            Held::Bf16(v) => gather(v, row, out, bf16::to_f32),
            Held::Panels { kind, bytes } => {
                let mut blocks = vec![0u8; self.row_bytes()];
                qpanel::row_blocks(*kind, bytes, row, self.cols, &mut blocks);
                quant::dequantize_row(*kind, &blocks, out);
            }
            Held::Quant { kind, bytes } => {
                let row_bytes = self.row_bytes();
                quant::dequantize_row(*kind, &bytes[row * row_bytes..(row + 1) * row_bytes], out);
            }
        }
    }

    /// Reorders the rows as stored: row `i` becomes the old row `order[i]` (a permutation of
    /// `0..rows`; llama.cpp's q/k layout undone, say). Panics when `order` is not `rows` long.
    pub fn permute_rows(&mut self, order: &[usize]) {
        assert_eq!(order.len(), self.rows, "an order of {} rows for a matrix of {}", order.len(), self.rows);
        fn gather<T: Copy>(values: &[T], width: usize, order: &[usize]) -> Vec<T> {
            order.iter().flat_map(|&r| values[r * width..(r + 1) * width].iter().copied()).collect()
        }
        // Row `i` of the panels takes the pieces of row `order[i]`.
        fn panels<T: Copy>(values: &mut Vec<T>, cols: usize, order: &[usize]) {
            let mut moved = values.clone();
            for (i, &r) in order.iter().enumerate() {
                for ((to, len), (from, _)) in dense::row_pieces(i, cols).zip(dense::row_pieces(r, cols)) {
                    moved[to..to + len].copy_from_slice(&values[from..from + len]);
                }
            }
            *values = moved;
        }
        let cols = self.cols;
        let row_bytes = self.row_bytes();
        match &mut self.held {
            Held::F32(v) => panels(v, cols, order),
            Held::F16(v) => panels(v, cols, order),
            Held::Bf16(v) => panels(v, cols, order),
            Held::Panels { kind, bytes } => {
                let mut rows = vec![0u8; order.len() * row_bytes];
                for (to, &r) in rows.chunks_exact_mut(row_bytes.max(1)).zip(order) {
                    qpanel::row_blocks(*kind, bytes, r, cols, to);
                }
                *bytes = qpanel::pack(*kind, order.len(), cols, &rows, |_| {});
            }
            Held::Quant { bytes, .. } => *bytes = gather(bytes, row_bytes, order).into(),
        }
    }

    /// y (m × rows, row-major) = x (m × cols, row-major) · Wᵀ. Panics when the slices do not
    /// have those lengths.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.matmul_on(Isa::detected(), x, m, y);
    }

    /// [`Matrix::matmul`] on a chosen instruction set (tests compare scalar with SIMD). Panics
    /// when `isa` is past what this CPU runs ([`Isa::detected`]).
    pub fn matmul_on(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), m * cols, "x holds {} values, not {m} rows of {cols}", x.len());
        assert_eq!(y.len(), m * rows, "y holds {} values, not {m} rows of {rows}", y.len());
        if m == 0 || rows == 0 {
            return;
        }
        let row_bytes = self.row_bytes();
        let serial = rows * cols < SERIAL_BELOW;
        let xs = |i: usize| &x[i * cols..(i + 1) * cols];
        // A span of whole panels (the last one filled up with zero rows).
        let panels = |r: std::ops::Range<usize>| {
            debug_assert!(r.start.is_multiple_of(dense::PANEL), "a span starting inside a panel");
            r.start * cols..r.end.next_multiple_of(dense::PANEL) * cols
        };
        match &self.held {
            Held::F32(w) => {
                let dots = Dots::dense(dense::spans_f32(isa), |r| &w[panels(r)], xs);
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Held::F16(w) => {
                let dots = Dots::dense(dense::spans_f16(isa), |r| &w[panels(r)], xs);
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Held::Bf16(w) => {
                let dots = Dots::dense(dense::spans_bf16(isa), |r| &w[panels(r)], xs);
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Held::Panels { kind, bytes: w } => {
                let Activations::Q8_0(a) = Activations::quantize(*kind, isa, x, m, cols) else {
                    unreachable!("the blocks held in panels are multiplied with Q8_0 activations")
                };
                let a: Vec<quant::Q8S> = a.iter().map(quant::Q8S::of).collect();
                let per_row = cols / quant::QK;
                let a = |i: usize| &a[i * per_row..(i + 1) * per_row];
                // A span of whole panels (the last one filled up with zero rows).
                let units = |r: std::ops::Range<usize>| {
                    debug_assert!(r.start.is_multiple_of(qpanel::HEIGHT), "a span starting inside a panel");
                    &w[r.start * row_bytes..r.end.next_multiple_of(qpanel::HEIGHT) * row_bytes]
                };
                let dots = Dots::panels(qpanel::spans(*kind, isa), units, a);
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Held::Quant { kind, bytes } => {
                let kind = *kind;
                let w = |r: std::ops::Range<usize>| &bytes[r.start * row_bytes..r.end * row_bytes];
                match Activations::quantize(kind, isa, x, m, cols) {
                    Activations::Q8_0(_) => {
                        unreachable!("the blocks multiplied with Q8_0 activations are held in panels")
                    }
                    Activations::Q8_1(a) => {
                        let per_row = cols / quant::QK;
                        let a = |i: usize| &a[i * per_row..(i + 1) * per_row];
                        let dots = Dots::new(quant::dot_q8_1_fn(kind), quant::spans_q8_1(kind, isa), w, a);
                        drive(rows, m, row_bytes, serial, y, dots);
                    }
                    Activations::Q8K(a) => {
                        let per_row = cols / quant::QK_K;
                        let a = |i: usize| &a[i * per_row..(i + 1) * per_row];
                        let dots = Dots::new(quant::dot_q8k_fn(kind), quant::spans_q8k(kind, isa), w, a);
                        drive(rows, m, row_bytes, serial, y, dots);
                    }
                }
            }
        }
    }

    /// The same on candle tensors: x of shape [..., cols] (any dtype) → [..., rows] f32. On CPU
    /// only; on another device it errors, and the caller keeps candle's path there.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() {
            bail!(
                "failed to run modelqa-matmul: x is on {:?}, and the kernels run on the CPU only",
                x.device().location()
            );
        }
        let x = if x.dtype() == DType::F32 { x.clone() } else { x.to_dtype(DType::F32)? };
        x.contiguous()?.apply_op1_no_bwd(&MatmulOp(self))
    }

    /// The whole matrix as a dense f32 tensor (for paths that need one).
    pub fn dequantize(&self, device: &Device) -> candle_core::Result<Tensor> {
        let mut all = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            all.chunks_mut(self.cols).enumerate().for_each(|(r, out)| self.row_into(r, out));
        }
        Tensor::from_vec(all, (self.rows, self.cols), device)
    }

    /// Bytes of one stored row.
    fn row_bytes(&self) -> usize {
        match &self.held {
            Held::F32(_) => self.cols * 4,
            Held::F16(_) | Held::Bf16(_) => self.cols * 2,
            Held::Panels { kind, .. } | Held::Quant { kind, .. } => {
                let (values, size) = kind.block();
                self.cols / values * size
            }
        }
    }
}

fn storage_name(storage: &Storage) -> &'static str {
    match storage {
        Storage::F32(_) => "f32",
        Storage::F16(_) => "f16",
        Storage::Bf16(_) => "bf16",
        Storage::Quant { kind, .. } => kind.name(),
    }
}

/// Row-major values copied into panels by `pack` (`dense::pack`, `qpanel::pack`); where they lie
/// in a mapped file, its pages are given back as they are copied.
fn into_panels<T: Plain>(
    rows: usize,
    cols: usize,
    values: Values<T>,
    pack: impl FnOnce(usize, usize, &[T], &(dyn Fn(std::ops::Range<usize>) + Sync)) -> Vec<T>,
) -> Vec<T> {
    let mapped = matches!(values, Values::Borrowed { mapped: true, .. });
    let size = std::mem::size_of::<T>();
    let base = values.as_ptr() as usize;
    pack(rows, cols, &values, &|done: std::ops::Range<usize>| {
        if mapped {
            // SAFETY: `done` lies inside the values, which `Values::mapped`'s caller promised lie
            // in a read-only file mapping; they are not read again here.
            unsafe {
                memory::give_back(std::slice::from_raw_parts(
                    (base + done.start * size) as *const u8,
                    done.len() * size,
                ))
            };
        }
    })
}

/// Little-endian values of `N` bytes each.
fn le_values<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|b| from(b.try_into().expect("chunks of N bytes"))).collect()
}

/// The dot products of one matrix with one batch: a span of consecutive weight rows with
/// activation row `i`, or with rows `i0..i0 + R` (or `V`) where the instruction set has a
/// kernel for that. Without span kernels (a quantized type on [`Isa::Scalar`]) each weight row
/// is a call of the portable one-row dot product.
struct Dots<W: 'static, A: 'static, FW, FA, const R: usize, const V: usize> {
    kernels: Kernels<W, A, R, V>,
    /// Spans start at a multiple of this many rows (a dense matrix's panels).
    granule: usize,
    weights: FW,
    activations: FA,
}

/// The kernels a [`Dots`] runs.
enum Kernels<W: 'static, A: 'static, const R: usize, const V: usize> {
    Spans(Spans<W, A, R, V>),
    /// One weight row with one activation row.
    Row(fn(&[W], &[A]) -> f32),
}

impl<'a, W, A, FW, FA> Dots<W, A, FW, FA, ROWS, WIDE>
where
    W: 'a,
    A: 'a,
    FW: Fn(std::ops::Range<usize>) -> &'a [W] + Sync,
    FA: Fn(usize) -> &'a [A] + Sync,
{
    /// Quantized rows, stored one after another.
    fn new(
        one: fn(&[W], &[A]) -> f32,
        spans: Option<Spans<W, A, ROWS, WIDE>>,
        weights: FW,
        activations: FA,
    ) -> Self {
        let kernels = spans.map_or(Kernels::Row(one), Kernels::Spans);
        Dots { kernels, granule: 1, weights, activations }
    }

    /// Q4_0, Q5_0 and Q8_0 rows in panels of their own (`qpanel`): `weights` gives whole panels
    /// for a span that starts at one.
    fn panels(spans: Spans<W, A, ROWS, WIDE>, weights: FW, activations: FA) -> Self {
        Dots { kernels: Kernels::Spans(spans), granule: qpanel::HEIGHT, weights, activations }
    }
}

impl<'a, W, A, FW, FA> Dots<W, A, FW, FA, { dense::TILE }, { dense::WIDE }>
where
    W: 'a,
    A: 'a,
    FW: Fn(std::ops::Range<usize>) -> &'a [W] + Sync,
    FA: Fn(usize) -> &'a [A] + Sync,
{
    /// Dense rows in panels: `weights` gives whole panels for a span that starts at one.
    fn dense(spans: Spans<W, A, { dense::TILE }, { dense::WIDE }>, weights: FW, activations: FA) -> Self {
        Dots { kernels: Kernels::Spans(spans), granule: dense::PANEL, weights, activations }
    }
}

impl<'a, W, A, FW, FA, const R: usize, const V: usize> Dots<W, A, FW, FA, R, V>
where
    W: 'a,
    A: 'a,
    FW: Fn(std::ops::Range<usize>) -> &'a [W] + Sync,
    FA: Fn(usize) -> &'a [A] + Sync,
{
    /// How many of `left` activation rows [`Dots::fill`] takes next: [`WIDE`] or `R` where
    /// a kernel takes that many at once, else all that are left (one at a time).
    fn group(&self, left: usize) -> usize {
        match self.kernels {
            Kernels::Spans(Spans { wide: Some(_), .. }) if left >= V => V,
            Kernels::Spans(_) if left >= R => R,
            _ => left,
        }
    }

    /// Weight rows `span` times activation rows `i0..i0 + n` into `outs`, n rows of `span.len()`.
    fn fill(&self, span: std::ops::Range<usize>, i0: usize, outs: &mut [&mut [f32]]) {
        let w = (self.weights)(span.clone());
        let n = outs.len();
        match self.kernels {
            Kernels::Spans(Spans { wide: Some(wide), .. }) if n == V => {
                let mut outs = outs.iter_mut();
                let outs = std::array::from_fn(|_| &mut **outs.next().expect("V output rows"));
                wide(w, std::array::from_fn(|k| (self.activations)(i0 + k)), outs);
            }
            Kernels::Spans(spans) if n == R => {
                let mut outs = outs.iter_mut();
                let outs = std::array::from_fn(|_| &mut **outs.next().expect("R output rows"));
                (spans.rows)(w, std::array::from_fn(|k| (self.activations)(i0 + k)), outs);
            }
            Kernels::Spans(spans) => {
                for (k, out) in outs.iter_mut().enumerate() {
                    (spans.one)(w, (self.activations)(i0 + k), out);
                }
            }
            Kernels::Row(one) => {
                for (k, out) in outs.iter_mut().enumerate() {
                    let x = (self.activations)(i0 + k);
                    for (r, out) in span.clone().zip(out.iter_mut()) {
                        *out = one((self.weights)(r..r + 1), x);
                    }
                }
            }
        }
    }
}

/// Activation rows a quantized span is multiplied with at once in a batch.
const ROWS: usize = 4;
/// Activation rows a quantized span is multiplied with at once where a batch has that many.
const WIDE: usize = 8;

/// A span of consecutive weight rows (or panels) times one activation row: one output per
/// weight row.
type SpanDot<W, A> = fn(&[W], &[A], &mut [f32]);
/// A span times `R` activation rows: output row `k` for activation row `k`.
type SpanRowsDot<W, A, const R: usize> = fn(&[W], [&[A]; R], [&mut [f32]; R]);
/// A span times `V` activation rows.
type SpanWideDot<W, A, const V: usize> = fn(&[W], [&[A]; V], [&mut [f32]; V]);

/// The span kernels of one stored type, each over a span of weight rows so that dispatch,
/// checks and setup are paid once per span, not per row: one activation row, `R` ([`ROWS`] for
/// quantized blocks, [`dense::TILE`] for dense panels) and, where the instruction set has a kernel
/// for that many, `V` ([`WIDE`] for quantized blocks, [`dense::WIDE`] for dense panels). Each
/// output is bitwise what the one-pair sequence of operations gives, whichever entry computed it.
struct Spans<W: 'static, A: 'static, const R: usize, const V: usize> {
    one: SpanDot<W, A>,
    rows: SpanRowsDot<W, A, R>,
    wide: Option<SpanWideDot<W, A, V>>,
}

impl<W, A, const R: usize, const V: usize> Clone for Spans<W, A, R, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W, A, const R: usize, const V: usize> Copy for Spans<W, A, R, V> {}

/// `y`'s `m` rows of `rows` values each cut at multiples of `per_chunk`: the pieces of chunk `c`,
/// one per row.
fn pieces(y: &mut [f32], rows: usize, m: usize, per_chunk: usize) -> Vec<Vec<&mut [f32]>> {
    let mut parts: Vec<Vec<&mut [f32]>> =
        (0..rows.div_ceil(per_chunk)).map(|_| Vec::with_capacity(m)).collect();
    for row in y.chunks_mut(rows) {
        for (part, piece) in parts.iter_mut().zip(row.chunks_mut(per_chunk)) {
            part.push(piece);
        }
    }
    parts
}

/// Fills `y` (m × rows): element (i, r) is weight row `r` times activation row `i`.
///
/// Work is split over chunks of weight rows only (whole panels of a dense matrix), each chunk one
/// span per group of activation rows, and every element comes out of the one sequence of
/// operations its kernel runs per pair of weight and activation row, so neither `m`, the grouping
/// of rows nor the chunking can change a result. For `m > R` each chunk is small enough to stay
/// in cache while every activation row passes over it (on one thread too), and writes its pieces
/// of y's rows in place.
fn drive<'a, W, A, FW, FA, const R: usize, const V: usize>(
    rows: usize,
    m: usize,
    row_bytes: usize,
    serial: bool,
    y: &mut [f32],
    dots: Dots<W, A, FW, FA, R, V>,
) where
    W: Sync + 'a,
    A: Sync + 'a,
    FW: Fn(std::ops::Range<usize>) -> &'a [W] + Sync,
    FA: Fn(usize) -> &'a [A] + Sync,
{
    // Weight rows `span` times every activation row, into `outs` (y's m rows' pieces for `span`).
    let block = |span: std::ops::Range<usize>, outs: &mut [&mut [f32]]| {
        let mut i = 0;
        while i < m {
            let n = dots.group(m - i);
            dots.fill(span.clone(), i, &mut outs[i..i + n]);
            i += n;
        }
    };
    let threads = rayon::current_num_threads();
    // Chunks of whole granules (panels), at least one.
    let granule = dots.granule;
    let whole = |n: usize| (n / granule * granule).max(granule);
    let cached = whole(MAX_CHUNK_BYTES / row_bytes.max(1));
    if serial || threads == 1 {
        // One thread still takes the weights a cached chunk at a time (where a batch passes over
        // them more than once): a whole matrix larger than the cache would otherwise be read from
        // memory once per group of activation rows.
        let per_chunk = if m <= R { rows } else { cached.min(rows) };
        for (c, mut outs) in pieces(y, rows, m, per_chunk).into_iter().enumerate() {
            block(c * per_chunk..((c + 1) * per_chunk).min(rows), &mut outs);
        }
        return;
    }
    let balanced = rows.div_ceil(4 * threads);
    let least = MIN_CHUNK_BYTES.div_ceil(row_bytes.max(1));
    let mut per_chunk = balanced.max(least).next_multiple_of(granule);
    if m == 1 {
        y.par_chunks_mut(per_chunk).enumerate().for_each(|(c, out)| {
            let first = c * per_chunk;
            dots.fill(first..first + out.len(), 0, &mut [out]);
        });
        return;
    }
    per_chunk = whole(per_chunk.min(cached));
    pieces(y, rows, m, per_chunk).into_par_iter().enumerate().for_each(|(c, mut outs)| {
        block(c * per_chunk..((c + 1) * per_chunk).min(rows), &mut outs);
    });
}

/// [`Matrix::matmul`] as a candle op on a contiguous f32 tensor.
struct MatmulOp<'a>(&'a Matrix);

impl CustomOp1 for MatmulOp<'_> {
    fn name(&self) -> &'static str {
        "modelqa-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let matrix = self.0;
        let CpuStorage::F32(all) = storage else {
            bail!("failed to run modelqa-matmul: x is {:?}, not f32", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("failed to run modelqa-matmul: x is not contiguous");
        };
        let mut dims = layout.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == matrix.cols => *last = matrix.rows,
            _ => bail!(
                "failed to run modelqa-matmul: x of shape {:?} does not end in the matrix's {} columns",
                layout.dims(),
                matrix.cols
            ),
        }
        let x = &all[start..end];
        let m = layout.dims()[..layout.dims().len() - 1].iter().product();
        let mut y = vec![0f32; m * matrix.rows];
        matrix.matmul(x, m, &mut y);
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}
