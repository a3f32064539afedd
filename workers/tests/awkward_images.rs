//! Awkward images, as a web crawl returns them: unusual colour models and
//! bit depths, animation, metadata, damage, bombs, blank pictures and
//! formats we do not decode. Each test checks for the right pixels or a
//! clear status.
//!
//! The files are built here at run time: by hand where the layout is the
//! point (PNG chunks, WebP RIFF chunks, EXIF), with the image crate's
//! encoders, or with libjpeg (mozjpeg-sys) for the JPEG variants. The few
//! that only Pillow can make come from `tests/fixtures/awkward/generate.py`.
//!
//! A counting global allocator measures what decoding allocates, which is
//! why these tests have a binary of their own. It sees Rust allocations
//! only, and libjpeg's own malloc calls bypass it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_void;
use std::io::{Cursor, Write};
use std::os::raw::{c_int, c_ulong};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capfilt_workers::image::{
    decode, decode_at_least, is_blank, sniff_format, DecodeError, DecodeLimits, DecodedImage,
    ImageFormatName, PrepareError, PreprocessConfig, Preprocessor, Sniffed,
};
use image::codecs::gif::GifEncoder;
use image::{
    DynamicImage, Frame, GrayAlphaImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage,
    Rgba, RgbaImage,
};
use mozjpeg_sys as jpeglib;

// ---------------------------------------------------------------------------
// Allocation accounting
// ---------------------------------------------------------------------------

/// Counts, for the current thread only, the bytes live at once and the
/// largest single allocation while tracking is on. Per-thread state keeps
/// the tests, which run in parallel, out of each other's numbers.
struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // try_with: the allocator can run while thread-locals are torn down.
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + size);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
            LARGEST.with(|l| l.set(l.get().max(size)));
        }
    });
}

