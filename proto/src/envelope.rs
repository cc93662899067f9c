//! The six frame types and their fields.
//!
//! Every frame is a map whose `type` key says what it is:
//!
//! | `type`     | sent by | purpose                                                       |
//! |------------|---------|---------------------------------------------------------------|
//! | `hello`    | client  | first frame on a connection: protocol version and identity    |
//! | `request`  | client  | call a method; carries a client-chosen `id`                   |
//! | `welcome`  | daemon  | handshake accepted: versions, pid, capabilities               |
//! | `response` | daemon  | a method's result, echoing the request's `id`                 |
//! | `error`    | daemon  | a failed request (with `id`) or a failed connection (without) |
//! | `event`    | daemon  | a pushed event for a subscription                             |
//!
//! A receiver first decodes a [`FrameHead`] (just `type`, `id` and `method`; everything else is
//! skipped without allocating) and then decodes the whole payload again into the specific type
//! it now knows to expect. That keeps each method's params and result plain typed structs with
//! no buffering through a dynamic value, and lets the async client hand a response's raw bytes
//! to whichever caller is waiting for that `id`.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::frame::FrameError;
use crate::version::ProtocolVersion;

/// Declares a zero-sized marker that serializes as one fixed `type` string and refuses any
/// other on decode. It keeps the `type` key in the frame structs without storing a value that
/// could disagree with the struct it sits in.
macro_rules! frame_tag {
    ($(#[$doc:meta])* $name:ident = $tag:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            /// The `type` string this marker stands for.
            pub const TAG: &'static str = $tag;
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($tag)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let found = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                if found == $tag {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format_args!(
                        "expected a frame of type {:?}, found {:?}",
                        $tag, found
                    )))
                }
            }
        }
    };
}

frame_tag!(
    /// `type: "hello"`.
    HelloTag = "hello"
);
frame_tag!(
    /// `type: "welcome"`.
    WelcomeTag = "welcome"
);
frame_tag!(
    /// `type: "request"`.
    RequestTag = "request"
);
frame_tag!(
    /// `type: "response"`.
    ResponseTag = "response"
);
frame_tag!(
    /// `type: "error"`.
    ErrorTag = "error"
);
frame_tag!(
    /// `type: "event"`.
    EventTag = "event"
);

/// The part of any frame a receiver reads first, to decide what to decode it as.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FrameHead {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub method: Option<String>,
}

impl FrameHead {
    /// Reads a frame's head, enforcing what every frame must be (PROTOCOL.md, section 2): one
    /// MessagePack map, nothing after it, with a string `type`. The rest of the map is skipped
    /// without being kept.
    pub fn decode(payload: &[u8]) -> Result<FrameHead, FrameError> {
        Self::decode_with(payload, None).map(|(head, _)| head)
    }

    /// [`Self::decode`], also giving the byte range of the value under `key` (a response's
    /// `result`, say) from the same walk, for a reader that passes that value on. When `key`
    /// is the map's last entry, as `result` is in every response sessiond writes, its value
    /// is not walked (see [`crate::scan::map_entries_until`]): the caller decoding it must
    /// check that it ends exactly at the end of the payload. `key` names a payload field
    /// (`result`, `data`), not one of the head's own (`type`, `id`, `method`).
    pub fn decode_locating(
        payload: &[u8],
        key: &[u8],
    ) -> Result<(FrameHead, Option<Range<usize>>), FrameError> {
        Self::decode_with(payload, Some(key))
    }

    fn decode_with(
        payload: &[u8],
        locate: Option<&[u8]>,
    ) -> Result<(FrameHead, Option<Range<usize>>), FrameError> {
        // The other values are stepped over, not decoded: a response can be megabytes.
        let mut kind = None;
        let mut id = None;
        let mut method = None;
        let mut located = None;
        for (name, range) in crate::scan::map_entries_until(payload, locate)? {
            if Some(name) == locate {
                located = Some(range.clone());
                continue;
            }
            let value = &payload[range];
            match name {
                b"type" => set_once(&mut kind, rmp_serde::from_slice::<String>(value)?, "type")?,
                b"id" => set_once(&mut id, rmp_serde::from_slice::<Option<u64>>(value)?, "id")?,
                b"method" => set_once(
                    &mut method,
                    rmp_serde::from_slice::<Option<String>>(value)?,
                    "method",
                )?,
                _ => {}
            }
        }
        let head = FrameHead {
            kind: kind.ok_or(FrameError::Shape("the map has no \"type\""))?,
            id: id.flatten(),
            method: method.flatten(),
        };
        Ok((head, located))
    }

    /// The integer `id` of a frame whose head is otherwise unusable (a `method` that is not a
    /// string, say), so the error can still be addressed to that request.
    pub fn salvage_id(payload: &[u8]) -> Option<u64> {
        #[derive(Deserialize)]
        struct IdOnly {
            id: Option<u64>,
        }
        let is_map = matches!(payload.first(), Some(0x80..=0x8f | 0xde | 0xdf));
        if !is_map {
            return None;
        }
        crate::frame::decode::<IdOnly>(payload).ok()?.id
    }
}

