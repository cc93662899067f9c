//! Framing: how one message is cut out of a byte stream.
//!
//! A frame is a 4-byte big-endian length followed by exactly that many bytes holding one
//! MessagePack value. The value is always a map with string keys (rmp-serde's *named* form),
//! which is what lets an older reader skip fields a newer writer added.
//!
//! Reading is split in two so that a peer which sends a length and then stalls, or claims a
//! 4 GiB frame, never makes the reader allocate or wait without bound:
//! [`check_len`] refuses an over-long header before a byte of payload is buffered, and the
//! readers grow their buffer only as payload actually arrives.

use std::io::{self, Read};

use serde::{de::DeserializeOwned, Serialize};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default largest payload a peer may send, in bytes. Large enough for a listing of tens of
/// thousands of sessions; small enough that a hostile length cannot exhaust memory. The daemon
/// makes it configurable (`max_frame_bytes`); clients accept what the daemon sends up to
/// [`CLIENT_MAX_FRAME`].
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Largest payload a client accepts from the daemon. Daemon answers (a listing, a transcript
/// page) can legitimately be larger than what a client may send, so the client's bound is looser
/// than the daemon's default; it exists only so a corrupted length cannot exhaust memory.
pub const CLIENT_MAX_FRAME: usize = 256 * 1024 * 1024;

/// What can go wrong while cutting or encoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more bytes than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The stream ended part-way through a frame.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes received)")]
    Truncated { got: usize, want: usize },
    /// The payload is not a MessagePack value of the expected shape.
    #[error("frame is not a valid message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The payload decodes but breaks a framing rule (not a map, trailing bytes).
    #[error("frame is not a valid message: {0}")]
    Shape(&'static str),
    /// A value could not be encoded (a map key that is not a string, for instance).
    #[error("could not encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Encodes `value` as one complete frame: length prefix and named-form MessagePack payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(&mut buf, value)?;
    Ok(buf)
}

/// Appends one complete frame for `value` to `buf`, so several frames can share one write.
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    rmp_serde::encode::write_named(buf, value)?;
    let len = buf.len() - start - HEADER_LEN;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max: u32::MAX as usize,
    })?;
    buf[start..start + HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Decodes a frame's payload (the bytes after the length prefix) into a typed value.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(rmp_serde::from_slice(payload)?)
}

/// Parses a length prefix and refuses it when it exceeds `max`.
pub fn check_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as u64;
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// Reads one frame's payload from a blocking reader. Returns `Ok(None)` on a clean end of
/// stream before the first byte of a frame.
pub fn read_frame(reader: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    match read_header(reader, max)? {
        Some(len) => read_payload(reader, len).map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix from a blocking reader and checks it against `max`. Returns
/// `Ok(None)` on a clean end of stream before its first byte.
pub fn read_header(reader: &mut impl Read, max: usize) -> Result<Option<usize>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got,
                    want: HEADER_LEN,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    check_len(header, max).map(Some)
}

/// Reads the `len` bytes of payload that follow a header, growing the buffer only as they
/// arrive.
pub fn read_payload(reader: &mut impl Read, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    reader.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() != len {
        return Err(FrameError::Truncated {
            got: payload.len(),
            want: len,
        });
    }
    Ok(payload)
}

/// Reads exactly `buf.len()` bytes of payload that follow a header into memory the caller
/// set aside.
pub fn read_payload_into(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got,
                    want: buf.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Async frame reading over tokio, for the daemon and the async client.
#[cfg(feature = "tokio")]
pub mod tokio_io {
    use std::time::Duration;

    use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

    use super::{check_len, FrameError, HEADER_LEN};

    /// Waits, with no time limit, until at least one byte is available or the stream ends.
    /// Returns `false` on a clean end of stream. Cancel-safe: nothing is consumed, so it can
    /// sit in a `select!` beside a shutdown signal.
    pub async fn wait_readable<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<bool> {
        Ok(!reader.fill_buf().await?.is_empty())
    }

    /// Reads one whole frame's payload, giving the peer at most `timeout` to deliver all of it
    /// once it has started. Call after [`wait_readable`] returned `true`. A header over `max`
    /// fails before any payload is buffered; the buffer grows only as bytes arrive.
    pub async fn read_frame<R: AsyncBufRead + Unpin>(
        reader: &mut R,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, ReadError> {
        let body = async {
            let mut header = [0u8; HEADER_LEN];
            let mut got = 0;
            while got < HEADER_LEN {
                let n = reader.read(&mut header[got..]).await?;
                if n == 0 {
                    return Err(FrameError::Truncated {
                        got,
                        want: HEADER_LEN,
                    });
                }
                got += n;
            }
            let len = check_len(header, max)?;
            let mut payload = Vec::with_capacity(len.min(64 * 1024));
            (&mut *reader)
                .take(len as u64)
                .read_to_end(&mut payload)
                .await?;
            if payload.len() != len {
                return Err(FrameError::Truncated {
                    got: payload.len(),
                    want: len,
                });
            }
            Ok(payload)
        };
        match tokio::time::timeout(timeout, body).await {
            Ok(result) => result.map_err(ReadError::Frame),
            Err(_) => Err(ReadError::TimedOut(timeout)),
        }
    }

    /// Why [`read_frame`] gave up.
    #[derive(Debug, thiserror::Error)]
    pub enum ReadError {
        #[error(transparent)]
        Frame(#[from] FrameError),
        #[error("the rest of the frame did not arrive within {0:?}")]
        TimedOut(Duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrips_through_blocking_reader() {
        let mut bytes = encode(&("a", 1u8)).unwrap();
        encode_into(&mut bytes, &[1u32, 2, 3]).unwrap();
        let mut cursor = io::Cursor::new(bytes);
        let first = read_frame(&mut cursor, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let second = read_frame(&mut cursor, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(decode::<(String, u8)>(&first).unwrap(), ("a".into(), 1));
        assert_eq!(decode::<Vec<u32>>(&second).unwrap(), vec![1, 2, 3]);
        assert!(read_frame(&mut cursor, DEFAULT_MAX_FRAME)
            .unwrap()
            .is_none());
    }

    #[test]
    fn over_long_header_is_refused_before_reading_payload() {
        let mut cursor = io::Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        match read_frame(&mut cursor, DEFAULT_MAX_FRAME) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(max, DEFAULT_MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_payload_is_reported_with_counts() {
        let mut cursor = io::Cursor::new(vec![0, 0, 0, 10, 1, 2, 3]);
        match read_frame(&mut cursor, DEFAULT_MAX_FRAME) {
            Err(FrameError::Truncated { got: 3, want: 10 }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
        let mut cursor = io::Cursor::new(vec![0, 0]);
        match read_frame(&mut cursor, DEFAULT_MAX_FRAME) {
            Err(FrameError::Truncated { got: 2, want: 4 }) => {}
            other => panic!("expected Truncated header, got {other:?}"),
        }
    }

    #[test]
    fn a_payload_read_into_set_aside_memory_fills_it_or_says_how_far_it_got() {
        let mut cursor = io::Cursor::new(vec![0, 0, 0, 3, 7, 8, 9, 0, 0, 0, 4, 1, 2]);
        let len = read_header(&mut cursor, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        let mut buf = vec![0; len];
        read_payload_into(&mut cursor, &mut buf).unwrap();
        assert_eq!(buf, [7, 8, 9]);
        let len = read_header(&mut cursor, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        let mut buf = vec![0; len];
        match read_payload_into(&mut cursor, &mut buf) {
            Err(FrameError::Truncated { got: 2, want: 4 }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
}