fn note_free(size: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            // Memory allocated before tracking began is freed uncounted.
            LIVE.with(|l| l.set(l.get().saturating_sub(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator. The
// bookkeeping touches only const-initialised thread-locals, which do not
// allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a fresh block before the old one goes, as when the
        // block moves: the peak errs on the high side.
        note_alloc(new_size);
        note_free(layout.size());
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

#[derive(Debug, Clone, Copy)]
struct Memory {
    peak: usize,
    largest: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Memory) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));

    let result = f();

    TRACKING.with(|t| t.set(false));
    let memory = Memory {
        peak: PEAK.with(Cell::get),
        largest: LARGEST.with(Cell::get),
    };
    (result, memory)
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

fn decode_default(bytes: &[u8]) -> Result<DecodedImage, DecodeError> {
    decode(bytes, &DecodeLimits::default())
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

/// Returns the largest per-sample difference between two images.
fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Returns the mean absolute per-sample difference between two images.
fn mean_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

/// Gentle ramps in all three channels plus mild noise: no symmetry, no two
/// neighbours alike, and detail in every 8×8 block for a codec to get wrong.
fn textured(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    RgbImage::from_fn(width, height, |x, y| {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let noise = ((state >> 16) % 7) as u8;
        Rgb([
            (x * 3 % 200) as u8 + noise,
            (y * 3 % 200) as u8 + noise,
            ((x + y) * 2 % 200) as u8 + 30,
        ])
    })
}

/// Reports whether a decode failed with `Corrupt` and a message containing
/// `needle`.
fn is_corrupt_with(result: &Result<DecodedImage, DecodeError>, needle: &str) -> bool {
    matches!(result, Err(DecodeError::Corrupt(m)) if m.contains(needle))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/awkward")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// JPEG writing with libjpeg
// ---------------------------------------------------------------------------

/// How [`libjpeg_encode`] stores an image.
#[derive(Debug, Clone, Copy)]
struct JpegOptions {
    /// Colour space of the samples handed in.
    input: jpeglib::J_COLOR_SPACE,
    /// Colour space stored in the file.
    stored: jpeglib::J_COLOR_SPACE,
    progressive: bool,
    arithmetic: bool,
    /// Whether to write the Adobe APP14 segment.
    adobe: bool,
    quality: c_int,
}

impl JpegOptions {
    /// Baseline, Huffman-coded YCbCr 4:2:0 from RGB input, libjpeg's plain
    /// defaults.
    fn rgb() -> Self {
        Self {
            input: jpeglib::J_COLOR_SPACE::JCS_RGB,
            stored: jpeglib::J_COLOR_SPACE::JCS_YCbCr,
            progressive: false,
            arithmetic: false,
            adobe: false,
            quality: 90,
        }
    }

    fn cmyk(stored: jpeglib::J_COLOR_SPACE, adobe: bool) -> Self {
        Self {
            input: jpeglib::J_COLOR_SPACE::JCS_CMYK,
            stored,
            adobe,
            quality: 98,
            ..Self::rgb()
        }
    }
}

/// Turns a libjpeg error into a Rust panic, which fails the test. libjpeg
/// was built to let such unwinds pass through it.
extern "C-unwind" fn panic_on_error(cinfo: &mut jpeglib::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with the error manager it was given.
    let code = unsafe { (*cinfo.err).msg_code };
    panic!("libjpeg failed while writing a test image, message code {code}");
}

extern "C" {
    /// jpeg_mem_dest allocates its output with malloc.
    fn free(ptr: *mut c_void);
}

/// Encodes `samples` (rows of `width` pixels in `options.input`) with
/// libjpeg. Starting from the plain libjpeg profile rather than mozjpeg's
/// default keeps the quantisation of baseline, progressive and arithmetic
/// files identical, so their decodes can be compared exactly.
fn libjpeg_encode(width: u32, height: u32, samples: &[u8], options: JpegOptions) -> Vec<u8> {
    let channels = match options.input {
        jpeglib::J_COLOR_SPACE::JCS_GRAYSCALE => 1,
        jpeglib::J_COLOR_SPACE::JCS_CMYK => 4,
        _ => 3,
    };
    let row_len = width as usize * channels;
    assert_eq!(samples.len(), row_len * height as usize, "sample count");

    // SAFETY: the structs are zeroed as libjpeg expects before
    // jpeg_create_compress, live on this stack frame until destroyed, and
    // every row pointer handed over points into `samples`.
    unsafe {
        let mut err: jpeglib::jpeg_error_mgr = std::mem::zeroed();
        let mut cinfo: jpeglib::jpeg_compress_struct = std::mem::zeroed();
        // From here on `err` is reached only through this pointer, which
        // libjpeg keeps too.
        let err_ptr: *mut jpeglib::jpeg_error_mgr = jpeglib::jpeg_std_error(&mut err);
        (*err_ptr).error_exit = Some(panic_on_error);
        cinfo.common.err = err_ptr;
        jpeglib::jpeg_create_compress(&mut cinfo);

        let mut buffer: *mut u8 = std::ptr::null_mut();
        let mut size: c_ulong = 0;
        jpeglib::jpeg_mem_dest(&mut cinfo, &mut buffer, &mut size);

        cinfo.image_width = width;
        cinfo.image_height = height;
        cinfo.input_components = channels as c_int;
        cinfo.in_color_space = options.input;
        jpeglib::jpeg_c_set_int_param(
            &mut cinfo,
            jpeglib::J_INT_PARAM::JINT_COMPRESS_PROFILE,
            jpeglib::JCP_FASTEST as c_int,
        );
        jpeglib::jpeg_set_defaults(&mut cinfo);
        jpeglib::jpeg_set_colorspace(&mut cinfo, options.stored);
        jpeglib::jpeg_set_quality(&mut cinfo, options.quality, 1);

        // After jpeg_set_colorspace, which picks its own default.
        cinfo.write_Adobe_marker = options.adobe.into();
        cinfo.arith_code = options.arithmetic.into();
        if options.progressive {
            jpeglib::jpeg_simple_progression(&mut cinfo);
        }

        jpeglib::jpeg_start_compress(&mut cinfo, 1);
        for row in samples.chunks_exact(row_len) {
            let row_ptr = row.as_ptr();
            jpeglib::jpeg_write_scanlines(&mut cinfo, &row_ptr, 1);
        }
        jpeglib::jpeg_finish_compress(&mut cinfo);

        let bytes = std::slice::from_raw_parts(buffer, size as usize).to_vec();
        jpeglib::jpeg_destroy_compress(&mut cinfo);
        free(buffer.cast());
        bytes
    }
}

fn rgb_jpeg(image: &RgbImage, options: JpegOptions) -> Vec<u8> {
    libjpeg_encode(image.width(), image.height(), image.as_raw(), options)
}

/// Yields (marker, payload start, payload end) for each segment up to and
/// including the first SOS.
fn jpeg_segments(jpeg: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut segments = Vec::new();
    let mut pos = 2;
    while pos + 4 <= jpeg.len() && jpeg[pos] == 0xFF {
        let marker = jpeg[pos + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        segments.push((marker, pos + 4, pos + 2 + len));
        if marker == 0xDA {
            break;
        }
        pos += 2 + len;
    }
    segments
}

/// Returns the payload of the first segment with `marker`.
fn segment(jpeg: &[u8], marker: u8) -> Option<&[u8]> {
    jpeg_segments(jpeg)
        .into_iter()
        .find(|(m, _, _)| *m == marker)
        .map(|(_, start, end)| &jpeg[start..end])
}

/// Inserts a segment right after SOI.
fn with_segment(jpeg: &[u8], marker: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len() + 2).expect("segment fits");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

// ---------------------------------------------------------------------------
// CMYK and YCCK JPEG
// ---------------------------------------------------------------------------

/// Builds eight flat 16×16 patches, 64×32 in all: primaries, secondaries,
/// a dark and a light neutral. Flat MCU-sized patches keep JPEG's own error
/// to a level or two, so a colour-model mistake is obvious.
fn patches() -> RgbImage {
    const COLOURS: [[u8; 3]; 8] = [
        [220, 30, 40],
        [40, 180, 60],
        [30, 60, 200],
        [240, 220, 40],
        [40, 200, 210],
        [200, 50, 190],
        [60, 60, 60],
        [210, 190, 160],
    ];
    RgbImage::from_fn(64, 32, |x, y| {
        let index = (y / 16 * 4 + x / 16) as usize;
        Rgb(COLOURS[index])
    })
}

/// Converts RGB to CMYK with a real black channel (K takes the ink the
/// three colours share), so that a mistake in any plane shows.
fn rgb_to_cmyk(rgb: &RgbImage) -> Vec<u8> {
    let mut cmyk = Vec::with_capacity(rgb.as_raw().len() / 3 * 4);
    for px in rgb.pixels() {
        let k = 255 - px.0.iter().copied().max().unwrap();
        let paper = f64::from(255 - k).max(1.0);
        for &c in &px.0 {
            let ink = f64::from(255 - c - k) * 255.0 / paper;
            cmyk.push(ink.round() as u8);
        }
        cmyk.push(k);
    }
    cmyk
}

fn invert(samples: &[u8]) -> Vec<u8> {
    samples.iter().map(|v| 255 - v).collect()
}

/// Checks the middle 8×8 of each 16×16 patch, away from the edges where
/// chroma upsampling blends neighbours.
fn assert_patches_match(decoded: &RgbImage, source: &RgbImage, tolerance: u8) {
    assert_eq!(decoded.dimensions(), source.dimensions());
    for (x, y, px) in source.enumerate_pixels() {
        if !(4..12).contains(&(x % 16)) || !(4..12).contains(&(y % 16)) {
            continue;
        }
        let got = decoded.get_pixel(x, y);
        let close = got
            .0
            .iter()
            .zip(px.0)
            .all(|(g, e)| g.abs_diff(e) <= tolerance);
        assert!(close, "({x}, {y}): decoded {got:?}, source {px:?}");
    }
}

#[test]
fn cmyk_jpeg_without_adobe_segment_is_plain() {
    let source = patches();
    let options = JpegOptions::cmyk(jpeglib::J_COLOR_SPACE::JCS_CMYK, false);
    let jpeg = libjpeg_encode(64, 32, &rgb_to_cmyk(&source), options);
    assert!(segment(&jpeg, 0xEE).is_none(), "no Adobe segment expected");

    let decoded = decode_default(&jpeg).unwrap();

    // Without the segment the samples are ink amounts as stored. Reading
    // them inverted would give the complementary colours.
    assert_eq!(decoded.format, ImageFormatName::Jpeg);
    assert_patches_match(&decoded.rgb, &source, 6);
}

#[test]
fn adobe_cmyk_jpeg_is_inverted() {
    let source = patches();
    let options = JpegOptions::cmyk(jpeglib::J_COLOR_SPACE::JCS_CMYK, true);
    let jpeg = libjpeg_encode(64, 32, &invert(&rgb_to_cmyk(&source)), options);

    // Transform 0: CMYK stored as is, Photoshop-style inverted samples.
    let adobe = segment(&jpeg, 0xEE).expect("Adobe segment");
    assert_eq!(adobe[11], 0);

    let decoded = decode_default(&jpeg).unwrap();
    assert_patches_match(&decoded.rgb, &source, 6);
}

#[test]
fn ycck_jpeg_colours() {
    let source = patches();
    let options = JpegOptions::cmyk(jpeglib::J_COLOR_SPACE::JCS_YCCK, true);
    let jpeg = libjpeg_encode(64, 32, &invert(&rgb_to_cmyk(&source)), options);

    // Transform 2: YCCK, which libjpeg turns back into (inverted) CMYK.
    let adobe = segment(&jpeg, 0xEE).expect("Adobe segment");
    assert_eq!(adobe[11], 2);

    let decoded = decode_default(&jpeg).unwrap();
    assert_patches_match(&decoded.rgb, &source, 8);
}

/// Decodes `<stem>.jpg` and compares it with Pillow's decode of the same
/// file, `<stem>.pil.png`, both written by generate.py.
fn assert_matches_pil(stem: &str) {
    let diff = pil_difference(&format!("{stem}.jpg"));
    assert!(diff <= 1, "{stem}: differs from PIL by {diff} levels");
}

/// Returns the largest difference between our decode of fixture `file` and
/// Pillow's decode of it, `<stem>.pil.png`. An RGBA `.pil.png` goes through
/// the same compositing onto white as the file's own alpha.
fn pil_difference(file: &str) -> u8 {
    let stem = file.rsplit_once('.').expect("fixture with an extension").0;
    let ours = decode_default(&read_fixture(file)).unwrap();
    let pil = decode_default(&read_fixture(&format!("{stem}.pil.png"))).unwrap();

    assert_eq!(ours.had_alpha, pil.had_alpha, "{file}: alpha");
    let diff = max_diff(&ours.rgb, &pil.rgb);
    println!("{file}: max difference from PIL {diff}");
    diff
}

#[test]
fn pillow_cmyk_jpeg_matches_pil() {
    // Pillow writes CMYK with the Adobe segment and inverted samples, and
    // converts to RGB with the same rounding as ours.
    assert_matches_pil("cmyk_adobe");
}

#[test]
fn pillow_jpeg_variants_match_pil() {
    // Progressive (block smoothing), odd sizes (partial chroma blocks at
    // the edges) in 4:2:0 and 4:2:2, and grayscale.
    for stem in ["progressive", "odd_420", "odd_422", "gray"] {
        assert_matches_pil(stem);
    }
}

#[test]
fn pillow_lossy_webp_matches_pil_exactly() {
    // PIL decodes WebP with libwebp and its default chroma upsampling, as we
    // do, so lossy files match to the bit: an odd-sized opaque one and one
    // whose alpha runs from opaque to transparent.
    for file in ["lossy.webp", "lossy_alpha.webp"] {
        let diff = pil_difference(file);
        assert_eq!(diff, 0, "{file}: differs from PIL by {diff} levels");
    }
}

// ---------------------------------------------------------------------------
// Progressive, arithmetic, truncated and damaged JPEG
// ---------------------------------------------------------------------------

#[test]
fn progressive_jpeg_decodes_like_baseline() {
    let source = textured(48, 40, 1);
    let baseline = rgb_jpeg(&source, JpegOptions::rgb());
    let progressive = rgb_jpeg(
        &source,
        JpegOptions {
            progressive: true,
            ..JpegOptions::rgb()
        },
    );
    assert!(segment(&progressive, 0xC2).is_some(), "SOF2 expected");

    let expected = decode_default(&baseline).unwrap();
    let decoded = decode_default(&progressive).unwrap();

    // Same quantised coefficients in another order: the pixels must agree
    // exactly, and both stay close to the source on average (the ramps'
    // wrap-around edges cost single pixels much more).
    assert_eq!(decoded.rgb, expected.rgb);
    let error = mean_diff(&decoded.rgb, &source);
    println!("progressive: mean difference from the source {error:.2}");
    assert!(error < 6.0, "mean difference from the source {error}");
}

#[test]
fn arithmetic_jpeg_decodes() {
    let source = textured(48, 40, 2);
    let huffman = decode_default(&rgb_jpeg(&source, JpegOptions::rgb())).unwrap();

    for progressive in [false, true] {
        let options = JpegOptions {
            arithmetic: true,
            progressive,
            ..JpegOptions::rgb()
        };
        let jpeg = rgb_jpeg(&source, options);
        let sof = if progressive { 0xCA } else { 0xC9 };
        assert!(segment(&jpeg, sof).is_some(), "arithmetic SOF expected");

        let decoded = decode_default(&jpeg).unwrap();
        assert_eq!(decoded.rgb, huffman.rgb, "progressive: {progressive}");
    }
}

#[test]
fn half_jpeg_is_always_corrupt() {
    let source = textured(64, 64, 3);
    let baseline = rgb_jpeg(&source, JpegOptions::rgb());
    let progressive = rgb_jpeg(
        &source,
        JpegOptions {
            progressive: true,
            ..JpegOptions::rgb()
        },
    );

    // Policy: a JPEG whose markers stop before the end-of-image marker is
    // rejected, rather than decoded with its missing part painted grey.
    for jpeg in [baseline, progressive] {
        let cut = &jpeg[..jpeg.len() / 2];

        let first = decode_default(cut);
        let second = decode_default(cut);
        assert!(is_corrupt_with(&first, "truncated"), "{first:?}");
        assert_eq!(first.unwrap_err(), second.unwrap_err());
    }
}

#[test]
fn jpeg_without_end_marker_is_corrupt() {
    let jpeg = rgb_jpeg(&textured(32, 32, 4), JpegOptions::rgb());
    assert_eq!(&jpeg[jpeg.len() - 2..], [0xFF, 0xD9]);
    let no_end = &jpeg[..jpeg.len() - 2];

    // Every scan is present, yet the file is still refused: the check is a
    // pure function of the bytes, so the result never depends on the run.
    let first = decode_default(no_end);
    let second = decode_default(no_end);
    assert!(is_corrupt_with(&first, "truncated"), "{first:?}");
    assert_eq!(first.unwrap_err(), second.unwrap_err());

    assert!(decode_default(&jpeg).is_ok());
}

#[test]
fn bad_huffman_table_is_corrupt() {
    let mut jpeg = rgb_jpeg(&textured(32, 32, 5), JpegOptions::rgb());
    let (_, start, _) = jpeg_segments(&jpeg)
        .into_iter()
        .find(|(m, _, _)| *m == 0xC4)
        .expect("a DHT segment");

    // Sixteen code-length counts of 255 describe more codes than exist,
    // which libjpeg reports through its fatal error path.
    jpeg[start + 1..start + 17].fill(0xFF);

    let first = decode_default(&jpeg);
    let second = decode_default(&jpeg);
    assert!(is_corrupt_with(&first, "Huffman"), "{first:?}");
    assert_eq!(first.unwrap_err(), second.unwrap_err());
}

#[test]
fn lossless_and_twelve_bit_jpeg_unsupported() {
    let jpeg = rgb_jpeg(&textured(16, 16, 6), JpegOptions::rgb());
    let (_, start, _) = jpeg_segments(&jpeg)
        .into_iter()
        .find(|(m, _, _)| *m == 0xC0)
        .expect("a SOF0 segment");

    // SOF3 is the lossless process, which libjpeg-turbo's 8-bit lossy
    // decoder does not have.
    let mut lossless = jpeg.clone();
    lossless[start - 3] = 0xC3;

    let mut twelve_bit = jpeg.clone();
    twelve_bit[start] = 12;

    for variant in [lossless, twelve_bit] {
        let err = decode_default(&variant).unwrap_err();
        assert_eq!(err, DecodeError::Unsupported("jpeg_variant"));
        assert_eq!(err.status(), "unsupported_format");
    }
}

#[test]
fn huge_jpeg_header_rejected_before_decoding() {
    let mut jpeg = rgb_jpeg(&textured(16, 16, 7), JpegOptions::rgb());
    let (_, start, _) = jpeg_segments(&jpeg)
        .into_iter()
        .find(|(m, _, _)| *m == 0xC0)
        .expect("a SOF0 segment");
    jpeg[start + 1..start + 5].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);

    let started = Instant::now();
    let (result, memory) = measure(|| decode_default(&jpeg));

    // 65 535² pixels would take 12 GiB as RGB. The frame header alone must
    // settle it.
    assert_eq!(
        result.unwrap_err(),
        DecodeError::TooLarge {
            width: 65_535,
            height: 65_535
        }
    );
    assert!(memory.largest < MIB, "{memory:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---------------------------------------------------------------------------
// EXIF orientation
// ---------------------------------------------------------------------------

/// Builds little-endian TIFF data whose only IFD contains the Orientation tag.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());

    // Tag 0x0112, type SHORT (3), one value, stored in the entry itself.
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);

    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff
}

fn exif_payload(tiff: &[u8]) -> Vec<u8> {
    [b"Exif\0\0".as_slice(), tiff].concat()
}

/// Returns the stored-image pixel shown at upright (x, y), straight from
/// the EXIF definitions: where row 0 and column 0 of the stored image end
/// up for each of the eight orientations. `(w, h)` is the stored size.
fn stored_position(orientation: u16, (x, y): (u32, u32), (w, h): (u32, u32)) -> (u32, u32) {
    match orientation {
        1 => (x, y),
        2 => (w - 1 - x, y),
        3 => (w - 1 - x, h - 1 - y),
        4 => (x, h - 1 - y),
        5 => (y, x),
        6 => (y, h - 1 - x),
        7 => (w - 1 - y, h - 1 - x),
        8 => (w - 1 - y, x),
        other => panic!("orientation {other}"),
    }
}

#[test]
fn exif_orientations_give_upright_pixels() {
    let jpeg = rgb_jpeg(&textured(24, 16, 8), JpegOptions::rgb());
    let stored = decode_default(&jpeg).unwrap().rgb;
    let mut results = Vec::new();

    for orientation in 1..=8u16 {
        let tagged = with_segment(&jpeg, 0xE1, &exif_payload(&exif_tiff(orientation)));
        let decoded = decode_default(&tagged).unwrap();
        assert_eq!(decoded.exif_orientation, Some(orientation));

        let upright = if orientation >= 5 { (16, 24) } else { (24, 16) };
        assert_eq!(
            decoded.rgb.dimensions(),
            upright,
            "orientation {orientation}"
        );

        // The entropy-coded data is the same in every file, so each upright
        // pixel must equal its stored pixel exactly.
        for (x, y, px) in decoded.rgb.enumerate_pixels() {
            let (sx, sy) = stored_position(orientation, (x, y), (24, 16));
            assert_eq!(
                px,
                stored.get_pixel(sx, sy),
                "orientation {orientation} at ({x}, {y})"
            );
        }
        results.push(decoded.rgb);
    }

    // The picture has no symmetry, so all eight results differ.
    for (i, a) in results.iter().enumerate() {
        for b in &results[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn exif_after_xmp_segment_is_found() {
    let jpeg = rgb_jpeg(&textured(24, 16, 9), JpegOptions::rgb());
    let with_exif = with_segment(&jpeg, 0xE1, &exif_payload(&exif_tiff(6)));
    let xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/>";
    let both = with_segment(&with_exif, 0xE1, xmp);

    let decoded = decode_default(&both).unwrap();
    assert_eq!(decoded.exif_orientation, Some(6));
    assert_eq!(decoded.rgb.dimensions(), (16, 24));
}

#[test]
fn corrupt_exif_is_ignored() {
    let jpeg = rgb_jpeg(&textured(24, 16, 10), JpegOptions::rgb());
    let plain = decode_default(&jpeg).unwrap();

    let mut offset_past_end = exif_tiff(6);
    offset_past_end[4..8].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    let mut entries_past_end = exif_tiff(6);
    entries_past_end[8..10].copy_from_slice(&0xFFFFu16.to_le_bytes());
    entries_past_end.truncate(16);
    let bad_value = exif_tiff(9);
    let garbage = b"\x01\x02 definitely not TIFF".to_vec();
    let empty = Vec::new();

    for tiff in [offset_past_end, entries_past_end, bad_value, garbage, empty] {
        let tagged = with_segment(&jpeg, 0xE1, &exif_payload(&tiff));

        // A photo with broken metadata is still a photo: kept as stored.
        let decoded = decode_default(&tagged).unwrap();
        assert_eq!(decoded.exif_orientation, None, "{tiff:?}");
        assert_eq!(decoded.rgb, plain.rgb);
    }
}

// ---------------------------------------------------------------------------
// PNG by hand
// ---------------------------------------------------------------------------

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);

    let mut out = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

fn ihdr(width: u32, height: u32, bit_depth: u8, colour_type: u8) -> Vec<u8> {
    let mut data = width.to_be_bytes().to_vec();
    data.extend_from_slice(&height.to_be_bytes());
    data.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    png_chunk(b"IHDR", &data)
}

/// Assembles a PNG from an IHDR, extra chunks that go before the image
/// data, and the already compressed image data.
fn png(ihdr: Vec<u8>, before_data: &[Vec<u8>], idat: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(ihdr);
    for chunk in before_data {
        out.extend_from_slice(chunk);
    }
    out.extend(png_chunk(b"IDAT", idat));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn rgb16_png_rounds_to_nearest() {
    type Rgb16 = ImageBuffer<Rgb<u16>, Vec<u16>>;
    let image = Rgb16::from_fn(64, 8, |x, y| {
        let v = (x * 1021 + y * 131) as u16;
        Rgb([v, 65_535 - v, v / 2 + 127])
    });
    let bytes = encode(&DynamicImage::ImageRgb16(image.clone()), ImageFormat::Png);

    let decoded = decode_default(&bytes).unwrap();

    // Nearest level: v/257 rounded. Taking the high byte or truncating is
    // off by one for about half of these values.
    for (x, y, px) in image.enumerate_pixels() {
        let expected = px.0.map(|v| ((f64::from(v) / 257.0).round()) as u8);
        assert_eq!(decoded.rgb.get_pixel(x, y).0, expected, "({x}, {y})");
    }
    assert!(!decoded.had_alpha);
}

#[test]
fn gray16_png_rounds_to_nearest() {
    type Gray16 = ImageBuffer<Luma<u16>, Vec<u16>>;
    let image = Gray16::from_fn(256, 2, |x, y| Luma([(x * 256 + y * 128) as u16]));
    let bytes = encode(&DynamicImage::ImageLuma16(image.clone()), ImageFormat::Png);

    let decoded = decode_default(&bytes).unwrap();

    for (x, y, px) in image.enumerate_pixels() {
        let v = (f64::from(px.0[0]) / 257.0).round() as u8;
        assert_eq!(decoded.rgb.get_pixel(x, y).0, [v, v, v], "({x}, {y})");
    }
}

#[test]
fn palette_png_with_transparency_on_white() {
    // Palette: transparent black, half-transparent red, opaque green, and
    // blue, which tRNS does not reach and so is opaque.
    let palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255];
    let chunks = [
        png_chunk(b"PLTE", &palette),
        png_chunk(b"tRNS", &[0, 128, 255]),
    ];
    let bytes = png(ihdr(4, 1, 8, 3), &chunks, &zlib(&[0, 0, 1, 2, 3]));

    let decoded = decode_default(&bytes).unwrap();

    assert!(decoded.had_alpha);
    let row: Vec<[u8; 3]> = decoded.rgb.pixels().map(|p| p.0).collect();
    assert_eq!(
        row,
        [[255, 255, 255], [255, 127, 127], [0, 255, 0], [0, 0, 255]]
    );
}

#[test]
fn gray_alpha_png_on_white() {
    let image = GrayAlphaImage::from_fn(4, 1, |x, _| {
        LumaA([[0, 100, 0, 200][x as usize], [0, 255, 128, 64][x as usize]])
    });
    let bytes = encode(&DynamicImage::ImageLumaA8(image), ImageFormat::Png);

    let decoded = decode_default(&bytes).unwrap();

    // 200 at alpha 64: (200·64 + 255·191)/255 = 241.2.
    assert!(decoded.had_alpha);
    let row: Vec<[u8; 3]> = decoded.rgb.pixels().map(|p| p.0).collect();
    assert_eq!(
        row,
        [
            [255, 255, 255],
            [100, 100, 100],
            [127, 127, 127],
            [241, 241, 241]
        ]
    );
}

#[test]
fn one_bit_png() {
    // Ten pixels a row, so each row ends in six padding bits.
    let rows = [0u8, 0b1010_1010, 0b1000_0000, 0, 0b0000_0000, 0b0100_0000];
    let bytes = png(ihdr(10, 2, 1, 0), &[], &zlib(&rows));

    let decoded = decode_default(&bytes).unwrap();

    assert_eq!(decoded.rgb.dimensions(), (10, 2));
    let bits = |y: u32| -> Vec<u8> { (0..10).map(|x| decoded.rgb.get_pixel(x, y).0[0]).collect() };
    assert_eq!(bits(0), [255, 0, 255, 0, 255, 0, 255, 0, 255, 0]);
    assert_eq!(bits(1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 255]);
}

#[test]
fn transparent_line_art_stays_visible() {
    // Black strokes on a transparent background whose hidden colour is
    // black too, as many logo and icon exports are. Dropping alpha, as
    // PIL's convert("RGB") does, gives a black square.
    let mut art = RgbaImage::from_pixel(16, 16, Rgba([0, 0, 0, 0]));
    for i in 0..16 {
        art.put_pixel(i, i, Rgba([0, 0, 0, 255]));
        art.put_pixel(i, 8, Rgba([0, 0, 0, 255]));
    }
    let bytes = encode(&DynamicImage::ImageRgba8(art), ImageFormat::Png);

    let decoded = decode_default(&bytes).unwrap();

    assert!(decoded.had_alpha);
    assert_eq!(decoded.rgb.get_pixel(3, 3).0, [0, 0, 0]);
    assert_eq!(decoded.rgb.get_pixel(12, 8).0, [0, 0, 0]);
    assert_eq!(decoded.rgb.get_pixel(12, 2).0, [255, 255, 255]);
    assert_eq!(decoded.blank, None);
}

#[test]
fn absurd_png_size_is_too_large() {
    let bytes = png(ihdr(8_000_000, 4_294_967_295, 8, 2), &[], &zlib(&[0]));

    let started = Instant::now();
    let (result, memory) = measure(|| decode_default(&bytes));

    let err = result.unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            width: 8_000_000,
            height: 4_294_967_295
        }
    );
    assert_eq!(err.status(), "too_large");
    assert!(memory.largest < MIB, "{memory:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Builds a 20 000 × 20 000 PNG of one colour from 1-bit palette rows of
/// zeros. The file is about 50 kB: deflate's best ratio is about 1000 to 1,
/// which bounds how small 50 MB of rows can get.
fn giant_flat_png() -> Vec<u8> {
    const SIDE: u32 = 20_000;
    let row_len = 1 + SIDE.div_ceil(8) as usize;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; row_len];
    for _ in 0..SIDE {
        encoder.write_all(&row).unwrap();
    }

    let plte = png_chunk(b"PLTE", &[30, 120, 200]);
    png(ihdr(SIDE, SIDE, 1, 3), &[plte], &encoder.finish().unwrap())
}

#[test]
fn giant_flat_png_respects_pixel_limit() {
    let bytes = giant_flat_png();
    assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());

    // Under the default limit, 400 M pixels are refused from the header.
    let (result, memory) = measure(|| decode_default(&bytes));
    assert_eq!(
        result.unwrap_err(),
        DecodeError::TooLarge {
            width: 20_000,
            height: 20_000
        }
    );
    assert!(memory.largest < MIB, "{memory:?}");

    // With room for it, it decodes, into one RGB buffer and little else.
    let limits = DecodeLimits {
        max_pixels: 400_000_000,
        ..DecodeLimits::default()
    };
    let started = Instant::now();
    let (result, memory) = measure(|| decode(&bytes, &limits));
    let decoded = result.unwrap();
    println!("20000x20000 decode: {:?}, {memory:?}", started.elapsed());

    assert_eq!(decoded.rgb.dimensions(), (20_000, 20_000));
    for (x, y) in [(0, 0), (19_999, 0), (10_000, 10_000), (19_999, 19_999)] {
        assert_eq!(decoded.rgb.get_pixel(x, y).0, [30, 120, 200]);
    }
    let rgb_bytes = 3 * 400_000_000;
    assert!(memory.peak <= rgb_bytes + 64 * MIB, "{memory:?}");
}

#[test]
fn huge_png_text_chunk_decodes() {
    let source = textured(32, 32, 11);
    let plain = encode(&DynamicImage::ImageRgb8(source.clone()), ImageFormat::Png);

    // A 20 MB tEXt chunk right after IHDR, where metadata usually sits.
    let mut text = b"Comment\0".to_vec();
    text.resize(20_000_000, b'x');
    let mut bytes = plain[..33].to_vec();
    bytes.extend(png_chunk(b"tEXt", &text));
    bytes.extend_from_slice(&plain[33..]);

    let started = Instant::now();
    let decoded = decode_default(&bytes).unwrap();
    let elapsed = started.elapsed();
    println!("PNG with a 20 MB text chunk: {elapsed:?}");

    assert_eq!(decoded.rgb, source);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

// ---------------------------------------------------------------------------
// Animation and WebP containers
// ---------------------------------------------------------------------------

#[test]
fn animated_gif_keeps_first_frame() {
    let red = RgbaImage::from_pixel(8, 6, Rgba([255, 0, 0, 255]));
    let blue = RgbaImage::from_pixel(8, 6, Rgba([0, 0, 255, 255]));
    let mut animated = Vec::new();
    GifEncoder::new(&mut animated)
        .encode_frames([Frame::new(red.clone()), Frame::new(blue)])
        .unwrap();

    let decoded = decode_default(&animated).unwrap();
    assert_eq!(decoded.format, ImageFormatName::Gif);
    assert!(decoded.animated);
    assert!(decoded.rgb.pixels().all(|p| p.0 == [255, 0, 0]));

    let mut still = Vec::new();
    GifEncoder::new(&mut still)
        .encode_frames([Frame::new(red)])
        .unwrap();
    assert!(!decode_default(&still).unwrap().animated);
}

fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_vec();
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn u24(v: u32) -> [u8; 3] {
    let [a, b, c, _] = v.to_le_bytes();
    [a, b, c]
}

/// Returns the VP8L chunk (header included) of a lossless still WebP.
fn vp8l_chunk(image: &RgbImage) -> Vec<u8> {
    let still = encode(&DynamicImage::ImageRgb8(image.clone()), ImageFormat::WebP);
    assert_eq!(
        &still[12..16],
        b"VP8L",
        "the image crate writes lossless WebP"
    );
    still[12..].to_vec()
}

/// Wraps chunks in an extended (VP8X) WebP with the given feature flags.
fn extended_webp(flags: u8, (width, height): (u32, u32), chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut vp8x = vec![flags, 0, 0, 0];
    vp8x.extend(u24(width - 1));
    vp8x.extend(u24(height - 1));

    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    for chunk in chunks {
        body.extend_from_slice(chunk);
    }

    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend(body);
    out
}

#[test]
fn animated_webp_keeps_first_frame() {
    let first = textured(8, 6, 12);
    let second = RgbImage::from_pixel(8, 6, Rgb([0, 0, 255]));
    let frame = |image: &RgbImage| {
        let mut data = [u24(0), u24(0), u24(7), u24(5), u24(100)].concat();

        // Replace the canvas rather than blend, so pixels stay exact.
        data.push(0x02);
        data.extend(vp8l_chunk(image));
        riff_chunk(b"ANMF", &data)
    };
    let anim = riff_chunk(b"ANIM", &[255, 255, 255, 255, 0, 0]);
    let bytes = extended_webp(0x02, (8, 6), &[anim, frame(&first), frame(&second)]);

    let decoded = decode_default(&bytes).unwrap();

    assert_eq!(decoded.format, ImageFormatName::Webp);
    assert!(decoded.animated);
    assert_eq!(decoded.rgb, first);
}

#[test]
fn webp_with_icc_exif_xmp_chunks() {
    let source = textured(12, 8, 13);
    let icc = riff_chunk(b"ICCP", &[0u8; 128]);
    let xmp = riff_chunk(b"XMP ", b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/>");
    let with_orientation = |orientation: u16| {
        let exif = riff_chunk(b"EXIF", &exif_tiff(orientation));
        let chunks = [icc.clone(), vp8l_chunk(&source), exif, xmp.clone()];

        // Flags: ICC profile, EXIF, XMP.
        extended_webp(0x20 | 0x08 | 0x04, (12, 8), &chunks)
    };

    let decoded = decode_default(&with_orientation(1)).unwrap();
    assert_eq!(decoded.rgb, source);
    assert!(!decoded.animated);

    // The EXIF chunk is read like a JPEG's: orientation 6 turns it upright.
    let turned = decode_default(&with_orientation(6)).unwrap();
    assert_eq!(turned.exif_orientation, Some(6));
    assert_eq!(turned.rgb.dimensions(), (8, 12));
    assert_eq!(turned.rgb.get_pixel(7, 0), source.get_pixel(0, 0));
}

// ---------------------------------------------------------------------------
// Sizes, formats we do not decode, blank pictures
// ---------------------------------------------------------------------------

#[test]
fn one_pixel_images_too_small() {
    let pixel = DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb([10, 200, 30])));
    let files = [
        (ImageFormatName::Png, encode(&pixel, ImageFormat::Png)),
        (ImageFormatName::Gif, encode(&pixel, ImageFormat::Gif)),
        (ImageFormatName::Webp, encode(&pixel, ImageFormat::WebP)),
        (ImageFormatName::Bmp, encode(&pixel, ImageFormat::Bmp)),
        (ImageFormatName::Tiff, encode(&pixel, ImageFormat::Tiff)),
        (
            ImageFormatName::Jpeg,
            rgb_jpeg(pixel.as_rgb8().unwrap(), JpegOptions::rgb()),
        ),
    ];
    let limits = DecodeLimits {
        min_size: 2,
        ..DecodeLimits::default()
    };

    for (format, bytes) in files {
        let decoded = decode_default(&bytes).unwrap();
        assert_eq!(decoded.format, format);
        assert_eq!(decoded.rgb.dimensions(), (1, 1), "{format}");

        let err = decode(&bytes, &limits).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooSmall {
                width: 1,
                height: 1,
                min_size: 2
            },
            "{format}"
        );
        assert_eq!(err.status(), "too_small");
    }
}

#[test]
fn svg_avif_heic_are_unsupported() {
    let svg = b"\xEF\xBB\xBF\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \"svg11.dtd\">\n\
        <!-- drawn by hand -->\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"/>";
    let avif = read_fixture("tiny.avif");

    // An ftyp box for HEIC with its usual brands, then the start of meta.
    let mut heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
    heic.extend_from_slice(b"\0\0\0\x22meta\0\0\0\0");

    let cases: [(&[u8], &str); 3] = [(svg, "svg"), (&avif, "avif"), (&heic, "heic")];
    for (bytes, name) in cases {
        assert_eq!(sniff_format(bytes), Sniffed::UnsupportedImage(name));

        let err = decode_default(bytes).unwrap_err();
        assert_eq!(err, DecodeError::Unsupported(name));
        assert_eq!(err.status(), "unsupported_format");
    }
}

#[test]
fn blank_images_are_flagged() {
    let black = DynamicImage::ImageRgb8(RgbImage::from_pixel(32, 24, Rgb([0, 0, 0])));
    let white = RgbImage::from_pixel(32, 24, Rgb([255, 255, 255]));
    let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(8, 8, Rgba([0, 0, 0, 0])));
    let grey = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, Rgb([128, 128, 128])));

    let cases = [
        (encode(&black, ImageFormat::Png), Some("all_black")),
        (
            rgb_jpeg(black.as_rgb8().unwrap(), JpegOptions::rgb()),
            Some("all_black"),
        ),
        (rgb_jpeg(&white, JpegOptions::rgb()), Some("all_white")),
        // Nothing but transparency, matted on white.
        (encode(&clear, ImageFormat::Png), Some("all_white")),
        (encode(&grey, ImageFormat::Png), None),
        (rgb_jpeg(&textured(32, 24, 14), JpegOptions::rgb()), None),
    ];

    // Blank pictures decode like any other, and only the flag marks them.
    for (bytes, expected) in cases {
        let decoded = decode_default(&bytes).unwrap();
        assert_eq!(decoded.blank, expected, "{:?}", decoded.format);
    }
}

