//! Nothing acknowledged is lost: kill -9 during a burst of writes, restart, check every
//! acknowledged change; and a database that cannot be used stops the daemon, untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sessiond_client::Client;
use sessiond_proto::methods::{
    Create, CreateParams, List, ListParams, Rename, RenameParams, SessionParams, Switch,
};
use sessiond_proto::session::SessionId;
use sessiond_tests::report::Row;
use sessiond_tests::{run_bounded, Sandbox};

/// What the clients were told succeeded before the daemon died.
#[derive(Default)]
struct Acked {
    /// Session id → the names it may have: the last acknowledged one, and a newer one sent
    /// but not acknowledged (it may or may not have committed before the kill).
    names: HashMap<SessionId, Vec<String>>,
    /// Context → (generation, session) of the highest acknowledged switch.
    switches: HashMap<String, (u64, SessionId)>,
}

/// Runs six clients creating, switching and renaming as fast as they can until the daemon dies;
/// records what each was told succeeded.
fn burst(
    runtime: &tokio::runtime::Runtime,
    sb: &Sandbox,
    project: &str,
    acked: &Arc<Mutex<Acked>>,
    round: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..6)
        .map(|worker| {
            let mut opts = sb.connect_options();
            opts.autostart = false;
            let acked = acked.clone();
            let project = project.to_string();
            runtime.spawn(async move {
                let Ok(client) = Client::connect(&opts).await else {
                    return;
                };
                let context = format!("ctx{}", worker % 3);
                for i in 0.. {
                    let name = format!("r{round}-w{worker}-s{i}");
                    let created = client
                        .call::<Create>(CreateParams {
                            project: project.clone(),
                            provider: "shell".into(),
                            name: Some(name.clone()),
                            cwd: None,
                        })
                        .await;
                    let Ok(info) = created else { return };
                    acked
                        .lock()
                        .unwrap()
                        .names
                        .insert(info.id, vec![name.clone()]);
                    let switched = client
                        .call::<Switch>(SessionParams {
                            session: Some(info.id.to_string()),
                            project: None,
                            context: Some(context.clone()),
                        })
                        .await;
                    let Ok(pointer) = switched else { return };
                    {
                        let mut a = acked.lock().unwrap();
                        let entry = a.switches.entry(context.clone()).or_insert((0, info.id));
                        if pointer.generation > entry.0 {
                            *entry = (pointer.generation, info.id);
                        }
                    }
                    if i % 3 == 0 {
                        let renamed = format!("{name}-r");
                        acked
                            .lock()
                            .unwrap()
                            .names
                            .insert(info.id, vec![name.clone(), renamed.clone()]);
                        let ok = client
                            .call::<Rename>(RenameParams {
                                session: Some(info.id.to_string()),
                                project: None,
                                context: None,
                                name: renamed.clone(),
                            })
                            .await;
                        if ok.is_err() {
                            return;
                        }
                        acked.lock().unwrap().names.insert(info.id, vec![renamed]);
                    }
                }
            })
        })
        .collect()
}

