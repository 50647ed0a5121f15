//! Reading Kafka record batches (format 2, Kafka 0.11 and later) out of a fetched record set:
//! their headers, decompressed (gzip, snappy, lz4, zstd), and their records' offsets, keys and
//! values as slices, with nothing allocated a record.

use std::io::Read;

use bytes::Bytes;

use crate::buffer_pool::BufferPool;

/// A batch's bytes before its records (base offset to record count).
pub const BATCH_HEADER: usize = 61;

/// The most a batch may decompress to: a broker refuses batches over `message.max.bytes`
/// (1 MB by default), so this bounds a corrupt or hostile one, not a real one.
const MAX_DECOMPRESSED: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("a record batch of message format v{0}: weir's client reads format v2 (Kafka 0.11 and later); `client: librdkafka` reads older ones")]
    Format(i8),
    #[error("a record batch compressed with codec {0}, which Kafka does not define")]
    Codec(u8),
    #[error("decompressing a {codec} record batch: {source}")]
    Decompress {
        codec: &'static str,
        source: std::io::Error,
    },
    #[error("a record batch decompresses past {} bytes", MAX_DECOMPRESSED)]
    TooLarge,
    #[error("a record batch is corrupt: {0}")]
    Corrupt(&'static str),
}

/// What a batch's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// The offset of its last record (records compacted away or a transaction's marker may
    /// leave gaps below it).
    pub last_offset: i64,
    pub attributes: i16,
    pub producer_id: i64,
    pub count: i32,
    /// The batch's whole length, header included.
    pub size: usize,
}

impl BatchHeader {
    /// Reads the header at the start of `bytes`; None when `bytes` do not hold the whole
    /// batch (a fetch answer may end with a part of one).
    pub fn read(bytes: &[u8]) -> Result<Option<Self>, BatchError> {
        if bytes.len() < 17 {
            return Ok(None);
        }
        let magic = bytes[16] as i8;
        if magic != 2 {
            return Err(BatchError::Format(magic));
        }
        if bytes.len() < BATCH_HEADER {
            return Ok(None);
        }
        let length = i32_at(bytes, 8);
        let size = usize::try_from(length)
            .ok()
            .filter(|l| *l >= BATCH_HEADER - 12)
            .ok_or(BatchError::Corrupt("its length is shorter than its header"))?
            + 12;
        if bytes.len() < size {
            return Ok(None);
        }
        let base_offset = i64_at(bytes, 0);
        Ok(Some(Self {
            base_offset,
            last_offset: base_offset + i64::from(i32_at(bytes, 23)),
            attributes: i16::from_be_bytes([bytes[21], bytes[22]]),
            producer_id: i64_at(bytes, 43),
            count: i32_at(bytes, 57),
            size,
        }))
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    fn codec(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(eight)
}

/// How much of a fetched record set is whole batches, and the last offset they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Whole {
    pub bytes: usize,
    pub last_offset: Option<i64>,
}

/// Walks the batch headers of `records` (nothing decompressed).
pub fn whole(records: &[u8]) -> Result<Whole, BatchError> {
    let mut at = 0;
    let mut last_offset = None;
    while let Some(header) = BatchHeader::read(&records[at..])? {
        at += header.size;
        last_offset = Some(header.last_offset);
    }
    Ok(Whole {
        bytes: at,
        last_offset,
    })
}

/// One record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// The records of the whole batch `batch` (its header read as `header`), decompressed into
/// `scratch` when compressed.
pub fn records<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<Records<'a>, BatchError> {
    Ok(records_of(header, body(header, batch, scratch)?))
}

/// The records of a batch whose body (as [`shared_body`] answers it) is `body`.
pub fn records_of<'a>(header: &BatchHeader, body: &'a [u8]) -> Records<'a> {
    Records {
        body,
        at: 0,
        base_offset: header.base_offset,
        left: header.count.max(0),
    }
}

/// The records' part of batch `batch`, decompressed into `out` when compressed (then a prefix
/// of it).
fn body<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
    out: &'a mut Vec<u8>,
) -> Result<&'a [u8], BatchError> {
    let body = &batch[BATCH_HEADER..header.size];
    Ok(match header.codec() {
        0 => body,
        LZ4 => {
            let length = lz4(body, out).map_err(|source| BatchError::Decompress {
                codec: "lz4",
                source,
            })?;
            &out[..length]
        }
        codec => {
            out.clear();
            decompress(codec, body, out)?;
            out
        }
    })
}

