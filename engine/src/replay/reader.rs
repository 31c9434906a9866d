//! The input side of a replay: reading the input in chunks of whole lines, and decoding chunks in parallel.
//!
//! It owns byte and line positions. It is not the router: it never looks at state, and it keeps no order
//! of its own (chunks carry their number; the router puts them back in order).

use crate::core::decode::{EdgeRules, Parsed, decode_record};
use crossbeam_channel::{Receiver, Sender};
use std::io::Read;

/// A run of whole lines from the input.
pub(crate) struct Chunk {
    /// Chunk number, from 0, in input order.
    pub(crate) id: u64,
    /// 0-based index of the chunk's first line in the whole input.
    pub(crate) first_record: u64,
    /// Byte offset of the chunk's first byte in the whole input.
    pub(crate) start_byte: u64,
    /// A buffer whose first `len` bytes are the chunk: whole lines, the last one possibly without its
    /// newline at the end of the input. The rest is left from an earlier chunk: buffers go back to the reader
    /// ([`read_chunks`]'s `free`) and are filled again without being cleared.
    pub(crate) data: Vec<u8>,
    /// How many bytes of `data` are the chunk's.
    pub(crate) len: usize,
    /// When it was read (the start of its records' end-to-end latency).
    pub(crate) read_at: std::time::Instant,
}

impl Chunk {
    /// The chunk's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// A decoded line with its position.
pub(crate) struct ParsedLine {
    /// 1-based line number.
    pub(crate) line: u64,
    /// Byte offset just past the line (and its newline).
    pub(crate) end_byte: u64,
    /// The decoded content.
    pub(crate) parsed: Parsed,
}

/// The decoded lines of a chunk, with the decoder that built them (and frees them: [`LineReturns`]).
pub(crate) struct ChunkLines {
    pub(crate) decoder: usize,
    pub(crate) lines: Vec<ParsedLine>,
}

/// A chunk's lines, shared by the router and the batches cut from it.
pub(crate) type SharedLines = std::sync::Arc<ChunkLines>;

/// Hands decoded lines back to the decoder that built them, which frees them: an event's strings and
/// attribute vectors freed on the thread that allocated them take the allocator's local path, where the
/// workers' frees (the last holders) took its cross-thread one (~1k instructions an event, callgrind).
/// Only what is handed back is freed there; correctness never depends on it.
#[derive(Clone)]
pub(crate) struct LineReturns(Vec<Sender<SharedLines>>);

impl LineReturns {
    /// One return lane per decoder: the senders, and each decoder's receiver.
    pub(crate) fn new(decoders: usize) -> (LineReturns, Vec<Receiver<SharedLines>>) {
        let (txs, rxs) = (0..decoders).map(|_| crossbeam_channel::unbounded()).unzip();
        (LineReturns(txs), rxs)
    }

    /// Gives a holder's reference to lines back to the decoder that built them. A decoder that has ended
    /// (end of input) no longer takes any: the reference is then dropped here.
    pub(crate) fn give_back(&self, lines: SharedLines) {
        if let Some(tx) = self.0.get(lines.decoder) {
            let _ = tx.send(lines);
        }
    }
}

/// A decoded chunk.
pub(crate) struct ParsedChunk {
    pub(crate) id: u64,
    pub(crate) lines: ChunkLines,
    /// When its bytes were read.
    pub(crate) read_at: std::time::Instant,
}

/// Reads `input` from its current position in chunks of about `chunk_bytes`, cut after a newline, and sends
/// them until the input ends, `stop()` turns true, or the receiver is gone. Returns the number of bytes read
/// and whether the end of the input was reached. Buffers come from `free` when the decoders have given one
/// back: reading into a fresh buffer first zeroed it, and its pages were new to the process each time.
///
/// # Errors
/// An I/O error of the input.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_chunks(
    mut input: impl Read,
    chunk_bytes: usize,
    first_record: u64,
    start_byte: u64,
    out: &Sender<Chunk>,
    free: &Receiver<Vec<u8>>,
    progress: &dyn Fn(u64),
    stop: &dyn Fn() -> bool,
) -> std::io::Result<(u64, bool)> {
    // The tail of the last buffer after its last newline: the start of the next chunk.
    let mut carry: Vec<u8> = Vec::new();
    let mut id = 0u64;
    let mut record = first_record;
    let mut offset = start_byte;
    let mut eof = false;
    while !eof {
        if stop() {
            // A graceful stop: what was read so far is processed and committed; the rest is left for a rerun.
            break;
        }
        let mut buf = free.try_recv().unwrap_or_default();
        let mut filled = carry.len();
        let mut target = filled + chunk_bytes;
        if buf.len() < target {
            buf.resize(target, 0);
        }
        buf[..filled].copy_from_slice(&carry);
        carry.clear();
        let cut = loop {
            while filled < target {
                let n = loop {
                    match input.read(&mut buf[filled..target]) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                filled += n;
                // A short read (a pipe with nothing more for now): pass the whole lines on rather than wait
                // for a full chunk, so that a quiet standard input does not hold back processing and commits.
                if filled < target && memchr::memchr(b'\n', &buf[filled - n..filled]).is_some() {
                    break;
                }
            }
            // Cut after the last newline; keep the tail for the next chunk (all of it at the end of input).
            let cut = if eof { filled } else { memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |p| p + 1) };
            if cut > 0 || eof {
                break cut;
            }
            // A single line longer than the chunk: keep reading into the same buffer, made larger.
            target = filled + chunk_bytes;
            if buf.len() < target {
                buf.resize(target, 0);
            }
        };
        carry.extend_from_slice(&buf[cut..filled]);
        if cut == 0 {
            break;
        }
        let data = &buf[..cut];
        let lines = memchr::memchr_iter(b'\n', data).count() as u64 + u64::from(data.last() != Some(&b'\n'));
        let chunk = Chunk {
            id,
            first_record: record,
            start_byte: offset,
            data: buf,
            len: cut,
            read_at: std::time::Instant::now(),
        };
        if out.send(chunk).is_err() {
            break;
        }
        id += 1;
        record += lines;
        offset += cut as u64;
        progress(offset);
    }
    Ok((offset - start_byte, eof))
}

