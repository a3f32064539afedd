//! Element-wise steps of the transformer layers, spread over all CPU threads.
//!
//! candle 0.9 runs its element-wise CPU kernels (bias adds, GELU, residual adds) on one thread.
//! In BLIP-large's image encoder one such step touches 19 million floats for a batch of 8 images,
//! so on a 2-core machine these steps took about as much wall time as the parallel matrix
//! products. The functions here work in place and in parallel blocks on contiguous f32 tensors
//! on the CPU. Bias and residual adds are bit for bit candle's. GELU and softmax use `exp` and
//! `erf` approximations that the compiler vectorises, within a few ulp of candle's scalar libm
//! calls, which PyTorch does not match bit for bit either. Every other device and dtype goes
//! through candle's own ops, so GPU runs are unchanged.

use candle_core::{CpuStorage, DType, Storage, InplaceOp1, InplaceOp2, Layout, Module, Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling costs little next to the arithmetic,
/// small enough that every thread gets work on a single image's activations.
const BLOCK: usize = 1 << 14;

/// A linear layer, `x Wᵀ + b`, optionally followed by an activation. On the CPU in f32 the bias
/// add and a GELU run in place on the matrix product, in parallel.
///
/// The weight is kept transposed, `[in, out]` and contiguous. With transformers' `[out, in]`
/// layout, gemm (candle's CPU matrix product) repacked the whole weight matrix on every call,
/// which was a fifth of the CPU time of a decoding step with a few rows.
pub struct Dense {
    weight_t: Tensor,
    bias: Tensor,
    activation: Option<Activation>,
}

impl Dense {
    /// Loads `weight` `[out, in]` and `bias` `[out]` as transformers' `nn.Linear` stores them.
    pub fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Self::new(&weight, bias)
    }

    /// Builds the layer from `weight` `[out, in]` and `bias` `[out]`.
    pub fn new(weight: &Tensor, bias: Tensor) -> Result<Self> {
        let weight_t = transpose(weight)?;
        Ok(Self { weight_t, bias, activation: None })
    }

    /// Applies `activation` to the layer's output.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = Some(activation);
        self
    }

    fn fused_gelu(&self) -> bool {
        matches!(self.activation, Some(Activation::Gelu))
    }
}

impl Dense {
    /// Returns `xs Wᵀ` for `xs` of shape `[..., in]`, as one matrix product over all rows.
    fn product(&self, xs: &Tensor) -> Result<Tensor> {
        let (in_dim, out_dim) = self.weight_t.dims2()?;
        let mut shape = xs.dims().to_vec();
        let rows = xs.elem_count() / in_dim.max(1);

        let product = xs.reshape((rows, in_dim))?.matmul(&self.weight_t)?;

        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        product.reshape(shape)
    }
}

impl Module for Dense {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let product = self.product(xs)?;

        if is_cpu_f32(&product) && product.is_contiguous() && self.bias.is_contiguous() {
            let gelu = self.fused_gelu();
            product.inplace_op2(&self.bias, &BiasAdd { gelu })?;
            return match self.activation {
                Some(activation) if !gelu => product.apply(&activation),
                _ => Ok(product),
            };
        }

        let biased = product.broadcast_add(&self.bias)?;
        match self.activation {
            Some(activation) => biased.apply(&activation),
            None => Ok(biased),
        }
    }
}

/// Side of the square tiles [`transpose`] copies: 64 × 64 floats, 16 KiB, so a tile's source
/// rows and destination rows stay in the L1 cache while it is copied.
const TILE: usize = 64;

/// Returns the transpose of a matrix as a new contiguous tensor.
///
/// Loading BLIP-large transposes about 1.6 GB of weights (see [`Dense`]). candle copies a
/// transposed view one element at a time on one thread, which took a tenth of the CPU time of
/// loading the model and encoding two images (`perf record` of `generate_tokens`). A contiguous f32 CPU matrix is copied here in square
/// tiles, blocks of destination rows in parallel. Other tensors go through candle.
fn transpose(matrix: &Tensor) -> Result<Tensor> {
    let (rows, columns) = matrix.dims2()?;
    if !(is_cpu_f32(matrix) && matrix.is_contiguous()) || rows == 0 || columns == 0 {
        return matrix.t()?.contiguous();
    }

    let (storage, layout) = matrix.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("transpose: expected contiguous f32 storage on the CPU");
    };
    let source = &values[start..end];

    let mut transposed = vec![0f32; rows * columns];
    transposed.par_chunks_mut(TILE * rows).enumerate().for_each(|(block, destination)| {
        let first_column = block * TILE;
        for first_row in (0..rows).step_by(TILE) {
            copy_tile(source, columns, (first_row, first_column), destination, rows);
        }
    });
    drop(storage);

    Tensor::from_vec(transposed, (columns, rows), matrix.device())
}

