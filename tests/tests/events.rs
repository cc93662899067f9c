//! Lifecycle events: ordering against answers, scope and seq, filters, subscription
//! management, a slow subscriber that must not slow anyone else, and `sessionctl watch`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use sessiond_client::{BlockingClient, Client};
use sessiond_proto::envelope::{ErrorFrame, Event, Lagged, Response};
use sessiond_proto::frame;
use sessiond_proto::methods::{
    Create, CreateParams, Ping, PingParams, Rename, RenameParams, SessionParams, Status,
    StatusParams, Subscribe, SubscribeParams, SubscribeResult, Switch, UnsubscribeParams,
};
use sessiond_proto::session::{EventFilter, Phase, SessionEvent, SessionId, SessionInfo};
use sessiond_proto::ErrorCode;
use sessiond_tests::report::{thousands, Row};
use sessiond_tests::{
    as_json, create_sessions, eventually, kind, session_event, tokio_runtime, RawConn, Sandbox,
    WAIT,
};

fn create_params(project: &std::path::Path, provider: &str) -> CreateParams {
    CreateParams {
        project: project.to_str().unwrap().to_string(),
        provider: provider.into(),
        name: None,
        cwd: None,
    }
}

fn subscribe_params(filter: EventFilter) -> SubscribeParams {
    SubscribeParams { filter }
}

/// Subscribes on a raw connection with request id `id`; returns the answer.
fn subscribe(conn: &mut RawConn, id: u64, filter: EventFilter) -> SubscribeResult {
    let (events, answer) = conn.call(id, "subscribe", subscribe_params(filter));
    assert!(events.is_empty(), "events before the subscription began");
    let response: Response<SubscribeResult> = frame::decode(&answer)
        .unwrap_or_else(|e| panic!("subscribe failed ({e}): {}", as_json(&answer)));
    assert_eq!(response.result.subscription, id);
    response.result
}

fn subscriptions(sb: &Sandbox) -> u64 {
    sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"]
        .as_u64()
        .expect("status reports subscriptions")
}

#[test]
fn creation_is_visible_to_a_subscriber_before_create_returns() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let mut conn = sb.raw();
    conn.handshake();
    subscribe(&mut conn, 1, EventFilter::default());

    let (events, answer) = conn.call(2, "create", create_params(&project, "shell"));
    let created: Response<SessionInfo> = frame::decode(&answer)
        .unwrap_or_else(|e| panic!("create failed ({e}): {}", as_json(&answer)));
    let info = created.result;
    assert_eq!(
        events.len(),
        1,
        "the session_created event precedes the create answer on the same connection"
    );
    let event = session_event(&events[0]);
    assert_eq!(event.event, "session_created");
    assert_eq!(event.subscription, Some(1));
    assert_eq!(event.data.session, info.id);
    let shown = event
        .data
        .info
        .expect("session_created carries the whole session");
    assert_eq!(shown.phase, Phase::Provisional);
    assert_eq!(
        shown, info,
        "the event's session is the one create answered"
    );

    // A creation by another client reaches the subscriber too.
    let mut creator = BlockingClient::connect(&sb.connect_options()).unwrap();
    let other = creator
        .call::<Create>(create_params(&project, "codex"))
        .unwrap();
    let event = session_event(&conn.read_event());
    assert_eq!(event.event, "session_created");
    assert_eq!(event.data.session, other.id);
}

