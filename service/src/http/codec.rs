//! HTTP body content codings: zstd and gzip, both directions.
//!
//! The 0.52.2 client zstd-compresses every request body by default, even when a
//! server advertises no codecs, so decoding zstd is mandatory. Decoding is
//! bounded: a small compressed body must not expand past the request limit.

use std::io::{Read, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Gzip,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    pub fn parse(name: &str) -> Option<Codec> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("zstd") {
            Some(Codec::Zstd)
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            Some(Codec::Gzip)
        } else {
            None
        }
    }
}

/// What the server produces, in preference order (`VGI-Supported-Encodings`).
pub const SUPPORTED: &str = "zstd, gzip";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("decoded body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("failed to decode {codec} body: {message}")]
    Corrupt {
        codec: &'static str,
        message: String,
    },
    #[error("the server's in-flight memory budget cannot hold the decoded body")]
    OverBudget,
}

/// Largest zstd window the streaming decoder accepts (2^24 = 16 MiB). zstd's
/// own default is 128 MiB per decoder, which a 100-byte frame can demand.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Decodes `body`, failing once the output would pass `limit` bytes.
pub fn decode(codec: Codec, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    decode_bounded(codec, body, limit, &mut |_| true)
}

/// Whether `body` is one zstd frame that declares a content size of at most
/// `small` bytes: cheap enough to decode without leaving the async worker.
pub fn is_small_zstd(body: &[u8], small: usize) -> bool {
    zstd::zstd_safe::get_frame_content_size(body)
        .ok()
        .flatten()
        .is_some_and(|size| size <= small as u64)
        && zstd::zstd_safe::find_frame_compressed_size(body).ok() == Some(body.len())
}

/// [`decode`] that asks `reserve(n)` before holding `n` decoded bytes (the
/// output buffer's capacity) and stops with [`DecodeError::OverBudget`] when
/// it says no. The output grows as data is decoded, never past `limit + 1`
/// bytes of capacity, so a bomb costs at most the cap, not its claimed size.
pub fn decode_bounded(
    codec: Codec,
    body: &[u8],
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let corrupt = |e: std::io::Error| DecodeError::Corrupt {
        codec: codec.as_str(),
        message: e.to_string(),
    };
    if codec == Codec::Zstd
        && let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(body)
    {
        if size > limit as u64 {
            return Err(DecodeError::TooLarge { limit });
        }
        if zstd::zstd_safe::find_frame_compressed_size(body).ok() == Some(body.len()) {
            if !reserve(size as usize) {
                return Err(DecodeError::OverBudget);
            }
            if let Some(decoded) = decode_zstd_frame(body, size as usize) {
                return Ok(decoded);
            }
        }
    }
    let mut reader: Box<dyn Read + '_> = match codec {
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(corrupt)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(corrupt)?;
            Box::new(decoder)
        }
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
    };
    let mut out: Vec<u8> = Vec::new();
    let ceiling = limit.saturating_add(1);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= ceiling {
                return Err(DecodeError::TooLarge { limit });
            }
            let grown = (out.capacity().max(32 * 1024) * 2).min(ceiling);
            if !reserve(grown) {
                return Err(DecodeError::OverBudget);
            }
            out.reserve_exact(grown - out.len());
        }
        let filled = out.len();
        let room = out.capacity().min(ceiling) - filled;
        out.resize(filled + room, 0);
        match reader.read(&mut out[filled..]) {
            Ok(0) => {
                out.truncate(filled);
                break;
            }
            Ok(read) => out.truncate(filled + read),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => out.truncate(filled),
            Err(error) => return Err(corrupt(error)),
        }
    }
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

thread_local! {
    // A zstd context costs far more to create than a small body costs to
    // compress, so each worker thread keeps one of each.
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    // The streaming context of large bodies, on the pool's threads: kept, so
    // its worker threads and buffers are reused rather than made per body.
    static ZSTD_STREAM: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Fast path: a single frame that declares its content size (`size`, checked
/// against the limit by the caller) decodes in one call on a reused context.
/// `None` sends the caller to the streaming decoder, which reports the error.
fn decode_zstd_frame(body: &[u8], size: usize) -> Option<Vec<u8>> {
    ZSTD_DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let decoded = slot.as_mut()?.decompress(body, size).ok()?;
        (decoded.len() == size).then_some(decoded)
    })
}