#[test]
fn is_blank_tolerates_only_faint_noise() {
    let flat = |v: u8| RgbImage::from_pixel(16, 16, Rgb([v, v, v]));
    let with_one = |v: u8, spot: u8| {
        let mut image = flat(v);
        image.put_pixel(9, 3, Rgb([v, spot, v]));
        image
    };

    assert_eq!(is_blank(&flat(0)), Some("all_black"));
    assert_eq!(is_blank(&with_one(0, 4)), Some("all_black"));
    assert_eq!(is_blank(&with_one(0, 5)), None);
    assert_eq!(is_blank(&flat(255)), Some("all_white"));
    assert_eq!(is_blank(&with_one(255, 251)), Some("all_white"));
    assert_eq!(is_blank(&with_one(255, 250)), None);
    assert_eq!(is_blank(&flat(128)), None);
    assert_eq!(is_blank(&RgbImage::new(0, 0)), None);
}

// ---------------------------------------------------------------------------
// Reduced-scale JPEG decoding
// ---------------------------------------------------------------------------

fn decode_scaled(bytes: &[u8], min_side: u32) -> DecodedImage {
    decode_at_least(bytes, &DecodeLimits::default(), min_side).unwrap()
}

fn blip_resized(rgb: &RgbImage) -> RgbImage {
    let mut preprocessor = Preprocessor::new(PreprocessConfig::blip()).unwrap();
    let bytes = preprocessor.resize(rgb).unwrap().to_vec();
    RgbImage::from_raw(384, 384, bytes).unwrap()
}

