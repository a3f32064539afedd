//! PIL's bicubic resampling of 8-bit RGB, reproduced to the bit.
//!
//! BLIP's reference preprocessing is PIL's `Image.resize(size, BICUBIC)`.
//! Its arithmetic is short: filter weights computed in f64, rounded to
//! 22-bit fixed point, summed in i32, and two passes (horizontal first) with
//! the intermediate image rounded and clipped to 8 bits. General resizing
//! libraries round differently: fast_image_resize's 8-bit path has 15-bit
//! weights and runs the vertical pass first, which moved pixels by up to
//! 8 levels, and its 16-bit path needed a widened copy of every photo. This
//! module follows PIL's `Resample.c` step for step instead, so the model
//! input matches the reference exactly, and lays the sums out for SIMD.
//!
//! The pass order is Pillow 13's: horizontal first, unless the height
//! shrinks by more than twice as many pixels as the width (see
//! [`vertical_first`]). For such images, 1080×1920 phone photos among them,
//! Pillow 12 and earlier ran the horizontal pass first, and their output
//! differs from this module's by a level or so.
//!
//! Sums of products wrap in two's complement (`wrapping_*`), which makes
//! them independent of the order of their terms, so splitting a sum across
//! SIMD lanes gives the result of PIL's sequential loop. On x86 the
//! horizontal pass splits each 22-bit weight into two 16-bit halves for the
//! 16-bit multiply-add instructions. The two partial sums recombine to the
//! same i32.
//!
//! When the horizontal pass runs first, it can take the source a band of
//! rows at a time ([`Resampler::stream`]), so a decoder's rows are resampled
//! while they are still in cache and the full-size image is never stored.

/// Fractional bits of the fixed-point weights, PIL's `PRECISION_BITS`
/// (32 - 8 - 2: room for 8-bit samples and some overshoot in an i32).
const PRECISION_BITS: u32 = 22;

/// The rounding offset every sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Bits of each weight's low half in [`Weights::pair_high`] and
/// [`Weights::pair_low`].
const LOW_BITS: u32 = 8;

/// PIL's bicubic filter: the Keys cubic with a = -0.5 (Catmull-Rom),
/// support 2, evaluated in the same order of operations as PIL's C.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;

    let x = x.abs();
    if x < 1.0 {
        return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    }
    if x < 2.0 {
        return (((x - 5.0) * x + 8.0) * x - 4.0) * A;
    }
    0.0
}

/// The fixed-point filter weights of one axis, for every output index:
/// the first input index, how many inputs contribute, and the weights,
/// zero-padded to PIL's kernel size (`taps`) so that every row has the same
/// length.
#[derive(Debug, Clone)]
pub(super) struct Weights {
    in_size: usize,
    out_size: usize,
    taps: usize,
    spans: Vec<(usize, usize)>,
    values: Vec<i32>,
    /// Input pairs per output in `pair_high` and `pair_low`: enough for every
    /// output's inputs, counted from the even input at or before its first.
    pairs: usize,
    /// The weights for x86's 16-bit multiply-adds (`pmaddwd`, `vpdpwssd`),
    /// which a 22-bit weight does not fit. Each weight is split as
    /// `high << LOW_BITS | low`, both halves in i16, and
    /// `(Σ s·high << LOW_BITS) + Σ s·low` is the same i32 sum. The halves of
    /// two neighbouring inputs share an i32 (the even input's in the low 16
    /// bits), `pairs` per output from input `2 * (first / 2)`, zero where an
    /// input does not contribute.
    pair_high: Vec<i32>,
    pair_low: Vec<i32>,
}

impl Weights {
    /// Computes PIL's bicubic weights (`precompute_coeffs` followed by
    /// `normalize_coeffs_8bpc`) for resampling `in_size` samples to
    /// `out_size`. Both must be positive.
    pub(super) fn bicubic(in_size: usize, out_size: usize) -> Self {
        const SUPPORT: f64 = 2.0;

        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = SUPPORT * filter_scale;
        // PIL multiplies by the reciprocal, which can round differently from a division.
        let inverse_scale = 1.0 / filter_scale;
        // PIL's `ksize`, the most inputs any output reads.
        let taps = support.ceil() as usize * 2 + 1;

        let mut spans = Vec::with_capacity(out_size);
        let mut values = vec![0; out_size * taps];
        let mut weights = Vec::with_capacity(taps);
        for (out, row) in values.chunks_exact_mut(taps).enumerate() {
            let center = (out as f64 + 0.5) * scale;

            // PIL rounds with a cast, which truncates toward zero.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let used = end - first;

            weights.clear();
            weights.extend((0..used).map(|i| bicubic(((i + first) as f64 - center + 0.5) * inverse_scale)));
            let total: f64 = weights.iter().sum();
            for (slot, &w) in row.iter_mut().zip(&weights) {
                let normalised = if total != 0.0 { w / total } else { w };
                *slot = to_fixed(normalised);
            }
            spans.push((first, used));
        }

        let (pairs, pair_high, pair_low) = split_into_pairs(&spans, &values, taps);
        Self { in_size, out_size, taps, spans, values, pairs, pair_high, pair_low }
    }

    /// Returns the first input index, the count of inputs and the padded
    /// weights of output `out`.
    fn of(&self, out: usize) -> (usize, usize, &[i32]) {
        let (first, used) = self.spans[out];
        (first, used, &self.values[out * self.taps..][..self.taps])
    }

    /// Returns the range of inputs that any output reads: from the first
    /// output's first input to the last output's last.
    fn input_range(&self) -> std::ops::Range<usize> {
        let first = self.spans[0].0;
        let (last_first, last_used) = self.spans[self.out_size - 1];
        first..last_first + last_used
    }

