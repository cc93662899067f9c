//! Hostile and broken clients: each gets an error or a close, and nobody else notices.

use std::time::{Duration, Instant};

use sessiond_proto::ErrorCode;
use sessiond_tests::report::Row;
use sessiond_tests::{kind, rss_kb, RawConn, Sandbox};

/// A second client that must keep getting answers while the first misbehaves.
fn assert_still_serving(sb: &Sandbox) {
    let mut other = sb.raw();
    other.handshake();
    other.request(1, "ping", serde_json::json!({}));
    assert_eq!(kind(&other.read().unwrap()), "response");
}

#[test]
fn garbage_bytes_get_an_error_and_other_clients_are_served() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let mut bystander = sb.raw();
    bystander.handshake();
    let mut conn = sb.raw();
    conn.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    // "GET " read as a length is far over the limit.
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::FRAME_TOO_LARGE);
    conn.expect_closed();
    // Small length, undecodable payload.
    let mut conn = sb.raw();
    conn.send_bytes(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]);
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::BAD_FRAME);
    assert!(err.message.contains("PROTOCOL.md"), "{}", err.message);
    conn.expect_closed();
    // A valid MessagePack value that is not a map.
    let mut conn = sb.raw();
    conn.send_bytes(&[0, 0, 0, 1, 0x2a]);
    assert_eq!(conn.read_error().code, ErrorCode::BAD_FRAME);
    conn.expect_closed();
    // Zero-length frame.
    let mut conn = sb.raw();
    conn.send_bytes(&[0, 0, 0, 0]);
    assert_eq!(conn.read_error().code, ErrorCode::BAD_FRAME);
    conn.expect_closed();
    assert!(daemon.running());
    bystander.request(1, "ping", serde_json::json!({}));
    assert_eq!(kind(&bystander.read().unwrap()), "response");
    assert_still_serving(&sb);
    Row::new(
        "bad input",
        "garbage_bytes_get_an_error_and_other_clients_are_served",
    )
    .done(
        "4 connections sending an HTTP request, an undecodable payload, a bare integer \
               and a zero-length frame, beside a connected bystander",
    )
    .runs(4)
    .checked("the error frame and close each gets; the daemon; the bystander and a newcomer")
    .result(
        "4 of 4 got an error frame (1 frame_too_large, 3 bad_frame) and were closed; \
                 daemon running; bystander and a new client answered",
    )
    .record();
}

#[test]
fn four_gib_length_header_is_refused_without_buffering() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let before = rss_kb(daemon.pid());
    for _ in 0..20 {
        let mut conn = sb.raw();
        conn.handshake();
        conn.send_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        let err = conn.read_error();
        assert_eq!(err.code, ErrorCode::FRAME_TOO_LARGE);
        assert!(err.message.contains("4294967295"), "{}", err.message);
        assert!(err.message.contains("max_frame_bytes"), "{}", err.message);
        conn.expect_closed();
    }
    // Twenty 4 GiB claims must not have cost anything like even one 8 MiB frame.
    let after = rss_kb(daemon.pid());
    assert!(
        after < before + 4096,
        "daemon RSS grew from {before} kB to {after} kB"
    );
    assert_still_serving(&sb);
    Row::new(
        "bad input",
        "four_gib_length_header_is_refused_without_buffering",
    )
    .done("20 connections each announcing a 4,294,967,295-byte frame")
    .runs(20)
    .checked("the error and close; the daemon's resident memory before and after")
    .result(format!(
        "20 of 20 refused with frame_too_large naming the size and max_frame_bytes, and \
             closed; RSS {} kB before, {} kB after (limit +4,096 kB)",
        sessiond_tests::report::thousands(before),
        sessiond_tests::report::thousands(after)
    ))
    .record();
}

#[test]
fn frame_over_the_configured_limit_is_refused() {
    let sb = Sandbox::with_config("[daemon]\nmax_frame_bytes = 2048\n");
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(
        1,
        "set_log_level",
        serde_json::json!({"level": "x".repeat(4000)}),
    );
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::FRAME_TOO_LARGE);
    assert!(err.message.contains("2048"), "{}", err.message);
    conn.expect_closed();
    assert_still_serving(&sb);
    Row::new("bad input", "frame_over_the_configured_limit_is_refused")
        .done("max_frame_bytes = 2048: a request of about 4,000 bytes")
        .checked("the error and close; other clients")
        .result(format!(
            "refused with {} naming 2048, closed; another client answered",
            err.code
        ))
        .record();
}