/// Copies the tile of `source` (rows of `columns` values) at `(first_row, first_column)` into
/// `destination`, which contains the transposed rows from `first_column` on, each `rows` long.
fn copy_tile(source: &[f32], columns: usize, (first_row, first_column): (usize, usize), destination: &mut [f32], rows: usize) {
    let tile_rows = TILE.min(rows - first_row);
    for (offset, out_row) in destination.chunks_exact_mut(rows).enumerate() {
        let column = first_column + offset;
        let out = &mut out_row[first_row..first_row + tile_rows];
        for (i, value) in out.iter_mut().enumerate() {
            *value = source[(first_row + i) * columns + column];
        }
    }
}

/// Returns `sum + residual`, adding in place into `sum` when both are contiguous f32 CPU tensors
/// of one shape. `sum` must own its storage (a fresh op output, not a view of another tensor).
pub fn add_residual(sum: Tensor, residual: &Tensor) -> Result<Tensor> {
    let same_layout = sum.shape() == residual.shape() && sum.is_contiguous() && residual.is_contiguous();
    if is_cpu_f32(&sum) && is_cpu_f32(residual) && same_layout {
        sum.inplace_op2(residual, &Add)?;
        return Ok(sum);
    }
    sum + residual
}

/// Softmax over the last dimension of attention scores without masks. A contiguous f32 CPU
/// tensor is overwritten in place, in parallel and with a vectorised `exp`, so `scores` must own
/// its storage. Other tensors go through candle's op.
pub fn softmax_last_dim(scores: Tensor) -> Result<Tensor> {
    if is_cpu_f32(&scores) && scores.is_contiguous() && scores.rank() > 0 {
        scores.inplace_op1(&Softmax)?;
        return Ok(scores);
    }
    // candle's CPU kernel rejects strided input.
    candle_nn::ops::softmax_last_dim(&scores.contiguous()?)
}

/// Multi-head self-attention of one image's tokens on the CPU, one head per task.
///
/// `qkv` is the fused projection `[1, tokens, 3 · heads · head_dim]` (queries, keys, values).
/// Returns `softmax(q kᵀ · scale) v` with the heads merged, `[1, tokens, heads · head_dim]`, or
/// `None` where this path does not apply (not a contiguous f32 CPU tensor, or more threads than
/// heads), and the caller then uses candle's batched ops.
///
/// candle's batched matrix product splits each head's small product across all threads, with a
/// synchronisation per product, and the heads had to be copied out of `qkv` and merged back.
/// Here each task runs both products of one head on one thread, reading queries, keys and values
/// in place through strides and writing its output columns straight into the merged result.
pub fn attention_per_head(qkv: &Tensor, heads: usize, scale: f32) -> Result<Option<Tensor>> {
    let (batch, tokens, fused) = qkv.dims3()?;
    let usable = is_cpu_f32(qkv) && qkv.is_contiguous() && batch == 1 && heads > 0 && fused % (3 * heads) == 0;
    if !usable || rayon::current_num_threads() > heads {
        return Ok(None);
    }

    let width = fused / 3;
    let (storage, layout) = qkv.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let shape = HeadShape { tokens, width, head_dim: width / heads };
    let merged = attend_heads(&values[start..end], shape, heads, scale);
    drop(storage);

    Tensor::from_vec(merged, (1, tokens, width), qkv.device()).map(Some)
}

/// Sizes of one attention call: `width` is `heads · head_dim`.
#[derive(Clone, Copy)]
struct HeadShape {
    tokens: usize,
    width: usize,
    head_dim: usize,
}

/// A pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);

// SAFETY: every task writes a disjoint set of columns of the buffer behind the pointer.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

fn attend_heads(qkv: &[f32], shape: HeadShape, heads: usize, scale: f32) -> Vec<f32> {
    let HeadShape { tokens, width, .. } = shape;
    assert_eq!(qkv.len(), tokens * 3 * width);

    let mut merged = vec![0f32; tokens * width];
    let output = SharedOutput(merged.as_mut_ptr());

    (0..heads).into_par_iter().for_each_init(
        || vec![0f32; tokens * tokens],
        |scores, head| {
            // SAFETY: `qkv` contains `tokens` rows of `3 · width` values and `merged` contains
            // `tokens` rows of `width`, as asserted and allocated above. Head `head` reads and writes
            // `head_dim` columns from `head · head_dim`, inside those rows, and no other task
            // writes the same columns of `merged`.
            unsafe { attend_head(qkv, shape, head, scale, scores, output) }
        },
    );
    merged
}

