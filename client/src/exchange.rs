//! Interpreting the daemon's frames, shared by the blocking and the async client so both
//! agree on what a welcome, an answer or a refusal means. No I/O here.

use sessiond_proto::envelope::{
    ErrorFrame, Event, EventTag, FrameHead, Hello, Lagged, Request, Response, Welcome,
};
use sessiond_proto::methods::Method;
use sessiond_proto::{frame, version_mismatch_message, PROTOCOL_VERSION};

use std::ops::Range;

use crate::error::ClientError;

/// The encoded hello this client opens with.
pub(crate) fn hello(client_name: &str) -> Vec<u8> {
    frame::encode(&Hello::new(
        PROTOCOL_VERSION,
        client_name,
        Some(std::process::id()),
    ))
    .expect("hello always encodes")
}

/// The encoded request frame for method `M`.
pub(crate) fn request<M: Method>(id: u64, params: &M::Params) -> Result<Vec<u8>, ClientError> {
    frame::encode(&Request::new(id, M::NAME, params))
        .map_err(|e| ClientError::Local(format!("cannot encode {} request: {e}", M::NAME)))
}

/// Peeks at a frame's head.
pub(crate) fn head(payload: &[u8]) -> Result<FrameHead, ClientError> {
    FrameHead::decode(payload).map_err(|e| ClientError::Protocol(format!("undecodable frame: {e}")))
}

/// Reads the daemon's first frame: a welcome we can work with, or the refusal as an error.
pub(crate) fn welcome(payload: &[u8]) -> Result<Welcome, ClientError> {
    match head(payload)?.kind.as_str() {
        "welcome" => {
            let w: Welcome = frame::decode(payload)
                .map_err(|e| ClientError::Protocol(format!("malformed welcome: {e}")))?;
            if !PROTOCOL_VERSION.compatible_with(w.protocol) {
                return Err(ClientError::VersionMismatch(version_mismatch_message(
                    PROTOCOL_VERSION,
                    w.protocol,
                )));
            }
            Ok(w)
        }
        "error" => Err(error(payload)),
        other => Err(ClientError::Protocol(format!(
            "expected welcome as the first frame, got {other:?}"
        ))),
    }
}

/// Decodes an error frame into a client error.
pub(crate) fn error(payload: &[u8]) -> ClientError {
    match frame::decode::<ErrorFrame>(payload) {
        Ok(e) => e.into(),
        Err(e) => ClientError::Protocol(format!("malformed error frame: {e}")),
    }
}

/// The `seq` of an event frame, if it has one.
pub(crate) fn event_seq(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    frame::decode::<Seq>(payload).ok().map(|s| s.seq)
}

/// How many events a frame stands for when it is dropped: the `missed` count of a `lagged`
/// notice (the daemon's own gap), else one.
pub(crate) fn events_in(payload: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Head {
        event: String,
        #[serde(default)]
        data: Option<Missed>,
    }
    #[derive(serde::Deserialize)]
    struct Missed {
        #[serde(default)]
        missed: u64,
    }
    match frame::decode::<Head>(payload) {
        Ok(Head {
            event,
            data: Some(Missed { missed }),
        }) if event == "lagged" => missed.max(1),
        _ => 1,
    }
}

/// A `lagged` event payload, as the daemon would send it, for a gap the client itself made.
pub(crate) fn lagged(seq: u64, missed: u64) -> Vec<u8> {
    let event = Event {
        kind: EventTag,
        seq,
        time: sessiond_proto::now_ms(),
        event: "lagged".to_string(),
        subscription: None,
        data: Lagged { missed },
    };
    // Without the length prefix: streams hand out payloads.
    frame::encode(&event).expect("lagged encodes")[frame::HEADER_LEN..].to_vec()
}

/// Peeks at a frame's head, and finds where its `result` sits if it has one.
pub(crate) fn head_and_result(
    payload: &[u8],
) -> Result<(FrameHead, Option<Range<usize>>), ClientError> {
    FrameHead::decode_locating(payload, b"result")
        .map_err(|e| ClientError::Protocol(format!("undecodable frame: {e}")))
}

/// Decodes a frame known to be a response to a request for method `M`.
pub(crate) fn response<M: Method>(payload: &[u8]) -> Result<M::Result, ClientError> {
    frame::decode::<Response<M::Result>>(payload)
        .map(|r| r.result)
        .map_err(|e| ClientError::Protocol(format!("malformed result for {}: {e}", M::NAME)))
}

/// Decodes the answer (response or error) to a request for method `M`.
pub(crate) fn answer<M: Method>(payload: &[u8]) -> Result<M::Result, ClientError> {
    match head(payload)?.kind.as_str() {
        "response" => response::<M>(payload),
        "error" => Err(error(payload)),
        other => Err(ClientError::Protocol(format!(
            "expected an answer to {}, got a {other:?} frame",
            M::NAME
        ))),
    }
}
