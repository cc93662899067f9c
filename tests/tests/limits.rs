//! Every limit, at the limit (accepted) and one past it (refused with a clear error).

use sessiond_proto::envelope::Request;
use sessiond_proto::session::EventFilter;
use sessiond_proto::{frame, ErrorCode};
use sessiond_tests::report::Row;
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
    let past = conn.read_error();
    assert_eq!(past.code, ErrorCode::FRAME_TOO_LARGE);
    assert!(past.message.contains("4097"), "{}", past.message);
    conn.expect_closed();
    Row::new(
        "bad input",
        "frame_at_the_limit_is_read_and_one_byte_more_is_refused",
    )
    .done("max_frame_bytes = 4096: a frame of exactly 4,096 payload bytes, then one of 4,097")
    .runs(2)
    .checked("at the limit: read and answered; one past: refused, connection closed")
    .result(format!(
        "4,096 bytes answered ({}); 4,097 bytes refused with {} and closed",
        err.code, past.code
    ))
    .record();
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
    let shown = sb.ctl(&["--json", "show", &at]).json();
    assert_eq!(shown["name"], at.as_str(), "stored whole");
    let past = "é".repeat(101);
    let out = sb.ctl(&["new", "--project", p, "--name", &past]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("limit is 100"), "{}", out.stderr());
    // Renaming is held to the same limit.
    let id = shown["id"].as_str().unwrap();
    let out = sb.ctl(&["rename", id, &past]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("limit is 100"), "{}", out.stderr());
    assert_eq!(sb.list_all()["sessions"].as_array().unwrap().len(), 1);
    Row::new(
        "bad input",
        "session_name_of_100_characters_is_accepted_and_101_refused",
    )
    .done("names of 100 and 101 two-byte characters, on new and on rename")
    .runs(3)
    .checked("at the limit stored whole; one past refused on new and rename")
    .result(format!(
        "100 characters ({} bytes) stored; 101 refused twice with exit {} (`limit is \
             100`); 1 session stored",
        at.len(),
        out.code()
    ))
    .record();
}

