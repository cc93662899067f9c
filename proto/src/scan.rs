//! Walking MessagePack without decoding it: where a value ends, and which keys a map holds.
//!
//! Reading a frame's head ([`crate::envelope::FrameHead`]) needs three keys of a map whose
//! other values may be megabytes (a listing of 10,000 sessions is 3 MB). Decoding with serde
//! and ignoring the rest would still visit every string in them, copy it and check its UTF-8;
//! here the rest is stepped over by its length markers, without allocating or reading the
//! bytes. A client that passes a result through unchanged (`sessionctl list --json`) uses the
//! same walk to find where the result sits in the payload.
//!
//! Nothing here trusts a length: every step is checked against the end of the buffer, and a
//! container claiming more elements than there are bytes left fails at once (each element
//! takes at least one byte), so a hostile count cannot make the walk loop or overflow.

use std::ops::Range;

use crate::frame::FrameError;

fn truncated() -> FrameError {
    FrameError::Shape("the MessagePack value ends early")
}

/// Reads a big-endian length of `n` bytes at `pos`.
fn be_len(buf: &[u8], pos: usize, n: usize) -> Result<usize, FrameError> {
    let bytes = buf.get(pos..pos + n).ok_or_else(truncated)?;
    Ok(bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
}

/// What the value at a position starts with.
enum Head {
    /// A scalar or string of this many bytes in total, marker included.
    Bytes(usize),
    /// An array or map: the header's size and how many values follow (a map's keys and
    /// values both count).
    Container { header: usize, values: usize },
}

fn head(buf: &[u8], pos: usize) -> Result<Head, FrameError> {
    let marker = *buf.get(pos).ok_or_else(truncated)?;
    let sized = |len_bytes: usize, extra: usize| -> Result<Head, FrameError> {
        Ok(Head::Bytes(
            1 + len_bytes + extra + be_len(buf, pos + 1, len_bytes)?,
        ))
    };
    let container = |len_bytes: usize, per: usize| -> Result<Head, FrameError> {
        Ok(Head::Container {
            header: 1 + len_bytes,
            values: be_len(buf, pos + 1, len_bytes)?.saturating_mul(per),
        })
    };
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Ok(Head::Bytes(1)),
        0x80..=0x8f => Ok(Head::Container {
            header: 1,
            values: 2 * (marker & 0x0f) as usize,
        }),
        0x90..=0x9f => Ok(Head::Container {
            header: 1,
            values: (marker & 0x0f) as usize,
        }),
        0xa0..=0xbf => Ok(Head::Bytes(1 + (marker & 0x1f) as usize)),
        0xc1 => Err(FrameError::Shape(
            "the payload holds the reserved MessagePack byte 0xc1",
        )),
        // bin 8/16/32, str 8/16/32: a length, then the bytes.
        0xc4 | 0xd9 => sized(1, 0),
        0xc5 | 0xda => sized(2, 0),
        0xc6 | 0xdb => sized(4, 0),
        // ext 8/16/32: a length, a type byte, then the bytes.
        0xc7 => sized(1, 1),
        0xc8 => sized(2, 1),
        0xc9 => sized(4, 1),
        0xca => Ok(Head::Bytes(5)),
        0xcb => Ok(Head::Bytes(9)),
        0xcc | 0xd0 => Ok(Head::Bytes(2)),
        0xcd | 0xd1 => Ok(Head::Bytes(3)),
        0xce | 0xd2 => Ok(Head::Bytes(5)),
        0xcf | 0xd3 => Ok(Head::Bytes(9)),
        // fixext 1/2/4/8/16: a type byte, then that many bytes.
        0xd4 => Ok(Head::Bytes(3)),
        0xd5 => Ok(Head::Bytes(4)),
        0xd6 => Ok(Head::Bytes(6)),
        0xd7 => Ok(Head::Bytes(10)),
        0xd8 => Ok(Head::Bytes(18)),
        0xdc => container(2, 1),
        0xdd => container(4, 1),
        0xde => container(2, 2),
        0xdf => container(4, 2),
    }
}

