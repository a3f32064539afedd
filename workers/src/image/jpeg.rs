//! JPEG: the marker walk that vets a file before any pixel is decoded, and
//! the libjpeg-turbo decode that follows.
//!
//! # Why libjpeg-turbo
//!
//! The reference captions were made from pixels that PIL decoded, and PIL
//! decodes JPEG with libjpeg-turbo. The JPEG standard leaves the IDCT's and
//! the chroma upsampling's rounding to the decoder, and other decoders differ
//! (zune-jpeg, inside the image crate, by up to 4 levels on the test photos).
//! The mozjpeg crates vendor libjpeg-turbo's decoder, and with its default
//! settings (slow integer IDCT, fancy upsampling, block smoothing), which
//! PIL keeps too, it gives PIL's pixels exactly on every JPEG fixture.
//!
//! # Why a marker walk of our own
//!
//! Everything [`read_header`] needs (frame size, component count, coding
//! process, EXIF and Adobe segments, whether the file ends properly) comes
//! from walking the segments in Rust. libjpeg only runs once the size has
//! passed the limits, and it only receives files whose coding process it
//! decodes, so its errors all mean damaged data.

use std::panic::{self, AssertUnwindSafe};

use ::image::RgbImage;
use mozjpeg::decompress::DecompressStarted;
use mozjpeg::{ColorSpace, Decompress};

use super::DecodeError;

/// The status name for JPEG features this decoder lacks.
const VARIANT: &str = "jpeg_variant";

/// Maximum side libjpeg-turbo decodes (its `JPEG_MAX_DIMENSION`), a little
/// under the 65 535 a frame header can declare.
const MAX_SIDE: u32 = 65_500;

/// Facts [`read_header`] reads from a JPEG's markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JpegHeader<'a> {
    /// Stored (not upright) width from the frame header.
    pub width: u32,
    /// Stored height from the frame header.
    pub height: u32,
    /// Colour components: 1 (gray), 3 (YCbCr or RGB) or 4 (CMYK or YCCK).
    pub components: u8,
    /// Whether an Adobe APP14 segment is present. For four components it
    /// means the samples are stored inverted (Photoshop's convention).
    pub adobe: bool,
    /// TIFF data of the first EXIF APP1 segment before the first scan.
    pub exif: Option<&'a [u8]>,
}

impl JpegHeader<'_> {
    /// Returns the bytes the decoder's output buffer will take.
    pub fn output_bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * u64::from(self.components.max(3))
    }
}

/// Facts gathered during the marker walk, before they are validated.
#[derive(Default)]
struct Walk<'a> {
    frame: Option<(u8, &'a [u8])>,
    exif: Option<&'a [u8]>,
    adobe: bool,
    scan_before_frame: bool,
    saw_end: bool,
}

/// Walks the markers of a JPEG and returns its header, or the reason it
/// cannot be decoded: truncated, structurally broken, or a coding process
/// (lossless, hierarchical, 12-bit, DNL) that libjpeg-turbo's 8-bit decoder
/// rejects.
pub(super) fn read_header(bytes: &[u8]) -> Result<JpegHeader<'_>, DecodeError> {
    let walk = walk_markers(bytes);

    // A cut-off file ends this way, and so does one whose scan data contains
    // a stray marker with a length that jumps past the real end.
    if !walk.saw_end {
        return Err(DecodeError::Corrupt(
            "truncated or damaged jpeg: the segments end without an end-of-image marker".into(),
        ));
    }

    let Some((marker, frame)) = walk.frame.filter(|_| !walk.scan_before_frame) else {
        return Err(DecodeError::Corrupt(
            "invalid jpeg: no frame header before the first scan".into(),
        ));
    };

    let mut header = parse_frame(marker, frame)?;
    header.exif = walk.exif;
    header.adobe = walk.adobe;
    Ok(header)
}

/// Walks JPEG segments from after SOI, skipping each by its length and
/// scanning entropy-coded data byte by byte, until EOI or the end of input.
///
/// Walking (rather than searching for FF D9) matters because an embedded
/// EXIF thumbnail carries its own end-of-image marker.
fn walk_markers(bytes: &[u8]) -> Walk<'_> {
    let mut walk = Walk::default();
    let mut pos = 2;
    let mut in_header = true;

    loop {
        let Some(marker_at) = next_marker(bytes, pos) else {
            return walk;
        };
        let marker = bytes[marker_at];
        pos = marker_at + 1;

        match marker {
            0xD9 => {
                walk.saw_end = true;
                return walk;
            }
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }

        let Some(len) = segment_length(bytes, pos) else {
            return walk;
        };
        let payload = bytes.get(pos + 2..pos + len).unwrap_or(&[]);
        pos += len;

        if in_header {
            note_segment(&mut walk, marker, payload);
        }

        if marker == 0xDA {
            in_header = false;
            pos = skip_entropy_data(bytes, pos);
        }
    }
}