#[test]
fn half_sent_frame_times_out_while_others_are_served() {
    let sb = Sandbox::with_config("[daemon]\nframe_timeout_ms = 300\n");
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    // Announce 100 bytes, send 10, stall.
    conn.send_bytes(&[0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let started = Instant::now();
    assert_still_serving(&sb);
    let err = conn.read_error();
    let waited = started.elapsed();
    assert_eq!(err.code, ErrorCode::TIMEOUT);
    assert!(waited >= Duration::from_millis(250));
    conn.expect_closed();
    Row::new(
        "bad input",
        "half_sent_frame_times_out_while_others_are_served",
    )
    .done("frame_timeout_ms = 300: announced 100 bytes, sent 10, stalled")
    .checked("another client is served meanwhile; the stalled one's error and close")
    .result(format!(
        "another client answered during the stall; {} after {} ms, then closed",
        err.code,
        waited.as_millis()
    ))
    .record();
}

#[test]
fn client_vanishing_mid_frame_disturbs_nobody() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let mut vanished = 0;
    for _ in 0..10 {
        let mut conn = sb.raw();
        conn.handshake();
        conn.send_bytes(&[0, 0, 1, 0, 0x85, 0xa4]);
        drop(conn);
        let mut conn = RawConn::connect(&sb.socket());
        conn.send_bytes(&[0, 0]);
        drop(conn);
        vanished += 2;
    }
    assert!(daemon.running());
    assert_still_serving(&sb);
    // Every one of them was let go: only this test's check connection is left.
    sessiond_tests::eventually("the vanished connections to be closed", || {
        sb.ctl(&["--json", "daemon", "status"]).json()["connections"] == 1
    });
    Row::new("bad input", "client_vanishing_mid_frame_disturbs_nobody")
        .done(
            "20 connections closed in the middle of a frame (10 mid-payload after the \
               handshake, 10 mid-length-prefix before it)",
        )
        .runs(vanished)
        .checked("the daemon, a new client, the connection count afterwards")
        .result(format!(
            "{vanished} vanished; daemon running; a new client answered; 0 of them still \
             counted as connections"
        ))
        .record();
}

#[test]
fn connection_limit_refuses_with_busy_and_frees_slots_on_close() {
    let sb = Sandbox::with_config("[daemon]\nmax_connections = 2\n");
    let _daemon = sb.start_daemon();
    let mut a = sb.raw();
    a.handshake();
    let mut b = sb.raw();
    b.handshake();
    let mut c = sb.raw();
    let err = c.read_error();
    assert_eq!(err.code, ErrorCode::BUSY);
    assert!(err.message.contains("max_connections"), "{}", err.message);
    c.expect_closed();
    drop(a);
    let mut tries = 0;
    sessiond_tests::eventually("a slot to free up", || {
        tries += 1;
        let mut d = sb.raw();
        d.hello();
        d.read().map(|p| kind(&p) == "welcome").unwrap_or(false)
    });
    Row::new(
        "bad input",
        "connection_limit_refuses_with_busy_and_frees_slots_on_close",
    )
    .done("max_connections = 2: two held, a third opened, then one of the two closed")
    .runs(3)
    .checked("the third's error and close; that the closed one's slot is reused")
    .result(format!(
        "third refused with {} naming max_connections and closed; the freed slot \
             welcomed a new client (attempt {tries})",
        err.code
    ))
    .record();
}

#[test]
fn client_that_stops_reading_is_dropped_without_stalling_others() {
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 300\n");
    let _daemon = sb.start_daemon();
    let mut hog = sb.raw();
    hog.handshake();
    hog.stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    const FLOOD: u64 = 2000;
    hog.flood_unread(FLOOD);
    assert_still_serving(&sb);
    // Read nothing for well over the write timeout, so the daemon's write stalls that long.
    std::thread::sleep(Duration::from_millis(1000));
    // The daemon gives up on the hog: its stream ends after what was already buffered.
    let mut drained = 0usize;
    sessiond_tests::eventually("the stalled client to be dropped", || {
        let mut sink = vec![0u8; 1 << 20];
        hog.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            match std::io::Read::read(&mut hog.stream, &mut sink) {
                Ok(0) => return true,
                Ok(n) => {
                    drained += n;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    });
    assert_still_serving(&sb);
    Row::new(
        "bad input",
        "client_that_stops_reading_is_dropped_without_stalling_others",
    )
    .done(format!(
        "write_timeout_ms = 300: {FLOOD} pipelined requests from a client that reads no \
             answer for 1 s"
    ))
    .runs(FLOOD)
    .checked("others are served meanwhile; the stalled client's stream ends")
    .result(format!(
        "another client answered during the stall; the stalled stream ended after {} \
             buffered bytes",
        sessiond_tests::report::thousands(drained as u64)
    ))
    .record();
}
