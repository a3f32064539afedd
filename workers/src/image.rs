//! Image decoding and BLIP preprocessing.
//!
//! Bytes fetched from web image URLs are turned into an upright 8-bit RGB
//! image by [`decode`], and that image is turned into the model's CHW float
//! input by [`Preprocessor`] (or the one-off [`preprocess`]).
//! [`Preprocessor::decode_and_run`] does both in one step, and decodes an
//! upright JPEG a band of rows at a time without storing the whole image.
//!
//! # Choices made here, and why
//!
//! * **Format by content only.** [`sniff_format`] looks at magic bytes and
//!   never at the URL's extension or the server's `Content-Type`, both of
//!   which are wrong often enough on the web to be useless. Bytes that are
//!   clearly something else (HTML error pages, XML error documents, PDF,
//!   SVG, AVIF, HEIC) get a precise reason, which the per-row status names.
//! * **Size is checked before pixels are allocated.** Decoders only read
//!   headers until [`decode`] has compared the declared dimensions with
//!   [`DecodeLimits`]; `image::Limits::max_alloc` is set as well, as a second
//!   line of defence inside the decoders. PNG dimensions are read straight
//!   from the IHDR chunk first, because a PNG can declare sizes that the PNG
//!   crate itself rejects as malformed before we could call them too large.
//! * **Transparency is composited onto white** with straight (not
//!   premultiplied) alpha. The BLIP reference pipeline calls PIL's
//!   `convert("RGB")`, which drops the alpha channel and exposes whatever
//!   colour hides under transparent pixels, often black, so black line art on
//!   a transparent background becomes an all-black picture. img2dataset mattes
//!   on white; we do the same, so such images stay legible to the captioner.
//! * **EXIF orientation is applied**, so the image handed on is upright and
//!   the reported width and height are the upright ones. A corrupt or
//!   unreadable EXIF block is ignored (treated as orientation 1): a photo
//!   with broken metadata is still a photo.
//! * **16-bit samples are rounded** to the nearest 8-bit level, grayscale is
//!   replicated into three channels, and animated GIF, WebP and PNG files are
//!   reduced to their first frame with [`DecodedImage::animated`] set.
//! * **Truncated JPEGs are rejected** with [`DecodeError::Corrupt`]. The
//!   JPEG decoder would silently fill the missing part with flat grey, and a
//!   caption of half a picture is worse than no caption. PIL, which produced
//!   the reference captions, also rejects truncated files by default
//!   (`ImageFile.LOAD_TRUNCATED_IMAGES` is false). A JPEG counts as truncated
//!   when its marker structure ends before the end-of-image marker. Bytes
//!   after that marker are allowed. The check is a pure function of the
//!   bytes, so the result is the same on every run.
//! * **Preprocessing matches HF `BlipImageProcessor`**: a bicubic resize of
//!   the uint8 RGB image to `size`×`size` (aspect ratio not kept, no crop),
//!   then `/255`, then `(x - mean) / std`. PIL's bicubic is the Catmull-Rom
//!   cubic (a = -0.5) with its support widened by the scale factor when
//!   downscaling. The resize repeats PIL's fixed-point arithmetic and
//!   Pillow 13's pass order, so its output equals Pillow 13's for the same
//!   decoded pixels.
//!
//! * **JPEG is decoded by libjpeg-turbo** (vendored by the mozjpeg crates),
//!   the library inside PIL, so decoded JPEG pixels are PIL's. The one
//!   exception is a CMYK file without an Adobe segment, which PIL reads
//!   inverted. Still WebP files go through libwebp, also PIL's library
//!   ([`webp`]). Other formats and animated WebP go through the image crate.
//!   [`jpeg`] gives the details, including how CMYK and YCCK files become
//!   RGB.
//! * **Blank images are flagged**, not rejected: [`DecodedImage::blank`]
//!   is set when every sample is within a few levels of black or of white
//!   (placeholders, failed renders), so the pipeline can decide.

use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};

mod jpeg;
mod resample;
mod webp;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

/// Bounds on the images [`decode`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted pixel count (width × height).
    ///
    /// The default, 89 478 485, is PIL's decompression-bomb warning threshold.
    /// It admits every camera up to about 60 MP and most panoramas while
    /// keeping the largest intermediate buffer (RGBA, 8-bit) under 360 MB per
    /// image, which matters when several workers decode at once.
    pub max_pixels: u64,
    /// Largest accepted upright width in pixels.
    pub max_width: u32,
    /// Largest accepted upright height in pixels.
    pub max_height: u32,
    /// Smallest accepted upright width and height. 0 turns the check off.
    pub min_size: u32,
}

impl Default for DecodeLimits {
    /// Returns PIL's warning threshold as the pixel limit and 65 535 per side,
    /// the largest a JPEG can declare. The pixel count is meant to bind in
    /// practice, and the per-side bound stops absurd strips early.
    fn default() -> Self {
        Self {
            max_pixels: 89_478_485,
            max_width: 65_535,
            max_height: 65_535,
            min_size: 0,
        }
    }
}

/// The image formats [`decode`] handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormatName {
    /// JPEG / JFIF / EXIF.
    Jpeg,
    /// PNG, including APNG (first frame).
    Png,
    /// WebP, lossy or lossless, still or animated (first frame).
    Webp,
    /// GIF, still or animated (first frame).
    Gif,
    /// Windows bitmap.
    Bmp,
    /// TIFF and BigTIFF (first page).
    Tiff,
}

impl ImageFormatName {
    /// Returns the stable lower-case name, as stored in output rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
        }
    }

    fn to_image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Webp => ImageFormat::WebP,
            Self::Gif => ImageFormat::Gif,
            Self::Bmp => ImageFormat::Bmp,
            Self::Tiff => ImageFormat::Tiff,
        }
    }

    /// Returns the name reported when a file of this format uses a feature
    /// the decoder lacks.
    fn variant_name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg_variant",
            Self::Png => "png_variant",
            Self::Webp => "webp_variant",
            Self::Gif => "gif_variant",
            Self::Bmp => "bmp_variant",
            Self::Tiff => "tiff_variant",
        }
    }
}