#[test]
fn events_carry_scope_and_strictly_increasing_seq() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let p = project.to_str().unwrap();
    let mut conn = sb.raw();
    conn.handshake();
    let before = sessiond_proto::now_ms();
    let start = subscribe(&mut conn, 41, EventFilter::default());

    let id = sb.new_session(&project, &["--provider", "claude", "--name", "one"]);
    sb.ctl(&["rename", "one", "two"]).ok();
    sb.ctl(&["close", "two"]).ok();
    sb.ctl(&["reopen", "two"]).ok();
    sb.ctl(&["switch", "two"]).ok();
    let regenerated = sb.ctl(&["--json", "regenerate", "two"]).json();
    let child = regenerated["session"]["id"].as_str().unwrap().to_string();
    let after = sessiond_proto::now_ms();

    let events: Vec<Event<SessionEvent>> =
        (0..9).map(|_| session_event(&conn.read_event())).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session_created",
            "session_renamed",
            "session_state_changed",
            "session_archived",
            "session_state_changed",
            "session_reopened",
            "session_switched",
            "session_created",
            "session_switched",
        ]
    );
    let mut seq = start.seq;
    for (n, event) in events.iter().enumerate() {
        let expected = if n >= 7 { &child } else { &id };
        assert_eq!(event.data.session.to_string(), *expected, "event {n}");
        assert_eq!(event.data.project, p, "event {n}");
        assert_eq!(event.data.provider, "claude", "event {n}");
        assert_eq!(event.subscription, Some(41), "event {n}");
        assert_eq!(
            event.seq,
            seq + 1,
            "event {n}: seq follows on without a gap"
        );
        seq = event.seq;
        assert!(
            (before..=after).contains(&event.time),
            "event {n} time {} outside [{before}, {after}]",
            event.time
        );
    }
    let renamed = &events[1].data;
    assert_eq!(
        (renamed.from.as_deref(), renamed.to.as_deref()),
        (Some("one"), Some("two"))
    );
    for (n, from, to, reason) in [
        (2, "provisional", "archived", "archived by a client"),
        (4, "archived", "provisional", "reopened by a client"),
    ] {
        let changed = &events[n].data;
        assert_eq!(changed.field.as_deref(), Some("phase"));
        assert_eq!(
            (changed.from.as_deref(), changed.to.as_deref()),
            (Some(from), Some(to))
        );
        assert_eq!(changed.reason.as_deref(), Some(reason));
    }
    let switched = &events[6].data;
    assert_eq!(switched.context.as_deref(), Some("default"));
    assert_eq!(switched.generation, Some(1));
    let created = events[7].data.info.as_ref().expect("the new session");
    assert_eq!(created.parent_id.map(|p| p.to_string()), Some(id.clone()));
    let switched = &events[8].data;
    assert_eq!(switched.generation, Some(2));
    assert_eq!(switched.context.as_deref(), Some("default"));
}

#[test]
fn filters_select_by_project_provider_session_and_kind() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let p1 = sb.project("one");
    let p2 = sb.project("two");
    let p3 = sb.project("three");
    // The project filter is given through a symlink; sessions carry the canonical path.
    let link = sb.root.join("link-to-one");
    std::os::unix::fs::symlink(&p1, &link).unwrap();
    let mut client = BlockingClient::connect(&sb.connect_options()).unwrap();
    let s = client
        .call::<Create>(create_params(&p2, "shell"))
        .unwrap()
        .id;
    let z = client
        .call::<Create>(create_params(&p3, "gemini"))
        .unwrap()
        .id;

    // Each filter under test on a connection of its own, beside a sentinel subscription (id 99)
    // to session z's switches: z matches no filter under test, and when its event arrives,
    // every earlier event for that connection has arrived before it.
    let filters = [
        EventFilter {
            projects: vec![link.to_str().unwrap().into()],
            ..Default::default()
        },
        EventFilter {
            providers: vec!["claude".into()],
            ..Default::default()
        },
        EventFilter {
            sessions: vec![s],
            ..Default::default()
        },
        EventFilter {
            events: vec!["session_renamed".into()],
            ..Default::default()
        },
        EventFilter {
            projects: vec![p2.to_str().unwrap().into()],
            events: vec!["session_created".into()],
            ..Default::default()
        },
    ];
    let mut conns: Vec<RawConn> = filters
        .iter()
        .map(|filter| {
            let mut conn = sb.raw();
            conn.handshake();
            subscribe(&mut conn, 1, filter.clone());
            subscribe(
                &mut conn,
                99,
                EventFilter {
                    sessions: vec![z],
                    events: vec!["session_switched".into()],
                    ..Default::default()
                },
            );
            conn
        })
        .collect();

    let a = client
        .call::<Create>(create_params(&p1, "shell"))
        .unwrap()
        .id;
    let b = client
        .call::<Create>(create_params(&p1, "claude"))
        .unwrap()
        .id;
    let c = client
        .call::<Create>(create_params(&p2, "shell"))
        .unwrap()
        .id;
    let d = client
        .call::<Create>(create_params(&p2, "claude"))
        .unwrap()
        .id;
    for (session, name) in [(s, "s-renamed"), (a, "a-renamed")] {
        client
            .call::<Rename>(RenameParams {
                session: Some(session.to_string()),
                name: name.into(),
                ..Default::default()
            })
            .unwrap();
    }
    client
        .call::<Switch>(SessionParams {
            session: Some(z.to_string()),
            ..Default::default()
        })
        .unwrap();

    let created = "session_created";
    let renamed = "session_renamed";
    let expected: [Vec<(&str, SessionId)>; 5] = [
        vec![(created, a), (created, b), (renamed, a)],
        vec![(created, b), (created, d)],
        vec![(renamed, s)],
        vec![(renamed, s), (renamed, a)],
        vec![(created, c), (created, d)],
    ];
    for (n, (conn, expected)) in conns.iter_mut().zip(&expected).enumerate() {
        let mut got = Vec::new();
        loop {
            let event = session_event(&conn.read_event());
            if event.subscription == Some(99) {
                assert_eq!(
                    (event.event.as_str(), event.data.session),
                    ("session_switched", z)
                );
                break;
            }
            assert_eq!(event.subscription, Some(1));
            got.push((event.event.clone(), event.data.session));
        }
        let got: Vec<(&str, SessionId)> = got.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        assert_eq!(&got, expected, "filter {n}: {:?}", filters[n]);
    }
}