/// A batch's records' part as bytes its records' keys and values are sliced from, and how
/// many bytes any slice of it keeps alive.
pub struct SharedBody {
    pub bytes: Bytes,
    pub held: usize,
}

/// The records' part of batch `batch` (a slice of a fetched answer) as bytes its records'
/// keys and values can be sliced from, so that they reach the decoder without a copy: a slice
/// of `batch` itself when it is not compressed, else the buffer from `pool` it was
/// decompressed into (which goes back to `pool` when the last slice of it is dropped).
pub fn shared_body(
    header: &BatchHeader,
    batch: &Bytes,
    pool: &BufferPool,
) -> Result<SharedBody, BatchError> {
    if header.codec() == 0 {
        // Its slices keep the fetched answer alive: counted by the batch's part of it.
        return Ok(SharedBody {
            bytes: batch.slice(BATCH_HEADER..header.size),
            held: header.size,
        });
    }
    let mut buf = pool.take();
    let len = body(header, batch, &mut buf)?.len();
    // The whole buffer stays while a record lives (LZ4 makes room for a block past the end,
    // and a pooled buffer keeps the size of the largest batch it held).
    let held = buf.capacity();
    let bytes = pool.share(buf, len);
    Ok(SharedBody { bytes, held })
}

/// The pool batches are decompressed into: a fresh buffer a batch faulted in as many new
/// pages as the copy of its values it replaces wrote. A batch of a few MB decompressed is
/// usual.
pub fn body_pool() -> BufferPool {
    BufferPool::new(8, 8 << 20)
}

fn decompress(codec: u8, body: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let (name, read) = match codec {
        1 => (
            "gzip",
            read_bounded(flate2::read::GzDecoder::new(body), out),
        ),
        2 => ("snappy", snappy(body, out)),
        4 => (
            "zstd",
            zstd::stream::read::Decoder::with_buffer(body).and_then(|d| read_bounded(d, out)),
        ),
        other => return Err(BatchError::Codec(other)),
    };
    match read {
        Ok(()) if out.len() as u64 > MAX_DECOMPRESSED => Err(BatchError::TooLarge),
        Ok(()) => Ok(()),
        Err(source) => Err(BatchError::Decompress {
            codec: name,
            source,
        }),
    }
}

const LZ4: u8 = 3;

/// The first four bytes of an LZ4 frame (little-endian).
pub(crate) const LZ4_MAGIC: u32 = 0x184D_2204;

/// Decompresses an LZ4 frame (or frames one after the other) into `out`, whose length is kept
/// as the room it has (so a buffer reused for batch after batch is not cleared each time);
/// answers the length decompressed. Each block is decompressed straight into its place, the
/// bytes before it serving as the dictionary of linked blocks; checksums are not verified
/// (Kafka's own clients leave that to the batch's CRC).
fn lz4(mut input: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::{Error, ErrorKind};
    let corrupt = |what: &'static str| Error::new(ErrorKind::InvalidData, what);
    let mut length = 0usize;
    while !input.is_empty() {
        let u32_at = |b: &[u8], at: usize| -> std::io::Result<u32> {
            b.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| corrupt("a frame cut short"))
        };
        if u32_at(input, 0)? != LZ4_MAGIC {
            return Err(corrupt("not an LZ4 frame"));
        }
        let (flags, bd) = match input.get(4..6) {
            Some(&[flags, bd]) => (flags, bd),
            _ => return Err(corrupt("a frame cut short")),
        };
        if flags >> 6 != 1 {
            return Err(corrupt("an LZ4 frame of an unknown version"));
        }
        let independent = flags & 0x20 != 0;
        let block_checksums = flags & 0x10 != 0;
        let content_checksum = flags & 0x04 != 0;
        // Content size and dictionary id, if given, and the header's checksum.
        let content_size = if flags & 0x08 != 0 { 8 } else { 0 };
        let dictionary_id = if flags & 0x01 != 0 { 4 } else { 0 };
        let mut at = 6 + content_size + dictionary_id + 1;
        let block_max = match (bd >> 4) & 0x07 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            _ => return Err(corrupt("an LZ4 frame's block size")),
        };
        loop {
            let size = u32_at(input, at)?;
            at += 4;
            if size == 0 {
                break;
            }
            let stored = size & 0x8000_0000 != 0;
            let size = (size & 0x7fff_ffff) as usize;
            let block = input
                .get(at..at + size)
                .ok_or_else(|| corrupt("a block past the frame's end"))?;
            at += size + if block_checksums { 4 } else { 0 };
            let room = length + block_max;
            if room as u64 > MAX_DECOMPRESSED {
                return Err(corrupt("a batch past the bound"));
            }
            if out.len() < room {
                out.resize(room, 0);
            }
            let (done, rest) = out.split_at_mut(length);
            if stored {
                rest.get_mut(..size)
                    .ok_or_else(|| corrupt("a stored block over the block size"))?
                    .copy_from_slice(block);
                length += size;
            } else if independent {
                // The C library: Kafka's producers write independent blocks, and it
                // decompresses them at 7 GB/s on the bench's events against lz4_flex's 4.6.
                let room = &mut rest[..block_max];
                length += lz4::block::decompress_to_buffer(block, Some(block_max as i32), room)?;
            } else {
                // Linked blocks may refer to the 64 KB before them.
                let dictionary = &done[length.saturating_sub(64 << 10)..];
                let written = lz4_flex::block::decompress_into_with_dict(
                    block,
                    &mut rest[..block_max],
                    dictionary,
                )
                .map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
                length += written;
            }
        }
        at += if content_checksum { 4 } else { 0 };
        input = input
            .get(at..)
            .ok_or_else(|| corrupt("a frame cut short"))?;
    }
    Ok(length)
}