    fn matches(&self, in_size: usize, out_size: usize) -> bool {
        (self.in_size, self.out_size) == (in_size, out_size)
    }
}

/// Returns [`Weights::pairs`], [`Weights::pair_high`] and
/// [`Weights::pair_low`] for the weights `values`, rows of `taps` for the
/// outputs' `spans`. The arithmetic shift floors, so the low half is 0 to
/// 255 and a negative weight has a negative high half. Weights are at most
/// 1 << 22 in magnitude, so the high half stays within ±1 << 14.
fn split_into_pairs(spans: &[(usize, usize)], values: &[i32], taps: usize) -> (usize, Vec<i32>, Vec<i32>) {
    let pairs = spans.iter().map(|&(first, used)| (first % 2 + used).div_ceil(2)).max().unwrap_or(0);
    let mut high = vec![0i32; spans.len() * pairs];
    let mut low = vec![0i32; spans.len() * pairs];

    for (out, (&(first, used), weights)) in spans.iter().zip(values.chunks_exact(taps)).enumerate() {
        let start = first - first % 2;
        let halves = |input: usize| {
            let tap = input.checked_sub(first).filter(|&tap| tap < used);
            let weight = tap.map_or(0, |tap| weights[tap]);
            let high = i16::try_from(weight >> LOW_BITS).expect("a weight of at most 1 << 22");
            (high as u16, (weight & ((1 << LOW_BITS) - 1)) as u16)
        };

        for pair in 0..pairs {
            let (even, odd) = (halves(start + 2 * pair), halves(start + 2 * pair + 1));
            high[out * pairs + pair] = (u32::from(even.0) | u32::from(odd.0) << 16) as i32;
            low[out * pairs + pair] = (u32::from(even.1) | u32::from(odd.1) << 16) as i32;
        }
    }
    (pairs, high, low)
}

/// Multiplying by 1 << 22 in f64 is exact, and the cast truncates, so this
/// is PIL's round-half-away-from-zero.
fn to_fixed(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if weight < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// PIL's `clip8`: drops the fractional bits and saturates to 0–255.
fn clip8(sum: i32) -> u8 {
    if sum >= 1 << (PRECISION_BITS + 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// Weights and buffers of the two passes, kept between images.
#[derive(Debug, Default)]
pub(super) struct Resampler {
    horizontal: Option<Weights>,
    vertical: Option<Weights>,
    scratch: Vec<i16>,
    intermediate: Vec<u8>,
    sums: Vec<i32>,
}

impl Resampler {
    /// Resizes interleaved RGB `src` of `width`×`height` to `out_w`×`out_h`
    /// into `out`, as PIL's `resize` with `BICUBIC` does for an RGB image.
    /// An axis whose size does not change is not resampled, as in PIL.
    pub(super) fn resize(&mut self, src: &[u8], (width, height): (usize, usize), (out_w, out_h): (usize, usize), out: &mut [u8]) {
        debug_assert_eq!(src.len(), width * height * 3);
        debug_assert_eq!(out.len(), out_w * out_h * 3);

        if let Some(mut stream) = self.stream((width, height), (out_w, out_h)) {
            stream.push(src);
            stream.finish(out);
            return;
        }

        let horizontal = cached(&mut self.horizontal, width, out_w);
        let vertical = cached(&mut self.vertical, height, out_h);
        self.intermediate.resize(width * out_h * 3, 0);
        run_vertical(src, width * 3, vertical, 0, &mut self.sums, &mut self.intermediate);

        let pass = HorizontalPass { src: &self.intermediate, width, weights: horizontal };
        run_horizontal(&pass, 0..out_h, &mut self.scratch, out);
    }

    /// Starts a resize of a `width`×`height` image whose rows arrive top to
    /// bottom, a band at a time ([`RowStream::push`]). Each band is resampled
    /// horizontally on arrival, while a decoder's output is still in cache,
    /// so the full-size image need not be kept. Returns `None` when PIL runs
    /// the vertical pass first, which needs every row before it can start.
    pub(super) fn stream(&mut self, (width, height): (usize, usize), (out_w, out_h): (usize, usize)) -> Option<RowStream<'_>> {
        let both_passes = width != out_w && height != out_h;
        if both_passes && vertical_first((width, height), (out_w, out_h)) {
            return None;
        }

        if width != out_w {
            cached(&mut self.horizontal, width, out_w);
        }
        // PIL resamples horizontally only the rows the vertical pass reads.
        let needed_rows = if height != out_h { cached(&mut self.vertical, height, out_h).input_range() } else { 0..height };
        self.intermediate.resize(needed_rows.len() * out_w * 3, 0);

        Some(RowStream { resampler: self, from: (width, height), to: (out_w, out_h), needed_rows, next_row: 0 })
    }
}

/// A resize whose source rows arrive in bands; see [`Resampler::stream`].
pub(super) struct RowStream<'a> {
    resampler: &'a mut Resampler,
    from: (usize, usize),
    to: (usize, usize),
    /// The source rows that the output depends on.
    needed_rows: std::ops::Range<usize>,
    /// The source row that the next band starts with.
    next_row: usize,
}

impl RowStream<'_> {
    /// Takes the next whole rows of the source, interleaved RGB.
    pub(super) fn push(&mut self, rows: &[u8]) {
        let (width, height) = self.from;
        let row_bytes = width * 3;
        assert_eq!(rows.len() % row_bytes, 0, "a band must contain whole rows");

        let start = self.next_row;
        let end = start + rows.len() / row_bytes;
        assert!(end <= height, "more rows than the image has");
        self.next_row = end;

        let used = start.max(self.needed_rows.start)..end.min(self.needed_rows.end);
        if used.is_empty() {
            return;
        }

        let out_row_bytes = self.to.0 * 3;
        let r = &mut *self.resampler;
        let dst = &mut r.intermediate[(used.start - self.needed_rows.start) * out_row_bytes..(used.end - self.needed_rows.start) * out_row_bytes];
        let band_rows = used.start - start..used.end - start;
        match &r.horizontal {
            Some(weights) if width != self.to.0 => {
                let pass = HorizontalPass { src: rows, width, weights };
                run_horizontal(&pass, band_rows, &mut r.scratch, dst);
            }
            _ => dst.copy_from_slice(&rows[band_rows.start * row_bytes..band_rows.end * row_bytes]),
        }
    }

    /// Runs the vertical pass into `out` once every row has arrived.
    pub(super) fn finish(self, out: &mut [u8]) {
        assert_eq!(self.next_row, self.from.1, "every source row must arrive before the vertical pass");

        let r = self.resampler;
        let row_bytes = self.to.0 * 3;
        match &r.vertical {
            Some(weights) if self.from.1 != self.to.1 => {
                run_vertical(&r.intermediate, row_bytes, weights, self.needed_rows.start, &mut r.sums, out);
            }
            _ => out.copy_from_slice(&r.intermediate),
        }
    }
}

