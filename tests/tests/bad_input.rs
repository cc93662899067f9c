//! Hostile and broken clients: each gets an error or a close, and nobody else notices.

use std::time::{Duration, Instant};

use sessiond_proto::ErrorCode;
use sessiond_tests::{kind, RawConn, Sandbox};

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
    assert!(daemon.running());
    bystander.request(1, "ping", serde_json::json!({}));
    assert_eq!(kind(&bystander.read().unwrap()), "response");
    assert_still_serving(&sb);
}

fn vm_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn four_gib_length_header_is_refused_without_buffering() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let before = vm_rss_kb(daemon.pid());
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
    let after = vm_rss_kb(daemon.pid());
    assert!(
        after < before + 4096,
        "daemon RSS grew from {before} kB to {after} kB"
    );
    assert_still_serving(&sb);
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
    assert_still_serving(&sb);
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
    assert_eq!(err.code, ErrorCode::TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(250));
    conn.expect_closed();
}

#[test]
fn client_vanishing_mid_frame_disturbs_nobody() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    for _ in 0..10 {
        let mut conn = sb.raw();
        conn.handshake();
        conn.send_bytes(&[0, 0, 1, 0, 0x85, 0xa4]);
        drop(conn);
        let mut conn = RawConn::connect(&sb.socket());
        conn.send_bytes(&[0, 0]);
        drop(conn);
    }
    assert!(daemon.running());
    assert_still_serving(&sb);
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
    sessiond_tests::eventually("a slot to free up", || {
        let mut d = sb.raw();
        d.hello();
        d.read().map(|p| kind(&p) == "welcome").unwrap_or(false)
    });
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
    hog.flood_unread(2000);
    assert_still_serving(&sb);
    // Read nothing for well over the write timeout, so the daemon's write stalls that long.
    std::thread::sleep(Duration::from_millis(1000));
    // The daemon gives up on the hog: its stream ends after what was already buffered.
    sessiond_tests::eventually("the stalled client to be dropped", || {
        let mut sink = vec![0u8; 1 << 20];
        hog.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            match std::io::Read::read(&mut hog.stream, &mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    });
    assert_still_serving(&sb);
}