#[test]
fn scaled_jpeg_smallest_fitting_eighth() {
    let jpeg = rgb_jpeg(&textured(2000, 1200, 20), JpegOptions::rgb());

    let decoded = decode_scaled(&jpeg, 768);

    // 6/8 of 1200 is 900; 5/8 would be 750, under 768.
    assert_eq!(decoded.rgb.dimensions(), (1500, 900));
    assert_eq!((decoded.width(), decoded.height()), (2000, 1200), "the source size is reported");
}

#[test]
fn scaled_jpeg_model_input_close() {
    let jpeg = rgb_jpeg(&textured(3000, 2000, 21), JpegOptions::rgb());
    let full = blip_resized(&decode_default(&jpeg).unwrap().rgb);

    let scaled = decode_scaled(&jpeg, 768);
    let resized = blip_resized(&scaled.rgb);

    assert!(scaled.rgb.width() < 3000, "the decode was scaled: {:?}", scaled.rgb.dimensions());
    let mean = mean_diff(&full, &resized);
    assert!(mean < 1.5, "mean difference {mean:.2} levels");
}

#[test]
fn jpeg_under_the_minimum_decodes_in_full() {
    let jpeg = rgb_jpeg(&textured(700, 900, 22), JpegOptions::rgb());

    let scaled = decode_scaled(&jpeg, 768);

    assert_eq!(scaled.rgb, decode_default(&jpeg).unwrap().rgb);
}

