//! The wire contract as seen from a raw socket: handshake, versions, pipelining, errors.

use sessiond_proto::envelope::{Hello, Request, Response, Welcome};
use sessiond_proto::methods::{Pong, SetLogLevelParams, StatusResult};
use sessiond_proto::{frame, ErrorCode, ProtocolVersion, PROTOCOL_VERSION};
use sessiond_tests::report::Row;
use sessiond_tests::{as_json, kind, Sandbox};

#[test]
fn welcome_names_protocol_version_pid_and_methods() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.hello();
    let welcome: Welcome = frame::decode(&conn.read().unwrap()).unwrap();
    assert_eq!(welcome.protocol, PROTOCOL_VERSION);
    assert_eq!(welcome.pid as i32, daemon.pid());
    assert_eq!(welcome.version, env!("CARGO_PKG_VERSION"));
    for method in ["ping", "status", "set_log_level", "shutdown"] {
        assert!(
            welcome.capabilities.iter().any(|c| c == method),
            "{method} missing"
        );
    }
}

#[test]
fn other_major_version_is_refused_naming_both_versions_and_the_fix() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    // An older client (0.9) and a newer one (2.3) against this daemon (1.0).
    let mut refused = 0;
    for (major, minor) in [(0, 9), (2, 3)] {
        let theirs = format!("{major}.{minor}");
        let mut conn = sb.raw();
        // A request pipelined behind the refused hello must not be answered. Both go out in
        // one write: the daemon may close as soon as it has read the hello, and a second
        // write would then meet a broken pipe.
        let mut both = frame::encode(&Hello::new(
            ProtocolVersion::new(major, minor),
            "other",
            None,
        ))
        .unwrap();
        frame::encode_into(&mut both, &Request::new(1, "ping", serde_json::json!({}))).unwrap();
        conn.send_bytes(&both);
        let err = conn.read_error();
        assert_eq!(err.code, ErrorCode::VERSION_MISMATCH, "{theirs}");
        assert_eq!(err.id, None);
        assert!(err.message.contains(&theirs), "{}", err.message);
        assert!(
            err.message.contains(&PROTOCOL_VERSION.to_string()),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("sessionctl daemon restart"),
            "{}",
            err.message
        );
        // Closed at once: the harness's read timeout turns a hang into a failure.
        conn.expect_closed();
        refused += 1;
    }
    Row::new(
        "fault",
        "other_major_version_is_refused_naming_both_versions_and_the_fix",
    )
    .done(format!(
        "clients speaking protocol 0.9 and 2.3 said hello to a {PROTOCOL_VERSION} daemon, \
             each with a ping pipelined behind"
    ))
    .runs(refused)
    .checked("the answer, the message, that the ping goes unanswered and the connection closes")
    .result(format!(
        "{refused} of 2 refused with version_mismatch naming both versions and `sessionctl \
             daemon restart`, then closed; 0 pings answered"
    ))
    .record();
}

#[test]
fn newer_minor_version_is_welcomed() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.send(&Hello::new(
        ProtocolVersion::new(PROTOCOL_VERSION.major, 99),
        "newer",
        None,
    ));
    assert_eq!(kind(&conn.read().unwrap()), "welcome");
}

#[test]
fn first_frame_must_be_hello() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.request(1, "ping", serde_json::json!({}));
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::HANDSHAKE_REQUIRED);
    assert!(err.message.contains("hello"), "{}", err.message);
    conn.expect_closed();
    Row::new("bad input", "first_frame_must_be_hello")
        .done("a request sent before any hello")
        .checked("the answer and the close")
        .result(format!("{} naming hello, then closed", err.code))
        .record();
}

#[test]
fn silent_client_gets_handshake_timeout_and_is_closed() {
    let sb = Sandbox::with_config("[daemon]\nhandshake_timeout_ms = 200\n");
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::TIMEOUT);
    assert!(err.message.contains("hello"), "{}", err.message);
    conn.expect_closed();
    Row::new(
        "fault",
        "silent_client_gets_handshake_timeout_and_is_closed",
    )
    .done("handshake_timeout_ms = 200: connected and sent nothing")
    .checked("the answer and the close")
    .result(format!("{} naming hello, then closed", err.code))
    .record();
}