impl std::fmt::Display for ImageFormatName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classification of a byte string by [`sniff_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An image in a format [`decode`] handles.
    Image(ImageFormatName),
    /// An image format recognised but not decoded here: "svg", "avif",
    /// "heic", "heif", "ico", "jxl", "jp2" or "psd".
    UnsupportedImage(&'static str),
    /// Not an image: "empty", "html", "xml", "json", "pdf", "video" or
    /// "unknown".
    NotAnImage(&'static str),
}

/// A decoded, upright, 8-bit RGB image and facts about its source, which
/// it dereferences to (`decoded.format`, `decoded.width()`).
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// Pixels, upright (EXIF orientation applied), alpha composited on white.
    pub rgb: RgbImage,
    /// Facts about the source.
    pub summary: ImageSummary,
}

impl std::ops::Deref for DecodedImage {
    type Target = ImageSummary;

    fn deref(&self) -> &ImageSummary {
        &self.summary
    }
}

/// Facts about a source image: what [`decode`] reports besides the pixels,
/// and all that [`Preprocessor::decode_and_run`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSummary {
    /// Format found by magic bytes.
    pub format: ImageFormatName,
    /// Whether any pixel was less than fully opaque before compositing.
    pub had_alpha: bool,
    /// Whether the file contains more than one frame (only the first is kept).
    pub animated: bool,
    /// Orientation code 1–8 read from the file's metadata, or `None` when it
    /// was absent or corrupt.
    pub exif_orientation: Option<u16>,
    /// "all_black" or "all_white" when [`is_blank`] finds the picture blank.
    pub blank: Option<&'static str>,
    /// Upright width and height of the source image. They exceed the decoded
    /// pixels' when [`decode_at_least`] decoded a JPEG at a reduced scale.
    pub source_size: (u32, u32),
}

impl ImageSummary {
    /// Returns the source image's upright width in pixels.
    pub fn width(&self) -> u32 {
        self.source_size.0
    }

    /// Returns the source image's upright height in pixels.
    pub fn height(&self) -> u32 {
        self.source_size.1
    }
}

/// Levels by which a sample may miss pure black or white and still count as
/// blank. Lossy codecs and careless encoders leave a level or two of noise
/// on flat black or white, while any visible mark differs by far more.
const BLANK_TOLERANCE: u8 = 4;

/// Returns "all_black" or "all_white" when every sample of `rgb` is within
/// [`BLANK_TOLERANCE`] levels of black or of white, and `None` otherwise
/// (including for an empty image, which has nothing to judge).
///
/// Such images are mostly placeholders and failed renders. They decode
/// fine, and flagging them leaves the pipeline to decide what to do.
pub fn is_blank(rgb: &RgbImage) -> Option<&'static str> {
    let mut scan = BlankScan::default();
    scan.add(rgb.as_raw());
    scan.verdict()
}

/// [`is_blank`] over samples that arrive in parts.
#[derive(Debug)]
struct BlankScan {
    seen_any: bool,
    maybe_black: bool,
    maybe_white: bool,
}

impl Default for BlankScan {
    fn default() -> Self {
        Self { seen_any: false, maybe_black: true, maybe_white: true }
    }
}

impl BlankScan {
    fn add(&mut self, samples: &[u8]) {
        self.seen_any |= !samples.is_empty();

        // Both scans stop at the first sample that disagrees, so a real photo
        // costs a handful of comparisons.
        self.maybe_black = self.maybe_black && samples.iter().all(|&v| v <= BLANK_TOLERANCE);
        self.maybe_white = self.maybe_white && samples.iter().all(|&v| v >= 255 - BLANK_TOLERANCE);
    }

    fn verdict(&self) -> Option<&'static str> {
        if !self.seen_any {
            return None;
        }

        if self.maybe_black {
            return Some("all_black");
        }

        if self.maybe_white {
            return Some("all_white");
        }
        None
    }
}

/// Reason a byte string could not be decoded into a [`DecodedImage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not an image, and the text names what they look like.
    #[error("not an image ({0})")]
    NotAnImage(String),
    /// An image format or format feature this module does not decode.
    #[error("unsupported image format: {0}")]
    Unsupported(&'static str),
    /// Declared dimensions exceed [`DecodeLimits`], or for JPEG the 65 500
    /// pixels per side that libjpeg-turbo decodes.
    #[error("image too large: {width}x{height}")]
    TooLarge {
        /// Declared width, upright where the orientation was known, and 0
        /// when a codec rejected the file before its dimensions were read.
        width: u64,
        /// Declared height, with the same conventions as `width`.
        height: u64,
    },
    /// A side is shorter than [`DecodeLimits::min_size`].
    #[error("image too small: {width}x{height}, minimum side {min_size}")]
    TooSmall {
        /// Upright width.
        width: u32,
        /// Upright height.
        height: u32,
        /// The limit that was not met.
        min_size: u32,
    },
    /// The data is damaged or truncated.
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Returns the stable per-row status string for output tables.
    pub fn status(&self) -> &'static str {
        match self {
            Self::NotAnImage(_) => "not_an_image",
            Self::Unsupported(_) => "unsupported_format",
            Self::TooLarge { .. } => "too_large",
            Self::TooSmall { .. } => "too_small",
            Self::Corrupt(_) => "decode_error",
        }
    }

    /// Returns the upright width and height the error reports, for a size
    /// that was read but rejected. None when the size is unknown (0) or does
    /// not fit the u32 of decoded images.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        let (width, height) = match *self {
            Self::TooSmall { width, height, .. } => (u64::from(width), u64::from(height)),
            Self::TooLarge { width, height } => (width, height),
            _ => return None,
        };
        let width = u32::try_from(width).ok().filter(|&w| w > 0)?;
        let height = u32::try_from(height).ok().filter(|&h| h > 0)?;
        Some((width, height))
    }
}

/// Identifies a byte string from its content alone: magic bytes, or the
/// first kilobyte of text. File names and content types play no part.
pub fn sniff_format(bytes: &[u8]) -> Sniffed {
    if let Some(format) = sniff_decodable(bytes) {
        return Sniffed::Image(format);
    }

    if let Some(name) = sniff_binary_unsupported(bytes) {
        return Sniffed::UnsupportedImage(name);
    }

    if let Some(sniffed) = sniff_ftyp(bytes) {
        return sniffed;
    }

    sniff_text(bytes)
}

fn sniff_decodable(bytes: &[u8]) -> Option<ImageFormatName> {
    let format = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        ImageFormatName::Jpeg
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        ImageFormatName::Png
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        ImageFormatName::Gif
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        ImageFormatName::Webp
    } else if is_tiff(bytes) {
        ImageFormatName::Tiff
    } else if is_bmp(bytes) {
        ImageFormatName::Bmp
    } else {
        return None;
    };
    Some(format)
}

fn is_tiff(bytes: &[u8]) -> bool {
    // Classic TIFF is version 42, BigTIFF 43, in either byte order.
    [b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"]
        .iter()
        .any(|magic| bytes.starts_with(*magic))
}

fn is_bmp(bytes: &[u8]) -> bool {
    // "BM" alone matches plenty of text, so also require one of the DIB
    // header sizes that real bitmaps use.
    if bytes.len() < 18 || !bytes.starts_with(b"BM") {
        return false;
    }

    let dib_size = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
    matches!(dib_size, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
}

fn sniff_binary_unsupported(bytes: &[u8]) -> Option<&'static str> {
    const JXL_BOX: &[u8] = b"\0\0\0\x0cJXL \r\n\x87\n";
    const JP2_BOX: &[u8] = b"\0\0\0\x0cjP  \r\n\x87\n";

    let name = if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(JXL_BOX) {
        "jxl"
    } else if bytes.starts_with(JP2_BOX) || bytes.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        "jp2"
    } else if bytes.starts_with(b"8BPS") {
        "psd"
    } else if bytes.len() >= 6 && bytes.starts_with(&[0, 0, 1, 0]) && bytes[4..6] != [0, 0] {
        // Reserved zero, type 1 (icon), and a non-zero image count.
        "ico"
    } else {
        return None;
    };
    Some(name)
}

/// Classifies ISO base media files (AVIF, HEIC, MP4...) by their ftyp brands.
fn sniff_ftyp(bytes: &[u8]) -> Option<Sniffed> {
    if bytes.len() < 12 || &bytes[4..8] != b"ftyp" {
        return None;
    }

    let box_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let end = box_len.clamp(12, bytes.len());
    let major = &bytes[8..12];
    let compatible = bytes.get(16..end).unwrap_or(&[]).chunks_exact(4);
    let brands: Vec<&[u8]> = std::iter::once(major).chain(compatible).collect();

    // AVIF is checked across all brands first, because AVIF files commonly
    // carry the generic HEIF brand "mif1" as their major brand.
    let has = |wanted: &[&[u8]]| brands.iter().any(|b| wanted.contains(b));
    let sniffed = if has(&[b"avif", b"avis"]) {
        Sniffed::UnsupportedImage("avif")
    } else if has(&[
        b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
    ]) {
        Sniffed::UnsupportedImage("heic")
    } else if has(&[b"mif1", b"msf1", b"heif"]) {
        Sniffed::UnsupportedImage("heif")
    } else {
        Sniffed::NotAnImage("video")
    };
    Some(sniffed)
}

/// Classifies text-like content: markup, JSON, PDF, or nothing recognisable.
fn sniff_text(bytes: &[u8]) -> Sniffed {
    let text = trim_text_start(bytes);
    if text.is_empty() {
        return Sniffed::NotAnImage("empty");
    }

    if text.starts_with(b"%PDF-") {
        return Sniffed::NotAnImage("pdf");
    }

    if text[0] == b'<' {
        return sniff_markup(text);
    }

    if text[0] == b'{' || text[0] == b'[' {
        return Sniffed::NotAnImage("json");
    }

    Sniffed::NotAnImage("unknown")
}

fn trim_text_start(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn sniff_markup(text: &[u8]) -> Sniffed {
    // A kilobyte covers the prologue, comments and doctype that precede the
    // root element in practice.
    let window = text[..text.len().min(1024)].to_ascii_lowercase();
    let contains = |needle: &[u8]| window.windows(needle.len()).any(|w| w == needle);

    // An HTML page may inline SVG icons, so an HTML start wins over "<svg".
    if window.starts_with(b"<!doctype html") || window.starts_with(b"<html") {
        return Sniffed::NotAnImage("html");
    }

    if contains(b"<svg") {
        return Sniffed::UnsupportedImage("svg");
    }

    if window.starts_with(b"<?xml") && !contains(b"<html") {
        return Sniffed::NotAnImage("xml");
    }

    // Any other markup is, on the web, nearly always an HTML page.
    Sniffed::NotAnImage("html")
}

/// Decodes `bytes` into an upright RGB image within `limits`.
///
/// The format is found with [`sniff_format`]. The file's extension and the
/// server's content type play no part.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    decode_guarded(bytes, limits, None)
}

