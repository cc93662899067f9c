//! A method's result left as the daemon encoded it.
//!
//! Building typed records is the largest cost of reading a big answer (10,000 sessions are 3 MB
//! of MessagePack and some 80,000 strings). A caller that only passes the result on, such as
//! `sessionctl list --json` writing it out as JSON, can skip that step: [`RawResult`] keeps the
//! answer's bytes and where the result sits in them, and decodes on request.

use std::ops::Range;

use serde::de::DeserializeOwned;

use crate::error::ClientError;
use crate::payload::Payload;

/// A result as MessagePack, borrowed from the answer frame it came in.
#[derive(Clone, Debug)]
pub struct RawResult {
    payload: Payload,
    result: Range<usize>,
}

impl RawResult {
    pub(crate) fn new(payload: Payload, result: Range<usize>) -> Self {
        debug_assert!(result.end <= payload.len());
        Self { payload, result }
    }

    /// The result's MessagePack bytes: exactly one value.
    pub fn msgpack(&self) -> &[u8] {
        &self.payload[self.result.clone()]
    }

    /// Decodes the result into a typed value (the method's result type, or any type that
    /// reads the fields it needs).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        let malformed = |e: String| ClientError::Protocol(format!("malformed result: {e}"));
        // The result was located without being walked; check it is exactly one value.
        match sessiond_proto::scan::skip(self.msgpack(), 0) {
            Ok(end) if end == self.result.len() => {}
            Ok(_) => return Err(malformed("bytes follow the result".into())),
            Err(e) => return Err(malformed(e.to_string())),
        }
        rmp_serde::from_slice(self.msgpack()).map_err(|e| malformed(e.to_string()))
    }

    /// Writes the result to `out` as pretty-printed JSON, straight from the MessagePack (the
    /// layout of `serde_json::to_writer_pretty`). Fails with `InvalidData` if the result is
    /// not exactly one value JSON can hold.
    pub fn write_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        crate::json::write_pretty(self.msgpack(), out)
    }
}