#[test]
fn unknown_event_kind_is_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    let filter = EventFilter {
        events: vec!["session_created".into(), "session_exploded".into()],
        ..Default::default()
    };
    let (_, answer) = conn.call(3, "subscribe", subscribe_params(filter));
    let err: ErrorFrame = frame::decode(&answer)
        .unwrap_or_else(|e| panic!("expected an error ({e}): {}", as_json(&answer)));
    assert_eq!(err.id, Some(3));
    assert_eq!(err.code, ErrorCode::INVALID_ARGUMENT);
    assert!(
        err.message
            .contains("unknown event kind \"session_exploded\""),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("session_switched"),
        "lists the known kinds: {}",
        err.message
    );
    assert_eq!(
        subscriptions(&sb),
        0,
        "a refused subscription does not exist"
    );

    // The connection still works, and nothing is delivered on it.
    let project = sb.project("p");
    let (events, answer) = conn.call(4, "create", create_params(&project, "shell"));
    assert_eq!(kind(&answer), "response");
    assert!(events.is_empty());

    let out = sb.ctl(&["watch", "--event", "session_exploded"]);
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr().contains("session_exploded"),
        "{}",
        out.stderr()
    );
    Row::new("bad input", "unknown_event_kind_is_refused")
        .done("subscribe (raw) and `sessionctl watch --event` with the kind `session_exploded`")
        .runs(2)
        .checked("the error, subscriptions held, the connection afterwards")
        .result(format!(
            "raw: {} naming the kind and listing the known ones, 0 subscriptions, the next \
             request answered with 0 events; watch: exit {}",
            err.code,
            out.code()
        ))
        .record();
}