#[test]
fn pipelined_requests_are_each_answered_once_by_id() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    // hello and 60 requests in a single write, ids deliberately out of order.
    let mut bytes = frame::encode(&Hello::new(PROTOCOL_VERSION, "pipeline", None)).unwrap();
    let ids: Vec<u64> = (0..60).map(|i| 1000 + (i * 37) % 60).collect();
    for &id in &ids {
        let method = if id % 2 == 0 { "ping" } else { "status" };
        frame::encode_into(&mut bytes, &Request::new(id, method, serde_json::json!({}))).unwrap();
    }
    conn.send_bytes(&bytes);
    assert_eq!(kind(&conn.read().unwrap()), "welcome");
    let mut seen = std::collections::BTreeSet::new();
    for _ in &ids {
        let payload = conn.read().expect("an answer per request");
        assert_eq!(kind(&payload), "response", "{}", as_json(&payload));
        let v = as_json(&payload);
        let id = v["id"].as_u64().unwrap();
        if id.is_multiple_of(2) {
            let _: Response<Pong> = frame::decode(&payload).unwrap();
        } else {
            let r: Response<StatusResult> = frame::decode(&payload).unwrap();
            assert!(r.result.connections >= 1);
        }
        assert!(seen.insert(id), "id {id} answered twice");
    }
    assert_eq!(seen, ids.iter().copied().collect());
}

#[test]
fn unknown_method_is_refused_and_the_connection_stays_usable() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(7, "frobnicate", serde_json::json!({}));
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::UNKNOWN_METHOD);
    assert_eq!(err.id, Some(7));
    assert!(err.message.contains("frobnicate"), "{}", err.message);
    assert!(
        err.message.contains("ping"),
        "lists the methods: {}",
        err.message
    );
    conn.request(8, "ping", serde_json::json!({}));
    let ok: Response<Pong> = frame::decode(&conn.read().unwrap()).unwrap();
    assert_eq!(ok.id, 8);
    Row::new(
        "bad input",
        "unknown_method_is_refused_and_the_connection_stays_usable",
    )
    .done("a request for method `frobnicate`, then a ping on the same connection")
    .runs(2)
    .checked("the error, its id and message; the next request")
    .result(
        "unknown_method for id 7 naming the method and listing the known ones; ping id 8 \
                 answered",
    )
    .record();
}

#[test]
fn params_of_the_wrong_type_are_invalid_argument_naming_the_method() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(3, "set_log_level", serde_json::json!({"level": 5}));
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    assert_eq!(err.id, Some(3));
    assert!(err.message.contains("set_log_level"), "{}", err.message);
    // Missing required params are refused the same way.
    conn.send(&serde_json::json!({"type": "request", "id": 4, "method": "set_log_level"}));
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    assert!(err.message.contains("level"), "{}", err.message);
    Row::new(
        "bad input",
        "params_of_the_wrong_type_are_invalid_argument_naming_the_method",
    )
    .done("set_log_level with a number for `level`, then with no params")
    .runs(2)
    .checked("the error code and message")
    .result(format!(
        "2 of 2 refused with {} naming the method and the field",
        err.code
    ))
    .record();
}

#[test]
fn unknown_fields_are_ignored_and_empty_params_may_be_omitted() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.send(&serde_json::json!({
        "type": "hello", "protocol": [1, 0], "client": "extra", "future_field": {"x": 1}
    }));
    assert_eq!(kind(&conn.read().unwrap()), "welcome");
    conn.send(&serde_json::json!({"type": "request", "id": 1, "method": "ping", "trace": "abc"}));
    let ok: Response<Pong> = frame::decode(&conn.read().unwrap()).unwrap();
    assert_eq!(ok.id, 1);
}

