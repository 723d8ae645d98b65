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
//! scored in one batch and token by token gives bitwise the same logits.
//!
//! Quantized weights are multiplied as llama.cpp does: each activation row is quantized once to
//! 8-bit blocks (Q8_0, Q8_1 or Q8_K), each block's dot product is integer arithmetic, and only
//! the per-block sums are scaled and added in floating point.
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
mod dense;
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

pub use self::attention::Attention;

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

/// A weight matrix of `rows` outputs × `cols` inputs, kept as stored.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

/// The weights of a [`Matrix`], row-major, in the type they were stored in.
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
        Some(Values::Borrowed { owner, ptr: bytes.as_ptr().cast(), len: bytes.len() / size })
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
            Values::Borrowed { owner, ptr, len } => {
                Values::Borrowed { owner: owner.clone(), ptr: *ptr, len: *len }
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

/// The instruction set a product runs on. Detected once; tests force [`Isa::Scalar`] to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
}

impl Isa {
    /// The best this CPU runs, detected on first use.
    pub(crate) fn detected() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if avx2::available() {
                return Isa::Avx2;
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
        Ok(Matrix { rows, cols, storage })
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

    /// A GGUF matrix of `rows` × `cols` in GGML type `dtype`, read in place from `bytes` (its
    /// data in a memory-mapped file), so the weights need no second copy: `None` where the
    /// kernels do not keep `dtype` as stored ([`Matrix::from_qtensor`] dequantizes it) or the
    /// bytes are not aligned for it (the caller reads it out instead).
    ///
    /// # Safety
    ///
    /// As [`Values::borrowed`]: `bytes` must stay valid and unchanged, at the same address, for
    /// as long as `owner` lives.
    pub unsafe fn from_ggml_in_place(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        owner: Arc<dyn Any + Send + Sync>,
        bytes: &[u8],
    ) -> Option<candle_core::Result<Matrix>> {
        // SAFETY: the caller's promise, passed on.
        let storage = unsafe {
            match dtype {
                GgmlDType::F32 => Values::borrowed(owner, bytes).map(Storage::F32),
                GgmlDType::F16 => Values::borrowed(owner, bytes).map(Storage::F16),
                GgmlDType::BF16 => Values::borrowed(owner, bytes).map(Storage::Bf16),
                other => {
                    let kind = quant_kind(other)?;
                    Values::borrowed(owner, bytes).map(|bytes| Storage::Quant { kind, bytes })
                }
            }
        }?;
        Some(Matrix::new(rows, cols, storage))
    }

    /// As [`Matrix::from_ggml_in_place`], copying the bytes out: for bytes not aligned for
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
    /// of [`QuantKind`] as raw blocks; any other GGML type dequantized to f32.
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
    /// than held in memory of their own.
    pub fn in_place(&self) -> bool {
        match &self.storage {
            Storage::F32(v) => v.is_borrowed(),
            Storage::F16(v) => v.is_borrowed(),
            Storage::Bf16(v) => v.is_borrowed(),
            Storage::Quant { bytes, .. } => bytes.is_borrowed(),
        }
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len() * 4,
            Storage::F16(v) => v.len() * 2,
            Storage::Bf16(v) => v.len() * 2,
            Storage::Quant { bytes, .. } => bytes.len(),
        }
    }

