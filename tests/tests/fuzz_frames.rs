//! Random and mutated frames against a live daemon: each gets an error frame, an answer or a
//! close (never a hang), the daemon survives, keeps serving others, and its memory stays
//! bounded. The cases come from proptest with a fixed seed, so every run tries the same 200
//! and a failure is reproducible; a cargo-fuzz target for the same decoders comes next.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;
use sessiond_proto::envelope::{Hello, Request};
use sessiond_proto::methods::{CreateParams, SetLogLevelParams, SubmitParams};
use sessiond_proto::{frame, PROTOCOL_VERSION};
use sessiond_tests::report::Row;
use sessiond_tests::{kind, rss_kb, Sandbox};

/// A few real request frames to mutate.
fn seeds(project: &str) -> Vec<Vec<u8>> {
    vec![
        frame::encode(&Request::new(1, "ping", serde_json::json!({}))).unwrap(),
        frame::encode(&Request::new(
            2,
            "create",
            CreateParams {
                project: project.into(),
                provider: "shell".into(),
                name: Some("fuzz".into()),
                cwd: None,
            },
        ))
        .unwrap(),
        frame::encode(&Request::new(
            3,
            "submit",
            SubmitParams {
                session: Some("fuzz".into()),
                prompt: "true".into(),
                ..Default::default()
            },
        ))
        .unwrap(),
        frame::encode(&Request::new(
            4,
            "set_log_level",
            SetLogLevelParams {
                level: "info".into(),
            },
        ))
        .unwrap(),
    ]
}

/// How to damage a seed frame.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    /// Replace the length prefix (the payload stays).
    Length(u32),
    Garbage(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        any::<usize>().prop_map(Damage::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<u32>().prop_map(Damage::Length),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Garbage),
    ]
}

fn apply(seed: &[u8], d: &Damage) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    match d {
        Damage::Flip(i, x) => {
            let i = i % bytes.len();
            bytes[i] ^= x;
        }
        Damage::Truncate(i) => bytes.truncate(i % bytes.len()),
        Damage::Insert(i, extra) => {
            let i = 4 + i % (bytes.len() - 3);
            bytes.splice(
                i.min(bytes.len())..i.min(bytes.len()),
                extra.iter().copied(),
            );
            let len = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&len.to_be_bytes());
        }
        Damage::Length(len) => bytes[..4].copy_from_slice(&len.to_be_bytes()),
        Damage::Garbage(g) => bytes = g.clone(),
    }
    bytes
}

/// How the daemon met one damaged frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// At least one error frame, then the end of the stream.
    Error,
    /// Answered (a response), without an error: the damage left a valid request.
    Answered,
    /// Closed without anything but the welcome.
    Closed,
}

/// Sends hello and the damaged frame, then reads until the daemon answers, refuses, or
/// closes. A frame cut short leaves the daemon waiting for the rest: the test closes its
/// write side, which must end the connection too.
fn exchange(sb: &Sandbox, damaged: &[u8]) -> Result<Outcome, String> {
    let mut s = UnixStream::connect(sb.socket()).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = frame::encode(&Hello::new(PROTOCOL_VERSION, "fuzz", None)).unwrap();
    s.write_all(&hello).map_err(|e| format!("hello: {e}"))?;
    let _ = s.write_all(damaged);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut seen = 0;
    let (mut errors, mut answers) = (0, 0);
    let outcome = |errors: usize, answers: usize| {
        if errors > 0 {
            Outcome::Error
        } else if answers > 0 {
            Outcome::Answered
        } else {
            Outcome::Closed
        }
    };
    loop {
        match frame::read_frame(&mut s, 64 * 1024 * 1024) {
            Ok(Some(payload)) => {
                seen += 1;
                match kind(&payload).as_str() {
                    "error" => errors += 1,
                    "welcome" => {}
                    _ => answers += 1,
                }
            }
            Ok(None) => return Ok(outcome(errors, answers)),
            Err(frame::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(outcome(errors, answers))
            }
            Err(frame::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer and no close within 5 s ({seen} frames)"))
            }
            Err(e) => return Err(format!("unreadable answer: {e}")),
        }
    }
}

#[test]
fn damaged_frames_get_an_answer_or_a_close_and_harm_nobody() {
    let sb = Sandbox::with_config("[daemon]\nmax_frame_bytes = 65536\nframe_timeout_ms = 2000\n");
    let mut daemon = sb.start_daemon();
    let project = sb.project("p");
    let seeds = seeds(project.to_str().unwrap());
    // A fixed seed: CI runs the same 200 cases every time, and a failure names its input.
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig {
            cases: 200,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<&str, u64>::new());
    let result = runner.run(&(0..seeds.len(), damage()), |(which, d)| {
        let damaged = apply(&seeds[which], &d);
        let outcome = exchange(&sb, &damaged);
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
        let name = match outcome.unwrap() {
            Outcome::Error => "error",
            Outcome::Answered => "answered",
            Outcome::Closed => "closed",
        };
        *counts.borrow_mut().entry(name).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(daemon.running(), "the daemon survived every case");
    // And it still serves a well-behaved client.
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(9, "ping", serde_json::json!({}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
    let rss = rss_kb(daemon.pid());
    assert!(rss < 64 * 1024, "memory stayed bounded");
    let counts = counts.into_inner();
    let total: u64 = counts.values().sum();
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert!(total >= 200, "every case was tried: {counts:?}");
    Row::new(
        "bad input",
        "damaged_frames_get_an_answer_or_a_close_and_harm_nobody",
    )
    .done(
        "200 seeded cases (bit flips, truncation, insertion, a false length prefix, \
               random bytes) of 4 real request frames, each on its own connection",
    )
    .runs(total)
    .checked(
        "each case gets an error frame, an answer or a close within 5 s; the daemon \
                  survives, serves a new client; its resident memory",
    )
    .result(format!(
        "{total} cases: {} got an error frame, {} an answer, {} a close without a frame; \
             0 hangs; daemon alive at {} kB RSS",
        count("error"),
        count("answered"),
        count("closed"),
        sessiond_tests::report::thousands(rss)
    ))
    .record();
}