/// Records the segments that matter for decoding: the first frame header,
/// the first EXIF segment (where IFD0 and its orientation tag sit), and
/// whether an Adobe segment exists.
fn note_segment<'a>(walk: &mut Walk<'a>, marker: u8, payload: &'a [u8]) {
    match marker {
        0xDA if walk.frame.is_none() => walk.scan_before_frame = true,
        0xE1 if walk.exif.is_none() => walk.exif = payload.strip_prefix(b"Exif\0\0"),
        // libjpeg recognises the segment by its first five bytes and needs
        // the full twelve.
        0xEE if payload.len() >= 12 && payload.starts_with(b"Adobe") => walk.adobe = true,
        _ if is_frame_marker(marker) && walk.frame.is_none() => {
            walk.frame = Some((marker, payload))
        }
        _ => {}
    }
}

/// Reports whether `marker` starts a frame header: SOF0 (C0) to SOF15 (CF),
/// except DHT (C4), JPG (C8) and DAC (CC), as libjpeg's jdmarker.c lists them.
fn is_frame_marker(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Finds the next marker code at or after `pos`, skipping fill bytes (and,
/// leniently, stray bytes between segments as decoders do). Returns the
/// index of the marker code, i.e. the byte after its 0xFF.
fn next_marker(bytes: &[u8], mut pos: usize) -> Option<usize> {
    while pos < bytes.len() {
        if bytes[pos] == 0xFF {
            let code_at = pos + 1;
            match bytes.get(code_at) {
                None => return None,
                Some(0xFF) | Some(0x00) => pos = code_at,
                Some(_) => return Some(code_at),
            }
        } else {
            pos += 1;
        }
    }
    None
}

fn segment_length(bytes: &[u8], pos: usize) -> Option<usize> {
    let hi = *bytes.get(pos)?;
    let lo = *bytes.get(pos + 1)?;
    let len = usize::from(u16::from_be_bytes([hi, lo]));

    // The length includes its own two bytes, so anything shorter is broken.
    (len >= 2).then_some(len)
}

/// Returns the index of the 0xFF that starts the first marker after the
/// entropy-coded data at `pos`, or the input length if there is none.
fn skip_entropy_data(bytes: &[u8], mut pos: usize) -> usize {
    while pos + 1 < bytes.len() {
        let is_marker = bytes[pos] == 0xFF && !matches!(bytes[pos + 1], 0x00 | 0xD0..=0xD7);
        if is_marker {
            return pos;
        }
        pos += 1;
    }
    bytes.len()
}

/// Reads a frame header (SOFn payload) and rejects what the decoder lacks.
fn parse_frame(marker: u8, frame: &[u8]) -> Result<JpegHeader<'static>, DecodeError> {
    // Baseline, extended and progressive, each Huffman or arithmetic coded.
    // The others are lossless and hierarchical processes.
    if !matches!(marker, 0xC0 | 0xC1 | 0xC2 | 0xC9 | 0xCA) {
        return Err(DecodeError::Unsupported(VARIANT));
    }

    let [precision, h0, h1, w0, w1, components, ..] = *frame else {
        return Err(DecodeError::Corrupt(
            "invalid jpeg: short frame header".into(),
        ));
    };
    if frame.len() < 6 + 3 * usize::from(components) {
        return Err(DecodeError::Corrupt(
            "invalid jpeg: short frame header".into(),
        ));
    }

    // 12-bit samples need a 12-bit build of the library. Two-component
    // files have no colour interpretation. A zero height means the height
    // follows in a DNL marker, which libjpeg-turbo does not read.
    let height = u16::from_be_bytes([h0, h1]);
    if precision != 8 || !matches!(components, 1 | 3 | 4) || height == 0 {
        return Err(DecodeError::Unsupported(VARIANT));
    }

    // libjpeg would reject longer sides as an error. They are reported as
    // too large instead, which is what they are for this decoder.
    let width = u32::from(u16::from_be_bytes([w0, w1]));
    let height = u32::from(height);
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(DecodeError::TooLarge {
            width: width.into(),
            height: height.into(),
        });
    }

    Ok(JpegHeader {
        width,
        height,
        components,
        adobe: false,
        exif: None,
    })
}

