//! MessagePack to JSON in one pass, for results printed as they came (`--json`).
//!
//! Going through serde (a MessagePack deserializer driving a JSON serializer) costs a visitor
//! call per value and a second look at every string; for a listing of 10,000 sessions that
//! was a third of `sessionctl list --json`. This writer reads each marker once, checks each
//! string's UTF-8, copies it whole when it needs no escapes (nearly always), and buffers its
//! own output. The records of a listing repeat the same keys in the same order, so the text
//! written for each map entry's key is remembered (see `KeyMemo`), and the next record's
//! identical key costs one comparison and one copy: a third fewer instructions for a listing
//! of 10,000 sessions. The layout is serde_json's pretty one (two-space indent,
//! `"key": value`), so a passed-through document looks like every other `--json` document.
//!
//! What JSON cannot hold is refused with the byte offset: a map key that is not a string, an
//! extension value, a string that is not UTF-8. Binary values (which protocol version 1 never
//! sends) become arrays of numbers, as serde_json writes bytes. Nesting is tracked on a heap
//! stack, so depth costs no call stack, and is limited to 1,024 levels.

use std::io::{self, Write};

/// Deepest nesting written, as rmp-serde allows when decoding. Indentation makes pretty output
/// grow with the square of the depth, so a limit keeps a corrupt answer from producing
/// gigabytes.
const MAX_DEPTH: usize = 1024;

/// Output is handed to the writer in pieces of about this size.
const CHUNK: usize = 64 * 1024;

/// Map keys are remembered, with the text written for them, for entries up to this index ...
const MEMO_ENTRIES: usize = 32;
/// ... in maps nested up to this depth ...
const MEMO_DEPTH: usize = 8;
/// ... when their encoding is at most this long.
const MEMO_KEY_LEN: usize = 64;

/// A container being written: how many elements (entries, for a map) it holds and how many
/// of them are still to come, and whether it is a map.
struct Open {
    len: usize,
    remaining: usize,
    map: bool,
}

/// The last key (of at most `MEMO_KEY_LEN` bytes encoded) met at one entry index and depth:
/// where its encoding lies in the input, and
/// the text written for it (the comma, the line break and indentation, the quoted key and
/// `": "`). The records of a listing are maps with the same keys in the same order, so the
/// next record's key at that index is nearly always the same bytes: one comparison and one
/// copy then stand for checking, quoting and indenting it again.
#[derive(Default)]
struct KeyMemo {
    raw: std::ops::Range<usize>,
    text: Vec<u8>,
}

/// Writes the one MessagePack value that makes up all of `msgpack` to `out` as pretty JSON.
/// Fails (with nothing promised about what was written) if the bytes are not exactly one
/// value JSON can represent.
pub fn write_pretty(msgpack: &[u8], out: &mut impl Write) -> io::Result<()> {
    let mut w = Transcoder {
        input: msgpack,
        pos: 0,
        buf: Vec::with_capacity(CHUNK + 4096),
        out,
        memo: Vec::new(),
    };
    w.run()?;
    if w.pos != msgpack.len() {
        return Err(w.invalid("bytes follow the value"));
    }
    w.flush()
}

struct Transcoder<'a, W: Write> {
    input: &'a [u8],
    pos: usize,
    buf: Vec<u8>,
    out: &'a mut W,
    /// `memo[depth - 1][entry]`: see [`KeyMemo`].
    memo: Vec<Vec<KeyMemo>>,
}

