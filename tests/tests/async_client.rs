//! The async library client: concurrent calls on one connection, autostart, events plumbing.

use std::sync::Arc;

use sessiond_client::{Client, ClientError};
use sessiond_proto::methods::{
    Ping, PingParams, SetLogLevel, SetLogLevelParams, Status, StatusParams,
};
use sessiond_proto::ErrorCode;
use sessiond_tests::Sandbox;

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
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    runtime().block_on(async {
        let client = Client::connect(&sb.connect_options()).await.unwrap();
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        daemon.wait();
        let err = client.call::<Ping>(PingParams {}).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Disconnected(_)),
            "expected Disconnected, got {err:?}"
        );
    });
}