/// Decodes a JPEG that [`read_header`] accepted into 8-bit RGB.
///
/// With `min_side`, libjpeg scales the image down while decoding (DCT scaling, by a factor of
/// n/8) to the smallest size whose sides are both at least `min_side` pixels. The smaller inverse
/// DCT, upsampling and colour conversion save most of a large photo's decoding time (entropy
/// decoding still reads every coefficient). After the same resize, the pixels differ slightly
/// from those of a full decode.
///
/// libjpeg reports fatal errors by unwinding out of its error handler (the
/// mozjpeg crate's design), so the unwind is caught here and turned into
/// [`DecodeError::Corrupt`] with libjpeg's message.
pub(super) fn decode_rgb(bytes: &[u8], header: &JpegHeader<'_>, min_side: Option<u32>) -> Result<RgbImage, DecodeError> {
    catch_libjpeg(|| run_libjpeg(bytes, header, min_side))
}

/// Returns the smallest n in 1..=8 for which both sides scaled by n/8 (rounded up, as libjpeg
/// rounds) are at least `min_side`, or 8 (no scaling) when the full image is already smaller.
pub(super) fn scale_numerator(width: u32, height: u32, min_side: u32) -> u8 {
    let scaled = |side: u32, n: u32| (u64::from(side) * u64::from(n)).div_ceil(8);
    let fits = |n: u32| scaled(width, n) >= u64::from(min_side) && scaled(height, n) >= u64::from(min_side);

    (1..=8).find(|&n| fits(n)).unwrap_or(8) as u8
}

fn run_libjpeg(bytes: &[u8], header: &JpegHeader<'_>, min_side: Option<u32>) -> Result<RgbImage, DecodeError> {
    if header.components == 4 {
        let mut started = start(bytes, header, min_side, ColorSpace::JCS_CMYK)?;
        let (width, height) = (started.width(), started.height());
        let mut cmyk = vec![0u8; width * height * 4];
        started.read_scanlines_into(&mut cmyk).map_err(io_error)?;
        return Ok(into_image(width, height, cmyk_to_rgb(&cmyk, header.adobe)));
    }

    let mut rows = RgbRows { started: start(bytes, header, min_side, ColorSpace::JCS_RGB)? };
    let (width, height) = rows.size();
    let mut rgb = vec![0u8; width * height * 3];
    rows.read(&mut rgb)?;
    Ok(into_image(width, height, rgb))
}

/// Starts libjpeg on a file that [`read_header`] accepted, at the DCT scale that `min_side`
/// requests, with output in `space`.
fn start<'a>(
    bytes: &'a [u8],
    header: &JpegHeader<'_>,
    min_side: Option<u32>,
    space: ColorSpace,
) -> Result<DecompressStarted<&'a [u8]>, DecodeError> {
    let mut decompress = Decompress::new_mem(bytes).map_err(io_error)?;

    // libjpeg reads the same first frame header, so a mismatch means the
    // two parsers disagree about the file and neither can be trusted.
    let size = (header.width as usize, header.height as usize);
    if decompress.size() != size {
        let (w, h) = decompress.size();
        return Err(DecodeError::Corrupt(format!(
            "jpeg frame size {w}x{h} differs from header {}x{}",
            size.0, size.1
        )));
    }

    if let Some(min_side) = min_side {
        let numerator = scale_numerator(header.width, header.height, min_side);
        if numerator < 8 {
            decompress.scale(numerator);
        }
    }

    // jpeg_finish_decompress is never called: it would only read on to the
    // end-of-image marker, which the marker walk has already found.
    decompress.to_colorspace(space).map_err(io_error)
}

/// libjpeg decoding a JPEG with one or three components to RGB, handing out its rows in order.
/// libjpeg converts gray to RGB by replicating the sample, as PIL does.
pub(super) struct RgbRows<'a> {
    started: DecompressStarted<&'a [u8]>,
}

impl<'a> RgbRows<'a> {
    /// Starts decoding a file that [`read_header`] accepted with one or three components, at the
    /// DCT scale that `min_side` requests (see [`decode_rgb`]).
    pub(super) fn open(bytes: &'a [u8], header: &JpegHeader<'_>, min_side: Option<u32>) -> Result<Self, DecodeError> {
        debug_assert_ne!(header.components, 4, "CMYK goes through decode_rgb");
        catch_libjpeg(|| Ok(Self { started: start(bytes, header, min_side, ColorSpace::JCS_RGB)? }))
    }

    /// Returns the output width and height, which DCT scaling makes smaller than the file's.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.started.width(), self.started.height())
    }

    /// Decodes the next `rows.len() / (3 × width)` rows into `rows`.
    pub(super) fn read(&mut self, rows: &mut [u8]) -> Result<(), DecodeError> {
        catch_libjpeg(|| self.started.read_scanlines_into(rows).map(drop).map_err(io_error))
    }
}

/// Runs `decode`, turning libjpeg's fatal errors, which unwind out of its error handler (the
/// mozjpeg crate's design), into [`DecodeError::Corrupt`] with libjpeg's message.
fn catch_libjpeg<T>(decode: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    panic::catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|payload| Err(DecodeError::Corrupt(panic_text(payload.as_ref()))))
}