/// Computes one head: `scores = q kᵀ · scale`, a softmax over each row of `scores`, then
/// `scores · v` into the head's columns of the merged output.
///
/// # Safety
/// `qkv` must contain `tokens` rows of `3 · width` values, `output` must point to `tokens` rows of
/// `width` values, and `head` must be below `width / head_dim`.
unsafe fn attend_head(qkv: &[f32], shape: HeadShape, head: usize, scale: f32, scores: &mut [f32], output: SharedOutput) {
    let HeadShape { tokens, width, head_dim } = shape;
    let row = (3 * width) as isize;
    let column = head * head_dim;
    let (query, key, value) = (qkv[column..].as_ptr(), qkv[width + column..].as_ptr(), qkv[2 * width + column..].as_ptr());

    // The key matrix is read transposed: step along a key row for the inner dimension, from one
    // token's row to the next for the output column.
    unsafe {
        gemm::gemm(
            tokens, tokens, head_dim,
            scores.as_mut_ptr(), 1, tokens as isize, false,
            query, 1, row,
            key, row, 1,
            0.0, scale, false, false, false,
            gemm::Parallelism::None,
        );
    }

    for scores_row in scores.chunks_exact_mut(tokens) {
        softmax_row(scores_row);
    }

    unsafe {
        gemm::gemm(
            tokens, head_dim, tokens,
            output.0.add(column), 1, width as isize, false,
            scores.as_ptr(), 1, tokens as isize,
            value, 1, row,
            0.0, 1.0, false, false, false,
            gemm::Parallelism::None,
        );
    }
}

fn is_cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Computes `e^x` for f32 in a form the compiler vectorises: Cody-Waite range reduction to
/// `r = x - n ln 2`, a degree-7 polynomial in `r`, then `2^n` from the exponent bits.
/// Within 2 ulp of `f32::exp` for `x` in [-87.3, 88.7]. Inputs below that range return about
/// `2^-126` instead of 0, which is why it only serves sums like softmax's that the largest
/// terms dominate.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 × 2^23 rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;

    let x = x.clamp(-87.336_54, 88.722_83);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;

    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;

    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// GELU, `x (1 + erf(x / √2)) / 2`, with `1 + erf` computed in a form the compiler vectorises.
/// It uses Abramowitz and Stegun's formula 7.1.26 for `erfc(|z|)` (absolute error under
/// 1.5 × 10⁻⁷), which avoids cancellation for negative inputs; `1 + erf(z)` is `erfc(-z)`.
#[inline(always)]
fn gelu_approx(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);

    let poly = 1.061_405_4;
    let poly = poly * t - 1.453_152;
    let poly = poly * t + 1.421_413_8;
    let poly = poly * t - 0.284_496_74;
    let poly = poly * t + 0.254_829_6;
    let erfc = poly * t * exp_approx(-a * a);

    let one_plus_erf = if z < 0.0 { erfc } else { 2.0 - erfc };
    0.5 * x * one_plus_erf
}

/// Adds a bias vector to every row of a contiguous matrix, then optionally applies GELU.
struct BiasAdd {
    gelu: bool,
}

impl InplaceOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "parallel-bias-add"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_layout: &Layout, bias: &CpuStorage, bias_layout: &Layout) -> Result<()> {
        let (dst, bias) = f32_slices(dst, dst_layout, bias, bias_layout)?;
        let width = bias.len();
        if width == 0 || dst.len() % width != 0 {
            candle_core::bail!("bias of {width} values does not divide a tensor of {} values", dst.len());
        }

        // Whole rows per task keep the bias aligned with each row's start.
        let rows_per_task = (BLOCK / width).max(1);
        dst.par_chunks_mut(rows_per_task * width).for_each(|block| {
            for row in block.chunks_exact_mut(width) {
                bias_row(row, bias, self.gelu);
            }
        });
        Ok(())
    }
}