/// Fills a head field, refusing a key that occurs twice (which value would count is not
/// something peers could agree on).
fn set_once<T>(slot: &mut Option<T>, value: T, key: &'static str) -> Result<(), FrameError> {
    if slot.replace(value).is_some() {
        return Err(FrameError::Shape(match key {
            "type" => "the key \"type\" occurs twice",
            "id" => "the key \"id\" occurs twice",
            _ => "the key \"method\" occurs twice",
        }));
    }
    Ok(())
}

/// The client's first frame. The client may pipeline requests right behind it without waiting
/// for [`Welcome`]; if the handshake is refused those requests are discarded with the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    #[serde(rename = "type")]
    pub kind: HelloTag,
    pub protocol: ProtocolVersion,
    /// Free text naming the client and its version, e.g. `"sessionctl 0.1.0"`; logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The client's process id, when it has one; logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Hello {
    pub fn new(protocol: ProtocolVersion, client: impl Into<String>, pid: Option<u32>) -> Self {
        Self {
            kind: HelloTag,
            protocol,
            client: Some(client.into()),
            pid,
        }
    }
}

/// The daemon's answer to an accepted [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    #[serde(rename = "type")]
    pub kind: WelcomeTag,
    /// The protocol version the daemon speaks.
    pub protocol: ProtocolVersion,
    /// The daemon's program version, e.g. `"0.1.0"`.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Method names and feature names this daemon supports. A client can test for a method
    /// before calling it instead of handling `unknown_method`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl Welcome {
    pub fn new(
        protocol: ProtocolVersion,
        version: impl Into<String>,
        pid: u32,
        capabilities: Vec<String>,
    ) -> Self {
        Self {
            kind: WelcomeTag,
            protocol,
            version: version.into(),
            pid,
            capabilities,
        }
    }
}

/// A method call. `P` is the method's params type (see [`crate::methods`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<P> {
    #[serde(rename = "type")]
    pub kind: RequestTag,
    /// Chosen by the client, echoed in the answer. Unique among the client's requests in
    /// flight on this connection; below 2^53 so every language can hold it exactly.
    pub id: u64,
    pub method: String,
    pub params: P,
}

impl<P> Request<P> {
    pub fn new(id: u64, method: impl Into<String>, params: P) -> Self {
        Self {
            kind: RequestTag,
            id,
            method: method.into(),
            params,
        }
    }
}

/// The params of a request, decoded once its method is known. `params` may be omitted on the
/// wire when the method takes none (or only optional ones).
#[derive(Debug, Deserialize)]
pub struct RequestParams<P> {
    #[serde(default = "Option::default")]
    pub params: Option<P>,
}

/// A successful answer. `R` is the method's result type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<R> {
    #[serde(rename = "type")]
    pub kind: ResponseTag,
    /// The `id` of the request this answers.
    pub id: u64,
    pub result: R,
}

impl<R> Response<R> {
    pub fn new(id: u64, result: R) -> Self {
        Self {
            kind: ResponseTag,
            id,
            result,
        }
    }
}

/// A failure. With an `id` it answers that request and the connection stays usable; without
/// one it is about the connection itself (bad frame, refused handshake, timeout), and the daemon
/// closes the connection right after sending it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(rename = "type")]
    pub kind: ErrorTag,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub code: ErrorCode,
    /// For people: what happened, to what, and what to do about it.
    pub message: String,
}

impl ErrorFrame {
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorTag,
            id,
            code,
            message: message.into(),
        }
    }
}

/// A pushed event. `D` is the event's data type, chosen by `event`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<D> {
    #[serde(rename = "type")]
    pub kind: EventTag,
    /// Per-daemon sequence number, strictly increasing across all events the daemon emits, so
    /// a subscriber can tell order and notice gaps.
    pub seq: u64,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub time: u64,
    /// The event's kind, e.g. `"session_created"` or `"lagged"`.
    pub event: String,
    /// The `id` of the `subscribe` request this event is delivered for, when the connection
    /// has more than one subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<u64>,
    pub data: D,
}

/// Data of the `lagged` event: the subscriber fell behind and `missed` events were dropped for
/// it. Resynchronise with a fresh listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagged {
    pub missed: u64,
}

/// The message of a `version_mismatch`: sent by the daemon before closing a connection whose
/// `hello` named another major version, and shown by a client whose daemon's `welcome` does.
/// It names both versions and both ways out, because only the user knows which side is stale.
pub fn version_mismatch_message(client: ProtocolVersion, daemon: ProtocolVersion) -> String {
    format!(
        "protocol version mismatch: the client speaks {client}, the running daemon speaks \
         {daemon}. If sessiond was upgraded, restart the daemon so it matches: \
         `sessionctl daemon restart`; otherwise use a client built for protocol {}.x",
        daemon.major
    )
}