#[test]
fn unsubscribe_stops_delivery() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let mut client = BlockingClient::connect(&sb.connect_options()).unwrap();
    let mut conn = sb.raw();
    conn.handshake();
    subscribe(&mut conn, 5, EventFilter::default());
    subscribe(
        &mut conn,
        6,
        EventFilter {
            events: vec!["session_switched".into()],
            ..Default::default()
        },
    );
    assert_eq!(subscriptions(&sb), 2);

    let first = client
        .call::<Create>(create_params(&project, "shell"))
        .unwrap();
    let event = session_event(&conn.read_event());
    assert_eq!(
        (event.subscription, event.event.as_str(), event.data.session),
        (Some(5), "session_created", first.id)
    );

    let (_, answer) = conn.call(7, "unsubscribe", UnsubscribeParams { subscription: 5 });
    assert_eq!(kind(&answer), "response", "{}", as_json(&answer));
    assert_eq!(subscriptions(&sb), 1);

    // A creation would reach subscription 5 only; the switch after it reaches 6. The first
    // event to arrive must be the switch.
    let second = client
        .call::<Create>(create_params(&project, "shell"))
        .unwrap();
    client
        .call::<Switch>(SessionParams {
            session: Some(second.id.to_string()),
            ..Default::default()
        })
        .unwrap();
    let event = session_event(&conn.read_event());
    assert_eq!(
        (event.subscription, event.event.as_str(), event.data.session),
        (Some(6), "session_switched", second.id)
    );

    let (_, answer) = conn.call(8, "unsubscribe", UnsubscribeParams { subscription: 99 });
    let err: ErrorFrame = frame::decode(&answer)
        .unwrap_or_else(|e| panic!("expected an error ({e}): {}", as_json(&answer)));
    assert_eq!(err.code, ErrorCode::NOT_FOUND);
    assert!(err.message.contains("99"), "{}", err.message);
    // Unsubscribing twice is unknown the second time.
    let (_, answer) = conn.call(9, "unsubscribe", UnsubscribeParams { subscription: 5 });
    assert_eq!(
        frame::decode::<ErrorFrame>(&answer).unwrap().code,
        ErrorCode::NOT_FOUND
    );
    assert_eq!(subscriptions(&sb), 1);
}

/// Sessions created in the slow-subscriber test: enough that, beyond what the socket buffers
/// hold, the stalled connection's queue (1,024 events) overflows.
const BURST: usize = 3000;
/// Changes in the other project during the flood.
const TRICKLE: usize = 50;

