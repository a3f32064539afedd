//! Still WebP decoding with libwebp, the decoder PIL uses.
//!
//! libwebp is the format's reference decoder and has SSE2 code for the
//! transforms and the chroma upsampling, which the image crate's pure-Rust
//! decoder lacks. Its pixels are PIL's, because PIL calls the same library
//! with the same ("fancy") chroma upsampling. Animated files stay with the image crate, which returns their
//! first frame; libwebp's simple API does not decode animations.

use ::image::RgbImage;
use libwebp_sys as ffi;

use super::{DecodeError, composite};

/// Decodes a still WebP of `width`×`height` (as the container parser read
/// them) to RGB, compositing any alpha onto white. Returns the image and
/// whether any pixel was less than fully opaque.
pub(super) fn decode_still(bytes: &[u8], (width, height): (u32, u32)) -> Result<(RgbImage, bool), DecodeError> {
    let features = read_features(bytes)?;

    // Limits were checked against the container parser's size, so a
    // bitstream that declares another size is rejected.
    let declared = (features.width, features.height);
    if declared != (width as i32, height as i32) {
        return Err(DecodeError::Corrupt(format!(
            "invalid webp: bitstream is {}x{} but its container declares {width}x{height}",
            declared.0, declared.1
        )));
    }

    if features.has_alpha != 0 {
        let rgba = decode_into(bytes, (width, height), 4, ffi::WebPDecodeRGBAInto)?;
        return Ok(composite(width, height, &rgba, 4));
    }

    let rgb = decode_into(bytes, (width, height), 3, ffi::WebPDecodeRGBInto)?;
    let image = RgbImage::from_raw(width, height, rgb).expect("buffer sized from the image");
    Ok((image, false))
}

fn read_features(bytes: &[u8]) -> Result<ffi::WebPBitstreamFeatures, DecodeError> {
    let mut features = std::mem::MaybeUninit::<ffi::WebPBitstreamFeatures>::zeroed();

    // SAFETY: the pointer and length describe `bytes`, and libwebp writes
    // only into `features`, a plain C struct for which zeroes are valid.
    let status = unsafe { ffi::WebPGetFeatures(bytes.as_ptr(), bytes.len(), features.as_mut_ptr()) };
    if status != ffi::VP8StatusCode::VP8_STATUS_OK {
        return Err(DecodeError::Corrupt(format!("invalid webp header: {status:?}")));
    }

    // SAFETY: zero-initialised above and filled by libwebp.
    Ok(unsafe { features.assume_init() })
}

/// The signature shared by libwebp's `WebPDecode*Into` functions.
type DecodeInto = unsafe extern "C" fn(*const u8, usize, *mut u8, usize, i32) -> *mut u8;

/// Runs one of libwebp's decoders into a new buffer of `channels` bytes per
/// pixel, rows packed without padding.
fn decode_into(bytes: &[u8], (width, height): (u32, u32), channels: usize, decode: DecodeInto) -> Result<Vec<u8>, DecodeError> {
    let too_large = || DecodeError::TooLarge { width: width.into(), height: height.into() };
    let row_bytes = width as usize * channels;
    let len = row_bytes * height as usize;
    let stride = i32::try_from(row_bytes).map_err(|_| too_large())?;

    // An RGB buffer is not zeroed first: libwebp writes every sample of an
    // RGB image it decodes, and zeroing a 5-megapixel image's 15 MB cost
    // about 1 % of the preparation stage's time. RGBA is zeroed, because
    // libwebp leaves the alpha samples alone when a file's header announces
    // alpha that its chunks lack, and they then read as transparent.
    let mut pixels = Vec::<u8>::with_capacity(len);
    if channels == 4 {
        pixels.resize(len, 0);
    }

    // SAFETY: the input pointer and length describe `bytes`. The output
    // pointer, length and stride describe the buffer's `len` bytes of
    // capacity, and libwebp returns null instead of writing an image that
    // does not fit them.
    let written = unsafe { decode(bytes.as_ptr(), bytes.len(), pixels.as_mut_ptr(), len, stride) };
    if written.is_null() {
        return Err(DecodeError::Corrupt("webp decoding failed: libwebp rejected the bitstream".into()));
    }

    // SAFETY: the RGBA buffer is initialised already, and on success
    // libwebp has written every sample of an RGB one.
    unsafe { pixels.set_len(len) };
    Ok(pixels)
}