/// Returns whether Pillow 13 runs the vertical pass first: when the height shrinks by more than
/// twice as many pixels as the width does, which makes the horizontal pass cheaper. Earlier
/// Pillow releases always ran the horizontal pass first.
fn vertical_first((width, height): (usize, usize), (out_w, out_h): (usize, usize)) -> bool {
    let height_cut = height as i64 - out_h as i64;
    let width_cut = width as i64 - out_w as i64;
    height_cut > 0 && height_cut > 2 * width_cut
}

/// Returns the cached weights for `in_size` to `out_size`, computing them
/// when the sizes differ from the previous image's.
fn cached(slot: &mut Option<Weights>, in_size: usize, out_size: usize) -> &Weights {
    if !slot.as_ref().is_some_and(|w| w.matches(in_size, out_size)) {
        *slot = Some(Weights::bicubic(in_size, out_size));
    }
    slot.as_ref().expect("filled above")
}

/// The source image and weights of a horizontal pass.
struct HorizontalPass<'a> {
    src: &'a [u8],
    width: usize,
    weights: &'a Weights,
}

impl HorizontalPass<'_> {
    fn row(&self, y: usize) -> &[u8] {
        &self.src[y * self.width * 3..][..self.width * 3]
    }

    /// Returns the length of each of the three planes (red, green, blue)
    /// that a row is split into, so that every dot product reads consecutive
    /// samples of one channel.
    fn plane_len(&self) -> usize {
        // Zeros after each plane let the last outputs read whole padded
        // weight rows past the image's edge.
        self.width + self.weights.taps
    }
}

/// Resamples the rows `rows` of the source horizontally into `out`, one
/// output row per input row.
/// `scratch` receives the split rows and is sized by the kernel that runs.
fn run_horizontal(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, scratch: &mut Vec<i16>, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return x86::horizontal(pass, rows, scratch, out);
    }

    scratch.clear();
    scratch.resize(3 * pass.plane_len(), 0);
    horizontal_portable(pass, rows, scratch, out)
}

/// Runs the horizontal pass without SIMD: splits each row into three planes,
/// then computes each output pixel as three dot products.
fn horizontal_portable(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, planes: &mut [i16], out: &mut [u8]) {
    let plane_len = pass.plane_len();
    let row_bytes = pass.weights.out_size * 3;

    for (y, out_row) in rows.zip(out.chunks_exact_mut(row_bytes)) {
        let (red, rest) = planes.split_at_mut(plane_len);
        let (green, blue) = rest.split_at_mut(plane_len);
        deinterleave(pass.row(y), [&mut *red, &mut *green, &mut *blue]);

        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (first, _, k) = pass.weights.of(x);
            let sums = dot3([&red[first..], &green[first..], &blue[first..]], k);
            px.copy_from_slice(&sums.map(clip8));
        }
    }
}

/// Splits interleaved RGB samples into three planes.
fn deinterleave(row: &[u8], [red, green, blue]: [&mut [i16]; 3]) {
    let planes = red.iter_mut().zip(green.iter_mut()).zip(blue.iter_mut());
    for (((r, g), b), px) in planes.zip(row.chunks_exact(3)) {
        *r = i16::from(px[0]);
        *g = i16::from(px[1]);
        *b = i16::from(px[2]);
    }
}

/// Returns PIL's three fixed-point sums (rounding offset included) of the
/// planes' first `k.len()` samples weighted by `k`.
fn dot3(planes: [&[i16]; 3], k: &[i32]) -> [i32; 3] {
    planes.map(|plane| {
        let products = plane.iter().zip(k).map(|(&s, &w)| i32::from(s).wrapping_mul(w));
        products.fold(HALF, i32::wrapping_add)
    })
}