#[test]
fn slow_subscriber_gets_lagged_while_others_stay_fast() {
    // A subscriber that stops reading is kept however long it reads nothing, its events
    // counted: write_timeout_ms (short here) drops only a client that leaves an answer
    // waiting.
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 200\n");
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    // The other subscriber follows a second project, which gets a steady trickle of changes
    // during the flood. Whether a subscriber reading *everything* keeps up with a flood on a
    // loaded two-core machine is a matter of scheduling; that a stalled one costs the others
    // nothing is not, and that is what this proves.
    let other = sb.project("q");
    let other_text = std::fs::canonicalize(&other).unwrap().display().to_string();
    let opts = sb.connect_options();

    let mut slow = sb.raw();
    slow.handshake();
    let start = subscribe(&mut slow, 1, EventFilter::default());

    // The fast subscriber runs on a thread and runtime of its own, as a separate process
    // would: sharing the burst generator's two workers would starve its socket reader and
    // make it lag for reasons that have nothing to do with the daemon.
    let (fast_tx, fast_rx) = std::sync::mpsc::channel();
    let fast_opts = opts.clone();
    let fast_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let fast = Client::connect(&fast_opts).await.unwrap();
            let mut events = fast.take_events().unwrap();
            fast.call::<Subscribe>(subscribe_params(EventFilter {
                projects: vec![other_text],
                ..Default::default()
            }))
            .await
            .unwrap();
            fast_tx.send(()).unwrap();
            let mut created = Vec::with_capacity(TRICKLE);
            while created.len() < TRICKLE {
                let payload = tokio::time::timeout(WAIT, events.recv())
                    .await
                    .expect("the fast subscriber keeps receiving")
                    .expect("event stream open");
                let head = as_json(&payload);
                assert_ne!(
                    head["event"], "lagged",
                    "the fast subscriber lagged: {head}"
                );
                let event = session_event(&payload);
                assert_eq!(event.event, "session_created");
                created.push(event.data.session);
            }
            (created, fast.events_dropped())
        })
    });
    fast_rx
        .recv_timeout(WAIT)
        .expect("the fast subscriber subscribed");

    let mut pings_answered = 0;
    let mut fast_received = 0;
    let rt = tokio_runtime();
    rt.block_on(async {
        // Plain requests from a third client keep being answered during the burst.
        let mut ping_opts = opts.clone();
        ping_opts.timeout = Duration::from_secs(5);
        let pinger = Client::connect(&ping_opts).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let pings = Arc::new(AtomicU64::new(0));
        let ping_task = {
            let (done, pings) = (done.clone(), pings.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    pinger
                        .call::<Ping>(PingParams {})
                        .await
                        .expect("ping answered during the burst");
                    pings.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                pinger.call::<Status>(StatusParams {}).await.unwrap()
            })
        };

        let trickle = {
            let opts = opts.clone();
            let other = other.clone();
            tokio::spawn(async move {
                let mut made = Vec::with_capacity(TRICKLE);
                for _ in 0..TRICKLE {
                    made.extend(create_sessions(&opts, &other, 1).await);
                }
                made
            })
        };
        let flood = create_sessions(&opts, &project, BURST).await;
        let made = trickle.await.unwrap();
        let (received, fast_dropped) = fast_thread.join().expect("fast subscriber");
        done.store(true, Ordering::Relaxed);
        let status = ping_task.await.unwrap();
        pings_answered = pings.load(Ordering::Relaxed);
        fast_received = received.len();
        assert!(pings_answered > 0, "no ping completed during the burst");
        assert_eq!(flood.len(), BURST);
        assert_eq!(status.sessions, (BURST + TRICKLE) as u64);
        assert_eq!(fast_dropped, 0);
        let mut made: Vec<SessionId> = made.iter().map(|s| s.id).collect();
        let mut received = received;
        made.sort();
        received.sort();
        assert_eq!(
            received, made,
            "the other subscriber saw every creation in its project"
        );
    });

    // The slow subscriber was kept (not dropped) and now catches up: the events queued before
    // the gap, then one lagged notice counting the rest.
    let mut delivered = 0u64;
    let mut missed = 0u64;
    let mut last_seq = start.seq;
    let mut lagged_after = None;
    while delivered + missed < (BURST + TRICKLE) as u64 {
        let payload = slow.read_event();
        let head = as_json(&payload);
        if head["event"] == "lagged" {
            assert!(lagged_after.is_none(), "one lagged notice for one gap");
            let lagged: Event<Lagged> = frame::decode(&payload).unwrap();
            assert!(lagged.data.missed > 0);
            assert!(lagged.seq > last_seq, "lagged names the last missed seq");
            missed += lagged.data.missed;
            lagged_after = Some(delivered);
            last_seq = lagged.seq;
        } else {
            let event = session_event(&payload);
            assert_eq!(event.event, "session_created");
            assert!(event.seq > last_seq, "seq {} after {last_seq}", event.seq);
            last_seq = event.seq;
            delivered += 1;
        }
    }
    assert_eq!(delivered + missed, (BURST + TRICKLE) as u64);
    let after = lagged_after.expect("the stalled subscriber was told it lagged");
    assert!(
        after > 0,
        "events queued before the gap come before the notice"
    );
    assert!(missed > 0);
    // And the connection still serves requests.
    let (_, answer) = slow.call(2, "ping", PingParams {});
    assert_eq!(kind(&answer), "response");
    Row::new("load", "slow_subscriber_gets_lagged_while_others_stay_fast")
        .done(format!(
            "{} sessions created over 16 connections while one subscriber to everything reads \
             nothing; meanwhile {TRICKLE} creations in another project, followed by a second \
             subscriber, and a third client pinging",
            thousands(BURST as u64)
        ))
        .runs((BURST + TRICKLE) as u64)
        .checked(
            "the other subscriber gets all of its events without lagging; pings answered; \
             the stalled one is kept, then gets its queue, one lagged notice and the rest",
        )
        .result(format!(
            "other subscriber: {fast_received} of {TRICKLE} events, 0 lagged, 0 dropped; \
             {pings_answered} pings answered during the burst; stalled subscriber: {} \
             delivered then 1 lagged notice for {} missed ({} in all); its connection still \
             answers",
            thousands(delivered),
            thousands(missed),
            thousands(delivered + missed)
        ))
        .record();
}

#[test]
fn a_stalled_subscriber_is_kept_until_it_leaves_an_answer_waiting() {
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 200\n");
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let mut stalled = sb.raw();
    stalled.handshake();
    subscribe(&mut stalled, 1, EventFilter::default());
    tokio_runtime().block_on(create_sessions(&sb.connect_options(), &project, BURST));
    // Far more events than its socket holds: the daemon's write to it has taken nothing for
    // five times the write timeout, and it is still there, as a paused pager would want.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(subscriptions(&sb), 1, "the stalled subscriber was kept");
    // An answer it does not read is another matter: that client is gone or wedged.
    stalled.request(2, "ping", PingParams {});
    sessiond_tests::eventually("the client with an answer waiting to be dropped", || {
        subscriptions(&sb) == 0
    });
}

