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