#[test]
fn prompt_of_one_mebibyte_is_accepted_and_one_byte_more_refused() {
    // A provider that takes the prompt on stdin: an argv element could not carry 1 MiB, so
    // the daemon refuses such prompts for argv providers long before this limit.
    let sb = Sandbox::with_config("[providers.stdin]\ncommand = [\"cat\"]\nprompt = \"stdin\"\n");
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        project.to_str().unwrap(),
        "--name",
        "s",
        "--provider",
        "stdin",
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
    // Over the wire, to read the stored prompt's length without printing a mebibyte.
    let mut conn = sb.raw();
    conn.handshake();
    let (_, answer) = conn.call(1, "queue", serde_json::json!({"session": "s"}));
    let queue = sessiond_tests::as_json(&answer);
    let queued = queue["result"]["queued"].as_array().unwrap();
    assert_eq!(queued.len(), 1, "only the prompt at the limit was stored");
    assert_eq!(queued[0]["prompt"].as_str().unwrap().len(), 1024 * 1024);
    Row::new(
        "bad input",
        "prompt_of_one_mebibyte_is_accepted_and_one_byte_more_refused",
    )
    .done("prompts of 1,048,576 and 1,048,577 bytes on stdin to a stdin provider")
    .runs(2)
    .checked("at the limit queued whole; one past refused and not stored")
    .result(format!(
        "1,048,576 bytes queued ({} queued turn of {} bytes); 1,048,577 refused with exit \
             {} (`limit is 1048576 bytes`)",
        queued.len(),
        queued[0]["prompt"].as_str().unwrap().len(),
        past.status.code().unwrap()
    ))
    .record();
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
    assert_eq!((&err.code, err.id), (&ErrorCode::BUSY, Some(65)));
    assert!(err.message.contains("64 subscriptions"), "{}", err.message);
    // The connection stays usable, and a freed slot can be taken again.
    conn.request(66, "unsubscribe", serde_json::json!({"subscription": 64}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    conn.request(67, "subscribe", serde_json::json!({}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    Row::new(
        "bad input",
        "sixty_four_subscriptions_per_connection_and_not_sixty_five",
    )
    .done("64 subscriptions on one connection, then a 65th; then one freed and retaken")
    .runs(66)
    .checked("at the limit all accepted; one past refused; the connection stays usable")
    .result(format!(
        "64 of 64 accepted; the 65th refused with {} (`64 subscriptions`); a freed slot \
             retaken",
        err.code
    ))
    .record();
}

#[test]
fn filter_lists_of_1024_entries_are_accepted_and_1025_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    // Every entry must be a provider an event can carry, so the built-in ones repeat: the
    // limit is on the list as sent.
    let builtin = ["claude", "codex", "gemini", "shell"];
    let filter = |n: usize| EventFilter {
        providers: (0..n).map(|i| builtin[i % 4].to_string()).collect(),
        ..Default::default()
    };
    conn.request(1, "subscribe", serde_json::json!({"filter": filter(1024)}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    conn.request(2, "subscribe", serde_json::json!({"filter": filter(1025)}));
    let err = conn.read_error();
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    Row::new(
        "bad input",
        "filter_lists_of_1024_entries_are_accepted_and_1025_refused",
    )
    .done("subscribe with a providers filter of 1,024 entries, then 1,025")
    .runs(2)
    .checked("at the limit accepted; one past refused")
    .result(format!("1,024 accepted; 1,025 refused with {}", err.code))
    .record();
}

#[test]
fn sessions_per_request_1024_accepted_and_1025_refused_in_every_filter_list() {
    // A request names sessions only in a subscription's filter, and every filter list
    // (sessions, projects, providers, event kinds) has the same limit of 1,024 entries.
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let real = sb.new_session(&project, &["--name", "watched"]);
    let mut conn = sb.raw();
    conn.handshake();
    let status = |sb: &Sandbox| {
        sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"]
            .as_u64()
            .unwrap()
    };
    // Every entry must be one an event can carry. Directories with no session in them are
    // distinct entries; a session id only the one real session has, so it repeats: repeats
    // count, the limit is on the list as sent.
    let dirs: Vec<String> = (0..1025)
        .map(|i| sb.project(&format!("q{i}")).to_str().unwrap().to_string())
        .collect();
    let list = |field: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| match field {
                "sessions" => real.clone(),
                "projects" => dirs[i].clone(),
                _ => "session_renamed".to_string(),
            })
            .collect()
    };
    let mut id = 0;
    let mut accepted = 0;
    let mut refused = 0;
    for field in ["sessions", "projects", "events"] {
        id += 1;
        conn.request(
            id,
            "subscribe",
            serde_json::json!({"filter": {field: list(field, 1024)}}),
        );
        let answer = conn.read().unwrap();
        assert_eq!(
            kind(&answer),
            "response",
            "{field} at 1,024: {}",
            sessiond_tests::as_json(&answer)
        );
        accepted += 1;
        id += 1;
        conn.request(
            id,
            "subscribe",
            serde_json::json!({"filter": {field: list(field, 1025)}}),
        );
        let err = conn.read_error();
        assert_eq!(
            (err.code, err.id),
            (ErrorCode::INVALID_ARGUMENT, Some(id)),
            "{field} at 1,025"
        );
        assert!(err.message.contains("at most 1024"), "{}", err.message);
        refused += 1;
    }
    assert_eq!(
        status(&sb),
        accepted,
        "only the subscriptions at the limit exist"
    );
    // The 1,024-entry session list works: renaming the session it names is delivered
    // to it (and to the event-kind one), and to nobody else.
    sb.ctl(&["rename", &real, "renamed"]).ok();
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let event = sessiond_tests::as_json(&conn.read_event());
        assert_eq!(event["event"], "session_renamed", "{event}");
        assert_eq!(event["data"]["session"], real.as_str());
        got.insert(event["subscription"].as_u64().unwrap());
    }
    assert_eq!(
        got,
        [1, 5].into_iter().collect(),
        "delivered to the right subscriptions"
    );
    Row::new(
        "bad input",
        "sessions_per_request_1024_accepted_and_1025_refused_in_every_filter_list",
    )
    .done("subscribe filters of 1,024 and 1,025 session ids, project paths and event kinds")
    .runs(accepted + refused)
    .checked("at the limit accepted and delivering; one past refused; subscriptions held")
    .result(format!(
        "{accepted} of 3 lists at 1,024 accepted (the 1,024-entry sessions list delivered its \
             session's rename); {refused} of 3 at 1,025 refused with invalid_argument; {} \
             subscriptions held",
        status(&sb)
    ))
    .record();
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
    let err = extra.read_error();
    assert_eq!(err.code, ErrorCode::BUSY);
    extra.expect_closed();
    // Those held are still served.
    for (i, conn) in held.iter_mut().enumerate() {
        conn.request(i as u64, "ping", serde_json::json!({}));
        assert_eq!(kind(&conn.read().unwrap()), "response");
    }
    Row::new(
        "bad input",
        "connections_up_to_the_limit_are_served_and_one_more_refused",
    )
    .done("max_connections = 3: three connections held, a fourth opened")
    .runs(4)
    .checked("at the limit all three served; one past refused and closed")
    .result(format!(
        "3 of 3 handshakes and pings answered; the 4th refused with {} and closed",
        err.code
    ))
    .record();
}