/// Decodes like [`decode`], except that a JPEG larger than needed is decoded at a reduced DCT
/// scale (n/8 of its size, n from 1 to 7) whose sides are both at least `min_side` pixels.
/// Other formats decode at full size. With `min_side` at twice the model's input size, the
/// resize that follows still averages at least 2×2 decoded pixels per output pixel.
pub fn decode_at_least(bytes: &[u8], limits: &DecodeLimits, min_side: u32) -> Result<DecodedImage, DecodeError> {
    decode_guarded(bytes, limits, Some(min_side))
}

fn decode_guarded(bytes: &[u8], limits: &DecodeLimits, jpeg_min_side: Option<u32>) -> Result<DecodedImage, DecodeError> {
    // Codecs are third-party code fed untrusted bytes, so a panic in one must
    // cost one row, not the worker thread.
    panic::catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits, jpeg_min_side)))
        .unwrap_or_else(|_| Err(DecodeError::Corrupt("decoder panicked".into())))
}

fn decode_inner(bytes: &[u8], limits: &DecodeLimits, jpeg_min_side: Option<u32>) -> Result<DecodedImage, DecodeError> {
    let format = decodable_format(bytes)?;

    if format == ImageFormatName::Jpeg {
        return decode_jpeg(bytes, limits, jpeg_min_side);
    }

    precheck_container(bytes, format, limits)?;

    let mut decoder = open_decoder(bytes, format, limits)?;
    let (orientation, exif_orientation) = read_orientation(&mut decoder);
    let upright = upright_dimensions(decoder.dimensions(), orientation);
    check_dimensions(upright, decoder.total_bytes(), limits)?;

    let animated = is_animated(bytes, format);
    let (rgb, had_alpha) = if format == ImageFormatName::Webp && !animated {
        webp::decode_still(bytes, decoder.dimensions())?
    } else {
        decode_with(decoder, format, limits, upright)?
    };
    let rgb = orient(rgb, orientation);

    let summary = ImageSummary {
        format,
        had_alpha,
        animated,
        exif_orientation,
        blank: is_blank(&rgb),
        source_size: rgb.dimensions(),
    };
    Ok(DecodedImage { rgb, summary })
}

/// Decodes with the image crate's codec for `format`, flattened to RGB on
/// white.
fn decode_with(
    mut decoder: impl ImageDecoder,
    format: ImageFormatName,
    limits: &DecodeLimits,
    upright: (u32, u32),
) -> Result<(RgbImage, bool), DecodeError> {
    // Second line of defence: from here on the codec itself enforces the
    // bounds, in case its allocations differ from what the header implied.
    decoder
        .set_limits(image_limits(limits, true))
        .map_err(|e| map_image_error(e, format, upright))?;
    let dynamic =
        DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, format, upright))?;

    Ok(flatten_on_white(dynamic))
}

/// Decodes a JPEG: the marker walk vets it and supplies size and EXIF, and
/// only then does libjpeg allocate and decode.
fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits, min_side: Option<u32>) -> Result<DecodedImage, DecodeError> {
    let header = jpeg::read_header(bytes)?;
    decode_jpeg_whole(bytes, &header, limits, min_side)
}

/// Decodes a JPEG whose header [`jpeg::read_header`] has read into one
/// upright image.
fn decode_jpeg_whole(
    bytes: &[u8],
    header: &jpeg::JpegHeader<'_>,
    limits: &DecodeLimits,
    min_side: Option<u32>,
) -> Result<DecodedImage, DecodeError> {
    let (orientation, exif_orientation) = jpeg_orientation(header);
    let upright = upright_dimensions((header.width, header.height), orientation);
    check_dimensions(upright, header.output_bytes(), limits)?;

    let rgb = orient(jpeg::decode_rgb(bytes, header, min_side)?, orientation);

    let summary = ImageSummary {
        format: ImageFormatName::Jpeg,
        had_alpha: false,
        animated: false,
        exif_orientation,
        blank: is_blank(&rgb),
        source_size: upright,
    };
    Ok(DecodedImage { rgb, summary })
}

fn decodable_format(bytes: &[u8]) -> Result<ImageFormatName, DecodeError> {
    match sniff_format(bytes) {
        Sniffed::Image(format) => Ok(format),
        Sniffed::UnsupportedImage(name) => Err(DecodeError::Unsupported(name)),
        Sniffed::NotAnImage(what) => Err(DecodeError::NotAnImage(what.to_owned())),
    }
}

/// Checks that need the raw container, done before any decoder runs.
fn precheck_container(
    bytes: &[u8],
    format: ImageFormatName,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    match format {
        ImageFormatName::Png => precheck_png_header(bytes, limits),
        _ => Ok(()),
    }
}

/// Rejects PNGs whose IHDR declares too many pixels before the PNG crate
/// parses them, because it rejects some such sizes as malformed instead.
fn precheck_png_header(bytes: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    let Some(ihdr) = bytes.get(8..24) else {
        let len = bytes.len();
        return Err(DecodeError::Corrupt(format!(
            "truncated png header: {len} bytes"
        )));
    };
    if &ihdr[4..8] != b"IHDR" {
        return Err(DecodeError::Corrupt(
            "invalid png: first chunk is not IHDR".into(),
        ));
    }

    let width = u64::from(u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]));
    let height = u64::from(u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]));

    // The orientation is unknown here, so a side is rejected only when it
    // exceeds the longer side limit. The exact check follows once it is known.
    let longest_allowed = u64::from(limits.max_width.max(limits.max_height));
    let too_large =
        width.saturating_mul(height) > limits.max_pixels || width.max(height) > longest_allowed;
    if too_large {
        return Err(DecodeError::TooLarge { width, height });
    }
    Ok(())
}

/// Builds the bounds handed to the codecs. Per-side limits use the longer of
/// the two because the codecs see stored, not upright, dimensions.
fn image_limits(limits: &DecodeLimits, with_sides: bool) -> ::image::Limits {
    let mut out = ::image::Limits::default();
    out.max_alloc = Some(max_alloc_bytes(limits));
    if with_sides {
        let side = limits.max_width.max(limits.max_height);
        out.max_image_width = Some(side);
        out.max_image_height = Some(side);
    }
    out
}

/// Eight bytes per pixel fits RGBA at 16 bits, the widest layout the enabled
/// codecs produce for ordinary files.
fn max_alloc_bytes(limits: &DecodeLimits) -> u64 {
    limits.max_pixels.saturating_mul(8)
}

fn open_decoder<'a>(
    bytes: &'a [u8],
    format: ImageFormatName,
    limits: &DecodeLimits,
) -> Result<impl ImageDecoder + 'a, DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_format());

    // Side limits are left out here so that an oversized image reaches our
    // own check, which can report its dimensions.
    reader.limits(image_limits(limits, false));
    reader
        .into_decoder()
        .map_err(|e| map_image_error(e, format, (0, 0)))
}

/// Reads the orientation, treating any failure as "no orientation".
fn read_orientation(decoder: &mut impl ImageDecoder) -> (Orientation, Option<u16>) {
    let chunk = decoder.exif_metadata().ok().flatten();
    if let Some(chunk) = chunk {
        return orientation_from_exif(&chunk);
    }

    // TIFF keeps its orientation as a tag of the image itself rather than
    // in an EXIF block; the decoder reports it here. An explicit tag of 1 is
    // indistinguishable from none, and both are reported as none.
    match decoder.orientation() {
        Ok(Orientation::NoTransforms) | Err(_) => (Orientation::NoTransforms, None),
        Ok(o) => (o, Some(u16::from(o.to_exif()))),
    }
}

/// Returns a JPEG's orientation from its EXIF segment, upright when it has none.
fn jpeg_orientation(header: &jpeg::JpegHeader<'_>) -> (Orientation, Option<u16>) {
    match header.exif {
        Some(tiff) => orientation_from_exif(tiff),
        None => (Orientation::NoTransforms, None),
    }
}

/// Reads the orientation tag from EXIF TIFF data, treating a missing,
/// unreadable or out-of-range tag as "no orientation".
fn orientation_from_exif(tiff: &[u8]) -> (Orientation, Option<u16>) {
    match Orientation::from_exif_chunk(tiff) {
        Some(o) => (o, Some(u16::from(o.to_exif()))),
        None => (Orientation::NoTransforms, None),
    }
}

