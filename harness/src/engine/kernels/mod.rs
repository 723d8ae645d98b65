//! PLACEHOLDER (replaced by the kernels branch): the project's CPU matrix kernels' API over
//! candle's own dense arithmetic, so the models can be wired to it meanwhile.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

/// A weight matrix of `rows` outputs × `cols` inputs.
pub(crate) struct Matrix {
    rows: usize,
    cols: usize,
    kind: &'static str,
    values: Vec<f32>,
}

impl Matrix {
    pub(crate) fn from_tensor(t: &Tensor) -> Result<Matrix> {
        let (rows, cols) = t.dims2()?;
        let kind = match t.dtype() {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "f32",
        };
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Matrix { rows, cols, kind, values })
    }

    pub(crate) fn from_qtensor(q: &QTensor) -> Result<Matrix> {
        let t = q.dequantize(&Device::Cpu)?;
        let mut m = Self::from_tensor(&t)?;
        m.kind = "quant";
        Ok(m)
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn bytes(&self) -> usize {
        self.values.len() * 4
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }

    pub(crate) fn row_into(&self, row: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.values[row * self.cols..(row + 1) * self.cols]);
    }

    /// Reorders the rows: row `i` becomes the old row `order[i]`.
    pub(crate) fn permute_rows(&mut self, order: &[usize]) {
        let mut values = Vec::with_capacity(self.values.len());
        for &r in order {
            values.extend_from_slice(&self.values[r * self.cols..(r + 1) * self.cols]);
        }
        self.values = values;
    }

    pub(crate) fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        for i in 0..m {
            let xi = &x[i * self.cols..(i + 1) * self.cols];
            for r in 0..self.rows {
                let w = &self.values[r * self.cols..(r + 1) * self.cols];
                y[i * self.rows + r] = xi.iter().zip(w).map(|(a, b)| a * b).sum();
            }
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let m = x.elem_count() / self.cols;
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; m * self.rows];
        self.matmul(&xs, m, &mut y);
        let mut out = dims;
        *out.last_mut().expect("a matrix input has a last dimension") = self.rows;
        Tensor::from_vec(y, out, x.device())
    }

    pub(crate) fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.values, (self.rows, self.cols), device)
    }
}