/// Returns whether the CPU runs the AVX2 and FMA builds of the row kernels below. The crate is built
/// for the baseline x86-64 target (SSE2), where the vectorised loops get 4-lane registers.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Adds `bias` to `row`, then applies GELU when `gelu` is set.
fn bias_row(row: &mut [f32], bias: &[f32], gelu: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { bias_row_avx2(row, bias, gelu) };
    }
    bias_row_body(row, bias, gelu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_row_avx2(row: &mut [f32], bias: &[f32], gelu: bool) {
    bias_row_body(row, bias, gelu)
}

#[inline(always)]
fn bias_row_body(row: &mut [f32], bias: &[f32], gelu: bool) {
    for (value, b) in row.iter_mut().zip(bias) {
        *value += b;
    }
    if gelu {
        row.iter_mut().for_each(|value| *value = gelu_approx(*value));
    }
}

/// Lanes of the running maximum and sum, so that the compiler can vectorise both reductions
/// (a single accumulator fixes the order of float additions and keeps them scalar).
const LANES: usize = 8;

/// Softmax of every row of a contiguous tensor, rows being its last dimension.
struct Softmax;

impl InplaceOp1 for Softmax {
    fn name(&self) -> &'static str {
        "parallel-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("parallel softmax needs a contiguous tensor");
        };
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("parallel softmax needs an f32 tensor");
        };
        let width = layout.dims().last().copied().unwrap_or(1).max(1);

        let rows_per_task = (BLOCK / width).max(1);
        values[start..end].par_chunks_mut(rows_per_task * width).for_each(|block| {
            block.chunks_exact_mut(width).for_each(softmax_row);
        });
        Ok(())
    }
}

fn softmax_row(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_row_avx2(row) };
    }
    softmax_row_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32]) {
    softmax_row_body(row)
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32]) {
    let max = lane_reduce(row, f32::NEG_INFINITY, f32::max);

    row.iter_mut().for_each(|value| *value = exp_approx(*value - max));
    let sum = lane_reduce(row, 0.0, |a, b| a + b);

    row.iter_mut().for_each(|value| *value /= sum);
}

/// Folds `values` with `op` in [`LANES`] independent accumulators, then folds those.
#[inline(always)]
fn lane_reduce(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();

    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, *value);
        }
    }
    let folded = lanes.into_iter().fold(init, &op);
    tail.iter().fold(folded, |acc, value| op(acc, *value))
}

/// Element-wise `dst += src` for two contiguous tensors of one shape.
struct Add;

impl InplaceOp2 for Add {
    fn name(&self) -> &'static str {
        "parallel-add"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_layout: &Layout, src: &CpuStorage, src_layout: &Layout) -> Result<()> {
        let (dst, src) = f32_slices(dst, dst_layout, src, src_layout)?;
        if dst.len() != src.len() {
            candle_core::bail!("cannot add {} values into {}", src.len(), dst.len());
        }

        dst.par_chunks_mut(BLOCK).zip(src.par_chunks(BLOCK)).for_each(|(dst, src)| {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        });
        Ok(())
    }
}

