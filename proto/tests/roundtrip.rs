//! Property tests: any message survives encode → frame → decode unchanged, frames are cut the
//! same however the stream is chunked, and arbitrary bytes never panic the reader.

use std::io::{self, Read};

use proptest::prelude::*;
use sessiond_proto::envelope::{ErrorFrame, Event, FrameHead, Hello, Lagged, Request, Response};
use sessiond_proto::frame::{self, FrameError};
use sessiond_proto::methods::{SetLogLevelParams, StatusResult};
use sessiond_proto::{ErrorCode, ProtocolVersion};

/// Integers the protocol allows: below 2^53.
fn wire_int() -> impl Strategy<Value = u64> {
    0u64..(1u64 << 53)
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    (any::<u32>(), any::<u32>()).prop_map(|(a, b)| ProtocolVersion::new(a, b))
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        version(),
        any::<String>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(v, c, p)| Hello::new(v, c, p))
}

fn request() -> impl Strategy<Value = Request<SetLogLevelParams>> {
    (wire_int(), "[a-z_]{1,20}", any::<String>())
        .prop_map(|(id, m, level)| Request::new(id, m, SetLogLevelParams { level }))
}

fn status() -> impl Strategy<Value = Response<StatusResult>> {
    (
        wire_int(),
        any::<String>(),
        version(),
        any::<u32>(),
        (wire_int(), wire_int()),
        proptest::option::of(any::<String>()),
        (any::<u32>(), any::<u32>(), wire_int()),
    )
        .prop_map(
            |(
                id,
                version,
                protocol,
                pid,
                (started_at, uptime_ms),
                log_file,
                (connections, max_connections, max_frame_bytes),
            )| {
                Response::new(
                    id,
                    StatusResult {
                        version,
                        protocol,
                        pid,
                        started_at,
                        uptime_ms,
                        socket: "/s".into(),
                        runtime_dir: "/r".into(),
                        state_dir: "/st".into(),
                        config: "/c".into(),
                        log_file,
                        log_level: "info".into(),
                        connections,
                        max_connections,
                        max_frame_bytes,
                        sessions: 0,
                        subscriptions: 0,
                        database: "/db".into(),
                        storage_error: None,
                        supervisor: None,
                    },
                )
            },
        )
}

fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    (
        proptest::option::of(wire_int()),
        "[a-z_]{1,24}",
        any::<String>(),
    )
        .prop_map(|(id, code, msg)| ErrorFrame::new(id, ErrorCode::from(code), msg))
}

fn event() -> impl Strategy<Value = Event<Lagged>> {
    (
        wire_int(),
        wire_int(),
        "[a-z_]{1,24}",
        proptest::option::of(wire_int()),
        wire_int(),
    )
        .prop_map(|(seq, time, event, subscription, missed)| Event {
            kind: Default::default(),
            seq,
            time,
            event,
            subscription,
            data: Lagged { missed },
        })
}

fn roundtrip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = frame::encode(value).unwrap();
    let payload = frame::read_frame(&mut io::Cursor::new(&bytes), frame::DEFAULT_MAX_FRAME)
        .unwrap()
        .unwrap();
    frame::decode(&payload).unwrap()
}

/// A reader that hands out at most a few bytes per call, as a socket may.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    i: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Ok(0);
        }
        let want = self.sizes[self.i % self.sizes.len()].max(1);
        self.i += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    #[test]
    fn hello_roundtrips(v in hello()) {
        prop_assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn request_roundtrips_and_head_routes_it(v in request()) {
        prop_assert_eq!(roundtrip(&v), v.clone());
        let bytes = frame::encode(&v).unwrap();
        let head = FrameHead::decode(&bytes[4..]).unwrap();
        prop_assert_eq!(head.kind, "request");
        prop_assert_eq!(head.id, Some(v.id));
        prop_assert_eq!(head.method.as_deref(), Some(v.method.as_str()));
    }

    #[test]
    fn status_response_roundtrips(v in status()) {
        prop_assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn error_roundtrips(v in error_frame()) {
        prop_assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn event_roundtrips(v in event()) {
        prop_assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn frames_are_cut_the_same_however_the_stream_is_chunked(
        msgs in proptest::collection::vec(request(), 1..8),
        sizes in proptest::collection::vec(1usize..9, 1..6),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            frame::encode_into(&mut stream, m).unwrap();
        }
        let mut reader = Trickle { data: &stream, sizes, i: 0 };
        for m in &msgs {
            let payload = frame::read_frame(&mut reader, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
            let got: Request<SetLogLevelParams> = frame::decode(&payload).unwrap();
            prop_assert_eq!(&got, m);
        }
        prop_assert!(frame::read_frame(&mut reader, frame::DEFAULT_MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_exceed_the_limit(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let max = 64;
        let mut cursor = io::Cursor::new(&bytes);
        loop {
            match frame::read_frame(&mut cursor, max) {
                Ok(Some(payload)) => {
                    prop_assert!(payload.len() <= max);
                    // Decoding garbage must fail cleanly or give a head; never panic.
                    let _ = FrameHead::decode(&payload);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, .. }) => { prop_assert!(len > max as u64); break; }
                Err(FrameError::Truncated { .. }) => break,
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}

/// The head as a plain serde decode reads it: the reference the walking decoder must agree
/// with on every map of string keys.
fn head_by_serde(payload: &[u8]) -> Option<FrameHead> {
    let mut de = rmp_serde::Deserializer::new(io::Cursor::new(payload));
    let head = <FrameHead as serde::Deserialize>::deserialize(&mut de).ok()?;
    (de.position() == payload.len() as u64).then_some(head)
}

/// A value for a map entry: of the right type for a head field, or not.
fn any_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z ]{0,40}".prop_map(Value::from),
        Just(json!("response")),
        Just(json!("request")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn walking_head_decoder_agrees_with_serde(
        entries in proptest::collection::vec(
            (prop_oneof![Just("type".to_string()), Just("id".to_string()),
                         Just("method".to_string()), "[a-z]{1,8}"], any_value()),
            0..6,
        ),
    ) {
        // Written by hand so keys may repeat and come in any order.
        let mut payload = Vec::new();
        payload.push(0x80 | entries.len() as u8);
        for (k, v) in &entries {
            payload.extend(rmp_serde::to_vec(k).unwrap());
            payload.extend(rmp_serde::to_vec_named(v).unwrap());
        }
        let walked = FrameHead::decode(&payload).ok();
        prop_assert_eq!(walked, head_by_serde(&payload));
    }
}