#[test]
fn a_paused_subscriber_does_not_hold_up_a_stop() {
    // Kept while it reads nothing, but a stop must not wait the whole grace for it: its
    // closing notice cannot reach it anyway.
    let sb = Sandbox::new();
    sb.ctl(&["daemon", "start"]).ok();
    let project = sb.project("p");
    let mut stalled = sb.raw();
    stalled.handshake();
    subscribe(&mut stalled, 1, EventFilter::default());
    tokio_runtime().block_on(create_sessions(&sb.connect_options(), &project, BURST));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(subscriptions(&sb), 1, "kept while paused");
    sb.ctl(&["daemon", "stop"]).ok();
    let log = std::fs::read_to_string(sb.state.join("sessiond.log")).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("still busy"), "the stop waited for it: {log}");
}

/// The next line a watch prints, as JSON.
fn next_event(lines: &Receiver<String>) -> serde_json::Value {
    let line = lines.recv_timeout(WAIT).expect("watch prints a line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn watch_prints_events_as_json_lines() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let (mut watch, lines) = sb.spawn_lines(&["watch", "--event", "session_created"]);
    eventually("watch to subscribe", || subscriptions(&sb) == 1);

    // Not a creation: filtered out.
    let first = sb.new_session(&project, &[]);
    sb.ctl(&["switch", &first]).ok();
    let second = sb.new_session(&project, &["--name", "watched"]);
    let events: Vec<serde_json::Value> = (0..2).map(|_| next_event(&lines)).collect();
    let _ = watch.kill();
    let _ = watch.wait();
    for (event, id) in events.iter().zip([&first, &second]) {
        assert_eq!(event["type"], "event");
        assert_eq!(event["event"], "session_created", "{event}");
        assert_eq!(event["data"]["session"], id.as_str());
        assert_eq!(event["data"]["project"], project.to_str().unwrap());
        assert!(event["seq"].as_u64().is_some(), "{event}");
    }
    assert_eq!(events.len(), 2);
    // Killed, the watcher's subscription ends with its connection.
    eventually("the subscription to end", || subscriptions(&sb) == 0);
}

#[test]
fn a_filter_no_event_can_match_is_refused() {
    let sb = Sandbox::with_config("[providers.retired]\ncommand = [\"true\", \"{prompt}\"]\n");
    let mut daemon = sb.start_daemon();
    // A session whose project directory is then deleted, and whose provider then leaves the
    // configuration: its events still carry both, so both must stay watchable.
    let gone = sb.project("gone");
    let old = sb.new_session(&gone, &["--provider", "retired", "--name", "old"]);
    std::fs::remove_dir(&gone).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().success());
    std::fs::write(&sb.config, "").unwrap();
    let _daemon = sb.start_daemon();

    let typo = sb.root.join("projects").join("typo");
    let typo = typo.to_str().unwrap();
    for (args, code, words) in [
        (
            &["--provider", "claud"][..],
            "invalid_argument",
            "unknown provider \"claud\"",
        ),
        (
            &["--provider", "shell", "--provider", "claud"],
            "invalid_argument",
            "claude, codex",
        ),
        (&["--project", typo], "invalid_argument", typo),
        (
            &["--session", "no-such-session"],
            "not_found",
            "no-such-session",
        ),
    ] {
        let out = sb.ctl(&[&["--json", "watch"], args].concat());
        out.refused(1, code, words);
    }
    let mut conn = sb.raw();
    conn.handshake();
    let stranger = SessionId::new_v4();
    let filter = EventFilter {
        sessions: vec![stranger],
        ..Default::default()
    };
    let (_, answer) = conn.call(5, "subscribe", subscribe_params(filter));
    let err: ErrorFrame = frame::decode(&answer).expect("an error frame");
    assert_eq!((err.id, err.code), (Some(5), ErrorCode::NOT_FOUND));
    assert!(
        err.message.contains(&stranger.to_string()),
        "{}",
        err.message
    );
    assert_eq!(subscriptions(&sb), 0, "a refused filter subscribes nothing");

    // The deleted directory (written with a trailing slash) and the dropped provider are
    // accepted, and the session's events come through; `list` finds the session by it too.
    let gone_slash = format!("{}/", gone.to_str().unwrap());
    let listed = sb.ctl(&["--json", "list", "--project", &gone_slash]).json();
    assert_eq!(listed["sessions"][0]["id"], old.as_str(), "{listed}");
    let (mut watch, lines) =
        sb.spawn_lines(&["watch", "--project", &gone_slash, "--provider", "retired"]);
    eventually("watch to subscribe", || subscriptions(&sb) == 1);
    sb.ctl(&["rename", &old, "older"]).ok();
    let event = next_event(&lines);
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(event["event"], "session_renamed", "{event}");
    assert_eq!(event["data"]["session"], old.as_str(), "{event}");
    Row::new("bad input", "a_filter_no_event_can_match_is_refused")
        .done(
            "`sessionctl watch` with a mistyped provider, a missing directory, an unknown \
             session; raw subscribe with an unknown id; then a deleted project and a dropped \
             provider that a stored session still carries",
        )
        .checked("exit status, error code and message, subscriptions held, delivery")
        .result(
            "each refused, naming the value, 0 subscriptions; the deleted project and dropped \
             provider accepted and the session's rename delivered",
        )
        .record();
}