/// The horizontal pass on x86, eight rows at a time.
///
/// Each 32-bit lane of a register carries one row, so an output pixel's sum
/// for eight rows builds up in one register with no adds across lanes at
/// the end. The rows are split into 16-bit planes and transposed, so that
/// a lane contains the same two neighbouring inputs of its row. Every
/// multiply-add (`vpdpwssd` with AVX-512 VNNI or AVX VNNI, `pmaddwd` and an
/// add with plain AVX2) weights two inputs of eight rows by one pair of
/// 16-bit weight halves. An earlier kernel, one row at a time with a tree of
/// horizontal adds per output, spent as long finishing its sums as on the
/// products.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{HALF, HorizontalPass, LOW_BITS, PRECISION_BITS};

    /// Rows resampled together, one per 32-bit lane.
    const BLOCK_ROWS: usize = 8;

    /// Pixels per deinterleaving step: three 16-byte loads.
    const STEP_PIXELS: usize = 16;

    /// The instruction that multiplies pairs of i16 and adds each pair's
    /// sum to an i32 lane.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum MultiplyAdd {
        Avx2,
        AvxVnni,
        Avx512Vnni,
    }

    impl MultiplyAdd {
        /// Returns the fastest form this CPU runs; the caller has checked AVX2.
        fn detect() -> Self {
            if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
                Self::Avx512Vnni
            } else if std::is_x86_feature_detected!("avxvnni") {
                Self::AvxVnni
            } else {
                Self::Avx2
            }
        }
    }

    /// The placement of a block of rows in the scratch buffer: the rows split
    /// into planes, then the planes transposed into pairs of inputs.
    struct Layout {
        /// Input pairs per plane, a whole number of transposed 8×8 blocks.
        pairs: usize,
    }

    impl Layout {
        fn of(pass: &HorizontalPass<'_>) -> Self {
            // Every output reads `weights.pairs` pairs from the one holding
            // its first input, at most pair (width - 1) / 2.
            let pairs = (pass.width.div_ceil(2) + pass.weights.pairs).div_ceil(BLOCK_ROWS) * BLOCK_ROWS;
            Self { pairs }
        }

        /// Returns the i16 length of one row's plane.
        fn plane_len(&self) -> usize {
            2 * self.pairs
        }

        /// Returns the i16 length of the split rows, which come first.
        fn planes_len(&self) -> usize {
            BLOCK_ROWS * 3 * self.plane_len()
        }

        /// Returns the i16 length of the whole scratch buffer: the split
        /// rows, then three planes of pairs with one i32 per row.
        fn len(&self) -> usize {
            self.planes_len() + 3 * self.pairs * BLOCK_ROWS * 2
        }
    }

    /// Runs the pass with the fastest multiply-add this CPU has. The caller
    /// has checked AVX2.
    pub(super) fn horizontal(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, scratch: &mut Vec<i16>, out: &mut [u8]) {
        horizontal_using(MultiplyAdd::detect(), pass, rows, scratch, out);
    }

    /// Runs the pass with `kind`, which the CPU must support along with AVX2.
    pub(super) fn horizontal_using(
        kind: MultiplyAdd,
        pass: &HorizontalPass<'_>,
        rows: std::ops::Range<usize>,
        scratch: &mut Vec<i16>,
        out: &mut [u8],
    ) {
        let layout = Layout::of(pass);
        check_bounds(pass, &layout, rows.len(), out.len());
        scratch.resize(layout.len(), 0);

        // SAFETY: `kind` names features the CPU has (see `detect`), and
        // `check_bounds` covers every read of the scratch and weights.
        unsafe {
            match kind {
                MultiplyAdd::Avx512Vnni => pass_avx512_vnni(pass, rows, &layout, scratch, out),
                MultiplyAdd::AvxVnni => pass_avx_vnni(pass, rows, &layout, scratch, out),
                MultiplyAdd::Avx2 => pass_avx2(pass, rows, &layout, scratch, out),
            }
        }
    }

    /// Checked once per pass rather than per pixel: every output's pairs lie
    /// inside the transposed planes, both weight arrays contain `pairs`
    /// per output, and `out` has a row per input row.
    fn check_bounds(pass: &HorizontalPass<'_>, layout: &Layout, rows: usize, out_len: usize) {
        let weights = pass.weights;
        assert!(weights.spans.iter().all(|&(first, _)| first / 2 + weights.pairs <= layout.pairs));
        assert_eq!(weights.pair_high.len(), weights.out_size * weights.pairs);
        assert_eq!(weights.pair_low.len(), weights.out_size * weights.pairs);
        assert_eq!(out_len, rows * weights.out_size * 3);
    }

    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn pass_avx512_vnni(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, layout: &Layout, scratch: &mut [i16], out: &mut [u8]) {
        // SAFETY: as for `pass_with`, and the features are enabled here.
        unsafe { pass_with::<{ MultiplyAdd::Avx512Vnni as u8 }>(pass, rows, layout, scratch, out) }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn pass_avx_vnni(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, layout: &Layout, scratch: &mut [i16], out: &mut [u8]) {
        // SAFETY: as for `pass_with`, and the features are enabled here.
        unsafe { pass_with::<{ MultiplyAdd::AvxVnni as u8 }>(pass, rows, layout, scratch, out) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn pass_avx2(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, layout: &Layout, scratch: &mut [i16], out: &mut [u8]) {
        // SAFETY: as for `pass_with`, and the feature is enabled here.
        unsafe { pass_with::<{ MultiplyAdd::Avx2 as u8 }>(pass, rows, layout, scratch, out) }
    }

    /// Runs the pass. It is inlined into each of the functions above so
    /// that it compiles with their features.
    ///
    /// # Safety
    /// The CPU must have AVX2 and the features of `KIND`, and
    /// `check_bounds` must have passed for `pass`, `layout` and `out`, with
    /// `scratch` of `layout.len()`.
    #[inline(always)]
    unsafe fn pass_with<const KIND: u8>(
        pass: &HorizontalPass<'_>,
        rows: std::ops::Range<usize>,
        layout: &Layout,
        scratch: &mut [i16],
        out: &mut [u8],
    ) {
        let out_row_bytes = pass.weights.out_size * 3;
        let (planes, packed) = scratch.split_at_mut(layout.planes_len());

        let (first_row, end_row) = (rows.start, rows.end);
        for block_start in rows.step_by(BLOCK_ROWS) {
            let block_rows = BLOCK_ROWS.min(end_row - block_start);

            // SAFETY: the caller guarantees AVX2, and the scratch sizes.
            unsafe {
                split_rows(pass, block_start..block_start + block_rows, layout, planes);
                transpose_pairs(layout, planes, packed);
            }

            let out_block = &mut out[(block_start - first_row) * out_row_bytes..][..block_rows * out_row_bytes];
            // SAFETY: the caller guarantees the features and `check_bounds`.
            unsafe { resample_block::<KIND>(pass, packed, out_block, block_rows) };
        }
    }

    /// Splits the source rows `rows` (at most eight) into 16-bit planes, one
    /// per row and channel, each zero past the image's width. Rows missing
    /// from a short last block read as zeros.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn split_rows(pass: &HorizontalPass<'_>, rows: std::ops::Range<usize>, layout: &Layout, planes: &mut [i16]) {
        let plane_len = layout.plane_len();
        for (r, row_planes) in planes.chunks_exact_mut(3 * plane_len).enumerate() {
            let (red, rest) = row_planes.split_at_mut(plane_len);
            let (green, blue) = rest.split_at_mut(plane_len);

            let width = if r < rows.len() { pass.width } else { 0 };
            if width > 0 {
                deinterleave(pass.row(rows.start + r), [&mut *red, &mut *green, &mut *blue]);
            }
            for plane in [red, green, blue] {
                plane[width..].fill(0);
            }
        }
    }

    /// Transposes each channel's eight planes into pairs: entry `j` of a
    /// channel is one register holding inputs `2j` and `2j + 1` of every
    /// row, row `r` in lane `r`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose_pairs(layout: &Layout, planes: &[i16], packed: &mut [i16]) {
        let plane_len = layout.plane_len();
        let channel_len = layout.pairs * BLOCK_ROWS * 2;
        for channel in 0..3 {
            let dst = &mut packed[channel * channel_len..][..channel_len];
            for block in 0..layout.pairs / BLOCK_ROWS {
                let mut lanes = [_mm256_setzero_si256(); BLOCK_ROWS];
                for (r, lane) in lanes.iter_mut().enumerate() {
                    let src = &planes[(r * 3 + channel) * plane_len + block * 16..][..16];
                    // SAFETY: `src` is 16 i16 long, 32 bytes.
                    *lane = unsafe { _mm256_loadu_si256(src.as_ptr().cast()) };
                }

                for (i, pair) in transpose_8x8(lanes).into_iter().enumerate() {
                    let slot = &mut dst[(block * BLOCK_ROWS + i) * 16..][..16];
                    // SAFETY: `slot` is 16 i16 long, 32 bytes.
                    unsafe { _mm256_storeu_si256(slot.as_mut_ptr().cast(), pair) };
                }
            }
        }
    }

    /// Transposes an 8×8 matrix of 32-bit values, one row per register.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose_8x8(rows: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(rows[0], rows[1]);
        let t1 = _mm256_unpackhi_epi32(rows[0], rows[1]);
        let t2 = _mm256_unpacklo_epi32(rows[2], rows[3]);
        let t3 = _mm256_unpackhi_epi32(rows[2], rows[3]);
        let t4 = _mm256_unpacklo_epi32(rows[4], rows[5]);
        let t5 = _mm256_unpackhi_epi32(rows[4], rows[5]);
        let t6 = _mm256_unpacklo_epi32(rows[6], rows[7]);
        let t7 = _mm256_unpackhi_epi32(rows[6], rows[7]);

        // Each 128-bit half now contains columns 0–3 (low half) or 4–7 (high)
        // of four rows.
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);

        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// Resamples a block of transposed rows into `out`, of which the first
    /// `block_rows` rows are kept.
    ///
    /// # Safety
    /// The CPU must have AVX2 and the features of `KIND`, and
    /// `check_bounds` must have passed for `pass` and the layout of
    /// `packed`.
    #[inline(always)]
    unsafe fn resample_block<const KIND: u8>(pass: &HorizontalPass<'_>, packed: &[i16], out: &mut [u8], block_rows: usize) {
        let weights = pass.weights;
        let channel_len = packed.len() / 3;
        let out_row_bytes = weights.out_size * 3;

        for x in 0..weights.out_size {
            // SAFETY: `check_bounds` covers `weights.pairs` pairs from each
            // output's first pair in every channel, and the weight rows.
            let pixels = unsafe {
                let (first, _) = *weights.spans.get_unchecked(x);
                let channels = [0, 1, 2].map(|c| packed.as_ptr().add(c * channel_len + first / 2 * 16).cast::<__m256i>());
                let row = x * weights.pairs;
                let high = weights.pair_high.as_ptr().add(row);
                let low = weights.pair_low.as_ptr().add(row);
                output_pixel::<KIND>(channels, high, low, weights.pairs)
            };

            let mut bytes = [0u8; 32];
            // SAFETY: `bytes` is 32 bytes long.
            unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), pixels) };
            for r in 0..block_rows {
                let at = r / 4 * 16 + r % 4 * 3;
                out[r * out_row_bytes + x * 3..][..3].copy_from_slice(&bytes[at..at + 3]);
            }
        }
    }

    /// Returns one output pixel for eight rows as bytes: rows 0–3 as RGB
    /// triples in the low 128 bits, rows 4–7 in the high.
    ///
    /// # Safety
    /// The CPU must have AVX2 and the features of `KIND`, and every pointer
    /// must have `pairs` values to read.
    #[inline(always)]
    unsafe fn output_pixel<const KIND: u8>(channels: [*const __m256i; 3], high: *const i32, low: *const i32, pairs: usize) -> __m256i {
        // SAFETY: the caller guarantees the features and the reads.
        unsafe {
            let mut highs = [_mm256_setzero_si256(); 3];
            let mut lows = [_mm256_setzero_si256(); 3];
            for pair in 0..pairs {
                let high_pair = _mm256_set1_epi32(*high.add(pair));
                let low_pair = _mm256_set1_epi32(*low.add(pair));
                for channel in 0..3 {
                    let samples = _mm256_loadu_si256(channels[channel].add(pair));
                    highs[channel] = multiply_add::<KIND>(highs[channel], samples, high_pair);
                    lows[channel] = multiply_add::<KIND>(lows[channel], samples, low_pair);
                }
            }

            let mut clipped = [_mm256_setzero_si256(); 3];
            for channel in 0..3 {
                let sum = _mm256_add_epi32(_mm256_slli_epi32::<{ LOW_BITS as i32 }>(highs[channel]), lows[channel]);
                clipped[channel] = clip8_lanes(_mm256_add_epi32(sum, _mm256_set1_epi32(HALF)));
            }
            interleave_rows(clipped)
        }
    }

    /// Applies PIL's `clip8` to eight sums, leaving 0 to 511 in 32-bit lanes:
    /// the packs in [`interleave_rows`] saturate 256 and above to 255.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn clip8_lanes(sums: __m256i) -> __m256i {
        // Negative sums become 0, and sums of 1 << 30 or more shift to
        // 256..511.
        _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm256_max_epi32(sums, _mm256_setzero_si256()))
    }

    /// Packs clipped red, green and blue lanes to bytes and orders them as
    /// RGB triples, rows 0–3 in the low 128 bits and rows 4–7 in the high.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn interleave_rows([red, green, blue]: [__m256i; 3]) -> __m256i {
        // Per 128-bit half: R0-3 G0-3 as words, then B0-3 twice.
        let red_green = _mm256_packus_epi32(red, green);
        let blue_blue = _mm256_packus_epi32(blue, blue);
        // Per half: R0-3 G0-3 B0-3 B0-3 as bytes.
        let bytes = _mm256_packus_epi16(red_green, blue_blue);
        // SAFETY: the mask is a 32-byte array.
        let order = unsafe { _mm256_loadu_si256(RGB_ORDER.as_ptr().cast()) };
        _mm256_shuffle_epi8(bytes, order)
    }

    /// Shuffle mask for [`interleave_rows`]: per 128-bit half, rows 0–3 as
    /// RGB triples from R0-3 G0-3 B0-3.
    const RGB_ORDER: [i8; 32] = {
        let mut mask = [-1i8; 32];
        let mut i = 0;
        while i < 12 {
            let (row, channel) = (i / 3, i % 3);
            mask[i] = (channel * 4 + row) as i8;
            mask[16 + i] = (channel * 4 + row) as i8;
            i += 1;
        }
        mask
    };

    /// Splits interleaved RGB into i16 planes, 16 pixels per step with byte
    /// shuffles. The last pixels of the row go one at a time.
    #[target_feature(enable = "avx2")]
    fn deinterleave(row: &[u8], [red, green, blue]: [&mut [i16]; 3]) {
        let whole = row.len() / 3 / STEP_PIXELS;
        for step in 0..whole {
            let bytes = &row[step * 3 * STEP_PIXELS..][..3 * STEP_PIXELS];
            let planes = split_16(bytes);
            for (plane, values) in [&mut *red, &mut *green, &mut *blue].into_iter().zip(planes) {
                let dst = &mut plane[step * STEP_PIXELS..][..STEP_PIXELS];
                // SAFETY: `dst` is 16 i16 long, 32 bytes.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), _mm256_cvtepu8_epi16(values)) };
            }
        }

        let done = whole * STEP_PIXELS;
        let tail = row[done * 3..].chunks_exact(3);
        for (i, px) in tail.enumerate() {
            red[done + i] = i16::from(px[0]);
            green[done + i] = i16::from(px[1]);
            blue[done + i] = i16::from(px[2]);
        }
    }

    /// Returns the shuffle masks that gather one channel from each of the
    /// three loads. An index of -1 writes a zero, so the three results can be
    /// OR-ed together.
    const fn gather_masks(channel: usize) -> [[i8; 16]; 3] {
        let mut masks = [[-1i8; 16]; 3];
        let mut pixel = 0;
        while pixel < STEP_PIXELS {
            let byte = pixel * 3 + channel;
            masks[byte / 16][pixel] = (byte % 16) as i8;
            pixel += 1;
        }
        masks
    }

    const MASKS: [[[i8; 16]; 3]; 3] = [gather_masks(0), gather_masks(1), gather_masks(2)];

    #[inline]
    #[target_feature(enable = "avx2")]
    fn split_16(bytes: &[u8]) -> [__m128i; 3] {
        assert_eq!(bytes.len(), 48);

        // SAFETY: the assertion covers the three 16-byte loads.
        let loads = unsafe { [0, 16, 32].map(|at| _mm_loadu_si128(bytes.as_ptr().add(at).cast())) };
        let mut planes = [_mm_setzero_si128(); 3];
        for (plane, masks) in planes.iter_mut().zip(&MASKS) {
            for (load, mask) in loads.iter().zip(masks) {
                // SAFETY: a 16-byte array is a valid unaligned load.
                let mask = unsafe { _mm_loadu_si128(mask.as_ptr().cast()) };
                *plane = _mm_or_si128(*plane, _mm_shuffle_epi8(*load, mask));
            }
        }
        planes
    }

    /// Adds the sums of the pairwise products of `a` and `b` to `sum`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and the features of `KIND`.
    #[inline(always)]
    unsafe fn multiply_add<const KIND: u8>(sum: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the caller guarantees the features of the chosen form.
        unsafe {
            if KIND == MultiplyAdd::Avx512Vnni as u8 {
                _mm256_dpwssd_epi32(sum, a, b)
            } else if KIND == MultiplyAdd::AvxVnni as u8 {
                _mm256_dpwssd_avx_epi32(sum, a, b)
            } else {
                _mm256_add_epi32(sum, _mm256_madd_epi16(a, b))
            }
        }
    }
}