#[test]
fn scaled_jpeg_upright_size() {
    let jpeg = rgb_jpeg(&textured(1600, 800, 23), JpegOptions::rgb());
    let rotated = with_segment(&jpeg, 0xE1, &exif_payload(&exif_tiff(6)));

    let decoded = decode_scaled(&rotated, 384);

    // 800 × 4/8 = 400 is the first eighth at or above 384; orientation 6 turns it upright.
    assert_eq!(decoded.rgb.dimensions(), (400, 800));
    assert_eq!((decoded.width(), decoded.height()), (800, 1600));
}

#[test]
fn scaled_cmyk_jpeg_keeps_its_colours() {
    let source = textured(1024, 1024, 24);
    let cmyk = libjpeg_encode(1024, 1024, &rgb_to_cmyk(&source), JpegOptions::cmyk(jpeglib::J_COLOR_SPACE::JCS_YCCK, true));
    let full = blip_resized(&decode_default(&cmyk).unwrap().rgb);

    let scaled = decode_scaled(&cmyk, 384);

    assert_eq!(scaled.rgb.dimensions(), (384, 384));
    let mean = mean_diff(&full, &blip_resized(&scaled.rgb));
    assert!(mean < 1.5, "mean difference {mean:.2} levels");
}

#[test]
fn other_formats_ignore_the_minimum() {
    let png = encode(&DynamicImage::ImageRgb8(textured(1600, 1200, 25)), ImageFormat::Png);

    let decoded = decode_scaled(&png, 384);

    assert_eq!(decoded.rgb.dimensions(), (1600, 1200));
}