/// Returns the f32 values that two contiguous layouts cover.
fn f32_slices<'a>(
    dst: &'a mut CpuStorage,
    dst_layout: &Layout,
    src: &'a CpuStorage,
    src_layout: &Layout,
) -> Result<(&'a mut [f32], &'a [f32])> {
    let (Some((dst_start, dst_end)), Some((src_start, src_end))) =
        (dst_layout.contiguous_offsets(), src_layout.contiguous_offsets())
    else {
        candle_core::bail!("parallel element-wise ops need contiguous tensors");
    };

    match (dst, src) {
        (CpuStorage::F32(dst), CpuStorage::F32(src)) => Ok((&mut dst[dst_start..dst_end], &src[src_start..src_end])),
        _ => candle_core::bail!("parallel element-wise ops need f32 tensors"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::Linear;

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let count: usize = shape.iter().product();
        // A fixed linear congruential sequence spread over [-4, 4): the range where erf varies.
        let mut state = seed;
        let values: Vec<f32> = (0..count)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn bits(xs: &Tensor) -> Vec<u32> {
        xs.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    fn dense(weight: &Tensor, bias: &Tensor, activation: Option<Activation>) -> Dense {
        let layer = Dense::new(weight, bias.clone()).unwrap();
        match activation {
            Some(activation) => layer.with_activation(activation),
            None => layer,
        }
    }

    /// Applies candle's own bias add and activation to the same matrix product as [`Dense`].
    fn reference(xs: &Tensor, weight: &Tensor, bias: &Tensor, activation: Option<Activation>) -> Tensor {
        let (out_dim, in_dim) = weight.dims2().unwrap();
        let rows = xs.elem_count() / in_dim;
        let mut shape = xs.dims().to_vec();
        *shape.last_mut().unwrap() = out_dim;

        let product = xs.reshape((rows, in_dim)).unwrap().matmul(&weight.t().unwrap().contiguous().unwrap()).unwrap();
        let biased = product.reshape(shape).unwrap().broadcast_add(bias).unwrap();
        match activation {
            Some(activation) => biased.apply(&activation).unwrap(),
            None => biased,
        }
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn exp_approx_stays_within_two_ulp() {
        for step in 0..=200_000 {
            let x = -87.0 + step as f32 * (175.0 / 200_000.0);
            let exact = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * exact;

            let error = (f64::from(exp_approx(x)) - exact).abs();

            assert!(error <= 2.0 * ulp, "exp({x}): {} against {exact}", exp_approx(x));
        }
    }

    #[test]
    fn exp_approx_of_huge_negatives_is_tiny() {
        let tiny = exp_approx(-1e30);

        assert!(tiny > 0.0);
        assert!(tiny < 1.001 * f32::MIN_POSITIVE, "{tiny}");
    }

    #[test]
    fn gelu_approx_matches_candle_gelu() {
        let xs: Vec<f32> = (0..=40_000).map(|step| -10.0 + step as f32 * 5e-4).collect();
        let exact = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().gelu_erf().unwrap().to_vec1::<f32>().unwrap();

        for (x, expected) in xs.iter().zip(exact) {
            let error = (gelu_approx(*x) - expected).abs();
            assert!(error <= 3e-7 * x.abs().max(1.0), "gelu({x}): {} against {expected}", gelu_approx(*x));
        }
    }

    #[test]
    fn softmax_matches_candle() {
        let scores = (random(&[3, 4, 77], 23) * 4.0).unwrap();
        let expected = candle_nn::ops::softmax_last_dim(&scores).unwrap();

        let fast = softmax_last_dim(scores.copy().unwrap()).unwrap();

        let difference = largest_difference(&fast, &expected);
        assert!(difference < 1e-6, "largest difference {difference}");
        let sums = fast.sum(2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|sum| (sum - 1.0).abs() < 1e-5), "row sums {sums:?}");
    }

    /// Multi-head attention with candle's ops: heads split out of `qkv`, batched products,
    /// candle's softmax, heads merged.
    fn reference_attention(qkv: &Tensor, heads: usize, scale: f64) -> Tensor {
        let (batch, tokens, fused) = qkv.dims3().unwrap();
        let width = fused / 3;
        let split = qkv.reshape((batch, tokens, 3, heads, width / heads)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
        let part = |i: usize| split.get(i).unwrap().contiguous().unwrap();

        let scores = (part(0).matmul(&part(1).t().unwrap()).unwrap() * scale).unwrap();
        let probabilities = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let context = probabilities.matmul(&part(2)).unwrap();
        context.transpose(1, 2).unwrap().reshape((batch, tokens, width)).unwrap()
    }

    fn two_threads() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap()
    }

    #[test]
    fn attention_per_head_matches_candle() {
        let qkv = random(&[1, 37, 3 * 4 * 16], 31);
        let expected = reference_attention(&qkv, 4, 0.25);

        let merged = two_threads().install(|| attention_per_head(&qkv, 4, 0.25)).unwrap().expect("per-head path");

        assert_eq!(merged.dims(), expected.dims());
        let difference = largest_difference(&merged, &expected);
        assert!(difference < 1e-5, "largest difference {difference}");
    }

    #[test]
    fn attention_per_head_declines_other_inputs() {
        let pool = two_threads();
        let batch_of_two = random(&[2, 5, 3 * 4 * 8], 32);
        let doubles = random(&[1, 5, 3 * 4 * 8], 33).to_dtype(DType::F64).unwrap();
        let fewer_heads_than_threads = random(&[1, 5, 3 * 8], 34);

        let declined = |qkv: &Tensor, heads| pool.install(|| attention_per_head(qkv, heads, 0.5)).unwrap().is_none();

        assert!(declined(&batch_of_two, 4));
        assert!(declined(&doubles, 4));
        assert!(declined(&fewer_heads_than_threads, 1));
    }

    #[test]
    fn transpose_matches_candle() {
        // Sizes that leave partial tiles on both sides.
        let matrix = random(&[131, 70], 35);

        let transposed = transpose(&matrix).unwrap();

        assert_eq!(transposed.dims(), &[70, 131]);
        assert_eq!(bits(&transposed), bits(&matrix.t().unwrap().contiguous().unwrap()));
    }

    #[test]
    fn softmax_of_view_uses_candle() {
        let base = random(&[5, 7], 24);
        let view = base.t().unwrap();
        let expected = candle_nn::ops::softmax_last_dim(&view.contiguous().unwrap()).unwrap();

        let probabilities = softmax_last_dim(view).unwrap();

        assert_eq!(bits(&probabilities), bits(&expected));
        assert_eq!(bits(&base), bits(&random(&[5, 7], 24)), "the viewed tensor must be left alone");
    }

    #[test]
    fn dense_with_gelu_matches_candle() {
        let xs = random(&[3, 37, 24], 1);
        let weight = random(&[40, 24], 2);
        let bias = random(&[40], 3);

        let fast = dense(&weight, &bias, Some(Activation::Gelu)).forward(&xs).unwrap();
        let expected = reference(&xs, &weight, &bias, Some(Activation::Gelu));

        assert_eq!(fast.dims(), &[3, 37, 40]);
        let difference = largest_difference(&fast, &expected);
        assert!(difference < 2e-6, "largest difference {difference}");
    }

    #[test]
    fn dense_without_activation_matches_candle_bit_for_bit() {
        let xs = random(&[2, 5, 16], 4);
        let weight = random(&[8, 16], 5);
        let bias = random(&[8], 6);

        let fast = dense(&weight, &bias, None).forward(&xs).unwrap();
        let expected = reference(&xs, &weight, &bias, None);

        assert_eq!(bits(&fast), bits(&expected));
    }

    #[test]
    fn other_activations_are_applied_after_the_bias() {
        let xs = random(&[4, 16], 7);
        let weight = random(&[8, 16], 8);
        let bias = random(&[8], 9);

        let fast = dense(&weight, &bias, Some(Activation::Relu)).forward(&xs).unwrap();
        let expected = reference(&xs, &weight, &bias, Some(Activation::Relu));

        assert_eq!(bits(&fast), bits(&expected));
    }

    #[test]
    fn residual_add_matches_candle_over_many_blocks() {
        let sum = random(&[3, BLOCK + 5], 10);
        let residual = random(&[3, BLOCK + 5], 11);
        let reference = (&sum + &residual).unwrap();

        let fast = add_residual(sum, &residual).unwrap();

        assert_eq!(bits(&fast), bits(&reference));
    }

    #[test]
    fn residual_add_of_view_uses_candle() {
        let base = random(&[6, 4], 12);
        let view = base.t().unwrap();
        let residual = random(&[4, 6], 13);
        let reference = (&view + &residual).unwrap();

        let sum = add_residual(view, &residual).unwrap();

        assert_eq!(bits(&sum), bits(&reference));
        assert_eq!(bits(&base), bits(&random(&[6, 4], 12)), "the viewed tensor must be left alone");
    }

    #[test]
    fn f64_dense_uses_candle() {
        let xs = random(&[2, 4], 14).to_dtype(DType::F64).unwrap();
        let weight = random(&[3, 4], 15).to_dtype(DType::F64).unwrap();
        let bias = random(&[3], 16).to_dtype(DType::F64).unwrap();

        let out = dense(&weight, &bias, Some(Activation::Gelu)).forward(&xs).unwrap();
        let expected = reference(&xs, &weight, &bias, Some(Activation::Gelu));

        assert_eq!(out.to_vec2::<f64>().unwrap(), expected.to_vec2::<f64>().unwrap(), "f64 keeps candle's exact GELU");
    }

    #[test]
    fn dense_matches_linear_layer() {
        let xs = random(&[2, 9, 32], 17);
        let weight = random(&[24, 32], 18);
        let bias = random(&[24], 19);

        let fast = dense(&weight, &bias, None).forward(&xs).unwrap();
        let linear = Linear::new(weight, Some(bias)).forward(&xs).unwrap();

        let difference = (fast - linear).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(difference < 1e-4, "largest difference {difference}");
    }

    #[test]
    fn dense_accepts_non_contiguous_input() {
        let xs = random(&[16, 3], 20).t().unwrap();
        let weight = random(&[5, 16], 21);
        let bias = random(&[5], 22);

        let fast = dense(&weight, &bias, None).forward(&xs).unwrap();
        let expected = reference(&xs.contiguous().unwrap(), &weight, &bias, None);

        assert_eq!(bits(&fast), bits(&expected));
    }
}