#[test]
fn watch_looks_session_names_up_in_its_projects() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let (one, two) = (sb.project("one"), sb.project("two"));
    let _api_one = sb.new_session(&one, &["--name", "api"]);
    let api_two = sb.new_session(&two, &["--name", "api"]);
    let web_two = sb.new_session(&two, &["--name", "web"]);
    let (one, two) = (one.to_str().unwrap(), two.to_str().unwrap());

    // Alone, the name is ambiguous, and the refusal says how to choose.
    sb.ctl(&["--json", "watch", "--session", "api"])
        .refused(1, "ambiguous", "--project");

    // In a project, it is that project's session. With several projects, a name is kept
    // wherever it is found: web is only in two.
    let (mut watch, lines) = sb.spawn_lines(&[
        "watch",
        "--session",
        "api",
        "--session",
        "web",
        "--project",
        two,
    ]);
    let (mut both, both_lines) = sb.spawn_lines(&[
        "watch",
        "--session",
        "web",
        "--project",
        one,
        "--project",
        two,
    ]);
    eventually("both watches to subscribe", || subscriptions(&sb) == 2);
    sb.ctl(&["rename", "--project", one, "api", "api-one"]).ok();
    sb.ctl(&["rename", &api_two, "api-two"]).ok();
    sb.ctl(&["rename", &web_two, "web-two"]).ok();
    let seen: Vec<serde_json::Value> = (0..2).map(|_| next_event(&lines)).collect();
    let seen_both = next_event(&both_lines);
    for child in [&mut watch, &mut both] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let renamed = |e: &serde_json::Value| {
        assert_eq!(e["event"], "session_renamed", "{e}");
        e["data"]["session"].as_str().unwrap().to_string()
    };
    assert_eq!(
        seen.iter().map(renamed).collect::<Vec<_>>(),
        [api_two, web_two.clone()],
        "only project two's api and web, in order"
    );
    assert_eq!(renamed(&seen_both), web_two);

    // A name in none of the projects is refused with the first project's answer.
    sb.ctl(&[
        "--json",
        "watch",
        "--session",
        "nope",
        "--project",
        one,
        "--project",
        two,
    ])
    .refused(1, "not_found", "nope");
}

#[test]
fn oversized_filter_is_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    let filter = EventFilter {
        providers: (0..1025).map(|i| format!("p{i}")).collect(),
        ..Default::default()
    };
    let (_, answer) = conn.call(4, "subscribe", subscribe_params(filter));
    let err: ErrorFrame = frame::decode(&answer).expect("an error frame");
    assert_eq!((err.id, err.code), (Some(4), ErrorCode::INVALID_ARGUMENT));
    assert!(err.message.contains("at most 1024"), "{}", err.message);
    assert_eq!(subscriptions(&sb), 0);
}