// ---------------------------------------------------------------------------
// Decoding and preprocessing in one step, a band of rows at a time
// ---------------------------------------------------------------------------

/// Preprocesses `bytes` both ways: [`Preprocessor::decode_and_run`], which
/// resizes an upright JPEG band by band as libjpeg decodes it, and the whole
/// image from [`decode`] (or [`decode_at_least`]) through
/// [`Preprocessor::run`]. Asserts that pixels, facts and errors agree.
fn assert_banded_matches_whole(label: &str, bytes: &[u8], min_side: Option<u32>) {
    let limits = DecodeLimits::default();
    let config = PreprocessConfig::blip();
    let mut preprocessor = Preprocessor::new(config).unwrap();

    let mut banded = vec![0f32; config.output_len()];
    let banded_result = preprocessor.decode_and_run(bytes, &limits, min_side, &mut banded);

    let whole_result = match min_side {
        Some(side) => decode_at_least(bytes, &limits, side),
        None => decode(bytes, &limits),
    };
    match (banded_result, whole_result) {
        (Ok(summary), Ok(decoded)) => {
            let mut whole = vec![0f32; config.output_len()];
            Preprocessor::new(config).unwrap().run(&decoded.rgb, &mut whole).unwrap();
            assert_eq!(summary, decoded.summary, "{label}: facts");
            assert!(banded == whole, "{label}: pixels differ");
        }
        (Err(PrepareError::Decode(banded)), Err(whole)) => assert_eq!(banded, whole, "{label}: errors"),
        (banded, whole) => panic!("{label}: banded {banded:?}, whole {whole:?}"),
    }
}