/// Reads `reader` to its end into `out`, stopping one byte past the bound.
fn read_bounded(reader: impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    reader.take(MAX_DECOMPRESSED + 1).read_to_end(out).map(drop)
}

/// Kafka's snappy: raw snappy, or the Java client's framing (xerial's snappy-java): a 16-byte
/// header, then blocks each preceded by its length.
fn snappy(body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    const XERIAL: &[u8] = b"\x82SNAPPY\0";
    let corrupt = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let block = |raw: &[u8], out: &mut Vec<u8>| -> std::io::Result<()> {
        let len = snap::raw::decompress_len(raw)?;
        if (out.len() + len) as u64 > MAX_DECOMPRESSED {
            return Err(corrupt("a block past the bound"));
        }
        let at = out.len();
        out.resize(at + len, 0);
        snap::raw::Decoder::new().decompress(raw, &mut out[at..])?;
        Ok(())
    };
    if !body.starts_with(XERIAL) {
        return block(body, out);
    }
    let mut rest = body.get(16..).ok_or_else(|| corrupt("a short header"))?;
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|b| i32_at(b, 0))
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| corrupt("a block's length"))?;
        let raw = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt("a block past the end"))?;
        block(raw, out)?;
        rest = &rest[4 + len..];
    }
    Ok(())
}

/// The records of one batch, in order.
pub struct Records<'a> {
    body: &'a [u8],
    at: usize,
    base_offset: i64,
    left: i32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RawRecord<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let read = self.read();
        if read.is_err() {
            self.left = 0;
        }
        Some(read)
    }
}

impl<'a> Records<'a> {
    fn read(&mut self) -> Result<RawRecord<'a>, BatchError> {
        let truncated = BatchError::Corrupt("a record runs past its batch");
        let body = self.body;
        let length = varint(body, &mut self.at)?;
        let start = self.at;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|e| *e <= body.len())
            .ok_or(truncated)?;
        let record = &body[..end];
        let mut at = start + 1; // attributes: unused
        varint(record, &mut at)?; // timestamp delta
        let offset_delta = varint(record, &mut at)?;
        let key = bytes(record, &mut at)?;
        let value = bytes(record, &mut at)?;
        // Headers are skipped with the record's length.
        self.at = end;
        Ok(RawRecord {
            offset: self.base_offset + offset_delta,
            key,
            value,
        })
    }
}

/// A zigzag varint at `*at`, which moves past it.
fn varint(b: &[u8], at: &mut usize) -> Result<i64, BatchError> {
    let mut z: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *b
            .get(*at)
            .ok_or(BatchError::Corrupt("a varint runs past its record"))?;
        *at += 1;
        z |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(BatchError::Corrupt("a varint over ten bytes"))
}

/// A length-prefixed byte string at `*at` (−1: none).
fn bytes<'a>(b: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, BatchError> {
    let length = varint(b, at)?;
    if length < 0 {
        return Ok(None);
    }
    let start = *at;
    let end = usize::try_from(length)
        .ok()
        .and_then(|l| start.checked_add(l))
        .filter(|e| *e <= b.len())
        .ok_or(BatchError::Corrupt("a key or value runs past its record"))?;
    *at = end;
    Ok(Some(&b[start..end]))
}

