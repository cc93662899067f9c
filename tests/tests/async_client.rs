//! The async library client: concurrent calls on one connection, autostart, events plumbing.

use std::sync::Arc;

use sessiond_client::{Client, ClientError};
use sessiond_proto::methods::{
    Ping, PingParams, SetLogLevel, SetLogLevelParams, Status, StatusParams,
};
use sessiond_proto::ErrorCode;
use sessiond_tests::report::Row;
use sessiond_tests::{Sandbox, WAIT};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn concurrent_calls_on_one_connection_each_get_their_own_answer() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    runtime().block_on(async {
        let client = Arc::new(Client::connect(&sb.connect_options()).await.unwrap());
        assert_eq!(client.welcome().pid as i32, daemon.pid());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    client.call::<Ping>(PingParams {}).await.map(|_| None)
                } else {
                    client
                        .call::<Status>(StatusParams {})
                        .await
                        .map(|s| Some(s.pid))
                }
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let answer = task.await.unwrap().unwrap();
            if i % 2 == 1 {
                assert_eq!(answer, Some(daemon.pid() as u32));
            }
        }
    });
}

#[test]
fn async_client_autostarts_and_surfaces_remote_errors_by_code() {
    let sb = Sandbox::new();
    runtime().block_on(async {
        let client = Client::connect(&sb.connect_options()).await.unwrap();
        let err = client
            .call::<SetLogLevel>(SetLogLevelParams {
                level: "nope".into(),
            })
            .await
            .unwrap_err();
        match err {
            ClientError::Remote { code, message } => {
                assert_eq!(code, ErrorCode::INVALID_ARGUMENT);
                assert!(message.contains("nope"));
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        // The connection is still good after a failed call.
        client.call::<Ping>(PingParams {}).await.unwrap();
    });
    assert!(sb.recorded_pid().is_some(), "a daemon was autostarted");
}

#[test]
fn pending_calls_fail_cleanly_when_the_daemon_goes_away() {
    const CALLERS: usize = 20;
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let (answered, disconnected) = runtime().block_on(async {
        let client = Arc::new(Client::connect(&sb.connect_options()).await.unwrap());
        // Callers keep calls in flight on the one connection until it breaks, so the kill
        // lands with calls pending.
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut answered = 0u64;
                    loop {
                        match client.call::<Ping>(PingParams {}).await {
                            Ok(_) => answered += 1,
                            Err(e) => return (answered, e),
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        daemon.wait();
        let mut answered = 0;
        let mut disconnected = 0;
        for caller in callers {
            let (n, err) = tokio::time::timeout(WAIT, caller)
                .await
                .expect("a pending call hung after the daemon died")
                .unwrap();
            assert!(
                matches!(err, ClientError::Disconnected(_)),
                "expected Disconnected, got {err:?}"
            );
            answered += n;
            disconnected += 1;
        }
        // And a call made afterwards fails the same way, at once.
        let err = client.call::<Ping>(PingParams {}).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Disconnected(_)),
            "expected Disconnected, got {err:?}"
        );
        (answered, disconnected + 1)
    });
    Row::new(
        "crash",
        "pending_calls_fail_cleanly_when_the_daemon_goes_away",
    )
    .done(format!(
        "kill -9 of the daemon while {CALLERS} tasks keep pings in flight on one async \
             client connection, then one more call"
    ))
    .runs(disconnected as u64)
    .checked("every pending and later call ends with Disconnected within 10 s")
    .result(format!(
        "{answered} pings answered before the kill; {disconnected} of {} calls in flight \
             or after failed with Disconnected; 0 hung",
        CALLERS + 1
    ))
    .record();
}

/// The client's own gap swallows frames, and one of them may be the daemon's `lagged` notice:
/// the `lagged` the application finally gets must count the daemon's missed events too.
#[test]
fn a_lagged_notice_dropped_in_the_clients_own_gap_keeps_its_count() {
    use sessiond_proto::frame;
    let sb = Sandbox::new();
    let listener = sb.fake_listener();
    let daemon = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _hello = frame::read_frame(&mut stream, 1 << 20).unwrap();
        let welcome = serde_json::json!({
            "type": "welcome", "protocol": [1, 0], "version": "test", "pid": 1,
            "capabilities": ["ping"],
        });
        let mut out = frame::encode(&welcome).unwrap();
        let event = |seq: u64| {
            frame::encode(&serde_json::json!({
                "type": "event", "seq": seq, "time": 1, "event": "session_created",
                "subscription": 1, "data": {"session": "0b8e3c1a-6a0e-4b7e-9d51-3c2f1e4d5a6b"},
            }))
            .unwrap()
        };
        // More than the client buffers (4,096), then the daemon's own gap of 100, then one
        // more event: the client drops the overflow event, the notice and the last event.
        for seq in 1..=4097 {
            out.extend(event(seq));
        }
        out.extend(
            frame::encode(&serde_json::json!({
                "type": "event", "seq": 4198, "time": 1, "event": "lagged",
                "data": {"missed": 100},
            }))
            .unwrap(),
        );
        out.extend(event(4199));
        std::io::Write::write_all(&mut stream, &out).unwrap();
        // Hold the connection open until the client has read everything.
        let _ = frame::read_frame(&mut stream, 1 << 20);
    });
    let (delivered, missed) = runtime().block_on(async {
        let mut opts = sb.connect_options();
        opts.autostart = false;
        let client = Client::connect(&opts).await.unwrap();
        let mut events = client.take_events().unwrap();
        // Let every frame arrive before reading any.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (mut delivered, mut missed) = (0u64, 0u64);
        // Events 1..=4,097 and 4,199, plus the 100 the notice stands for.
        while delivered + missed < 4098 + 100 {
            let payload = tokio::time::timeout(WAIT, events.recv())
                .await
                .expect("events keep coming")
                .expect("the stream stays open");
            let value = sessiond_tests::as_json(&payload);
            if value["event"] == "lagged" {
                missed += value["data"]["missed"].as_u64().unwrap();
            } else {
                delivered += 1;
            }
        }
        assert_eq!(client.events_dropped(), missed);
        (delivered, missed)
    });
    drop(daemon);
    // 4,096 delivered; event 4,097, the daemon's 100 and event 4,199 accounted as missed.
    assert_eq!(delivered, 4096);
    assert_eq!(missed, 102, "the daemon's 100 were lost from the count");
}