#[test]
fn banded_jpeg_shapes_match_whole_decode() {
    // Band edges (16 rows), a single band, axes that keep their size, a
    // plain copy, and a tall image that Pillow resizes vertically first.
    let shapes = [
        (640, 480),
        (1000, 15),
        (500, 16),
        (500, 17),
        (777, 333),
        (384, 700),
        (700, 384),
        (384, 384),
        (300, 1400),
        (97, 61),
    ];
    for (i, (width, height)) in shapes.into_iter().enumerate() {
        let jpeg = rgb_jpeg(&textured(width, height, 40 + i as u32), JpegOptions::rgb());
        assert_banded_matches_whole(&format!("{width}x{height}"), &jpeg, None);
    }
}

#[test]
fn banded_jpeg_variants_match_whole_decode() {
    let source = textured(900, 700, 51);
    let gray: Vec<u8> = source.pixels().map(|p| p[1]).collect();
    let progressive = JpegOptions { progressive: true, ..JpegOptions::rgb() };
    let arithmetic = JpegOptions { arithmetic: true, ..JpegOptions::rgb() };
    let gray_options = JpegOptions {
        input: jpeglib::J_COLOR_SPACE::JCS_GRAYSCALE,
        stored: jpeglib::J_COLOR_SPACE::JCS_GRAYSCALE,
        ..JpegOptions::rgb()
    };
    let plain = rgb_jpeg(&source, JpegOptions::rgb());

    let cases: Vec<(&str, Vec<u8>, Option<u32>)> = vec![
        ("progressive", rgb_jpeg(&source, progressive), None),
        ("arithmetic", rgb_jpeg(&source, arithmetic), None),
        ("gray", libjpeg_encode(900, 700, &gray, gray_options), None),
        ("dct scaled", rgb_jpeg(&textured(2000, 1500, 52), JpegOptions::rgb()), Some(768)),
        // These take the whole-image path: turned by EXIF, and CMYK.
        ("exif 6", with_segment(&plain, 0xE1, &exif_payload(&exif_tiff(6))), None),
        ("exif 1", with_segment(&plain, 0xE1, &exif_payload(&exif_tiff(1))), None),
        ("cmyk", libjpeg_encode(900, 700, &rgb_to_cmyk(&source), JpegOptions::cmyk(jpeglib::J_COLOR_SPACE::JCS_YCCK, true)), None),
        ("white", rgb_jpeg(&RgbImage::from_pixel(640, 40, Rgb([255, 255, 255])), JpegOptions::rgb()), None),
        // Other formats go through the whole-image path too.
        ("png", encode(&DynamicImage::ImageRgb8(textured(300, 200, 53)), ImageFormat::Png), None),
    ];
    for (label, bytes, min_side) in &cases {
        assert_banded_matches_whole(label, bytes, *min_side);
    }

    for name in ["gray.jpg", "odd_420.jpg", "odd_422.jpg", "progressive.jpg", "cmyk_adobe.jpg", "lossy.webp"] {
        assert_banded_matches_whole(name, &read_fixture(name), None);
    }
}