fn into_image(width: usize, height: usize, rgb: Vec<u8>) -> RgbImage {
    // The output sides are at most the frame header's, which fit in u32.
    let side = |n: usize| u32::try_from(n).expect("a side from a JPEG frame header");
    RgbImage::from_raw(side(width), side(height), rgb).expect("buffer sized from libjpeg's output size")
}

/// Converts CMYK samples to RGB the way PIL does: each colour is
/// (255 − ink)·(255 − black)/255, rounded. Adobe files store every sample
/// inverted, and libjpeg hands them over as stored (including after its
/// YCCK to CMYK step), so they are inverted back first.
///
/// PIL assumes the Adobe convention for every CMYK JPEG. Here a file
/// without the Adobe segment is read as plain CMYK, the samples' meaning
/// when nothing marks them inverted. libjpeg writes the segment for CMYK
/// unless the caller turns it off, so such files are uncommon.
fn cmyk_to_rgb(cmyk: &[u8], adobe: bool) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    let flip = if adobe { 0xFF } else { 0x00 };

    for px in cmyk.chunks_exact(4) {
        let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| v ^ flip);
        let paper = 255 - k;
        rgb.extend([c, m, y].map(|ink| paper - mul_div_255(ink, paper)));
    }
    rgb
}

/// Returns a·b/255 rounded to nearest, exactly, without a division.
fn mul_div_255(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

fn io_error(err: std::io::Error) -> DecodeError {
    DecodeError::Corrupt(format!("jpeg: {err}"))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<String>() {
        return text.clone();
    }

    if let Some(text) = payload.downcast_ref::<&str>() {
        return (*text).to_owned();
    }
    "jpeg decoder panicked".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_numerator_picks_the_smallest_eighth_that_fits() {
        assert_eq!(scale_numerator(2000, 1200, 768), 6);
        assert_eq!(scale_numerator(8 * 384, 8 * 384, 384), 1);
        assert_eq!(scale_numerator(8 * 384 - 1, 8 * 384, 384), 1, "libjpeg rounds the scaled side up");
        assert_eq!(scale_numerator(8 * 384 - 8, 8 * 384, 384), 2);
        assert_eq!(scale_numerator(700, 900, 768), 8, "a side under the minimum keeps the full size");
        assert_eq!(scale_numerator(100_000, 10, 384), 8);
        assert_eq!(scale_numerator(65_500, 65_500, 0), 1);
    }

    #[test]
    fn mul_div_255_rounds_exactly() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let exact = (f64::from(a) * f64::from(b) / 255.0).round() as u8;
                assert_eq!(mul_div_255(a, b), exact, "{a}·{b}/255");
            }
        }
    }

    #[test]
    fn cmyk_conversion_honours_adobe_inversion() {
        // Plain: 50% cyan ink on white paper, no black.
        assert_eq!(cmyk_to_rgb(&[128, 0, 0, 0], false), [127, 255, 255]);

        // The same colour stored the Adobe way, every sample inverted.
        assert_eq!(cmyk_to_rgb(&[127, 255, 255, 255], true), [127, 255, 255]);

        // Full black ink wins over everything else.
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255], false), [0, 0, 0]);
    }

    #[test]
    fn frame_markers_exclude_tables() {
        let frames: Vec<u8> = (0xC0..=0xCF).filter(|&m| is_frame_marker(m)).collect();
        assert_eq!(
            frames,
            [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
        );
    }

    #[test]
    fn lossless_and_twelve_bit_unsupported() {
        let frame = [8, 0, 16, 0, 16, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1];
        assert!(parse_frame(0xC0, &frame).is_ok());
        assert_eq!(
            parse_frame(0xC3, &frame),
            Err(DecodeError::Unsupported(VARIANT))
        );

        let mut twelve = frame;
        twelve[0] = 12;
        assert_eq!(
            parse_frame(0xC1, &twelve),
            Err(DecodeError::Unsupported(VARIANT))
        );

        let mut dnl = frame;
        dnl[1..3].copy_from_slice(&[0, 0]);
        assert_eq!(
            parse_frame(0xC0, &dnl),
            Err(DecodeError::Unsupported(VARIANT))
        );
    }

    #[test]
    fn sides_past_libjpeg_maximum_too_large() {
        let mut frame = [8, 0, 1, 0xFF, 0xDC, 1, 1, 0x11, 0];
        assert_eq!(parse_frame(0xC0, &frame).unwrap().width, 65_500);

        frame[3..5].copy_from_slice(&65_501u16.to_be_bytes());
        assert_eq!(
            parse_frame(0xC0, &frame),
            Err(DecodeError::TooLarge {
                width: 65_501,
                height: 1
            })
        );
    }
}