/// Requests larger together than the socket's buffer: a call writes what the socket takes
/// and the rest is queued behind it, so later calls must wait their turn instead of writing
/// into the middle of an earlier frame. Every request must arrive whole and be answered (a
/// frame cut by another would be refused and close the connection).
#[test]
fn requests_overflowing_the_socket_arrive_whole_and_in_order() {
    use sessiond_proto::methods::{Queue, SessionParams, Submit, SubmitParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("big");
    let session = sb.new_session(&project, &[]);
    sb.ctl(&["pause", &session]).ok();
    runtime().block_on(async {
        let client = Arc::new(Client::connect(&sb.connect_options()).await.unwrap());
        const CALLS: usize = 32;
        // 32 × 100 KiB is many times a Unix socket's buffer.
        let prompt = |i: usize| format!("#{i:03}{}", "x".repeat(100 * 1024));
        let tasks: Vec<_> = (0..CALLS)
            .map(|i| {
                let client = client.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    client
                        .call::<Submit>(SubmitParams {
                            session: Some(session),
                            prompt: prompt(i),
                            ..Default::default()
                        })
                        .await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let turn = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(
                turn.turn.prompt,
                prompt(i),
                "call {i} came back with another prompt"
            );
        }
        let queue = client
            .call::<Queue>(SessionParams {
                session: Some(session.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        // Concurrent calls have no order among themselves; each prompt must be there, whole.
        let mut queued: Vec<&str> = queue.queued.iter().map(|t| t.prompt.as_str()).collect();
        queued.sort_unstable();
        let sent: Vec<String> = (0..CALLS).map(prompt).collect();
        assert!(
            queued == sent,
            "a queued prompt differs from every prompt sent"
        );
        // The connection is still in step after all that.
        client.call::<Ping>(PingParams {}).await.unwrap();
    });
}

/// A fake daemon on the sandbox socket: reads the hello, sends a welcome, then `then`'s bytes
/// for each request it reads (`None`: stop answering but keep the connection open).
fn scripted_daemon(
    sb: &Sandbox,
    mut then: impl FnMut(usize) -> Option<Vec<u8>> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use sessiond_proto::frame;
    let listener = sb.fake_listener();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _hello = frame::read_frame(&mut stream, 1 << 20);
        let welcome = serde_json::json!({
            "type": "welcome", "protocol": [1, 0], "version": "test", "pid": 1,
            "capabilities": ["ping"],
        });
        std::io::Write::write_all(&mut stream, &frame::encode(&welcome).unwrap()).unwrap();
        let mut n = 0;
        while let Ok(Some(_)) = frame::read_frame(&mut stream, 1 << 20) {
            match then(n) {
                Some(bytes) => {
                    if std::io::Write::write_all(&mut stream, &bytes).is_err() {
                        return;
                    }
                }
                None => std::thread::sleep(std::time::Duration::from_secs(3)),
            }
            n += 1;
        }
    })
}

#[test]
fn dropping_the_client_ends_its_event_stream() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    runtime().block_on(async {
        let client = Client::connect(&sb.connect_options()).await.unwrap();
        let mut events = client.take_events().unwrap();
        drop(client);
        let end = tokio::time::timeout(WAIT, events.recv()).await;
        assert_eq!(end, Ok(None), "the stream ends with its client");
    });
}

#[test]
fn once_the_connection_has_ended_calls_fail_at_once_saying_why() {
    let sb = Sandbox::new();
    // The first answer announces 300 MB: more than a client takes, so its reader stops.
    let daemon = scripted_daemon(&sb, |_| Some((300u32 << 20).to_be_bytes().to_vec()));
    runtime().block_on(async {
        let mut opts = sb.connect_options();
        opts.autostart = false;
        opts.timeout = std::time::Duration::from_secs(20);
        let client = Client::connect(&opts).await.unwrap();
        let first = client.call::<Ping>(PingParams {}).await.unwrap_err();
        assert_eq!(first.code(), "answer_too_large", "{first}");
        let started = std::time::Instant::now();
        let later = client.call::<Ping>(PingParams {}).await.unwrap_err();
        assert_eq!(later.code(), "answer_too_large", "{later}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "a call on an ended connection waited {:?} instead of failing",
            started.elapsed()
        );
    });
    daemon.join().unwrap();
}

#[test]
fn a_lost_connection_is_reported_once_not_wrapped_twice() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    runtime().block_on(async {
        let client = Client::connect(&sb.connect_options()).await.unwrap();
        // The daemon dies while the call waits for a turn to be accepted... or before: either
        // way the call ends with the one reason.
        let call = client.call::<Status>(StatusParams {});
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        let err = match call.await {
            Ok(_) => client.call::<Status>(StatusParams {}).await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.code(), "disconnected", "{err}");
        let text = err.to_string();
        assert_eq!(
            text.matches("connection to sessiond lost").count(),
            1,
            "{text}"
        );
    });
    daemon.wait();
}

#[test]
fn an_oversized_request_is_refused_for_its_size_every_time() {
    use sessiond_proto::methods::{Submit, SubmitParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    runtime().block_on(async {
        for _ in 0..5 {
            let client = Client::connect(&sb.connect_options()).await.unwrap();
            let err = client
                .call::<Submit>(SubmitParams {
                    session: Some("none".into()),
                    prompt: "x".repeat(9 << 20),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), "frame_too_large", "{err}");
        }
    });
}

#[test]
fn a_blocking_client_times_out_a_write_and_is_unusable_after() {
    use sessiond_client::BlockingClient;
    use sessiond_proto::methods::{Submit, SubmitParams};
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let mut opts = sb.connect_options();
    opts.timeout = std::time::Duration::from_millis(500);
    let mut client = BlockingClient::connect(&opts).unwrap();
    client.call::<Ping>(PingParams {}).unwrap();
    // A stopped daemon takes nothing: a prompt larger than the socket holds cannot be sent.
    daemon.signal(nix::sys::signal::Signal::SIGSTOP);
    let err = client
        .call::<Submit>(SubmitParams {
            session: Some("none".into()),
            prompt: "x".repeat(900_000),
            ..Default::default()
        })
        .unwrap_err();
    daemon.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(err.code(), "timeout", "{err}");
    // Half a request went out: nothing more may follow it on this connection.
    let after = client.call::<Ping>(PingParams {}).unwrap_err();
    assert_eq!(after.code(), "disconnected", "{after}");
    assert!(after.to_string().contains("connect again"), "{after}");
    BlockingClient::connect(&opts)
        .unwrap()
        .call::<Ping>(PingParams {})
        .unwrap();
}

#[test]
fn a_blocking_client_is_unusable_after_an_answer_stalled_part_way() {
    use sessiond_client::BlockingClient;
    let sb = Sandbox::new();
    // Two bytes of an answer's length, then nothing: the rest would be read as a new frame.
    let daemon = scripted_daemon(&sb, |n| (n == 0).then(|| vec![0, 0]));
    let mut opts = sb.connect_options();
    opts.autostart = false;
    opts.timeout = std::time::Duration::from_millis(300);
    let mut client = BlockingClient::connect(&opts).unwrap();
    let first = client.call::<Ping>(PingParams {}).unwrap_err();
    assert_eq!(first.code(), "timeout", "{first}");
    let second = client.call::<Ping>(PingParams {}).unwrap_err();
    assert_eq!(second.code(), "disconnected", "{second}");
    drop(client);
    daemon.join().unwrap();
}

#[test]
fn a_blocking_client_waiting_for_events_may_time_out_and_wait_again() {
    use sessiond_client::BlockingClient;
    use sessiond_proto::methods::{Subscribe, SubscribeParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut client = BlockingClient::connect(&sb.connect_options()).unwrap();
    client
        .call::<Subscribe>(SubscribeParams {
            filter: Default::default(),
        })
        .unwrap();
    client
        .set_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    for _ in 0..2 {
        let quiet = client.next_event().unwrap_err();
        assert_eq!(quiet.code(), "timeout", "{quiet}");
    }
    client.call::<Ping>(PingParams {}).unwrap();
    // An event that comes after the timeouts still arrives.
    sb.ctl(&["new", "--project", sb.project("p").to_str().unwrap()])
        .ok();
    client.set_timeout(Some(WAIT)).unwrap();
    let event = sessiond_tests::as_json(&client.next_event().unwrap().expect("an event"));
    assert_eq!(event["event"], "session_created", "{event}");
}