/// Decodes chunks until the input channel closes, as decoder number `me`, freeing the lines that come back
/// on `returned` between chunks.
pub(crate) fn decode_chunks(
    input: &Receiver<Chunk>,
    out: &Sender<ParsedChunk>,
    rules: &EdgeRules,
    me: usize,
    returned: &Receiver<SharedLines>,
    free: &Sender<Vec<u8>>,
) {
    for chunk in input {
        returned.try_iter().for_each(drop);
        let data = chunk.bytes();
        let mut lines = Vec::with_capacity(data.len() / 150 + 1);
        let mut pos = 0usize;
        let mut line = chunk.first_record;
        while pos < data.len() {
            let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |p| pos + p);
            let mut raw = &data[pos..end];
            if raw.last() == Some(&b'\r') {
                raw = &raw[..raw.len() - 1];
            }
            line += 1;
            let next = (end + 1).min(data.len());
            let parsed = decode_record(raw, rules);
            lines.push(ParsedLine { line, end_byte: chunk.start_byte + next as u64, parsed });
            pos = end + 1;
        }
        // The decoded lines own their data: the buffer goes back to the reader (or is freed if it is gone).
        let _ = free.send(chunk.data);
        if out
            .send(ParsedChunk { id: chunk.id, lines: ChunkLines { decoder: me, lines }, read_at: chunk.read_at })
            .is_err()
        {
            return;
        }
        returned.try_iter().for_each(drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers given back hold an earlier chunk's bytes (and may be larger or smaller than a chunk): the
    /// chunks read into them are the same as into fresh ones, a line longer than a chunk included.
    #[test]
    fn reused_buffers_give_the_same_chunks() {
        let text = b"{\"a\":1}\n{\"long\":\"0123456789abcdef\"}\n\n{\"b\":2}\nend".to_vec();
        let read = |free: &Receiver<Vec<u8>>| {
            let (tx, rx) = crossbeam_channel::unbounded();
            read_chunks(&text[..], 8, 0, 0, &tx, free, &|_| {}, &|| false).expect("reads");
            drop(tx);
            rx.iter().map(|c| (c.start_byte, c.first_record, c.bytes().to_vec())).collect::<Vec<_>>()
        };
        let (_, none) = crossbeam_channel::unbounded();
        let fresh = read(&none);
        let (give, used) = crossbeam_channel::unbounded();
        for n in [3, 64, 8, 9, 1, 100, 0, 20] {
            give.send(vec![b'x'; n]).expect("send");
        }
        assert_eq!(read(&used), fresh);
        assert!(fresh.len() > 3, "{} chunks", fresh.len());
        assert_eq!(fresh.iter().flat_map(|c| c.2.clone()).collect::<Vec<u8>>(), text);
    }

    #[test]
    fn chunks_hold_whole_lines_and_positions_add_up() {
        let text = b"{\"a\":1}\n\n{\"b\":2}\nlast-without-newline".to_vec();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (_, free) = crossbeam_channel::unbounded();
        let (read, eof) = read_chunks(&text[..], 8, 0, 0, &tx, &free, &|_| {}, &|| false).expect("reads");
        assert!(eof);
        drop(tx);
        assert_eq!(read, text.len() as u64);
        let chunks: Vec<Chunk> = rx.iter().collect();
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.bytes().to_vec()).collect();
        assert_eq!(joined, text);
        for c in &chunks {
            assert!(c.bytes().ends_with(b"\n") || c.bytes().ends_with(b"newline"));
        }
        let (ptx, prx) = crossbeam_channel::unbounded();
        let (ctx, crx) = crossbeam_channel::unbounded();
        for c in chunks {
            ctx.send(c).expect("send");
        }
        drop(ctx);
        let (_, returned) = crossbeam_channel::unbounded();
        let (free, _) = crossbeam_channel::unbounded();
        decode_chunks(&crx, &ptx, &EdgeRules::default(), 0, &returned, &free);
        drop(ptx);
        let mut lines: Vec<ParsedLine> = prx.iter().flat_map(|p| p.lines.lines).collect();
        lines.sort_by_key(|l| l.line);
        assert_eq!(lines.iter().map(|l| l.line).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(matches!(lines[1].parsed, Parsed::Blank));
        assert_eq!(lines[3].end_byte, text.len() as u64);
        assert_eq!(lines[0].end_byte, 8);
    }
}
