//! Every limit, at the limit (accepted) and one past it (refused with a clear error).

use sessiond_proto::envelope::Request;
use sessiond_proto::session::EventFilter;
use sessiond_proto::{frame, ErrorCode};
use sessiond_tests::{kind, Sandbox};

/// A `set_log_level` request whose frame payload is exactly `size` bytes (the level string is
/// padded; it is invalid as a level, which is fine: the frame itself must be read and answered).
fn frame_of_payload(size: usize) -> Vec<u8> {
    let probe = frame::encode(&Request::new(
        1,
        "set_log_level",
        serde_json::json!({"level": ""}),
    ))
    .unwrap();
    let overhead = probe.len() - 4;
    // Strings of 32 bytes and more carry a longer length header than the empty one.
    let mut fill = size - overhead;
    for _ in 0..8 {
        let bytes = frame::encode(&Request::new(
            1,
            "set_log_level",
            serde_json::json!({"level": "x".repeat(fill)}),
        ))
        .unwrap();
        let payload = bytes.len() - 4;
        if payload == size {
            return bytes;
        }
        fill -= payload - size;
    }
    panic!("cannot build a frame of exactly {size} payload bytes");
}

#[test]
fn frame_at_the_limit_is_read_and_one_byte_more_is_refused() {
    let sb = Sandbox::with_config("[daemon]\nmax_frame_bytes = 4096\n");
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    conn.send_bytes(&frame_of_payload(4096));
    let answer = conn.read().unwrap();
    assert_eq!(kind(&answer), "error");
    let err: sessiond_proto::envelope::ErrorFrame = frame::decode(&answer).unwrap();
    assert_eq!(
        err.code,
        ErrorCode::INVALID_ARGUMENT,
        "read and answered, not refused as a frame"
    );
    let mut conn = sb.raw();
    conn.handshake();
    conn.send_bytes(&frame_of_payload(4097));
    assert_eq!(conn.read_error().code, ErrorCode::FRAME_TOO_LARGE);
}

#[test]
fn session_name_of_100_characters_is_accepted_and_101_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let p = project.to_str().unwrap();
    // Multi-byte characters: the limit counts characters, not bytes.
    let at = "é".repeat(100);
    sb.ctl(&["new", "--project", p, "--name", &at]).ok();
    let past = "é".repeat(101);
    let out = sb.ctl(&["new", "--project", p, "--name", &past]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("limit is 100"), "{}", out.stderr());
}

#[test]
fn prompt_of_one_mebibyte_is_accepted_and_one_byte_more_refused() {
    // A provider reading the prompt on stdin: one argv element cannot hold a mebibyte.
    let sb = Sandbox::with_config(
        "[providers.reader]\ncommand = [\"cat\"]\nprompt = \"stdin\"\n",
    );
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        project.to_str().unwrap(),
        "--provider",
        "reader",
        "--name",
        "s",
    ])
    .ok();
    sb.ctl(&["pause", "s"]).ok(); // queue only: the prompt is not run
    let send = |size: usize| {
        let mut cmd = sb.sessionctl();
        cmd.args(["--json", "send", "s", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let prompt = format!("#{}", "x".repeat(size - 1));
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), prompt.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let at = send(1024 * 1024);
    assert!(
        at.status.success(),
        "{}",
        String::from_utf8_lossy(&at.stderr)
    );
    let past = send(1024 * 1024 + 1);
    assert_eq!(past.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&past.stderr).contains("limit is 1048576 bytes"));
}

#[test]
fn sixty_four_subscriptions_per_connection_and_not_sixty_five() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    for id in 1..=64u64 {
        conn.request(id, "subscribe", serde_json::json!({}));
        assert_eq!(kind(&conn.read().unwrap()), "response", "subscription {id}");
    }
    conn.request(65, "subscribe", serde_json::json!({}));
    let err = conn.read_error();
    assert_eq!((err.code, err.id), (ErrorCode::BUSY, Some(65)));
    assert!(err.message.contains("64 subscriptions"), "{}", err.message);
}

#[test]
fn filter_lists_of_1024_entries_are_accepted_and_1025_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    let filter = |n: usize| EventFilter {
        providers: (0..n).map(|i| format!("p{i}")).collect(),
        ..Default::default()
    };
    conn.request(1, "subscribe", serde_json::json!({"filter": filter(1024)}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    conn.request(2, "subscribe", serde_json::json!({"filter": filter(1025)}));
    assert_eq!(conn.read_error().code, ErrorCode::INVALID_ARGUMENT);
}

#[test]
fn connections_up_to_the_limit_are_served_and_one_more_refused() {
    let sb = Sandbox::with_config("[daemon]\nmax_connections = 3\n");
    let _daemon = sb.start_daemon();
    let mut held: Vec<_> = (0..3).map(|_| sb.raw()).collect();
    for conn in &mut held {
        conn.handshake();
    }
    let mut extra = sb.raw();
    assert_eq!(extra.read_error().code, ErrorCode::BUSY);
}