fn upright_dimensions((width, height): (u32, u32), orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    }
}

fn check_dimensions(
    (width, height): (u32, u32),
    total_bytes: u64,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    let pixels = u64::from(width) * u64::from(height);
    let too_large = pixels > limits.max_pixels
        || width > limits.max_width
        || height > limits.max_height
        || total_bytes > max_alloc_bytes(limits);
    if too_large {
        return Err(DecodeError::TooLarge {
            width: width.into(),
            height: height.into(),
        });
    }

    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!(
            "invalid dimensions {width}x{height}"
        )));
    }

    if width < limits.min_size || height < limits.min_size {
        return Err(DecodeError::TooSmall {
            width,
            height,
            min_size: limits.min_size,
        });
    }
    Ok(())
}

fn map_image_error(err: ImageError, format: ImageFormatName, (w, h): (u32, u32)) -> DecodeError {
    match err {
        ImageError::Limits(_) => DecodeError::TooLarge {
            width: w.into(),
            height: h.into(),
        },
        ImageError::Unsupported(_) => DecodeError::Unsupported(format.variant_name()),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// Converts any decoded layout to 8-bit RGB, compositing alpha onto white.
/// Returns whether any pixel was less than fully opaque.
fn flatten_on_white(image: DynamicImage) -> (RgbImage, bool) {
    let (width, height) = (image.width(), image.height());
    match image {
        DynamicImage::ImageRgb8(rgb) => (rgb, false),
        DynamicImage::ImageLuma8(_) => (image.into_rgb8(), false),
        DynamicImage::ImageRgba8(rgba) => composite(width, height, rgba.as_raw(), 4),
        DynamicImage::ImageLumaA8(la) => composite(width, height, la.as_raw(), 2),
        DynamicImage::ImageRgb16(rgb) => composite(width, height, rgb.as_raw(), 3),
        DynamicImage::ImageRgba16(rgba) => composite(width, height, rgba.as_raw(), 4),
        DynamicImage::ImageLuma16(l) => composite(width, height, l.as_raw(), 1),
        DynamicImage::ImageLumaA16(la) => composite(width, height, la.as_raw(), 2),
        // Float samples come only from rare TIFFs, so a float path that
        // copies the image once more is acceptable for them.
        other => composite_f32(&other),
    }
}

/// Integer sample types that [`composite`] handles.
trait Sample: Copy + Into<u64> {
    /// The fully opaque (and full intensity) value.
    const MAX: u64;
}

impl Sample for u8 {
    const MAX: u64 = 255;
}

impl Sample for u16 {
    const MAX: u64 = 65_535;
}

/// Composites interleaved samples onto white and rounds them to 8 bits.
/// `channels` is 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA).
fn composite<T: Sample>(width: u32, height: u32, raw: &[T], channels: usize) -> (RgbImage, bool) {
    let has_alpha = matches!(channels, 2 | 4);
    let mut out = Vec::with_capacity(raw.len() / channels * 3);
    let mut had_alpha = false;

    for px in raw.chunks_exact(channels) {
        let alpha = if has_alpha {
            px[channels - 1].into()
        } else {
            T::MAX
        };
        had_alpha |= alpha != T::MAX;

        let colour = if channels >= 3 {
            [px[0], px[1], px[2]]
        } else {
            [px[0]; 3]
        };
        out.extend(colour.map(|c| over_white::<T>(c.into(), alpha)));
    }

    let rgb = RgbImage::from_raw(width, height, out).expect("buffer sized from the image");
    (rgb, had_alpha)
}

/// Computes `c·a + max·(1 − a)` with a = alpha/max, scaled to 0–255 and
/// rounded to nearest, in exact integer arithmetic.
fn over_white<T: Sample>(c: u64, alpha: u64) -> u8 {
    let max = T::MAX;
    let v = c * alpha + max * (max - alpha);

    // v is in units of max², and max² / 255 is a whole (odd) number for both
    // sample types, so no value falls exactly halfway between two levels.
    let divisor = max * max / 255;
    ((v + divisor / 2) / divisor) as u8
}

fn composite_f32(image: &DynamicImage) -> (RgbImage, bool) {
    let rgba = image.to_rgba32f();
    let (width, height) = rgba.dimensions();
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    let mut had_alpha = false;

    for px in rgba.pixels() {
        let alpha = px[3].clamp(0.0, 1.0);
        had_alpha |= alpha < 1.0;

        for &c in &px.0[..3] {
            let v = c.clamp(0.0, 1.0) * alpha + (1.0 - alpha);
            out.push((v * 255.0).round() as u8);
        }
    }

    let rgb = RgbImage::from_raw(width, height, out).expect("buffer sized from the image");
    (rgb, had_alpha)
}

fn orient(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }

    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

fn is_animated(bytes: &[u8], format: ImageFormatName) -> bool {
    match format {
        ImageFormatName::Gif => gif_frame_count(bytes, 2) >= 2,
        ImageFormatName::Webp => webp_animation_flag(bytes),
        ImageFormatName::Png => png_has_actl(bytes),
        _ => false,
    }
}

/// Counts GIF image descriptors, stopping at `stop_at`. Walking the blocks
/// costs no decoding, unlike asking the codec for a second frame.
fn gif_frame_count(bytes: &[u8], stop_at: usize) -> usize {
    let Some(&packed) = bytes.get(10) else {
        return 0;
    };
    let mut pos = 13 + color_table_len(packed);
    let mut frames = 0;

    while frames < stop_at {
        match bytes.get(pos) {
            Some(0x21) => pos = skip_sub_blocks(bytes, pos + 2),
            Some(0x2C) => {
                frames += 1;
                let Some(&packed) = bytes.get(pos + 9) else {
                    break;
                };
                // Descriptor (10 bytes), local table, LZW code size byte.
                pos = skip_sub_blocks(bytes, pos + 10 + color_table_len(packed) + 1);
            }
            _ => break,
        }
    }
    frames
}

fn color_table_len(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 0x07) + 1)
    }
}

/// Skips a chain of GIF data sub-blocks, returning the index after the
/// terminating zero-length block (or past the end if it is missing).
fn skip_sub_blocks(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(&len) = bytes.get(pos) {
        pos += 1;
        if len == 0 {
            return pos;
        }
        pos += usize::from(len);
    }
    usize::MAX / 2
}

fn webp_animation_flag(bytes: &[u8]) -> bool {
    // VP8X chunk flags byte: bit 1 marks an animation.
    bytes.len() > 20 && &bytes[12..16] == b"VP8X" && bytes[20] & 0x02 != 0
}

/// Reports whether a PNG is an APNG, which declares an acTL chunk before
/// the image data.
fn png_has_actl(bytes: &[u8]) -> bool {
    let mut pos: usize = 8;
    while let Some(header) = pos.checked_add(8).and_then(|end| bytes.get(pos..end)) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"acTL" => return true,
            b"IDAT" | b"IEND" => return false,
            _ => pos = pos.saturating_add(12).saturating_add(len),
        }
    }
    false
}

/// Resize and normalisation settings for the vision encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Output side length: images are resized to `size`×`size`.
    pub size: u32,
    /// Per-channel mean, in units of the 0–1 range.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, in units of the 0–1 range.
    pub std: [f32; 3],
}

impl PreprocessConfig {
    /// Returns the settings of the BLIP image processor: 384 pixels, CLIP
    /// statistics.
    // The statistics are written exactly as the reference processor publishes
    // them, so they can be compared by eye; f32 rounds the last digit anyway.
    #[allow(clippy::excessive_precision)]
    pub fn blip() -> Self {
        Self {
            size: 384,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
        }
    }

    /// Returns the length of the CHW buffer this configuration fills.
    pub fn output_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self::blip()
    }
}

/// Failure to preprocess an image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    /// The output buffer does not contain exactly 3·size·size values.
    #[error("output buffer has {got} values, expected {expected}")]
    BufferLength {
        /// Required length.
        expected: usize,
        /// Length supplied.
        got: usize,
    },
    /// The configuration cannot be used (zero size, non-positive std...).
    #[error("invalid preprocessing configuration: {0}")]
    InvalidConfig(&'static str),
    /// The input image has no pixels.
    #[error("input image is empty")]
    EmptyImage,
}