/// Where the value starting at `pos` ends (the position just after it).
pub fn skip(buf: &[u8], pos: usize) -> Result<usize, FrameError> {
    let mut pos = pos;
    // Values still to step over; containers add their elements instead of recursing, so
    // nesting depth costs nothing.
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        match head(buf, pos)? {
            Head::Bytes(n) => pos = pos.checked_add(n).ok_or_else(truncated)?,
            Head::Container { header, values } => {
                pos += header;
                pending = pending.saturating_add(values);
            }
        }
        if pos > buf.len() || pending > buf.len() - pos {
            return Err(truncated());
        }
    }
    Ok(pos)
}

/// The bytes of the string at `pos` (not checked as UTF-8) and where it ends; `None` when the
/// value there is not a string.
pub fn str_at(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let marker = *buf.get(pos).ok_or_else(truncated)?;
    let (start, len) = match marker {
        0xa0..=0xbf => (pos + 1, (marker & 0x1f) as usize),
        0xd9 => (pos + 2, be_len(buf, pos + 1, 1)?),
        0xda => (pos + 3, be_len(buf, pos + 1, 2)?),
        0xdb => (pos + 5, be_len(buf, pos + 1, 4)?),
        _ => return Ok(None),
    };
    let end = start.checked_add(len).ok_or_else(truncated)?;
    let bytes = buf.get(start..end).ok_or_else(truncated)?;
    Ok(Some((bytes, end)))
}

/// A map entry: the key's bytes and the byte range of its value.
pub type Entry<'a> = (&'a [u8], Range<usize>);

/// The entries of the map that makes up all of `buf`: each key's bytes and the byte range of
/// its value, in the order written. Fails if `buf` is not one map, if a key is not a string,
/// or if bytes follow the map.
pub fn map_entries(buf: &[u8]) -> Result<Vec<Entry<'_>>, FrameError> {
    map_entries_until(buf, None)
}