#[test]
fn frames_that_are_not_exactly_one_map_are_bad_frames() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    // A hello written as a positional array instead of a map.
    let mut conn = sb.raw();
    let array = rmp_serde::to_vec(&("hello", [1, 0], "positional")).unwrap();
    let mut bytes = (array.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&array);
    conn.send_bytes(&bytes);
    assert_eq!(conn.read_error().code, ErrorCode::BAD_FRAME);
    conn.expect_closed();
    // A valid hello with a stray byte after it inside the frame.
    let mut conn = sb.raw();
    let mut payload =
        frame::encode(&Hello::new(PROTOCOL_VERSION, "trailing", None)).unwrap()[4..].to_vec();
    payload.push(0xc0);
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    conn.send_bytes(&bytes);
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::BAD_FRAME);
    assert!(err.message.contains("exactly one value"), "{}", err.message);
    Row::new(
        "bad input",
        "frames_that_are_not_exactly_one_map_are_bad_frames",
    )
    .done("a hello as a MessagePack array; a valid hello with a stray byte after it")
    .runs(2)
    .checked("the error code and message")
    .result(format!(
        "2 of 2 refused with {} (`exactly one value` for the trailing byte)",
        err.code
    ))
    .record();
}

#[test]
fn request_with_a_malformed_method_fails_alone_when_it_has_an_id() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    conn.send(&serde_json::json!({"type": "request", "id": 12, "method": 42}));
    let err = conn.read_error();
    assert_eq!((err.code, err.id), (ErrorCode::BAD_FRAME, Some(12)));
    conn.request(13, "ping", serde_json::json!({}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    Row::new(
        "bad input",
        "request_with_a_malformed_method_fails_alone_when_it_has_an_id",
    )
    .done("a request whose method is a number, then a ping on the same connection")
    .runs(2)
    .checked("the error and its id; the next request")
    .result("bad_frame for id 12 only; ping id 13 answered on the same connection")
    .record();
}

#[test]
fn hello_with_nil_optionals_is_accepted() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.send(
        &serde_json::json!({"type": "hello", "protocol": [1, 0], "client": null, "pid": null}),
    );
    assert_eq!(kind(&conn.read().unwrap()), "welcome");
}

#[test]
fn set_log_level_changes_the_filter_reported_by_status() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(
        1,
        "set_log_level",
        SetLogLevelParams {
            level: "sessiond::conn=debug,warn".into(),
        },
    );
    let v = as_json(&conn.read().unwrap());
    assert_eq!(v["result"]["previous"], "info");
    assert_eq!(v["result"]["level"], "sessiond::conn=debug,warn");
    conn.request(2, "status", serde_json::json!({}));
    let v = as_json(&conn.read().unwrap());
    assert_eq!(v["result"]["log_level"], "sessiond::conn=debug,warn");
    // An unparsable filter changes nothing.
    conn.request(
        3,
        "set_log_level",
        SetLogLevelParams {
            level: "loud".into(),
        },
    );
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    conn.request(4, "status", serde_json::json!({}));
    let v = as_json(&conn.read().unwrap());
    assert_eq!(v["result"]["log_level"], "sessiond::conn=debug,warn");
}

#[test]
fn a_second_hello_or_a_daemon_frame_type_is_bad_frame() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    // With an id: refused, connection stays open.
    conn.send(&serde_json::json!({"type": "response", "id": 9, "result": {}}));
    let err = conn.read_error();
    assert_eq!((err.code, err.id), (ErrorCode::BAD_FRAME, Some(9)));
    conn.request(10, "ping", serde_json::json!({}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    // Without an id: refused and closed.
    conn.hello();
    let err = conn.read_error();
    assert_eq!((&err.code, err.id), (&ErrorCode::BAD_FRAME, None));
    assert!(err.message.contains("already"), "{}", err.message);
    conn.expect_closed();
    Row::new(
        "bad input",
        "a_second_hello_or_a_daemon_frame_type_is_bad_frame",
    )
    .done("a `response` frame sent by the client, then a second hello")
    .runs(2)
    .checked("the errors, their ids, whether the connection stays open")
    .result(format!(
        "response with id 9: bad_frame, connection kept (ping answered); second hello: {} \
             without id, closed",
        err.code
    ))
    .record();
}