#[test]
fn banded_jpeg_errors_match_whole_decode() {
    let jpeg = rgb_jpeg(&textured(640, 480, 54), JpegOptions::rgb());
    let mut bad_huffman = jpeg.clone();
    let sos = jpeg_segments(&jpeg).into_iter().find(|s| s.0 == 0xDA).expect("a scan").2;
    for byte in &mut bad_huffman[sos..sos + 64] {
        *byte = 0xFF;
    }
    bad_huffman[sos + 64] = 0x00;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("half", jpeg[..jpeg.len() / 2].to_vec()),
        ("no end marker", jpeg[..jpeg.len() - 2].to_vec()),
        ("bad entropy data", bad_huffman),
        ("one pixel", rgb_jpeg(&textured(1, 1, 55), JpegOptions::rgb())),
        ("html", b"<!doctype html><title>404</title>".to_vec()),
        ("empty", Vec::new()),
    ];
    for (label, bytes) in &cases {
        assert_banded_matches_whole(label, bytes, None);
    }
}

#[test]
fn banded_jpeg_never_holds_the_whole_image() {
    let jpeg = rgb_jpeg(&textured(4000, 3000, 56), JpegOptions { quality: 75, ..JpegOptions::rgb() });
    let config = PreprocessConfig::blip();
    let mut preprocessor = Preprocessor::new(config).unwrap();
    let mut out = vec![0f32; config.output_len()];

    let (result, memory) = measure(|| preprocessor.decode_and_run(&jpeg, &DecodeLimits::default(), None, &mut out));
    let (whole, whole_memory) = measure(|| decode_default(&jpeg));

    // The decoded image would be 36 MB. What remains are the horizontally
    // resized rows (3000 × 384 × 3, 3.5 MB) and one band of 16 rows.
    assert_eq!(result.unwrap().source_size, (4000, 3000));
    assert!(memory.largest < 4 * MIB, "largest allocation {} bytes", memory.largest);
    assert!(memory.peak < 6 * MIB, "peak {} bytes", memory.peak);
    assert_eq!(whole.unwrap().rgb.dimensions(), (4000, 3000));
    assert!(whole_memory.largest >= 36_000_000, "the whole-image decode allocates the image");
}