/// [`map_entries`], except that when the map's last key is `last`, its value is taken to run
/// to the end of `buf` without being walked. Whoever decodes that value must check that it
/// ends exactly there. A response's `result` comes last and can be megabytes; a reader that
/// passes it on decodes it anyway, so walking it first would only double the work.
pub fn map_entries_until<'a>(
    buf: &'a [u8],
    last: Option<&[u8]>,
) -> Result<Vec<Entry<'a>>, FrameError> {
    let (count, mut pos) = match head(buf, 0)? {
        Head::Container { header, values } if matches!(buf[0], 0x80..=0x8f | 0xde | 0xdf) => {
            (values / 2, header)
        }
        _ => return Err(FrameError::Shape("the payload is not a map")),
    };
    if count > buf.len() - pos.min(buf.len()) {
        return Err(truncated());
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let (key, value_start) =
            str_at(buf, pos)?.ok_or(FrameError::Shape("a map key is not a string"))?;
        let value_end = if i + 1 == count && Some(key) == last && value_start < buf.len() {
            buf.len()
        } else {
            skip(buf, value_start)?
        };
        entries.push((key, value_start..value_end));
        pos = value_end;
    }
    if pos != buf.len() {
        return Err(FrameError::Shape(
            "bytes follow the message; a frame holds exactly one value",
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn skip_finds_the_end_of_every_kind_of_value() {
        let values = [
            json!(null),
            json!(true),
            json!(7),
            json!(-7),
            json!(-200),
            json!(300),
            json!(70000),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(""),
            json!("x".repeat(31)),
            json!("x".repeat(32)),
            json!("x".repeat(300)),
            json!("x".repeat(70_000)),
            json!([]),
            json!([1, [2, [3, {"a": [4]}]]]),
            json!((0..20).collect::<Vec<_>>()),
            json!((0..70_000).collect::<Vec<_>>()),
            json!({"type": "response", "id": 1, "result": {"sessions": [{"id": "x"}]}}),
        ];
        for v in values {
            let mut bytes = encode(&v);
            let len = bytes.len();
            assert_eq!(skip(&bytes, 0).unwrap(), len, "{v}");
            // With something after it, it still stops at the value's end.
            bytes.push(0xc0);
            assert_eq!(skip(&bytes, 0).unwrap(), len, "{v}");
            // Cut anywhere inside, it fails instead of reading past the end (for the large
            // values, a sample of cuts plus the last bytes, to stay linear).
            let step = if len > 1000 { 997 } else { 1 };
            for cut in (0..len).step_by(step).chain(len.saturating_sub(10)..len) {
                assert!(skip(&bytes[..cut], 0).is_err(), "{v} cut at {cut}");
            }
        }
    }

    #[test]
    fn skip_steps_over_binary_and_extension_values() {
        // bin 8 of 3 bytes, fixext 4, ext 8 of 2 bytes, then nil.
        let bytes = [
            0x94, 0xc4, 3, 1, 2, 3, 0xd6, 9, 0, 0, 0, 0, 0xc7, 2, 9, 1, 2, 0xc0,
        ];
        assert_eq!(skip(&bytes, 0).unwrap(), bytes.len());
    }

    #[test]
    fn hostile_counts_and_reserved_bytes_fail_fast() {
        // An array32 claiming 4 billion elements, followed by three bytes.
        assert!(skip(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3], 0).is_err());
        // A map32 claiming 4 billion entries.
        assert!(skip(&[0xdf, 0xff, 0xff, 0xff, 0xff, 1, 2], 0).is_err());
        assert!(map_entries(&[0xdf, 0xff, 0xff, 0xff, 0xff, 1, 2]).is_err());
        // A str32 claiming 4 GiB.
        assert!(skip(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], 0).is_err());
        assert!(skip(&[0xc1], 0).is_err());
        assert!(skip(&[], 0).is_err());
        // Deep nesting costs no stack.
        let mut deep = vec![0x91; 1_000_000];
        deep.push(0xc0);
        assert_eq!(skip(&deep, 0).unwrap(), deep.len());
    }

    #[test]
    fn map_entries_gives_keys_and_value_ranges_in_order() {
        let bytes = encode(&json!({"type": "response", "id": 9, "result": {"a": [1, 2]}}));
        let entries = map_entries(&bytes).unwrap();
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [&b"id"[..], b"result", b"type"]);
        let result = &entries[1].1;
        let value: serde_json::Value = rmp_serde::from_slice(&bytes[result.clone()]).unwrap();
        assert_eq!(value, json!({"a": [1, 2]}));
    }

    #[test]
    fn a_trusted_last_value_runs_to_the_end_unwalked() {
        let mut bytes = encode(&json!({"id": 9, "result": [1, 2]}));
        let end = bytes.len();
        let entries = map_entries_until(&bytes, Some(b"result")).unwrap();
        assert_eq!(entries[1].1.end, end);
        // Not walked: trailing bytes become part of the value, for its decoder to refuse;
        // the full walk refuses them itself.
        bytes.push(0xc0);
        let entries = map_entries_until(&bytes, Some(b"result")).unwrap();
        assert_eq!(entries[1].1.end, end + 1);
        assert!(map_entries(&bytes).is_err());
        // Only the last entry is trusted; an earlier one is still walked.
        let bytes = encode(&json!({"a": [1], "b": 2}));
        let entries = map_entries_until(&bytes, Some(b"a")).unwrap();
        assert_eq!(entries[0].1, 3..5);
        // A last key with no value at all still fails.
        assert!(map_entries_until(&[0x81, 0xa1, b'a'], Some(b"a")).is_err());
    }

    #[test]
    fn map_entries_refuses_what_is_not_one_map_of_string_keys() {
        assert!(map_entries(&encode(&json!([1]))).is_err());
        assert!(map_entries(&[0x81, 0x01, 0xc0]).is_err(), "integer key");
        let mut trailing = encode(&json!({"a": 1}));
        trailing.push(0xc0);
        assert!(map_entries(&trailing).is_err());
        assert!(map_entries(&[]).is_err());
    }
}