/// Whether a control batch's record (`key`) marks a transaction's abort (else its commit).
pub fn marks_abort(key: Option<&[u8]>) -> Result<bool, BatchError> {
    match key {
        Some([_, _, a, b, ..]) => Ok(i16::from_be_bytes([*a, *b]) == 0),
        _ => Err(BatchError::Corrupt("a control record without its type")),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;

    fn written(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(|k| bytes::Bytes::from(k.to_string())),
            value: value.map(|v| bytes::Bytes::from(v.to_string())),
            headers: [(
                StrBytes::from_static_str("h"),
                Some(bytes::Bytes::from_static(b"header value")),
            )]
            .into_iter()
            .collect(),
        }
    }

    fn encoded(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut out, records, &options).unwrap();
        out.to_vec()
    }

    /// kafka-protocol's encoder, a writer made apart from this reader, writes batches with
    /// every codec, headers and missing keys or values; every record reads back.
    #[test]
    fn batches_of_every_codec_read_back_whole() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records: Vec<Record> = (0..500i64)
                .map(|i| {
                    let key = (i % 3 != 0).then(|| format!("key-{i}"));
                    let value = (i % 7 != 0).then(|| "v".repeat((i % 50) as usize));
                    written(1000 + i, key.as_deref(), value.as_deref())
                })
                .collect();
            let set = encoded(&records, compression);
            let header = BatchHeader::read(&set).unwrap().unwrap();
            assert_eq!(header.size, set.len(), "{compression:?}");
            assert_eq!((header.base_offset, header.last_offset), (1000, 1499));
            assert_eq!(
                whole(&set).unwrap(),
                Whole {
                    bytes: set.len(),
                    last_offset: Some(1499)
                }
            );
            let mut scratch = Vec::new();
            let read: Vec<_> = super::records(&header, &set, &mut scratch)
                .unwrap()
                .map(|r| r.unwrap())
                .map(|r| {
                    (
                        r.offset,
                        r.key.map(<[u8]>::to_vec),
                        r.value.map(<[u8]>::to_vec),
                    )
                })
                .collect();
            let expected: Vec<_> = records
                .iter()
                .map(|r| {
                    let text = |b: &Option<bytes::Bytes>| b.as_ref().map(|b| b.to_vec());
                    (r.offset, text(&r.key), text(&r.value))
                })
                .collect();
            assert_eq!(read, expected, "{compression:?}");
        }
    }

    /// Values sliced from a batch's shared body stay whole while later batches are
    /// decompressed, whatever the codec: a pooled buffer is reused only once nothing slices
    /// it, and then it is. What a body says it holds covers all it keeps alive.
    #[test]
    fn values_sliced_from_a_pooled_body_outlive_the_batches_after_them() {
        for (compression, count) in [
            (Compression::None, 20_000),
            (Compression::Lz4, 20_000),
            (Compression::Zstd, 20_000),
            (Compression::Lz4, 200),
        ] {
            let pool = body_pool();
            let batch = |n: i64| {
                let records: Vec<Record> = (0..count)
                    .map(|i| written(i, None, Some(&format!("batch {n} value {i}"))))
                    .collect();
                Bytes::from(encoded(&records, compression))
            };
            let values = |set: &Bytes| -> Vec<Bytes> {
                let header = BatchHeader::read(set).unwrap().unwrap();
                let body = shared_body(&header, set, &pool).unwrap();
                if compression == Compression::None {
                    assert_eq!(body.held, header.size);
                } else {
                    assert!(body.held >= body.bytes.len() && body.bytes.len() > set.len());
                }
                records_of(&header, &body.bytes)
                    .map(|r| body.bytes.slice_ref(r.unwrap().value.unwrap()))
                    .collect()
            };
            let first = values(&batch(1));
            for n in 2..6 {
                let later = values(&batch(n));
                assert_eq!(later[7], format!("batch {n} value 7").as_bytes());
            }
            for (i, v) in first.iter().enumerate() {
                assert_eq!(
                    v,
                    format!("batch 1 value {i}").as_bytes(),
                    "{compression:?}"
                );
            }
            // The later batches took turns in one buffer; the first batch's goes back with
            // its last value. An uncompressed batch has none.
            let pooled = || pool.kept();
            let compressed = usize::from(compression != Compression::None);
            assert_eq!(pooled(), compressed, "{compression:?}, {count}");
            drop(first);
            assert_eq!(pooled(), 2 * compressed, "{compression:?}, {count}");
        }
    }

    /// A fetch answer may end in the middle of a batch: only whole batches count.
    #[test]
    fn a_batch_cut_short_is_not_read() {
        let first = encoded(&[written(0, Some("k"), Some("a"))], Compression::None);
        let second = encoded(&[written(1, Some("k"), Some("b"))], Compression::Lz4);
        let mut set = first.clone();
        set.extend_from_slice(&second[..second.len() - 1]);
        assert_eq!(
            whole(&set).unwrap(),
            Whole {
                bytes: first.len(),
                last_offset: Some(0)
            }
        );
        for cut in [0, 5, 16, 17, 40] {
            assert_eq!(BatchHeader::read(&second[..cut]).unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn old_formats_and_corrupt_records_are_errors_not_panics() {
        let mut set = encoded(&[written(0, Some("k"), Some("value"))], Compression::None);
        let mut old = set.clone();
        old[16] = 1;
        let error = BatchHeader::read(&old).unwrap_err().to_string();
        assert!(error.contains("format v1"), "{error}");
        let mut codec = set.clone();
        codec[22] |= 0x07;
        let header = BatchHeader::read(&codec).unwrap().unwrap();
        let mut scratch = Vec::new();
        assert!(matches!(
            super::records(&header, &codec, &mut scratch).err(),
            Some(BatchError::Codec(7))
        ));
        // Every byte of the record's part made as large as it goes: an error, never a panic.
        let header = BatchHeader::read(&set).unwrap().unwrap();
        for at in BATCH_HEADER..set.len() {
            let kept = set[at];
            set[at] = 0xff;
            let read: Vec<_> = super::records(&header, &set, &mut scratch)
                .unwrap()
                .collect();
            assert_eq!(read.len(), 1);
            set[at] = kept;
        }
    }

    /// LZ4 frames as any writer may make them (linked or independent blocks of any size,
    /// with or without checksums and content size, one frame after another) read back;
    /// corrupt ones are errors, never panics.
    #[test]
    fn lz4_frames_of_any_settings_read_back() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
        use std::io::Write;
        let text: Vec<u8> = (0..30_000u32)
            .flat_map(|i| format!("{{\"n\":{},\"user\":\"u{}\"}}", i, i % 977).into_bytes())
            .collect();
        let mut scratch = vec![7u8; 3];
        for size in [
            BlockSize::Max64KB,
            BlockSize::Max256KB,
            BlockSize::Max1MB,
            BlockSize::Max4MB,
        ] {
            for mode in [BlockMode::Linked, BlockMode::Independent] {
                for checksums in [false, true] {
                    let info = FrameInfo::new()
                        .block_size(size)
                        .block_mode(mode)
                        .block_checksums(checksums)
                        .content_checksum(checksums)
                        .content_size(checksums.then_some(text.len() as u64));
                    let mut frame = FrameEncoder::with_frame_info(info, Vec::new());
                    frame.write_all(&text).unwrap();
                    let frame = frame.finish().unwrap();
                    let length = lz4(&frame, &mut scratch).unwrap();
                    assert!(
                        scratch[..length] == text[..],
                        "{size:?} {mode:?} {checksums}"
                    );
                    let twice = [frame.clone(), frame.clone()].concat();
                    let length = lz4(&twice, &mut scratch).unwrap();
                    assert_eq!(length, 2 * text.len());
                    assert!(scratch[text.len()..length] == text[..]);
                }
            }
        }
        let mut frame = FrameEncoder::new(Vec::new());
        frame.write_all(&text[..5000]).unwrap();
        let frame = frame.finish().unwrap();
        for cut in 0..frame.len() {
            assert!(
                lz4(&frame[..cut], &mut scratch).is_err() || cut == 0,
                "{cut}"
            );
        }
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0xa5;
            let _ = lz4(&bad, &mut scratch);
        }
    }

    #[test]
    fn a_control_records_key_says_abort_or_commit() {
        assert!(marks_abort(Some(&[0, 0, 0, 0])).unwrap());
        assert!(!marks_abort(Some(&[0, 0, 0, 1])).unwrap());
        assert!(marks_abort(None).is_err());
    }
}
