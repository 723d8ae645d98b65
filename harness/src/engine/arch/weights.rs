//! Where a model's weights come from, and the two layers that read them as stored: a linear
//! projection and an embedding table. On CPU a model of the project's own runs its matrices on
//! the project's kernels (`engine::kernels`), kept in the file's own type (f16, bf16, GGUF's
//! quantized blocks) and never widened to f32; elsewhere (a GPU, an architecture candle runs)
//! every tensor comes from candle's `VarBuilder` and runs on candle's kernels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::format::gguf::StoredMatrix;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use modelqa_kernels::Matrix;

/// The matrices of a model under their Hugging Face names, each handed out once.
pub(crate) trait MatrixSource: Send + Sync {
    /// The matrix `name` as stored; `None` where the source has no such tensor.
    fn take(&self, name: &str) -> Option<Result<Matrix>>;
}

/// A model's weights: every tensor through `vb`, and the matrices the project's kernels run,
/// where there is a source of them.
#[derive(Clone)]
pub(crate) struct Weights {
    vb: VarBuilder<'static>,
    matrices: Option<Arc<dyn MatrixSource>>,
}

impl Weights {
    /// Weights from `vb` alone: everything runs on candle's kernels.
    pub(crate) fn candle(vb: VarBuilder<'static>) -> Self {
        Weights { vb, matrices: None }
    }

    /// Weights whose matrices come from `matrices` (on CPU), the rest from `vb`.
    pub(crate) fn with_matrices(vb: VarBuilder<'static>, matrices: Arc<dyn MatrixSource>) -> Self {
        Weights { vb, matrices: Some(matrices) }
    }

    /// The same weights under `prefix`.
    pub(super) fn pp(&self, prefix: impl ToString) -> Self {
        Weights { vb: self.vb.pp(prefix), matrices: self.matrices.clone() }
    }

    /// candle's view, for the tensors no kernel reads (norms, biases) and candle's own models.
    pub(super) fn vb(&self) -> &VarBuilder<'static> {
        &self.vb
    }

    pub(crate) fn into_vb(self) -> VarBuilder<'static> {
        self.vb
    }

    fn matrix(&self, rows: usize, cols: usize) -> Result<Option<Arc<Matrix>>> {
        let Some(source) = &self.matrices else { return Ok(None) };
        let name = format!("{}.weight", self.vb.prefix());
        let Some(matrix) = source.take(&name).transpose()? else { return Ok(None) };
        if (matrix.rows(), matrix.cols()) != (rows, cols) {
            candle_core::bail!(
                "tensor `{name}` is {}×{}, where the model expects {rows}×{cols}",
                matrix.rows(),
                matrix.cols()
            );
        }
        Ok(Some(Arc::new(matrix)))
    }

    /// The linear projection at this prefix: `weight` (`out × in`) and, with `bias`, `bias`.
    pub(super) fn linear(&self, inputs: usize, outputs: usize, bias: bool) -> Result<Linear> {
        let Some(matrix) = self.matrix(outputs, inputs)? else {
            return Ok(Linear::Candle(candle_nn::linear_b(inputs, outputs, bias, self.vb.clone())?));
        };
        let bias = if bias { Some(self.vb.get(outputs, "bias")?) } else { None };
        Ok(Linear::Kernel { matrix, bias })
    }

    /// The embedding table at this prefix (`weight`, `vocab × hidden`).
    pub(super) fn embedding(&self, vocab: usize, hidden: usize) -> Result<Embedding> {
        match self.matrix(vocab, hidden)? {
            Some(table) => Ok(Embedding::Kernel { table, device: self.vb.device().clone() }),
            None => Ok(Embedding::Candle(candle_nn::embedding(vocab, hidden, self.vb.clone())?)),
        }
    }
}

/// `x · Wᵀ (+ b)` on candle's kernels or the project's.
#[derive(Clone)]
pub(crate) enum Linear {
    Candle(candle_nn::Linear),
    Kernel { matrix: Arc<Matrix>, bias: Option<Tensor> },
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(l) => l.forward(xs),
            Linear::Kernel { matrix, bias } => {
                let ys = if IN_BATCH.get() && crate::config::planted_batch_reduction() {
                    // The planted fault: a batch multiplies on another kernel than one row does.
                    let w = matrix.dequantize(xs.device())?;
                    xs.to_dtype(DType::F32)?.broadcast_matmul(&w.t()?)?
                } else {
                    matrix.forward(xs)?
                };
                match bias {
                    None => Ok(ys),
                    Some(b) => ys.broadcast_add(b),
                }
            }
        }
    }
}