/// Compresses a response body (zstd frames carry their content size).
pub fn encode(codec: Codec, body: &[u8], zstd_level: i32) -> Vec<u8> {
    match codec {
        Codec::Zstd => ZSTD_COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(level, _)| *level != zstd_level) {
                *slot = zstd::bulk::Compressor::new(zstd_level)
                    .ok()
                    .map(|c| (zstd_level, c));
            }
            match slot.as_mut() {
                Some((_, compressor)) => {
                    compressor.compress(body).unwrap_or_else(|_| body.to_vec())
                }
                None => zstd::bulk::compress(body, zstd_level).unwrap_or_else(|_| body.to_vec()),
            }
        }),
        Codec::Gzip => gzip([body], body.len() / 2, GZIP_LEVEL),
    }
}

/// Frames `body` in `codec` without compressing it: a zstd frame of raw
/// blocks that declares its content size, or a gzip member of stored deflate
/// blocks. Any decoder of the coding reads it; it costs a copy instead of
/// entropy coding, which is what a body below one TCP segment should cost.
pub fn store(codec: Codec, body: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Zstd => zstd_raw_frame(body),
        Codec::Gzip => gzip([body], body.len() + 32, flate2::Compression::none()),
    }
}

/// gzip level of compressed responses (the reference's).
const GZIP_LEVEL: flate2::Compression = flate2::Compression::new(6);

/// One gzip member holding `parts` in order.
fn gzip<'a>(
    parts: impl IntoIterator<Item = &'a [u8]>,
    capacity: usize,
    level: flate2::Compression,
) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(capacity), level);
    for part in parts {
        encoder
            .write_all(part)
            .expect("writing to a Vec cannot fail");
    }
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Largest block a zstd frame may carry (`Block_Maximum_Size`, RFC 8878 3.1.1.2.4).
const ZSTD_MAX_BLOCK: usize = 128 * 1024;