/// Reusable preprocessing state: the resampler's weights and buffers, the
/// resized image and per-channel lookup tables live here, so that
/// processing one image after another reuses the large buffers instead of
/// allocating them per image.
///
/// The resize is PIL's bicubic to the bit, as [`resample`] explains.
pub struct Preprocessor {
    config: PreprocessConfig,
    resampler: resample::Resampler,
    resized: Vec<u8>,
    lut: [[f32; 256]; 3],
    /// Rows of a JPEG being decoded in bands; see [`Preprocessor::decode_and_run`].
    band: Vec<u8>,
}

/// Rows of a JPEG that libjpeg decodes into the band buffer at a time: a few
/// hundred kilobytes for a wide photo, so the band is still in cache when the
/// horizontal pass reads it. libjpeg works in rows of 8 or 16 pixels.
const BAND_ROWS: usize = 16;

/// Failure of [`Preprocessor::decode_and_run`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrepareError {
    /// The bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The decoded image could not be preprocessed.
    #[error("preprocessing failed: {0}")]
    Preprocess(#[from] PreprocessError),
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("config", &self.config)
            .finish()
    }
}

impl Preprocessor {
    /// Builds a preprocessor, validating `config`.
    pub fn new(config: PreprocessConfig) -> Result<Self, PreprocessError> {
        validate_config(&config)?;

        Ok(Self {
            config,
            resampler: resample::Resampler::default(),
            resized: vec![0; config.output_len()],
            lut: build_lut(&config),
            band: Vec::new(),
        })
    }

    /// Returns the configuration in use.
    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// Resizes `rgb` to size×size with PIL's bicubic and returns the
    /// interleaved RGB bytes (valid until the next call).
    pub fn resize(&mut self, rgb: &RgbImage) -> Result<&[u8], PreprocessError> {
        let (width, height) = rgb.dimensions();
        if width == 0 || height == 0 {
            return Err(PreprocessError::EmptyImage);
        }

        let size = self.config.size as usize;
        let from = (width as usize, height as usize);
        self.resampler
            .resize(rgb.as_raw(), from, (size, size), &mut self.resized);
        Ok(&self.resized)
    }

    /// Resizes and normalises `rgb` into `out` as CHW f32 values.
    pub fn run(&mut self, rgb: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        self.check_output(out)?;
        self.resize(rgb)?;

        write_chw(&self.resized, &self.lut, out);
        Ok(())
    }

    /// Decodes `bytes` as [`decode`] does (or [`decode_at_least`] with
    /// `jpeg_min_side`) and preprocesses the image into `out`, with the same
    /// result as `decode` followed by [`Preprocessor::run`].
    ///
    /// A JPEG stored upright (the common case) is decoded in bands of rows,
    /// and each band is resampled horizontally as soon as libjpeg has written
    /// it. The full-size image is then never held in memory. A 12-megapixel
    /// photo needs a band of 192 KB and 3.5 MB of horizontally resized rows
    /// instead of 36 MB, whose pages the kernel would map and zero afresh for
    /// every image. The resize also reads the rows from cache rather than
    /// from main memory.
    pub fn decode_and_run(
        &mut self,
        bytes: &[u8],
        limits: &DecodeLimits,
        jpeg_min_side: Option<u32>,
        out: &mut [f32],
    ) -> Result<ImageSummary, PrepareError> {
        self.check_output(out)?;

        let summary = if sniff_format(bytes) == Sniffed::Image(ImageFormatName::Jpeg) {
            // Codecs are fed untrusted bytes, so a panic costs one row, as in `decode`.
            panic::catch_unwind(AssertUnwindSafe(|| self.resize_jpeg(bytes, limits, jpeg_min_side)))
                .unwrap_or_else(|_| Err(DecodeError::Corrupt("decoder panicked".into()).into()))?
        } else {
            let decoded = decode_guarded(bytes, limits, jpeg_min_side)?;
            self.resize(&decoded.rgb)?;
            decoded.summary
        };

        write_chw(&self.resized, &self.lut, out);
        Ok(summary)
    }

    fn check_output(&self, out: &[f32]) -> Result<(), PreprocessError> {
        let expected = self.config.output_len();
        if out.len() != expected {
            return Err(PreprocessError::BufferLength { expected, got: out.len() });
        }
        Ok(())
    }

    /// Decodes a JPEG into `self.resized`: band by band when it is stored
    /// upright, and as one image when it is CMYK (whose conversion works on
    /// the whole image) or turned by its EXIF orientation.
    fn resize_jpeg(&mut self, bytes: &[u8], limits: &DecodeLimits, min_side: Option<u32>) -> Result<ImageSummary, PrepareError> {
        let header = jpeg::read_header(bytes)?;
        let (orientation, exif_orientation) = jpeg_orientation(&header);
        if orientation != Orientation::NoTransforms || header.components == 4 {
            let decoded = decode_jpeg_whole(bytes, &header, limits, min_side)?;
            self.resize(&decoded.rgb)?;
            return Ok(decoded.summary);
        }
        check_dimensions((header.width, header.height), header.output_bytes(), limits)?;

        let mut rows = jpeg::RgbRows::open(bytes, &header, min_side)?;
        let blank = self.resize_rows(&mut rows)?;

        Ok(ImageSummary {
            format: ImageFormatName::Jpeg,
            had_alpha: false,
            animated: false,
            exif_orientation,
            blank,
            source_size: (header.width, header.height),
        })
    }

    /// Resizes the rows libjpeg decodes into `self.resized`, a band at a
    /// time where the resampler allows it, and returns the [`is_blank`]
    /// verdict on them.
    fn resize_rows(&mut self, rows: &mut jpeg::RgbRows<'_>) -> Result<Option<&'static str>, DecodeError> {
        let (width, height) = rows.size();
        let size = self.config.size as usize;
        let mut blank = BlankScan::default();

        let Some(mut stream) = self.resampler.stream((width, height), (size, size)) else {
            // Pillow runs this shape's vertical pass first, over every row.
            let mut rgb = vec![0u8; width * height * 3];
            rows.read(&mut rgb)?;
            blank.add(&rgb);
            self.resampler.resize(&rgb, (width, height), (size, size), &mut self.resized);
            return Ok(blank.verdict());
        };

        for first in (0..height).step_by(BAND_ROWS) {
            let band_rows = BAND_ROWS.min(height - first);
            self.band.resize(band_rows * width * 3, 0);
            rows.read(&mut self.band)?;
            blank.add(&self.band);
            stream.push(&self.band);
        }
        stream.finish(&mut self.resized);
        Ok(blank.verdict())
    }
}

fn validate_config(config: &PreprocessConfig) -> Result<(), PreprocessError> {
    if config.size == 0 {
        return Err(PreprocessError::InvalidConfig("size is zero"));
    }

    if config.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(PreprocessError::InvalidConfig(
            "std must be finite and positive",
        ));
    }

    if config.mean.iter().any(|m| !m.is_finite()) {
        return Err(PreprocessError::InvalidConfig("mean must be finite"));
    }
    Ok(())
}

/// Builds one entry per channel and byte value, computed in f64 and rounded
/// once, so each is within float rounding of the reference's computation.
fn build_lut(config: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0.0; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        let mean = f64::from(config.mean[c]);
        let std = f64::from(config.std[c]);
        for (v, entry) in table.iter_mut().enumerate() {
            *entry = ((v as f64 / 255.0 - mean) / std) as f32;
        }
    }
    lut
}

/// Splits interleaved RGB into three planes through the lookup tables.
fn write_chw(resized: &[u8], lut: &[[f32; 256]; 3], out: &mut [f32]) {
    let plane = resized.len() / 3;
    let (r_plane, rest) = out.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);

    let planes = r_plane
        .iter_mut()
        .zip(g_plane.iter_mut())
        .zip(b_plane.iter_mut());
    for (((r, g), b), px) in planes.zip(resized.chunks_exact(3)) {
        *r = lut[0][usize::from(px[0])];
        *g = lut[1][usize::from(px[1])];
        *b = lut[2][usize::from(px[2])];
    }
}