    /// A short name of the stored type: "f32", "f16", "bf16", "q4_0", …, "q6_k".
    pub fn kind(&self) -> &'static str {
        storage_name(&self.storage)
    }

    /// One row dequantized into `out` (len cols): the embedding lookup. Panics when `row` is out
    /// of range or `out` is not `cols` long, as slice indexing does.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} of a matrix with {} rows", self.rows);
        assert_eq!(out.len(), self.cols, "a row of {} columns into {} values", self.cols, out.len());
        let span = row * self.cols..(row + 1) * self.cols;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[span]),
            Storage::F16(v) => out.iter_mut().zip(&v[span]).for_each(|(o, w)| *o = w.to_f32()),
            Storage::Bf16(v) => out.iter_mut().zip(&v[span]).for_each(|(o, w)| *o = w.to_f32()),
            Storage::Quant { kind, bytes } => {
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
        let cols = self.cols;
        let row_bytes = self.row_bytes();
        match &mut self.storage {
            Storage::F32(v) => *v = gather(v, cols, order).into(),
            Storage::F16(v) => *v = gather(v, cols, order).into(),
            Storage::Bf16(v) => *v = gather(v, cols, order).into(),
            Storage::Quant { bytes, .. } => *bytes = gather(bytes, row_bytes, order).into(),
        }
    }

    /// y (m × rows, row-major) = x (m × cols, row-major) · Wᵀ. Panics when the slices do not
    /// have those lengths.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.matmul_on(Isa::detected(), x, m, y);
    }

    /// [`Matrix::matmul`] on a chosen instruction set (tests compare scalar with SIMD).
    pub(crate) fn matmul_on(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), m * cols, "x holds {} values, not {m} rows of {cols}", x.len());
        assert_eq!(y.len(), m * rows, "y holds {} values, not {m} rows of {rows}", y.len());
        if m == 0 || rows == 0 {
            return;
        }
        let row_bytes = self.row_bytes();
        let serial = rows * cols < SERIAL_BELOW;
        let xs = |i: usize| &x[i * cols..(i + 1) * cols];
        match &self.storage {
            Storage::F32(w) => {
                let dots = Dots::new(
                    dense::dot_f32,
                    dense::spans_f32(isa),
                    |r| &w[r.start * cols..r.end * cols],
                    xs,
                );
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Storage::F16(w) => {
                let dots = Dots::new(
                    dense::dot_f16,
                    dense::spans_f16(isa),
                    |r| &w[r.start * cols..r.end * cols],
                    xs,
                );
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Storage::Bf16(w) => {
                let dots = Dots::new(
                    dense::dot_bf16,
                    dense::spans_bf16(isa),
                    |r| &w[r.start * cols..r.end * cols],
                    xs,
                );
                drive(rows, m, row_bytes, serial, y, dots);
            }
            Storage::Quant { kind, bytes } => {
                let kind = *kind;
                let w = |r: std::ops::Range<usize>| &bytes[r.start * row_bytes..r.end * row_bytes];
                match Activations::quantize(kind, x, m, cols) {
                    Activations::Q8_0(a) => {
                        let per_row = cols / quant::QK;
                        let a = |i: usize| &a[i * per_row..(i + 1) * per_row];
                        let dots = Dots::new(quant::dot_q8_0_fn(kind), quant::spans_q8_0(kind, isa), w, a);
                        drive(rows, m, row_bytes, serial, y, dots);
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
        match &self.storage {
            Storage::F32(_) => self.cols * 4,
            Storage::F16(_) | Storage::Bf16(_) => self.cols * 2,
            Storage::Quant { kind, .. } => {
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

/// Little-endian values of `N` bytes each.
fn le_values<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|b| from(b.try_into().expect("chunks of N bytes"))).collect()
}

/// The dot products of one matrix with one batch: a span of consecutive weight rows with
/// activation row `i`, or with rows `i0..i0 + ROWS` (or [`WIDE`]) where the instruction set has
/// a kernel for that. Without SIMD kernels ([`Isa::Scalar`], or a type with a scalar kernel
/// only) each weight row is a call of the portable one-row dot product.
struct Dots<W: 'static, A: 'static, FW, FA> {
    one: fn(&[W], &[A]) -> f32,
    spans: Option<Spans<W, A>>,
    weights: FW,
    activations: FA,
}

impl<'a, W, A, FW, FA> Dots<W, A, FW, FA>
where
    W: 'a,
    A: 'a,
    FW: Fn(std::ops::Range<usize>) -> &'a [W] + Sync,
    FA: Fn(usize) -> &'a [A] + Sync,
{
    fn new(one: fn(&[W], &[A]) -> f32, spans: Option<Spans<W, A>>, weights: FW, activations: FA) -> Self {
        Dots { one, spans, weights, activations }
    }

    /// How many of `left` activation rows [`Dots::fill`] takes next: [`WIDE`] or [`ROWS`] where
    /// a kernel takes that many at once, else all that are left (one at a time).
    fn group(&self, left: usize) -> usize {
        match self.spans {
            Some(Spans { wide: Some(_), .. }) if left >= WIDE => WIDE,
            Some(_) if left >= ROWS => ROWS,
            _ => left,
        }
    }

    /// Weight rows `span` times activation rows `i0..i0 + n` into `out`, n rows of `span.len()`.
    fn fill(&self, span: std::ops::Range<usize>, i0: usize, out: &mut [f32]) {
        let len = span.len();
        let w = (self.weights)(span.clone());
        match self.spans {
            Some(Spans { wide: Some(wide), .. }) if out.len() == WIDE * len => {
                let mut outs = out.chunks_exact_mut(len);
                let outs = std::array::from_fn(|_| outs.next().expect("WIDE output rows"));
                wide(w, std::array::from_fn(|k| (self.activations)(i0 + k)), outs);
            }
            Some(spans) if out.len() == ROWS * len => {
                let mut outs = out.chunks_exact_mut(len);
                let outs = std::array::from_fn(|_| outs.next().expect("ROWS output rows"));
                (spans.rows)(w, std::array::from_fn(|k| (self.activations)(i0 + k)), outs);
            }
            Some(spans) => {
                for (k, out) in out.chunks_exact_mut(len).enumerate() {
                    (spans.one)(w, (self.activations)(i0 + k), out);
                }
            }
            None => {
                for (k, out) in out.chunks_exact_mut(len).enumerate() {
                    let x = (self.activations)(i0 + k);
                    for (r, out) in span.clone().zip(out) {
                        *out = (self.one)((self.weights)(r..r + 1), x);
                    }
                }
            }
        }
    }
}

/// Activation rows a span of weight rows is multiplied with at once in a batch.
const ROWS: usize = 4;
/// Activation rows a quantized span is multiplied with at once where a batch has that many.
const WIDE: usize = 8;

/// A span of consecutive weight rows (stored one after another) times one activation row: one
/// output per weight row.
type SpanDot<W, A> = fn(&[W], &[A], &mut [f32]);
/// A span times [`ROWS`] activation rows: output row `k` for activation row `k`.
type SpanRowsDot<W, A> = fn(&[W], [&[A]; ROWS], [&mut [f32]; ROWS]);
/// A span times [`WIDE`] activation rows.
type SpanWideDot<W, A> = fn(&[W], [&[A]; WIDE], [&mut [f32]; WIDE]);

/// The SIMD kernels of one stored type, each over a span of weight rows so that dispatch,
/// checks and setup are paid once per span, not per row. Each output is bitwise what the one-row
/// sequence of operations gives, whichever entry computed it.
struct Spans<W: 'static, A: 'static> {
    one: SpanDot<W, A>,
    rows: SpanRowsDot<W, A>,
    wide: Option<SpanWideDot<W, A>>,
}

impl<W, A> Clone for Spans<W, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W, A> Copy for Spans<W, A> {}

/// Fills `y` (m × rows): element (i, r) is weight row `r` times activation row `i`.
///
/// Work is split over chunks of weight rows only, each chunk one span per group of activation
/// rows, and every element comes out of the one sequence of operations its kernel runs per pair
/// of weight and activation row, so neither `m`, the grouping of rows nor the chunking can change
/// a result. For `m > ROWS` each chunk is small enough to stay in cache while every activation
/// row passes over it (on one thread too), into a buffer that is copied into `y` afterwards
/// (y's rows are not contiguous per chunk).
fn drive<'a, W, A, FW, FA>(
    rows: usize,
    m: usize,
    row_bytes: usize,
    serial: bool,
    y: &mut [f32],
    dots: Dots<W, A, FW, FA>,
) where
    W: Sync + 'a,
    A: Sync + 'a,
    FW: Fn(std::ops::Range<usize>) -> &'a [W] + Sync,
    FA: Fn(usize) -> &'a [A] + Sync,
{
    // Weight rows `span` times every activation row, into `out` (m × span.len()).
    let block = |span: std::ops::Range<usize>, out: &mut [f32]| {
        let len = span.len();
        let mut i = 0;
        while i < m {
            let n = dots.group(m - i);
            dots.fill(span.clone(), i, &mut out[i * len..(i + n) * len]);
            i += n;
        }
    };
    // Chunk `first..first + len`'s outputs (m × len) into their places in `y`.
    let place = |y: &mut [f32], first: usize, out: &[f32]| {
        let len = out.len() / m;
        for (i, part) in out.chunks_exact(len).enumerate() {
            y[i * rows + first..i * rows + first + len].copy_from_slice(part);
        }
    };
    let threads = rayon::current_num_threads();
    // One pass of every activation row group over a chunk that stays in cache, of an even
    // number of rows where it can be: the dense tiles take weight rows in pairs.
    let even = |n: usize| if n > 1 { n & !1 } else { 1 };
    let cached = even(MAX_CHUNK_BYTES / row_bytes.max(1));
    if serial || threads == 1 {
        if m <= ROWS || cached >= rows {
            block(0..rows, y);
            return;
        }
        // One thread still takes the weights a cached chunk at a time: a whole matrix larger
        // than the cache would otherwise be read from memory once per group of activation rows.
        let mut out = vec![0f32; m * cached];
        for first in (0..rows).step_by(cached) {
            let span = first..(first + cached).min(rows);
            let out = &mut out[..m * span.len()];
            block(span, out);
            place(y, first, out);
        }
        return;
    }
    let balanced = rows.div_ceil(4 * threads);
    let least = MIN_CHUNK_BYTES.div_ceil(row_bytes.max(1));
    let mut per_chunk = balanced.max(least);
    if m == 1 {
        y.par_chunks_mut(per_chunk).enumerate().for_each(|(c, out)| {
            let first = c * per_chunk;
            dots.fill(first..first + out.len(), 0, out);
        });
        return;
    }
    per_chunk = even(per_chunk.min(cached));
    let chunks: Vec<(usize, Vec<f32>)> = (0..rows.div_ceil(per_chunk))
        .into_par_iter()
        .map(|c| {
            let span = c * per_chunk..((c + 1) * per_chunk).min(rows);
            let mut out = vec![0f32; m * span.len()];
            block(span.clone(), &mut out);
            (span.start, out)
        })
        .collect();
    for (first, out) in chunks {
        place(y, first, &out);
    }
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