/// Checks every context's highest acknowledged switch against the database the killed daemon
/// left: its row is at that generation or a later one, and at that generation it names the
/// acknowledged session. (Only the file can tell: a restarted daemon moves every generation
/// up by a large step, so the generation a client sees next is always higher.) Returns how
/// many contexts it checked.
fn verify_switches(sb: &Sandbox, acked: &Acked) -> usize {
    // Read-only: closing a read-write connection would checkpoint the log and delete it, and
    // the restarted daemon would no longer have to recover it.
    let db = rusqlite::Connection::open_with_flags(
        sb.paths().state_dir.join("sessiond.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    for (context, (generation, session)) in &acked.switches {
        let (stored, named): (i64, Option<String>) = db
            .query_row(
                "SELECT generation, session_id FROM contexts WHERE name = ?1",
                [context],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| {
                panic!("context {context}, switched at generation {generation}, has no row: {e}")
            });
        let stored = stored as u64;
        assert!(
            stored >= *generation,
            "context {context} went back from acknowledged generation {generation} to {stored}"
        );
        if stored == *generation {
            assert_eq!(
                named.as_deref(),
                Some(session.to_string().as_str()),
                "context {context} at generation {generation}"
            );
        }
    }
    acked.switches.len()
}

/// Checks that every session acknowledged so far is in the (restarted) daemon, with an
/// acknowledged name; returns how many it checked.
fn verify_sessions(runtime: &tokio::runtime::Runtime, sb: &Sandbox, acked: &Acked) -> usize {
    let mut opts = sb.connect_options();
    opts.autostart = false;
    runtime.block_on(async {
        let client = Client::connect(&opts).await.unwrap();
        let listed = client
            .call::<List>(ListParams {
                all: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let stored: HashMap<SessionId, Option<String>> = listed
            .sessions
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect();
        for (id, names) in &acked.names {
            let found = stored.get(id);
            assert!(
                found.is_some_and(|n| n.as_ref().is_some_and(|n| names.contains(n))),
                "acknowledged session {id} ({names:?}) was lost or lost its name: {found:?}"
            );
        }
    });
    acked.names.len()
}

#[test]
fn kill_9_during_a_burst_loses_no_acknowledged_change() {
    let sb = Sandbox::new();
    let project = sb.root.join("project");
    std::fs::create_dir(&project).unwrap();
    let project = project.display().to_string();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Several rounds, each killed at a different moment, each checking everything so far.
    const KILL_AFTER_MS: [u64; 5] = [350, 600, 150, 450, 250];
    const ROUNDS: usize = KILL_AFTER_MS.len();
    let mut checks = 0;
    for (round, run_ms) in KILL_AFTER_MS.into_iter().enumerate() {
        let mut daemon = sb.start_daemon();
        let workers = burst(&runtime, &sb, &project, &acked, round);
        std::thread::sleep(Duration::from_millis(run_ms));
        daemon.signal(Signal::SIGKILL);
        daemon.wait();
        runtime.block_on(async {
            for w in workers {
                let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
            }
        });
        let snapshot = acked.lock().unwrap();
        eprintln!(
            "round {round}: {} sessions acknowledged so far, switches in {} contexts",
            snapshot.names.len(),
            snapshot.switches.len()
        );
        let contexts = verify_switches(&sb, &snapshot);
        let _restarted = sb.start_daemon();
        let sessions = verify_sessions(&runtime, &sb, &snapshot);
        checks += sessions + contexts;
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.names.len() > 100,
        "the bursts acknowledged too little to prove anything"
    );
    Row::new(
        "crash",
        "kill_9_during_a_burst_loses_no_acknowledged_change",
    )
    .done(format!(
        "{ROUNDS} rounds of 6 clients creating, switching and renaming as fast as they can, \
             each ended by kill -9 at a different moment (150–600 ms in), then a restart"
    ))
    .runs(ROUNDS as u64)
    .checked(
        "every context's highest acknowledged switch, in the database the killed daemon \
             left; after every restart, every session acknowledged so far (with its \
             acknowledged name)",
    )
    .result(format!(
        "0 of {} acknowledged sessions lost or misnamed, 0 of {} contexts went back, over \
             {} checks in {ROUNDS} restarts",
        sessiond_tests::report::thousands(acked.names.len() as u64),
        acked.switches.len(),
        sessiond_tests::report::thousands(checks as u64)
    ))
    .record();
}

#[test]
fn damaged_database_stops_the_daemon_and_is_left_alone() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(&sb.state).unwrap();
    std::fs::set_permissions(
        &sb.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let db = sb.state.join("sessiond.db");
    let junk = b"definitely not an SQLite database, but somebody's data all the same";
    std::fs::write(&db, junk).unwrap();
    let out = run_bounded(&mut sb.sessiond());
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let err = out.stderr();
    assert!(
        err.contains(&db.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("mv "), "says how to start over: {err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        junk,
        "never silently recreated"
    );
    assert!(!sb.socket().exists());
    Row::new(
        "fault",
        "damaged_database_stops_the_daemon_and_is_left_alone",
    )
    .done(format!(
        "started sessiond on a sessiond.db of {} bytes that is not SQLite",
        junk.len()
    ))
    .checked("exit status, message, the file's bytes, the socket")
    .result(format!(
        "exit {} naming the file and an `mv` to start over; {} of {} bytes unchanged; no \
             socket",
        out.code(),
        junk.len(),
        junk.len()
    ))
    .record();
}

#[test]
fn sessions_contexts_and_names_survive_a_clean_restart() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let id = sb.ctl(&[
        "new",
        "--name",
        "keep-me",
        "--project",
        sb.root.to_str().unwrap(),
    ]);
    let id = id.ok().trim().to_string();
    sb.ctl(&["--context", "nvim", "switch", "keep-me"]).ok();
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().code(), Some(0));
    let _again = sb.start_daemon();
    let shown = sb.ctl(&["--json", "show", "keep-me"]).json();
    assert_eq!(shown["id"], id);
    let current = sb.ctl(&["--json", "--context", "nvim", "current"]).json();
    assert_eq!(current["session"]["id"], id);
    // A restart moves generations past anything the previous run may have shown.
    let generation = current["generation"].as_u64().unwrap();
    assert!(generation > 1, "generation {generation} after a restart");
    let next = sb
        .ctl(&["--json", "--context", "nvim", "switch", "keep-me"])
        .json();
    assert_eq!(next["generation"].as_u64().unwrap(), generation + 1);
}

/// A switch is answered before its fsync (which follows within milliseconds), but only once
/// it is in the database's log: a daemon killed the moment it answers has the switch on disk.
/// Both ways a switch is committed: by the thread that answers it (nobody subscribes), and
/// by the store thread (a `watch` subscribes, so the answering thread delivers the event).
#[test]
fn a_switch_survives_kill_9_the_moment_it_is_answered() {
    let sb = Sandbox::new();
    let project = sb.project("p");
    for subscribed in [false, true] {
        let mut daemon = sb.start_daemon();
        let ids = [sb.new_session(&project, &[]), sb.new_session(&project, &[])];
        let watch = subscribed.then(|| {
            let (watch, _lines) = sb.spawn_lines(&["watch", "--event", "session_switched"]);
            sessiond_tests::eventually("watch to subscribe", || {
                sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"] == 1
            });
            watch
        });
        let mut opts = sb.connect_options();
        opts.autostart = false;
        let mut client = sessiond_client::BlockingClient::connect(&opts).unwrap();
        let mut last = None;
        for i in 0..200 {
            let session = &ids[i % 2];
            let pointer = client
                .call::<Switch>(SessionParams {
                    session: Some(session.clone()),
                    project: None,
                    context: Some("editor".into()),
                })
                .unwrap();
            last = Some((pointer.generation, session.clone()));
        }
        daemon.signal(Signal::SIGKILL);
        daemon.wait();
        if let Some(mut watch) = watch {
            let _ = watch.kill();
            let _ = watch.wait();
        }
        let (generation, session) = last.unwrap();
        let mut acked = Acked::default();
        acked.switches.insert(
            "editor".into(),
            (generation, session.parse::<SessionId>().unwrap()),
        );
        verify_switches(&sb, &acked);
        // The restarted daemon points the context at it.
        let _daemon = sb.start_daemon();
        let current = sb.ctl(&["--json", "--context", "editor", "current"]).json();
        assert_eq!(
            current["session"]["id"],
            session.as_str(),
            "subscribed: {subscribed}: {current}"
        );
    }
}