impl<'a, W: Write> Transcoder<'a, W> {
    fn invalid(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the daemon's answer cannot be printed as JSON: {what} (at byte {})",
                self.pos
            ),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.input.len())
            .ok_or_else(|| self.invalid("the value ends early"))?;
        let input: &'a [u8] = self.input;
        let bytes = &input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn be(&mut self, n: usize) -> io::Result<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64))
    }

    fn newline_indent(&mut self, depth: usize) {
        // A newline and 31 levels of indentation, cut to length: one copy for the common
        // depths instead of one per level.
        const INDENT: &[u8; 63] =
            b"\n                                                              ";
        match INDENT.get(..1 + 2 * depth) {
            Some(indent) => self.buf.extend_from_slice(indent),
            None => {
                self.buf.extend_from_slice(INDENT);
                for _ in (INDENT.len() - 1) / 2..depth {
                    self.buf.extend_from_slice(b"  ");
                }
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // Punctuation before the next element, from the innermost open container; for a
            // map, its key as well, so that the value follows.
            if let Some(top) = stack.last_mut() {
                if top.remaining == 0 {
                    let map = top.map;
                    stack.pop();
                    self.newline_indent(stack.len());
                    self.buf.push(if map { b'}' } else { b']' });
                    if stack.is_empty() {
                        return Ok(());
                    }
                    continue;
                }
                let index = top.len - top.remaining;
                top.remaining -= 1;
                if top.map {
                    let depth = stack.len();
                    self.entry_key(depth, index)?;
                } else {
                    if index > 0 {
                        self.buf.push(b',');
                    }
                    self.newline_indent(stack.len());
                }
            }
            let opened = self.value()?;
            match opened {
                Some(_) if stack.len() == MAX_DEPTH => {
                    return Err(self.invalid("the value is nested deeper than 1024 levels"))
                }
                Some(open) => stack.push(open),
                None if stack.is_empty() => return Ok(()),
                None => {}
            }
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
        }
    }

    /// Writes what comes before the value of entry `index` of a map at `depth`: the comma,
    /// the line break and indentation, the key (JSON allows only strings) and `": "`.
    fn entry_key(&mut self, depth: usize, index: usize) -> io::Result<()> {
        let memo = depth <= MEMO_DEPTH && index < MEMO_ENTRIES;
        if memo {
            if let Some(slot) = self.memo.get(depth - 1).and_then(|slots| slots.get(index)) {
                // A slot made only to reach a later index holds no key yet (an empty range).
                let raw = &self.input[slot.raw.clone()];
                if !raw.is_empty() && self.input[self.pos..].starts_with(raw) {
                    self.pos += raw.len();
                    self.buf.extend_from_slice(&slot.text);
                    return Ok(());
                }
            }
        }
        let (raw_start, text_start) = (self.pos, self.buf.len());
        if index > 0 {
            self.buf.push(b',');
        }
        self.newline_indent(depth);
        let marker = *self
            .input
            .get(self.pos)
            .ok_or_else(|| self.invalid("the value ends early"))?;
        if !matches!(marker, 0xa0..=0xbf | 0xd9..=0xdb) {
            return Err(self.invalid("a map key is not a string"));
        }
        self.value()?;
        self.buf.extend_from_slice(b": ");
        if memo && self.pos - raw_start <= MEMO_KEY_LEN {
            if self.memo.len() < depth {
                self.memo.resize_with(depth, Vec::new);
            }
            let slots = &mut self.memo[depth - 1];
            if slots.len() <= index {
                slots.resize_with(index + 1, KeyMemo::default);
            }
            let slot = &mut slots[index];
            slot.raw = raw_start..self.pos;
            slot.text.clear();
            slot.text.extend_from_slice(&self.buf[text_start..]);
        }
        Ok(())
    }

    /// Writes one scalar, or the opening of a container (returned, to be filled).
    fn value(&mut self) -> io::Result<Option<Open>> {
        let marker = self.take(1)?[0];
        match marker {
            0x00..=0x7f => self.uint(marker as u64),
            0xe0..=0xff => self.int(marker as i8 as i64),
            0xc0 => self.buf.extend_from_slice(b"null"),
            0xc2 => self.buf.extend_from_slice(b"false"),
            0xc3 => self.buf.extend_from_slice(b"true"),
            0xcc..=0xcf => {
                let n = self.be(1 << (marker - 0xcc))?;
                self.uint(n)
            }
            0xd0..=0xd3 => {
                // Big-endian two's complement of 1, 2, 4 or 8 bytes, sign-extended.
                let bits = 8 << (marker - 0xd0);
                let raw = self.be(bits / 8)?;
                self.int(((raw << (64 - bits)) as i64) >> (64 - bits))
            }
            0xca => {
                let bits = self.be(4)? as u32;
                self.float(f32::from_bits(bits) as f64)
            }
            0xcb => {
                let bits = self.be(8)?;
                self.float(f64::from_bits(bits))
            }
            0xa0..=0xbf => self.string((marker & 0x1f) as usize)?,
            0xd9 => {
                let n = self.be(1)? as usize;
                self.string(n)?
            }
            0xda => {
                let n = self.be(2)? as usize;
                self.string(n)?
            }
            0xdb => {
                let n = self.be(4)? as usize;
                self.string(n)?
            }
            0xc4..=0xc6 => {
                let len_bytes = 1 << (marker - 0xc4);
                let n = self.be(len_bytes)? as usize;
                self.bytes(n)?
            }
            0x90..=0x9f => return self.container((marker & 0x0f) as usize, false),
            0xdc => {
                let n = self.be(2)? as usize;
                return self.container(n, false);
            }
            0xdd => {
                let n = self.be(4)? as usize;
                return self.container(n, false);
            }
            0x80..=0x8f => return self.container((marker & 0x0f) as usize, true),
            0xde => {
                let n = self.be(2)? as usize;
                return self.container(n, true);
            }
            0xdf => {
                let n = self.be(4)? as usize;
                return self.container(n, true);
            }
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                self.pos -= 1;
                return Err(self.invalid("an extension value has no JSON form"));
            }
            0xc1 => {
                self.pos -= 1;
                return Err(self.invalid("the reserved byte 0xc1"));
            }
        }
        Ok(None)
    }

    /// Opens an array or map of `n` elements (entries, for a map), or writes it whole when
    /// empty.
    fn container(&mut self, n: usize, map: bool) -> io::Result<Option<Open>> {
        let values = if map { n.saturating_mul(2) } else { n };
        // Each value takes at least a byte: a count beyond what is left is a lie.
        if values > self.input.len() - self.pos {
            return Err(self.invalid("a container claims more values than there are bytes"));
        }
        if values == 0 {
            self.buf.extend_from_slice(if map { b"{}" } else { b"[]" });
            return Ok(None);
        }
        self.buf.push(if map { b'{' } else { b'[' });
        Ok(Some(Open {
            len: n,
            remaining: n,
            map,
        }))
    }

    fn uint(&mut self, n: u64) {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn int(&mut self, n: i64) {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// Floats are rare here (protocol version 1 has none); serde_json formats them, so they
    /// read exactly as in every other `--json` document (non-finite ones as `null`).
    fn float(&mut self, f: f64) {
        serde_json::to_writer(&mut self.buf, &f).expect("a float always formats");
    }

    fn string(&mut self, n: usize) -> io::Result<()> {
        let start = self.pos;
        let bytes = self.take(n)?;
        // Nearly every string (ids, paths, states) is ASCII with nothing to escape, which is
        // also valid UTF-8: one check settles both. Anything else takes the full check and
        // the escaping loop.
        let plain = plain(bytes);
        self.buf.push(b'"');
        if plain {
            self.buf.extend_from_slice(bytes);
        } else if std::str::from_utf8(bytes).is_ok() {
            escape_into(&mut self.buf, bytes);
        } else {
            self.pos = start;
            return Err(self.invalid("a string is not UTF-8"));
        }
        self.buf.push(b'"');
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> io::Result<()> {
        let bytes = self.take(n)?;
        self.buf.push(b'[');
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(*b).as_bytes());
        }
        self.buf.push(b']');
        Ok(())
    }
}