/// Resamples `src`, rows of `row_bytes` interleaved samples whose first row
/// is input row `first_row`, vertically into `out`.
fn run_vertical(src: &[u8], row_bytes: usize, weights: &Weights, first_row: usize, sums: &mut Vec<i32>, out: &mut [u8]) {
    sums.resize(row_bytes, 0);

    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { vertical_avx2(src, row_bytes, weights, first_row, sums, out) };
    }
    vertical_body(src, row_bytes, weights, first_row, sums, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_avx2(src: &[u8], row_bytes: usize, weights: &Weights, first_row: usize, sums: &mut [i32], out: &mut [u8]) {
    vertical_body(src, row_bytes, weights, first_row, sums, out)
}

/// Accumulates whole weighted rows, which vectorises along the row.
#[inline(always)]
fn vertical_body(src: &[u8], row_bytes: usize, weights: &Weights, first_row: usize, sums: &mut [i32], out: &mut [u8]) {
    for (y, out_row) in out.chunks_exact_mut(row_bytes).enumerate() {
        let (first, used, k) = weights.of(y);
        sums.fill(HALF);

        for (tap, &w) in k[..used].iter().enumerate() {
            let row = &src[(first + tap - first_row) * row_bytes..][..row_bytes];
            for (sum, &sample) in sums.iter_mut().zip(row) {
                *sum = sum.wrapping_add(i32::from(sample).wrapping_mul(w));
            }
        }

        for (o, &sum) in out_row.iter_mut().zip(sums.iter()) {
            *o = clip8(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PIL's two passes, in Pillow 13's order, written as plainly as its C:
    /// one output sample at a time, weights in order.
    fn reference(src: &[u8], (w, h): (usize, usize), (ow, oh): (usize, usize)) -> Vec<u8> {
        let pass = |src: &[u8], (w, h): (usize, usize), weights: &Weights, horizontal: bool| {
            let (out_w, out_h) = if horizontal { (weights.out_size, h) } else { (w, weights.out_size) };
            let mut out = vec![0u8; out_w * out_h * 3];
            for y in 0..out_h {
                for x in 0..out_w {
                    for c in 0..3 {
                        let (first, used, k) = weights.of(if horizontal { x } else { y });
                        let mut sum = HALF;
                        for (i, &wk) in k[..used].iter().enumerate() {
                            let (sx, sy) = if horizontal { (first + i, y) } else { (x, first + i) };
                            sum += i32::from(src[(sy * w + sx) * 3 + c]) * wk;
                        }
                        out[(y * out_w + x) * 3 + c] = clip8(sum);
                    }
                }
            }
            out
        };

        let mut image = src.to_vec();
        let mut size = (w, h);
        let order = if vertical_first((w, h), (ow, oh)) { [false, true] } else { [true, false] };
        for horizontal in order {
            if horizontal && ow != w {
                image = pass(&image, size, &Weights::bicubic(w, ow), true);
                size.0 = ow;
            }
            if !horizontal && oh != h {
                image = pass(&image, size, &Weights::bicubic(h, oh), false);
                size.1 = oh;
            }
        }
        image
    }

    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn filter_matches_catmull_rom() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (input, output) in [(4000, 384), (1000, 384), (384, 384), (100, 384), (7, 3), (1, 384)] {
            let weights = Weights::bicubic(input, output);
            for out in 0..output {
                let (first, used, k) = weights.of(out);
                assert!(first + used <= input, "{input}->{output}: span past the input");
                assert!(k[used..].iter().all(|&w| w == 0), "padding must be zero");
                let total: i32 = k.iter().sum();
                // Each weight is rounded on its own, so the total may miss
                // 1 << 22 by up to half a unit per tap.
                assert!((total - (1 << PRECISION_BITS)).abs() <= used as i32, "{input}->{output} at {out}: {total}");
            }
        }
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        let unit = f64::from(1u32 << PRECISION_BITS);
        assert_eq!(to_fixed(0.5 / unit), 1);
        assert_eq!(to_fixed(-0.5 / unit), -1);
        assert_eq!(to_fixed(0.49 / unit), 0);
        assert_eq!(to_fixed(1.0), 1 << PRECISION_BITS);
    }

    #[test]
    fn pass_order_follows_pillow() {
        assert!(vertical_first((1080, 1920), (384, 384)));
        assert!(vertical_first((20, 700), (64, 64)));
        assert!(!vertical_first((3000, 4000), (384, 384)));
        assert!(!vertical_first((60, 60), (40, 20)));
        assert!(!vertical_first((10, 20), (30, 40)));
    }

    #[test]
    fn clip8_saturates() {
        assert_eq!(clip8(-5), 0);
        assert_eq!(clip8(0), 0);
        assert_eq!(clip8(HALF), 0);
        assert_eq!(clip8(200 << PRECISION_BITS), 200);
        assert_eq!(clip8(i32::MAX), 255);
    }

    #[test]
    fn matches_plain_two_pass_resampling() {
        let mut resampler = Resampler::default();
        let cases = [
            ((97, 61), (384, 384)),
            ((1201, 903), (384, 384)),
            ((384, 517), (384, 384)),
            ((777, 384), (384, 384)),
            ((1, 1), (384, 384)),
            ((5, 3), (2, 7)),
            ((300, 900), (250, 384)),
            ((20, 700), (64, 64)),
        ];
        for (seed, (from, to)) in cases.into_iter().enumerate() {
            let src = noise(from.0 * from.1 * 3, seed as u32);
            let mut out = vec![0u8; to.0 * to.1 * 3];
            resampler.resize(&src, from, to, &mut out);
            assert!(out == reference(&src, from, to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn portable_pass_matches_plain_resampling() {
        let (from, to) = ((1201, 37), (384, 37));
        let src = noise(from.0 * from.1 * 3, 9);
        let weights = Weights::bicubic(from.0, to.0);
        let pass = HorizontalPass { src: &src, width: from.0, weights: &weights };
        let mut planes = vec![0i16; 3 * pass.plane_len()];
        let mut out = vec![0u8; to.0 * to.1 * 3];

        horizontal_portable(&pass, 0..from.1, &mut planes, &mut out);
        assert!(out == reference(&src, from, to));
    }

    #[test]
    fn rows_in_bands_match_the_whole_image() {
        let cases = [
            ((1201, 903), (384, 384)),
            ((384, 517), (384, 384)),
            ((777, 384), (384, 384)),
            ((40, 40), (40, 40)),
            ((5, 3), (2, 7)),
        ];
        for (seed, (from, to)) in cases.into_iter().enumerate() {
            let src = noise(from.0 * from.1 * 3, 20 + seed as u32);
            let expected = reference(&src, from, to);

            for band in [1, 7, 16, from.1] {
                let mut resampler = Resampler::default();
                let mut stream = resampler.stream(from, to).expect("the horizontal pass runs first");
                for rows in src.chunks(band * from.0 * 3) {
                    stream.push(rows);
                }
                let mut out = vec![0u8; to.0 * to.1 * 3];
                stream.finish(&mut out);
                assert!(out == expected, "{from:?} -> {to:?} in bands of {band}");
            }
        }
    }

    #[test]
    fn vertical_first_shapes_need_the_whole_image() {
        let mut resampler = Resampler::default();
        assert!(resampler.stream((1080, 1920), (384, 384)).is_none());
        // With one pass only, the order does not matter.
        assert!(resampler.stream((384, 1920), (384, 384)).is_some());
    }

    #[test]
    #[should_panic(expected = "every source row")]
    fn finish_before_last_row_panics() {
        let mut resampler = Resampler::default();
        let mut stream = resampler.stream((10, 10), (4, 4)).unwrap();
        stream.push(&[0; 10 * 3 * 5]);
        stream.finish(&mut [0; 4 * 4 * 3]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_multiply_add_matches_plain_resampling() {
        use x86::MultiplyAdd;

        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let supported = [
            (MultiplyAdd::Avx2, true),
            (MultiplyAdd::AvxVnni, std::is_x86_feature_detected!("avxvnni")),
            (MultiplyAdd::Avx512Vnni, std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl")),
        ];
        // Outputs that fill blocks of eight and some that do not, and taps
        // from one SIMD step to several.
        for (from, to) in [((1201, 37), (384, 37)), ((4000, 9), (384, 9)), ((97, 5), (389, 5)), ((33, 3), (7, 3)), ((2, 16), (5, 16))] {
            let src = noise(from.0 * from.1 * 3, 31);
            let expected = reference(&src, from, to);
            let weights = Weights::bicubic(from.0, to.0);
            let pass = HorizontalPass { src: &src, width: from.0, weights: &weights };

            for (kind, _) in supported.iter().filter(|(_, runs)| *runs) {
                let mut scratch = Vec::new();
                let mut out = vec![0u8; to.0 * to.1 * 3];
                x86::horizontal_using(*kind, &pass, 0..from.1, &mut scratch, &mut out);
                assert!(out == expected, "{from:?} -> {to:?} with {kind:?}");

                // Rows from the middle, a block and a short block.
                let rows = 1..from.1.min(12);
                let mut part = vec![0u8; rows.len() * to.0 * 3];
                x86::horizontal_using(*kind, &pass, rows.clone(), &mut scratch, &mut part);
                assert!(part == expected[rows.start * to.0 * 3..rows.end * to.0 * 3], "{from:?} rows {rows:?} with {kind:?}");
            }
        }
    }

    #[test]
    fn split_weights_recombine() {
        for (input, output) in [(4000, 384), (1001, 384), (97, 389), (7, 3)] {
            let weights = Weights::bicubic(input, output);
            for out in 0..output {
                let (first, used, k) = weights.of(out);
                for (tap, &weight) in k[..used].iter().enumerate() {
                    let sample = first + tap;
                    let slot = out * weights.pairs + (sample / 2 - first / 2);
                    let shift = 16 * (sample % 2);
                    let high = (weights.pair_high[slot] >> shift) as i16;
                    let low = (weights.pair_low[slot] >> shift) as i16;
                    assert_eq!((i32::from(high) << LOW_BITS) + i32::from(low), weight, "{input}->{output} at {out}");
                    assert!((0..1 << LOW_BITS).contains(&i32::from(low)));
                }
            }
        }
    }

    #[test]
    fn flat_image_stays_flat() {
        let mut resampler = Resampler::default();
        let src = [17u8, 128, 250].repeat(640 * 480);
        let mut out = vec![0u8; 384 * 384 * 3];
        resampler.resize(&src, (640, 480), (384, 384), &mut out);
        assert!(out.chunks_exact(3).all(|px| px == [17, 128, 250]));
    }
}