thread_local! {
    /// Whether this thread is computing a batch of sequences ([`batched`]), for the planted fault
    /// `QUALIFY_FAULT_BATCH_REDUCTION` alone.
    static IN_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f`, run as a batch of several sequences: with `QUALIFY_FAULT_BATCH_REDUCTION` planted, its
/// projections multiply on another kernel than a single sequence's do.
pub(super) fn batched<T>(f: impl FnOnce() -> T) -> T {
    IN_BATCH.set(true);
    let result = f();
    IN_BATCH.set(false);
    result
}

/// A token embedding table, which a tied model's head multiplies by as well.
#[derive(Clone)]
pub(crate) enum Embedding {
    Candle(candle_nn::Embedding),
    /// Rows dequantized as they are looked up.
    Kernel {
        table: Arc<Matrix>,
        device: Device,
    },
}

impl Embedding {
    /// The head of a model whose output weights are its embedding table.
    pub(super) fn as_head(&self) -> Linear {
        match self {
            Embedding::Candle(e) => Linear::Candle(candle_nn::Linear::new(e.embeddings().clone(), None)),
            Embedding::Kernel { table, .. } => Linear::Kernel { matrix: table.clone(), bias: None },
        }
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Candle(e) => e.forward(ids),
            Embedding::Kernel { table, device } => {
                let ids = ids.to_dtype(DType::U32)?;
                let shape = ids.dims().to_vec();
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let width = table.cols();
                let mut values = vec![0f32; ids.len() * width];
                for (&id, row) in ids.iter().zip(values.chunks_exact_mut(width)) {
                    let id = id as usize;
                    if id >= table.rows() {
                        candle_core::bail!(
                            "token id {id} is outside the embedding table ({} rows)",
                            table.rows()
                        );
                    }
                    table.row_into(id, row);
                }
                let mut dims = shape;
                dims.push(width);
                Tensor::from_vec(values, dims, device)
            }
        }
    }
}

/// The matrices of memory-mapped safetensors files, in their stored type: f32, f16 and bf16 copied
/// into the kernels' panels, the mapped file's pages given back as they are copied (so the weights
/// are held once), from the mapping where the data of a tensor is aligned for its type, else read
/// out first.
pub(crate) struct SafetensorsMatrices(Arc<candle_core::safetensors::MmapedSafetensors>);

impl SafetensorsMatrices {
    pub(crate) fn new(files: candle_core::safetensors::MmapedSafetensors) -> Self {
        SafetensorsMatrices(Arc::new(files))
    }
}

impl MatrixSource for SafetensorsMatrices {
    fn take(&self, name: &str) -> Option<Result<Matrix>> {
        use modelqa_kernels::{Storage, Values};
        let view = self.0.get(name).ok()?;
        if let [rows, cols] = *view.shape() {
            let owner: Arc<dyn std::any::Any + Send + Sync> = self.0.clone();
            let bytes = view.data();
            // SAFETY: the bytes lie in candle's read-only mapping of the file, which `owner` maps for
            // as long as it lives; the harness never writes a model file while it reads it
            // (`hf_parts`).
            let storage = unsafe {
                match view.dtype() {
                    safetensors::Dtype::F32 => Values::mapped(owner, bytes).map(Storage::F32),
                    safetensors::Dtype::F16 => Values::mapped(owner, bytes).map(Storage::F16),
                    safetensors::Dtype::BF16 => Values::mapped(owner, bytes).map(Storage::Bf16),
                    _ => None,
                }
            };
            if let Some(storage) = storage {
                return Some(Matrix::new(rows, cols, storage));
            }
        }
        Some(self.0.load(name, &Device::Cpu).and_then(|t| Matrix::from_tensor(&t)))
    }
}

/// A GGUF file's matrices as stored: quantized blocks read in place from the mapped file, dense
/// ones copied into the kernels' panels with the file's pages given back (read out first where
/// not aligned for their type), each with the head count whose q/k rows llama.cpp permuted for
/// its interleaved rotary embedding (undone on the rows as handed out, which copies those).
pub(crate) struct GgufMatrices {
    mapped: Arc<memmap2::Mmap>,
    matrices: Mutex<BTreeMap<String, (StoredMatrix, Option<usize>)>>,
}

impl GgufMatrices {
    pub(crate) fn new(
        mapped: Arc<memmap2::Mmap>,
        matrices: BTreeMap<String, (StoredMatrix, Option<usize>)>,
    ) -> Self {
        GgufMatrices { mapped, matrices: Mutex::new(matrices) }
    }
}

impl MatrixSource for GgufMatrices {
    fn take(&self, name: &str) -> Option<Result<Matrix>> {
        let (stored, permuted) =
            self.matrices.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name)?;
        let matrix = match stored {
            StoredMatrix::Read(q) => Matrix::from_qtensor(&q),
            StoredMatrix::Mapped { dtype, rows, cols, bytes } => {
                let data = &self.mapped[bytes];
                let owner: Arc<dyn std::any::Any + Send + Sync> = self.mapped.clone();
                // SAFETY: the bytes lie in a read-only mapping of the file, which `owner` keeps
                // mapped for as long as it lives; the harness never writes a model file while it
                // reads it.
                let in_place = unsafe { Matrix::from_ggml_mapped(dtype, rows, cols, owner, data) };
                match in_place.or_else(|| Matrix::from_ggml_bytes(dtype, rows, cols, data)) {
                    Some(m) => m,
                    None => {
                        Err(candle_core::Error::Msg(format!("`{name}`: {dtype:?} is not kept as stored")))
                    }
                }
            }
        };
        Some(matrix.map(|mut m| {
            if let Some(heads) = permuted {
                m.permute_rows(&unpermuted_order(m.rows(), heads));
            }
            m
        }))
    }
}

/// An APR file's matrices: f32, f16 and bf16 copied from the mapped file into the kernels' panels
/// with the file's pages given back (read out first where not aligned for their type), the APR
/// quantizations dequantized to f32 one matrix at a time as the model takes them.
pub(crate) struct AprMatrices {
    mapped: Arc<memmap2::Mmap>,
    entries: Mutex<BTreeMap<String, crate::format::apr::AprEntry>>,
}

impl AprMatrices {
    pub(crate) fn new(mapped: Arc<memmap2::Mmap>, entries: Vec<crate::format::apr::AprEntry>) -> Self {
        let entries = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        AprMatrices { mapped, entries: Mutex::new(entries) }
    }
}

impl MatrixSource for AprMatrices {
    fn take(&self, name: &str) -> Option<Result<Matrix>> {
        use crate::format::apr::AprDType;
        use modelqa_kernels::{Storage, Values};
        let entry = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name)?;
        let &[rows, cols] = &entry.shape[..] else {
            return Some(Err(candle_core::Error::Msg(format!(
                "`{name}` is not a matrix: {:?}",
                entry.shape
            ))));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let data = &self.mapped[entry.bytes.clone()];
        let owner = || -> Arc<dyn std::any::Any + Send + Sync> { self.mapped.clone() };
        // SAFETY: the bytes lie in a read-only mapping of the file, which the owner keeps mapped
        // for as long as it lives; the harness never writes a model file while it reads it.
        let in_place = unsafe {
            match entry.dtype {
                AprDType::F32 => Values::mapped(owner(), data).map(Storage::F32),
                AprDType::F16 => Values::mapped(owner(), data).map(Storage::F16),
                AprDType::Bf16 => Values::mapped(owner(), data).map(Storage::Bf16),
                _ => None,
            }
        };
        let storage = match in_place {
            Some(storage) => storage,
            None => match crate::format::apr::dequantize_bytes(name, entry.dtype, &entry.shape, data) {
                Ok(values) => Storage::F32(values.into()),
                Err(e) => return Some(Err(candle_core::Error::Msg(e.to_string()))),
            },
        };
        Some(Matrix::new(rows, cols, storage))
    }
}

/// The row order undoing llama.cpp's q/k permutation of `rows` rows in `heads` heads: within a
/// head of width `d`, row `j·d/2 + i` of the Hugging Face layout is the file's row `2i + j`.
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    let half = d / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                order[h * d + j * half + i] = h * d + 2 * i + j;
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gguf_files_matrices_are_read_in_place_but_those_reordered_and_q8_0() {
        let model =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qa-tiny/qa-tiny-llama");
        let cache = tempfile::tempdir().unwrap();
        for q in [crate::matrix::Quantization::Q8_0, crate::matrix::Quantization::Q4KM] {
            let file = crate::format::convert::artifact(&model, crate::matrix::Format::Gguf(q), cache.path())
                .unwrap();
            let stored = crate::format::gguf::read_stored(&file).unwrap();
            let names: Vec<String> = stored.matrices.keys().cloned().collect();
            let source = GgufMatrices::new(stored.mapped, stored.matrices);
            let mut kept = 0;
            for name in &names {
                let m = source.take(name).unwrap().unwrap();
                // llama.cpp's q/k rows are put back in order, which copies them; Q4_0, Q5_0 and
                // Q8_0 blocks are copied into panels of sixteen rows (the kernels' own layout).
                let reordered = name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight");
                let copied = reordered || ["q4_0", "q5_0", "q8_0"].contains(&m.kind());
                assert_eq!(m.in_place(), !copied, "{q}: {name} ({})", m.kind());
                kept += usize::from(m.in_place());
            }
            if q == crate::matrix::Quantization::Q4KM {
                assert!(kept >= names.len() / 2, "{q}: {kept} of {} matrices in place", names.len());
            }
        }
    }

    #[test]
    fn an_apr_files_float_matrices_are_copied_into_panels_and_its_quantized_ones_dequantized() {
        use crate::format::apr::{self, AprDType, AprFile, AprTensor};
        let (rows, cols) = (4usize, 64usize);
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let halves = |f: fn(f32) -> [u8; 2]| values.iter().flat_map(|&x| f(x)).collect::<Vec<u8>>();
        let cases = [
            ("a.f32", AprDType::F32, values.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
            ("b.f16", AprDType::F16, halves(|x| half::f16::from_f32(x).to_le_bytes())),
            ("c.bf16", AprDType::Bf16, halves(|x| half::bf16::from_f32(x).to_le_bytes())),
            ("d.q8", AprDType::AprQ8, apr::quantize_q8(&values)),
        ];
        let file = AprFile {
            flags: apr::flags::LAYOUT_ROW_MAJOR,
            metadata: serde_json::Map::new(),
            tensors: cases
                .iter()
                .map(|(name, dtype, data)| AprTensor {
                    name: name.to_string(),
                    dtype: *dtype,
                    shape: vec![rows as u64, cols as u64],
                    data: data.clone(),
                })
                .collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.apr");
        std::fs::write(&path, apr::write(&file).unwrap()).unwrap();
        let mapped = Arc::new(unsafe { memmap2::Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap());
        let index = apr::index(&mapped).unwrap();
        let source = AprMatrices::new(mapped.clone(), index.entries);
        for ((name, dtype, data), t) in cases.iter().zip(&file.tensors) {
            let m = source.take(name).unwrap().unwrap();
            assert!(!m.in_place(), "{name}: held by the matrix, not read from the file");
            let want = apr::dequantize_bytes(name, *dtype, &t.shape, data).unwrap();
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                m.row_into(r, &mut row);
                assert_eq!(row, want[r * cols..(r + 1) * cols], "{name} row {r}");
            }
        }
        assert!(source.take("a.f32").is_none(), "each matrix is handed out once");
    }

    #[test]
    fn unpermuting_rows_undoes_the_converters_permutation() {
        // The writer's permutation as format::gguf applies it, on row indices.
        let (heads, d) = (3, 8);
        let rows =
            Tensor::arange(0u32, (heads * d) as u32, &Device::Cpu).unwrap().reshape((heads * d, 1)).unwrap();
        let permuted = crate::format::gguf::permute_qk(&rows, heads, false).unwrap();
        let permuted: Vec<u32> = permuted.flatten_all().unwrap().to_vec1().unwrap();
        let order = unpermuted_order(heads * d, heads);
        let restored: Vec<u32> = order.iter().map(|&r| permuted[r]).collect();
        assert_eq!(restored, (0..(heads * d) as u32).collect::<Vec<_>>());
    }
}