/// Whether `bytes` can be copied into a JSON string as they are: ASCII (so valid UTF-8) with
/// nothing JSON must escape (no byte below 0x20, no quote, no backslash; DEL passes, as
/// serde_json leaves it too). Eight bytes at a time: the byte-at-a-time check it replaced was
/// a fifth of transcoding a listing, most strings being keys, states, ids and paths of a few
/// dozen bytes.
fn plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Per byte, the high bit of the result is set where the byte is below `n`, given that
    // no byte has its own high bit set (checked separately).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGHS;
    let equal = |x: u64, c: u8| below(x ^ (ONES * c as u64), 1);
    let word_plain = |x: u64| (x & HIGHS) | below(x, 0x20) | equal(x, b'"') | equal(x, b'\\') == 0;
    if bytes.len() < 8 {
        return bytes
            .iter()
            .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
    }
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if !word_plain(word(at)) {
            return false;
        }
        at += 8;
    }
    // The bytes left over, as a word overlapping the last one checked: copying them into a
    // padded word instead stalled on the store forwarding.
    at == bytes.len() || word_plain(word(bytes.len() - 8))
}

/// JSON string escapes, as serde_json writes them: the two-character forms where JSON has
/// one, `\u00XX` for the other control characters.
fn escape_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                buf.extend_from_slice(&bytes[run..i]);
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
                run = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[run..i]);
        buf.extend_from_slice(escaped);
        run = i + 1;
    }
    buf.extend_from_slice(&bytes[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pretty(msgpack: &[u8]) -> io::Result<String> {
        let mut out = Vec::new();
        write_pretty(msgpack, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// The same text serde_json writes for the same value.
    fn same_as_serde_json(v: &Value) {
        let msgpack = rmp_serde::to_vec_named(v).unwrap();
        assert_eq!(
            pretty(&msgpack).unwrap(),
            serde_json::to_string_pretty(v).unwrap(),
            "{v}"
        );
    }

    #[test]
    fn writes_what_serde_json_writes() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(127),
            json!(128),
            json!(255),
            json!(1_000),
            json!(65_536),
            json!(u64::MAX),
            json!(-1),
            json!(-32),
            json!(-33),
            json!(-129),
            json!(-40_000),
            json!(-3_000_000_000i64),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.25),
            json!(1e300),
            json!(f64::MIN_POSITIVE),
            json!(""),
            json!("plain"),
            json!("quote \" backslash \\ newline \n tab \t cr \r bell \u{7} nul \u{0} esc \u{1b}"),
            json!("\u{8}\u{c}\u{1f}\u{7f} ünïcödé ✓ 😀"),
            json!("x".repeat(40)),
            json!("y".repeat(300)),
            json!("z".repeat(70_000)),
            json!([]),
            json!({}),
            json!([[]]),
            json!([{}]),
            json!({"a": {}}),
            json!({"a": []}),
            json!([1, [2, [3, [4, {"k": [5, {}]}]]]]),
            json!({"sessions": [{"id": "a", "name": "b \"c\"", "queue_length": 0}], "current": "a"}),
            json!((0..40).collect::<Vec<_>>()),
            json!((0..70_000).collect::<Vec<_>>()),
        ] {
            same_as_serde_json(&v);
        }
    }

    #[test]
    fn a_listing_larger_than_one_output_chunk_is_written_whole() {
        let sessions: Vec<Value> = (0..3_000)
            .map(|i| json!({"id": format!("{i:08}"), "scope": "/p::shell::x", "n": i}))
            .collect();
        same_as_serde_json(&json!({ "sessions": sessions }));
    }

    /// Maps drawn from a small pool of keys, nested and in arrays, so that remembered keys
    /// match at some entries and not at others: a key left out or added shifts the rest, the
    /// same key recurs at other depths, and maps go past the depth and entry count keys are
    /// remembered for. Keys that need escapes and one too long to remember are in the pool.
    #[test]
    fn remembered_keys_never_change_what_is_written() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut pool: Vec<String> = ["id", "name", "a \"quoted\" key", "tab\there", "ünï", "z"]
            .map(String::from)
            .to_vec();
        pool.push("long".repeat(20));
        pool.extend((0..40).map(|i| format!("k{i:02}")));
        fn value(next: &mut impl FnMut(u64) -> u64, pool: &[String], depth: usize) -> Value {
            match next(if depth >= 3 { 3 } else { 6 }) {
                0 => json!(next(1 << 40)),
                1 => json!(pool[next(pool.len() as u64) as usize]),
                2 => Value::Null,
                3 => Value::Array((0..next(5)).map(|_| value(next, pool, depth + 1)).collect()),
                _ => {
                    // Mostly the first few keys, so that neighbouring maps share them.
                    let count = if next(8) == 0 { pool.len() } else { 7 };
                    let mut map = serde_json::Map::new();
                    for key in &pool[..count] {
                        if next(5) != 0 {
                            map.insert(key.clone(), value(next, pool, depth + 1));
                        }
                    }
                    Value::Object(map)
                }
            }
        }
        for _ in 0..300 {
            let records: Vec<Value> = (0..1 + next(20))
                .map(|_| value(&mut next, &pool, 0))
                .collect();
            same_as_serde_json(&json!({ "records": records }));
        }
        // Records nested past the depth keys are remembered to, some a level short.
        for _ in 0..50 {
            let records: Vec<Value> = (0..1 + next(10))
                .map(|_| {
                    let mut record = value(&mut next, &pool, 3);
                    for level in 0..MEMO_DEPTH + 2 - next(2) as usize {
                        let key = &pool[level % 3 + next(2) as usize];
                        record = json!({ "id": level, key.clone(): record, "z": null });
                    }
                    record
                })
                .collect();
            same_as_serde_json(&json!(records));
        }
    }

    #[test]
    fn plain_agrees_with_the_byte_by_byte_definition() {
        let by_byte = |bytes: &[u8]| {
            bytes
                .iter()
                .all(|&b| (0x20..=0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        for len in 0..=20 {
            assert!(plain(&vec![b'a'; len]));
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(plain(&bytes), by_byte(&bytes), "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn binary_becomes_an_array_of_numbers() {
        // bin 8 holding [1, 255].
        assert_eq!(pretty(&[0xc4, 2, 1, 255]).unwrap(), "[1,255]");
    }

    #[test]
    fn refuses_what_json_cannot_hold_and_says_where() {
        let cases: [(&[u8], &str); 7] = [
            (&[0x81, 0x01, 0xc0], "a map key is not a string"),
            (&[0xd4, 1, 0], "an extension value"),
            (&[0xa2, 0xff, 0xfe], "not UTF-8"),
            (&[0xc1], "reserved"),
            (&[0x92, 0x01, 0xa3, b'a'], "ends early"),
            (&[0xdd, 0xff, 0xff, 0xff, 0xff, 0], "claims more values"),
            (&[0x01, 0x02], "bytes follow the value"),
        ];
        for (bytes, want) in cases {
            let err = pretty(bytes).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(want), "{bytes:?}: {err}");
            assert!(err.to_string().contains("at byte"), "{err}");
        }
        assert!(pretty(&[]).is_err());
    }

    #[test]
    fn nesting_is_written_to_the_limit_and_refused_past_it() {
        let nested = |depth: usize| {
            let mut bytes = vec![0x91; depth];
            bytes.push(0xc0);
            bytes
        };
        let text = pretty(&nested(MAX_DEPTH)).unwrap();
        assert_eq!(text.matches('[').count(), MAX_DEPTH);
        let err = pretty(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.to_string().contains("nested deeper than"), "{err}");
    }
}