/// Preprocesses `rgb` into `out` (CHW, 3·size·size values) in one call.
///
/// Builds a fresh [`Preprocessor`] each call. Code that processes many
/// images should keep one and call [`Preprocessor::run`] to reuse buffers.
pub fn preprocess(
    rgb: &RgbImage,
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let mut preprocessor = Preprocessor::new(PreprocessConfig { size, mean, std })?;
    preprocessor.run(rgb, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::codecs::gif::GifEncoder;
    use ::image::{Frame, GrayAlphaImage, ImageBuffer, Luma, LumaA, Rgb, Rgba, RgbaImage};

    type Gray16Image = ImageBuffer<Luma<u16>, Vec<u16>>;
    type Rgb16Image = ImageBuffer<Rgb<u16>, Vec<u16>>;
    type Rgba16Image = ImageBuffer<Rgba<u16>, Vec<u16>>;

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode test image");
        out.into_inner()
    }

    /// Left half red, right half blue: any rotation or flip moves the colours.
    fn two_halves(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        })
    }

    fn assert_near(actual: &Rgb<u8>, expected: [u8; 3], tolerance: u8) {
        let close = actual
            .0
            .iter()
            .zip(expected)
            .all(|(a, e)| a.abs_diff(e) <= tolerance);
        assert!(
            close,
            "pixel {actual:?} not within {tolerance} of {expected:?}"
        );
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);

        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out
    }

    /// Wraps `data` in a zlib stream of one stored (uncompressed) block,
    /// enough for tiny IDATs.
    fn zlib_stored(data: &[u8]) -> Vec<u8> {
        assert!(data.len() < 65_536, "one stored block only");
        let len = data.len() as u16;

        let mut out = vec![0x78, 0x01, 0x01];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&adler32(data).to_be_bytes());
        out
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        (b << 16) | a
    }

    fn ihdr(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
        let mut data = width.to_be_bytes().to_vec();
        data.extend_from_slice(&height.to_be_bytes());
        data.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
        png_chunk(b"IHDR", &data)
    }

    /// 2×2 palette PNG: index 0 is black but fully transparent, index 1 is
    /// opaque red. Laid out as [0, 1] over [1, 0].
    fn palette_png_with_trns() -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(ihdr(2, 2, 8, 3));
        png.extend(png_chunk(b"PLTE", &[0, 0, 0, 255, 0, 0]));
        png.extend(png_chunk(b"tRNS", &[0]));

        // Each row starts with filter type 0.
        let rows = [0, 0, 1, 0, 1, 0];
        png.extend(png_chunk(b"IDAT", &zlib_stored(&rows)));
        png.extend(png_chunk(b"IEND", &[]));
        png
    }

    fn exif_app1(tiff: &[u8]) -> Vec<u8> {
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(tiff);

        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        segment.extend(payload);
        segment
    }

    /// Builds a big-endian TIFF header whose one IFD contains only Orientation.
    fn exif_orientation_tiff(orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        tiff
    }

    fn jpeg_with_segment(image: &RgbImage, segment: &[u8]) -> Vec<u8> {
        let jpeg = encode(&DynamicImage::ImageRgb8(image.clone()), ImageFormat::Jpeg);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(segment);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn noisy(width: u32, height: u32) -> RgbImage {
        // A simple LCG gives incompressible detail, so a cut removes scans.
        let mut state = 12_345u32;
        RgbImage::from_fn(width, height, |_, _| {
            let mut next = || {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            };
            Rgb([next(), next(), next()])
        })
    }

    #[test]
    fn decode_error_dimensions() {
        let small = DecodeError::TooSmall { width: 3, height: 4000, min_size: 10 };
        let large = DecodeError::TooLarge { width: 90_000, height: 60_000 };
        let unread = DecodeError::TooLarge { width: 0, height: 0 };
        let beyond_u32 = DecodeError::TooLarge { width: 1 << 40, height: 5 };

        assert_eq!(small.dimensions(), Some((3, 4000)));
        assert_eq!(large.dimensions(), Some((90_000, 60_000)));
        assert_eq!(unread.dimensions(), None);
        assert_eq!(beyond_u32.dimensions(), None);
        assert_eq!(DecodeError::Corrupt("cut".into()).dimensions(), None);
    }

    #[test]
    fn formats_found_by_magic_bytes() {
        let source = DynamicImage::ImageRgb8(two_halves(16, 8));
        let cases = [
            (ImageFormat::Jpeg, ImageFormatName::Jpeg, 40),
            (ImageFormat::Png, ImageFormatName::Png, 0),
            (ImageFormat::WebP, ImageFormatName::Webp, 0),
            (ImageFormat::Gif, ImageFormatName::Gif, 0),
            (ImageFormat::Bmp, ImageFormatName::Bmp, 0),
            (ImageFormat::Tiff, ImageFormatName::Tiff, 0),
        ];

        for (format, expected, tolerance) in cases {
            // Decoding takes bytes only, so whatever name or content type the
            // file was served under cannot influence the result.
            let bytes = encode(&source, format);
            assert_eq!(sniff_format(&bytes), Sniffed::Image(expected));

            let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(decoded.format, expected);
            assert_eq!((decoded.width(), decoded.height()), (16, 8), "{expected}");
            assert_near(decoded.rgb.get_pixel(2, 4), [255, 0, 0], tolerance);
            assert_near(decoded.rgb.get_pixel(13, 4), [0, 0, 255], tolerance);
            assert!(!decoded.had_alpha, "{expected} reported alpha");
            assert!(!decoded.animated, "{expected} reported animation");
        }
    }

    #[test]
    fn format_names_are_stable() {
        let names: Vec<_> = [
            ImageFormatName::Jpeg,
            ImageFormatName::Png,
            ImageFormatName::Webp,
            ImageFormatName::Gif,
            ImageFormatName::Bmp,
            ImageFormatName::Tiff,
        ]
        .iter()
        .map(|f| f.as_str())
        .collect();
        assert_eq!(names, ["jpeg", "png", "webp", "gif", "bmp", "tiff"]);
    }

    #[test]
    fn documents_are_not_images() {
        let cases: [(&[u8], &str); 8] = [
            (b"<!DOCTYPE html><html><body>404</body></html>", "html"),
            (b"\xEF\xBB\xBF\n  <html lang=en><svg></svg></html>", "html"),
            (b"<head><title>Moved</title></head>", "html"),
            (
                b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>",
                "xml",
            ),
            (b"%PDF-1.7\n%\xE2\xE3", "pdf"),
            (b"{\"error\": \"not found\"}", "json"),
            (b"\0\0\0\x18ftypmp42\0\0\0\0isommp42", "video"),
            (b"Forbidden", "unknown"),
        ];

        for (bytes, what) in cases {
            let err = decode(bytes, &DecodeLimits::default()).unwrap_err();
            assert_eq!(err, DecodeError::NotAnImage(what.to_owned()), "{bytes:?}");
            assert_eq!(err.status(), "not_an_image");
        }
    }

    #[test]
    fn empty_bodies_are_not_images() {
        for bytes in [&b""[..], b" \r\n\t"] {
            let err = decode(bytes, &DecodeLimits::default()).unwrap_err();
            assert_eq!(err, DecodeError::NotAnImage("empty".into()));
        }
    }

    #[test]
    fn bm_text_is_not_bitmap() {
        assert_eq!(
            sniff_format(b"BMW owners club"),
            Sniffed::NotAnImage("unknown")
        );
    }

    #[test]
    fn svg_avif_heic_unsupported() {
        let cases: [(&[u8], &str); 7] = [
            (b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>", "svg"),
            (
                b"<?xml version=\"1.0\"?>\n<!-- made by hand -->\n<svg/>",
                "svg",
            ),
            (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", "avif"),
            (b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf", "avif"),
            (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "heic"),
            (b"\0\0\0\x14ftypmif1\0\0\0\0mif1", "heif"),
            (b"\0\0\0\x0cJXL \r\n\x87\n\0\0", "jxl"),
        ];

        for (bytes, name) in cases {
            let err = decode(bytes, &DecodeLimits::default()).unwrap_err();
            assert_eq!(err, DecodeError::Unsupported(name), "{bytes:?}");
            assert_eq!(err.status(), "unsupported_format");
        }
    }

    #[test]
    fn huge_png_is_too_large() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(ihdr(8_000_000, 4_294_967_295, 8, 2));
        png.extend(png_chunk(b"IEND", &[]));

        let err = decode(&png, &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                width: 8_000_000,
                height: 4_294_967_295
            }
        );
        assert_eq!(err.status(), "too_large");
    }

    #[test]
    fn pixel_limit_rejects_large_images() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(two_halves(20, 10)),
            ImageFormat::Png,
        );
        let limits = DecodeLimits {
            max_pixels: 199,
            ..DecodeLimits::default()
        };

        let err = decode(&bytes, &limits).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                width: 20,
                height: 10
            }
        );
        assert!(decode(
            &bytes,
            &DecodeLimits {
                max_pixels: 200,
                ..limits
            }
        )
        .is_ok());
    }

    #[test]
    fn side_limits_use_upright_dimensions() {
        let bytes = jpeg_with_segment(&two_halves(20, 10), &exif_app1(&exif_orientation_tiff(6)));

        // Stored 20 wide, upright 10 wide and 20 high.
        let upright_fits = DecodeLimits {
            max_width: 15,
            max_height: 25,
            ..DecodeLimits::default()
        };
        assert!(decode(&bytes, &upright_fits).is_ok());

        let upright_too_tall = DecodeLimits {
            max_width: 25,
            max_height: 15,
            ..DecodeLimits::default()
        };
        let err = decode(&bytes, &upright_too_tall).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                width: 10,
                height: 20
            }
        );
    }

    #[test]
    fn line_art_composited_on_white() {
        // Black strokes on a transparent background whose hidden colour is
        // also black: dropping alpha would give an all-black image.
        let mut art = RgbaImage::from_pixel(8, 8, Rgba([0, 0, 0, 0]));
        for x in 0..8 {
            art.put_pixel(x, 4, Rgba([0, 0, 0, 255]));
        }
        art.put_pixel(1, 1, Rgba([255, 0, 0, 128]));
        let bytes = encode(&DynamicImage::ImageRgba8(art), ImageFormat::Png);

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert!(decoded.had_alpha);
        assert_eq!(decoded.rgb.get_pixel(3, 0).0, [255, 255, 255]);
        assert_eq!(decoded.rgb.get_pixel(3, 4).0, [0, 0, 0]);

        // Straight alpha: 255·(128/255) + 255·(127/255) and 0 + 127.
        assert_eq!(decoded.rgb.get_pixel(1, 1).0, [255, 127, 127]);
    }

    #[test]
    fn opaque_rgba_reports_no_alpha() {
        let opaque = RgbaImage::from_pixel(4, 4, Rgba([10, 20, 30, 255]));
        let bytes = encode(&DynamicImage::ImageRgba8(opaque), ImageFormat::Png);

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert!(!decoded.had_alpha);
        assert_eq!(decoded.rgb.get_pixel(2, 2).0, [10, 20, 30]);
    }

    #[test]
    fn sixteen_bit_rounds_to_nearest() {
        // 1000/257 = 3.89 and 40000/257 = 155.64. Truncation would give 3 and
        // 155, and taking the high byte 3 and 156.
        let image = Rgb16Image::from_pixel(3, 3, Rgb([1000, 40_000, 65_535]));
        let bytes = encode(&DynamicImage::ImageRgb16(image), ImageFormat::Png);

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.rgb.get_pixel(1, 1).0, [4, 156, 255]);
        assert!(!decoded.had_alpha);

        let gray = Gray16Image::from_pixel(2, 2, Luma([1000]));
        let bytes = encode(&DynamicImage::ImageLuma16(gray), ImageFormat::Png);
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.rgb.get_pixel(0, 1).0, [4, 4, 4]);
    }

    #[test]
    fn sixteen_bit_alpha_on_white() {
        let mut image = Rgba16Image::from_pixel(2, 1, Rgba([0, 0, 0, 0]));
        image.put_pixel(1, 0, Rgba([0, 65_535, 0, 32_768]));
        let bytes = encode(&DynamicImage::ImageRgba16(image), ImageFormat::Png);

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert!(decoded.had_alpha);
        assert_eq!(decoded.rgb.get_pixel(0, 0).0, [255, 255, 255]);

        // a = 0.500008: 255·(1 − a) = 127.498 for the dark channels.
        assert_eq!(decoded.rgb.get_pixel(1, 0).0, [127, 255, 127]);
    }

    #[test]
    fn gray_alpha_on_white() {
        let mut image = GrayAlphaImage::from_pixel(3, 1, LumaA([0, 0]));
        image.put_pixel(1, 0, LumaA([100, 255]));
        image.put_pixel(2, 0, LumaA([0, 128]));
        let bytes = encode(&DynamicImage::ImageLumaA8(image), ImageFormat::Png);

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert!(decoded.had_alpha);
        assert_eq!(decoded.rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(decoded.rgb.get_pixel(1, 0).0, [100, 100, 100]);
        assert_eq!(decoded.rgb.get_pixel(2, 0).0, [127, 127, 127]);
    }

    #[test]
    fn palette_transparency_on_white() {
        let decoded = decode(&palette_png_with_trns(), &DecodeLimits::default()).unwrap();

        assert!(decoded.had_alpha);
        assert_eq!(decoded.rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(decoded.rgb.get_pixel(1, 0).0, [255, 0, 0]);
        assert_eq!(decoded.rgb.get_pixel(0, 1).0, [255, 0, 0]);
        assert_eq!(decoded.rgb.get_pixel(1, 1).0, [255, 255, 255]);
    }

    #[test]
    fn exif_six_rotates_clockwise() {
        let bytes = jpeg_with_segment(&two_halves(20, 10), &exif_app1(&exif_orientation_tiff(6)));

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.exif_orientation, Some(6));
        assert_eq!((decoded.width(), decoded.height()), (10, 20));

        // Rotating clockwise puts the stored left (red) half on top.
        assert_near(decoded.rgb.get_pixel(5, 2), [255, 0, 0], 40);
        assert_near(decoded.rgb.get_pixel(5, 17), [0, 0, 255], 40);
    }

    #[test]
    fn exif_three_rotates_half_turn() {
        let bytes = jpeg_with_segment(&two_halves(20, 10), &exif_app1(&exif_orientation_tiff(3)));

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.exif_orientation, Some(3));
        assert_eq!((decoded.width(), decoded.height()), (20, 10));
        assert_near(decoded.rgb.get_pixel(2, 5), [0, 0, 255], 40);
        assert_near(decoded.rgb.get_pixel(17, 5), [255, 0, 0], 40);
    }

    #[test]
    fn corrupt_exif_is_ignored() {
        let bad_offset = b"MM\0\x2a\xFF\xFF\xFF\x00".to_vec();
        let garbage = b"\x01\x02\x03 this is not a tiff header".to_vec();
        let bad_value = exif_orientation_tiff(42);

        for tiff in [bad_offset, garbage, bad_value] {
            let bytes = jpeg_with_segment(&two_halves(20, 10), &exif_app1(&tiff));

            let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(decoded.exif_orientation, None);
            assert_eq!((decoded.width(), decoded.height()), (20, 10));
            assert_near(decoded.rgb.get_pixel(2, 5), [255, 0, 0], 40);
        }
    }

    #[test]
    fn min_size_rejects_tiny_images() {
        let bytes = encode(&DynamicImage::ImageRgb8(two_halves(1, 1)), ImageFormat::Png);
        let limits = DecodeLimits {
            min_size: 2,
            ..DecodeLimits::default()
        };

        let err = decode(&bytes, &limits).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooSmall {
                width: 1,
                height: 1,
                min_size: 2
            }
        );
        assert_eq!(err.status(), "too_small");

        // The default leaves the check off.
        assert!(decode(&bytes, &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let jpeg = encode(&DynamicImage::ImageRgb8(noisy(64, 64)), ImageFormat::Jpeg);
        let cut = &jpeg[..jpeg.len() / 2];

        let first = decode(cut, &DecodeLimits::default()).unwrap_err();
        let second = decode(cut, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(first, DecodeError::Corrupt(ref m) if m.contains("truncated")));
        assert_eq!(first, second);
        assert_eq!(first.status(), "decode_error");

        // Losing only the final end-of-image marker also counts as truncated.
        let no_eoi = &jpeg[..jpeg.len() - 2];
        assert!(matches!(
            decode(no_eoi, &DecodeLimits::default()),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn truncation_found_past_thumbnail_eoi() {
        // An EXIF block that embeds a thumbnail ends with its own FF D9.
        let mut tiff = exif_orientation_tiff(1);
        tiff.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xD9]);
        let jpeg = jpeg_with_segment(&noisy(64, 64), &exif_app1(&tiff));
        let cut = &jpeg[..jpeg.len() * 3 / 4];

        let err = decode(cut, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(ref m) if m.contains("truncated")));
        assert!(decode(&jpeg, &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn jpeg_trailing_bytes_allowed() {
        let mut jpeg = encode(
            &DynamicImage::ImageRgb8(two_halves(16, 16)),
            ImageFormat::Jpeg,
        );
        jpeg.extend_from_slice(b"\0\0trailing junk from a careless server");

        let decoded = decode(&jpeg, &DecodeLimits::default()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (16, 16));
    }

    #[test]
    fn animated_gif_keeps_first_frame() {
        let red = RgbaImage::from_pixel(6, 4, Rgba([255, 0, 0, 255]));
        let blue = RgbaImage::from_pixel(6, 4, Rgba([0, 0, 255, 255]));
        let mut bytes = Vec::new();
        GifEncoder::new(&mut bytes)
            .encode_frames([Frame::new(red.clone()), Frame::new(blue)])
            .unwrap();

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert!(decoded.animated);
        assert_eq!(decoded.format, ImageFormatName::Gif);
        assert_eq!(decoded.rgb.get_pixel(3, 2).0, [255, 0, 0]);

        let mut still = Vec::new();
        GifEncoder::new(&mut still)
            .encode_frames([Frame::new(red)])
            .unwrap();
        assert!(!decode(&still, &DecodeLimits::default()).unwrap().animated);
    }

    /// Wraps the VP8L chunks of two still lossless WebPs into an animation.
    fn animated_webp(first: &RgbImage, second: &RgbImage) -> Vec<u8> {
        let (w, h) = first.dimensions();
        let frame_chunk = |image: &RgbImage| {
            let still = encode(&DynamicImage::ImageRgb8(image.clone()), ImageFormat::WebP);
            assert_eq!(&still[12..16], b"VP8L", "lossless encoder output expected");
            still[12..].to_vec()
        };
        let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut out = kind.to_vec();
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(0);
            }
            out
        };
        let anmf = |image: &RgbImage| {
            let mut data = [u24(0), u24(0), u24(w - 1), u24(h - 1), u24(100)].concat();

            // Flags: replace the canvas rather than alpha-blend onto it, so
            // the expected colour is exact.
            data.push(0x02);
            data.extend(frame_chunk(image));
            chunk(b"ANMF", &data)
        };

        let mut vp8x = vec![0x02, 0, 0, 0];
        vp8x.extend([u24(w - 1), u24(h - 1)].concat());
        let body = [
            b"WEBP".to_vec(),
            chunk(b"VP8X", &vp8x),
            chunk(b"ANIM", &[255, 255, 255, 255, 0, 0]),
            anmf(first),
            anmf(second),
        ]
        .concat();
        [
            b"RIFF".to_vec(),
            (body.len() as u32).to_le_bytes().to_vec(),
            body,
        ]
        .concat()
    }

    #[test]
    fn animated_webp_keeps_first_frame() {
        let red = RgbImage::from_pixel(6, 4, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(6, 4, Rgb([0, 0, 255]));
        let bytes = animated_webp(&red, &blue);

        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.format, ImageFormatName::Webp);
        assert!(decoded.animated);
        assert_eq!((decoded.width(), decoded.height()), (6, 4));
        assert_eq!(decoded.rgb.get_pixel(3, 2).0, [255, 0, 0]);
    }

    #[test]
    fn garbage_after_magic_is_corrupt() {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend(ihdr(4, 4, 8, 2));
        bytes.extend(png_chunk(b"IDAT", b"definitely not zlib"));
        bytes.extend(png_chunk(b"IEND", &[]));

        let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.status(), "decode_error", "{err}");
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn blip_config_matches_reference() {
        let config = PreprocessConfig::blip();
        assert_eq!(config.size, 384);
        assert_eq!(config.mean, [0.481_454_66, 0.457_827_5, 0.408_210_73]);
        assert_eq!(config.std, [0.268_629_54, 0.261_302_58, 0.275_777_11]);
        assert_eq!(config.output_len(), 3 * 384 * 384);
    }

    #[test]
    fn preprocess_writes_planes_in_order() {
        let config = PreprocessConfig {
            size: 4,
            ..PreprocessConfig::blip()
        };
        let image = RgbImage::from_pixel(7, 5, Rgb([255, 0, 51]));
        let mut out = vec![0.0; config.output_len()];

        preprocess(&image, config.size, config.mean, config.std, &mut out).unwrap();

        let expected = [
            (1.0 - config.mean[0]) / config.std[0],
            (0.0 - config.mean[1]) / config.std[1],
            (0.2 - config.mean[2]) / config.std[2],
        ];
        for (c, plane) in out.chunks_exact(16).enumerate() {
            for v in plane {
                assert!(
                    (v - expected[c]).abs() < 1e-5,
                    "channel {c}: {v} vs {}",
                    expected[c]
                );
            }
        }
    }

    #[test]
    fn same_size_resize_is_copy() {
        let image = noisy(8, 8);
        let mut preprocessor = Preprocessor::new(PreprocessConfig {
            size: 8,
            ..PreprocessConfig::blip()
        })
        .unwrap();

        assert_eq!(
            preprocessor.resize(&image).unwrap(),
            image.as_raw().as_slice()
        );
    }

    #[test]
    fn preprocess_ignores_aspect_ratio() {
        // A wide image with a red left half still fills the left half of the
        // square output: it is stretched, not cropped or padded.
        let mut preprocessor = Preprocessor::new(PreprocessConfig {
            size: 8,
            ..PreprocessConfig::blip()
        })
        .unwrap();
        let resized = preprocessor.resize(&two_halves(64, 8)).unwrap().to_vec();

        let pixel = |x: usize, y: usize| &resized[(y * 8 + x) * 3..(y * 8 + x) * 3 + 3];
        for y in 0..8 {
            assert_eq!(pixel(0, y), [255, 0, 0]);
            assert_eq!(pixel(7, y), [0, 0, 255]);
        }
    }

    /// Builds a high-contrast pattern whose bicubic resize overshoots and clips.
    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = if (x / 2 + y) % 2 == 0 { 255 } else { 0 };
            let green = ((x * 37 + y * 11) % 256) as u8;
            let blue = if x % 3 == 0 { 128 } else { 255 - v };
            Rgb([v, green, blue])
        })
    }

    fn resize_to(image: &RgbImage, size: u32) -> Vec<u8> {
        let config = PreprocessConfig {
            size,
            ..PreprocessConfig::blip()
        };
        Preprocessor::new(config)
            .unwrap()
            .resize(image)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn resize_matches_pil_bicubic() {
        // Expected bytes were produced by Pillow 13.0.0:
        // Image.fromarray(pattern).resize((size, size), Image.BICUBIC).
        let down: [u8; 48] = [
            140, 29, 123, 119, 110, 127, 133, 189, 115, 122, 58, 129, 128, 48, 127, 127, 129, 127,
            128, 211, 128, 127, 79, 128, 128, 68, 127, 127, 155, 127, 128, 170, 128, 127, 61, 128,
            140, 87, 123, 119, 176, 127, 133, 164, 115, 122, 64, 129,
        ];
        let up: [u8; 75] = [
            255, 0, 140, 255, 10, 61, 255, 36, 0, 81, 62, 166, 0, 76, 255, 238, 1, 137, 238, 12,
            79, 238, 38, 17, 94, 64, 156, 17, 78, 238, 128, 4, 128, 128, 17, 128, 128, 43, 128,
            128, 69, 128, 128, 83, 128, 17, 7, 119, 17, 21, 177, 17, 47, 238, 161, 73, 99, 238, 87,
            17, 0, 9, 116, 0, 23, 195, 0, 49, 255, 174, 75, 89, 255, 89, 0,
        ];

        assert_eq!(resize_to(&pattern(9, 7), 4), down);
        assert_eq!(resize_to(&pattern(3, 2), 5), up);
    }

    #[test]
    fn preprocess_rejects_wrong_length() {
        let config = PreprocessConfig::blip();
        let mut out = vec![0.0; config.output_len() - 1];

        let err = preprocess(&noisy(4, 4), 384, config.mean, config.std, &mut out).unwrap_err();
        assert_eq!(
            err,
            PreprocessError::BufferLength {
                expected: 3 * 384 * 384,
                got: 3 * 384 * 384 - 1
            }
        );
    }

    #[test]
    fn preprocess_rejects_invalid_settings() {
        let mut out = vec![0.0; 12];
        let blip = PreprocessConfig::blip();

        let zero_std = preprocess(&noisy(4, 4), 2, blip.mean, [0.2, 0.0, 0.2], &mut out);
        assert!(matches!(zero_std, Err(PreprocessError::InvalidConfig(_))));

        let empty = preprocess(&RgbImage::new(0, 0), 2, blip.mean, blip.std, &mut out);
        assert_eq!(empty, Err(PreprocessError::EmptyImage));
    }
}