/// A single-segment zstd frame (RFC 8878 3.1.1) of raw blocks, no checksum.
fn zstd_raw_frame(body: &[u8]) -> Vec<u8> {
    let size = body.len() as u64;
    let blocks = body.len().div_ceil(ZSTD_MAX_BLOCK).max(1);
    let mut out = Vec::with_capacity(body.len() + 13 + 3 * blocks);
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame_Header_Descriptor: Single_Segment_flag (bit 5) and the
    // Frame_Content_Size_flag (bits 7-6) that selects the size field's width.
    if size < 256 {
        out.push(0b0010_0000);
        out.push(size as u8);
    } else if size < 256 + 65_536 {
        out.push(0b0110_0000);
        out.extend_from_slice(&((size - 256) as u16).to_le_bytes());
    } else if size <= u64::from(u32::MAX) {
        out.push(0b1010_0000);
        out.extend_from_slice(&(size as u32).to_le_bytes());
    } else {
        out.push(0b1110_0000);
        out.extend_from_slice(&size.to_le_bytes());
    }
    let mut chunks = body.chunks(ZSTD_MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty frame still needs one (last, empty) block.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        // Block_Header: Last_Block (bit 0), Block_Type 0 = raw (bits 1-2), Block_Size.
        let header = last | ((chunk.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

/// Bodies at least this large are compressed by several threads at once
/// (zstd's multithreaded mode: still one frame) when the pool has them free.
pub const PARALLEL_MIN_BYTES: usize = 4 << 20;

/// The zstd level for a body of `size` bytes: `configured` up to
/// [`PARALLEL_MIN_BYTES`], at most level 1 from there. A large body's
/// compression time is paid before its first byte leaves, so it gets the
/// fastest level whatever smaller bodies use; small ones can afford more.
pub fn zstd_level_for(size: usize, configured: i32) -> i32 {
    if size >= PARALLEL_MIN_BYTES {
        configured.min(1)
    } else {
        configured
    }
}

/// Compresses a response body held as several chunks, without joining them
/// first, on `workers` threads for zstd (0 or 1: the calling thread only).
/// The zstd frame still declares its content size, as the reference client's
/// decoder expects, and is one frame whatever the thread count.
pub fn encode_chunks(
    codec: Codec,
    chunks: &[bytes::Bytes],
    zstd_level: i32,
    workers: usize,
) -> Vec<u8> {
    let total: usize = chunks.iter().map(bytes::Bytes::len).sum();
    let capacity = match codec {
        Codec::Zstd => zstd::zstd_safe::compress_bound(total),
        Codec::Gzip => total / 2,
    };
    encode_chunks_to(
        codec,
        chunks,
        zstd_level,
        workers,
        Vec::with_capacity(capacity),
    )
    .unwrap_or_else(|_| {
        let mut body = Vec::with_capacity(total);
        for chunk in chunks {
            body.extend_from_slice(chunk);
        }
        encode(codec, &body, zstd_level_for(total, zstd_level))
    })
}

/// [`encode_chunks`] into any writer, which sees the compressed bytes as
/// they are produced (with several zstd workers, as each job finishes).
pub fn encode_chunks_to<W: Write>(
    codec: Codec,
    chunks: &[bytes::Bytes],
    zstd_level: i32,
    workers: usize,
    out: W,
) -> std::io::Result<W> {
    let total: usize = chunks.iter().map(bytes::Bytes::len).sum();
    match codec {
        Codec::Zstd => ZSTD_STREAM.with(|cell| {
            use zstd::zstd_safe::CParameter;
            let mut slot = cell.borrow_mut();
            let context = slot.get_or_insert_with(zstd::zstd_safe::CCtx::create);
            let mut encoder = zstd::stream::write::Encoder::with_context(out, context);
            // The context keeps its parameters between bodies: set them all.
            encoder.set_parameter(CParameter::CompressionLevel(zstd_level_for(
                total, zstd_level,
            )))?;
            encoder.set_parameter(CParameter::NbWorkers(if workers > 1 {
                workers as u32
            } else {
                0
            }))?;
            encoder.include_contentsize(true)?;
            encoder.set_pledged_src_size(Some(total as u64))?;
            for chunk in chunks {
                encoder.write_all(chunk)?;
            }
            encoder.finish()
        }),
        Codec::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(out, GZIP_LEVEL);
            for chunk in chunks {
                encoder.write_all(chunk)?;
            }
            encoder.finish()
        }
    }
}

/// Response codec choice: `X-VGI-Accept-Encoding` entries first, then
/// `Accept-Encoding`; the first codec we produce wins, `identity` first means
/// none. Returns the codec and whether it came only from the X- header.
pub fn negotiate(x_accept: Option<&str>, accept: Option<&str>) -> Option<(Codec, bool)> {
    // Coding names without parameters, case kept (compared ignoring case).
    fn entries(header: Option<&str>) -> impl Iterator<Item = &str> + Clone {
        header
            .unwrap_or("")
            .split(',')
            .map(|e| e.split(';').next().unwrap_or("").trim())
            .filter(|e| !e.is_empty())
    }
    let plain_entries = entries(accept);
    // The first entry that decides, the X- header's before the plain one's;
    // a coding found in the X- header is "only X-" unless the plain header
    // names it too.
    for (entry, from_x) in entries(x_accept)
        .map(|e| (e, true))
        .chain(plain_entries.clone().map(|e| (e, false)))
    {
        if entry.eq_ignore_ascii_case("identity") {
            return None;
        }
        if let Some(codec) = Codec::parse(entry) {
            let only_x = from_x
                && !plain_entries
                    .clone()
                    .any(|plain| plain.eq_ignore_ascii_case(entry));
            return Some((codec, only_x));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_both_codecs() {
        let body = b"arrow arrow arrow arrow".repeat(100);
        for codec in [Codec::Zstd, Codec::Gzip] {
            let packed = encode(codec, &body, 1);
            assert_eq!(decode(codec, &packed, body.len()).unwrap(), body);
            assert!(matches!(
                decode(codec, &packed, body.len() - 1),
                Err(DecodeError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn chunked_bodies_compress_like_one_body() {
        let body = b"arrow arrow arrow arrow".repeat(1000);
        let chunks: Vec<bytes::Bytes> = body
            .chunks(777)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        for codec in [Codec::Zstd, Codec::Gzip] {
            let packed = encode_chunks(codec, &chunks, 1, 1);
            assert_eq!(decode(codec, &packed, body.len()).unwrap(), body);
        }
        // The reference client's decoder needs the frame's content size.
        let packed = encode_chunks(Codec::Zstd, &chunks, 1, 1);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&packed).unwrap(),
            Some(body.len() as u64)
        );
    }

    #[test]
    fn multithreaded_bodies_are_one_frame_with_their_size() {
        // Past zstd's job size (a few MiB at level 1), so several workers
        // really compress parts of it; int64 columns like the producer's.
        let body: Vec<u8> = (0..3_000_000i64)
            .flat_map(|i| (i * 7 % 1_000_003).to_le_bytes())
            .collect();
        let chunks: Vec<bytes::Bytes> = body
            .chunks(5 << 20)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        assert!(body.len() >= PARALLEL_MIN_BYTES);
        for workers in [0, 1, 2, 3] {
            let packed = encode_chunks(Codec::Zstd, &chunks, 3, workers);
            assert!(packed.len() < body.len() / 2, "{workers} workers compress");
            assert_eq!(
                zstd::zstd_safe::find_frame_compressed_size(&packed).unwrap(),
                packed.len(),
                "{workers} workers: one frame"
            );
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&packed).unwrap(),
                Some(body.len() as u64),
                "{workers} workers: declared size"
            );
            // One-shot decoding of the first frame, like the reference client.
            assert_eq!(
                zstd::bulk::decompress(&packed, body.len()).unwrap(),
                body,
                "{workers} workers"
            );
        }
    }

    #[test]
    fn large_bodies_never_go_above_level_1() {
        assert_eq!(zstd_level_for(1000, 3), 3);
        assert_eq!(zstd_level_for(PARALLEL_MIN_BYTES - 1, 3), 3);
        assert_eq!(zstd_level_for(PARALLEL_MIN_BYTES, 3), 1);
        assert_eq!(zstd_level_for(PARALLEL_MIN_BYTES, -5), -5);
    }

    #[test]
    fn stored_bodies_decode_with_the_reference_decoders() {
        // Sizes around every boundary of the frame header and the block size.
        for size in [
            0usize, 1, 255, 256, 257, 65_791, 65_792, 131_072, 131_073, 300_000,
        ] {
            let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let zstd = store(Codec::Zstd, &body);
            assert_eq!(
                zstd::stream::decode_all(&zstd[..]).unwrap(),
                body,
                "zstd, {size} bytes"
            );
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&zstd).unwrap(),
                Some(size as u64),
                "declared size, {size} bytes"
            );
            assert_eq!(decode(Codec::Zstd, &zstd, size).unwrap(), body);
            // Stored means no compression: the frame is the body plus headers.
            assert!(zstd.len() <= size + 9 + 3 * size.div_ceil(ZSTD_MAX_BLOCK).max(1));
            let gzip = store(Codec::Gzip, &body);
            assert_eq!(
                decode(Codec::Gzip, &gzip, size).unwrap(),
                body,
                "gzip, {size} bytes"
            );
        }
    }

    #[test]
    fn multi_frame_zstd_bodies_still_decode() {
        let mut body = encode(Codec::Zstd, b"first frame ", 1);
        body.extend(encode(Codec::Zstd, b"second frame", 1));
        assert_eq!(
            decode(Codec::Zstd, &body, 100).unwrap(),
            b"first frame second frame"
        );
        assert!(matches!(
            decode(Codec::Zstd, &body, 15),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn bombs_stop_at_the_cap_and_the_budget() {
        // 64 MiB of zeros: a few KiB compressed, streamed (no declared size) and framed.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let mut streamed = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut streamed, &zeros).unwrap();
        let streamed = streamed.finish().unwrap();
        let framed = encode(Codec::Zstd, &zeros, 3);
        let gzipped = encode(Codec::Gzip, &zeros, 1);
        for (name, codec, body) in [
            ("streamed zstd", Codec::Zstd, &streamed),
            ("framed zstd", Codec::Zstd, &framed),
            ("gzip", Codec::Gzip, &gzipped),
        ] {
            let mut asked = 0usize;
            let result = decode_bounded(codec, body, 1024 * 1024, &mut |bytes| {
                asked = asked.max(bytes);
                true
            });
            assert!(
                matches!(result, Err(DecodeError::TooLarge { .. })),
                "{name}"
            );
            assert!(asked <= 1024 * 1024 + 1, "{name} held {asked} bytes");
            let result = decode_bounded(codec, body, usize::MAX / 2, &mut |bytes| bytes < 100_000);
            assert!(matches!(result, Err(DecodeError::OverBudget)), "{name}");
        }
    }

    #[test]
    fn corrupt_bodies_are_errors() {
        assert!(matches!(
            decode(Codec::Zstd, b"not zstd", 100),
            Err(DecodeError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(Codec::Gzip, b"not gzip", 100),
            Err(DecodeError::Corrupt { .. })
        ));
    }

    #[test]
    fn negotiation_follows_the_reference_order() {
        assert_eq!(
            negotiate(None, Some("zstd, gzip")),
            Some((Codec::Zstd, false))
        );
        assert_eq!(
            negotiate(None, Some("gzip, deflate, zstd")),
            Some((Codec::Gzip, false))
        );
        assert_eq!(negotiate(None, Some("identity, zstd")), None);
        assert_eq!(
            negotiate(Some("zstd"), Some("gzip")),
            Some((Codec::Zstd, true))
        );
        assert_eq!(negotiate(None, Some("br")), None);
        assert_eq!(negotiate(None, None), None);
        // Coding names compare ignoring case and parameters.
        assert_eq!(
            negotiate(Some("ZSTD;q=1"), Some("gzip, Zstd")),
            Some((Codec::Zstd, false))
        );
        assert_eq!(negotiate(Some(" Identity "), Some("zstd")), None);
        assert_eq!(negotiate(None, Some("X-GZIP")), Some((Codec::Gzip, false)));
    }
}
