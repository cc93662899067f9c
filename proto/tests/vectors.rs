//! Golden frames: each typed message must encode to exactly the bytes in `vectors/NAME.msgpack`,
//! decode from them back to the same value, and read as `vectors/NAME.json` when viewed as
//! generic data. PROTOCOL.md's hex examples must match the same files.
//!
//! After an intended change, regenerate with
//! `SESSIOND_BLESS_VECTORS=1 cargo test -p sessiond-proto --test vectors`, review the diff, and
//! note the change in CHANGELOG.md: these bytes are what third-party clients were built against.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sessiond_proto::envelope::{ErrorFrame, Event, Hello, Lagged, Request, Response, Welcome};
use sessiond_proto::methods::*;
use sessiond_proto::session::{
    Activity, EventFilter, Phase, SessionEvent, SessionId, SessionInfo, TurnId, TurnInfo, TurnKind,
    TurnStatus,
};
use sessiond_proto::{frame, ErrorCode, ProtocolVersion, PROTOCOL_VERSION};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blessing() -> bool {
    std::env::var_os("SESSIOND_BLESS_VECTORS").is_some()
}

/// Renders a payload as generic JSON, the form third-party implementers read.
fn as_json(payload: &[u8]) -> serde_json::Value {
    let mut de = rmp_serde::Deserializer::new(payload);
    serde_json::Value::deserialize(&mut de).expect("vector payload is valid MessagePack")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Checker {
    failures: Vec<String>,
    names: Vec<&'static str>,
}

impl Checker {
    fn check<T>(&mut self, name: &'static str, value: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        self.names.push(name);
        let dir = root().join("vectors");
        let bin_path = dir.join(format!("{name}.msgpack"));
        let json_path = dir.join(format!("{name}.json"));
        let encoded = frame::encode(&value).unwrap();
        if blessing() {
            std::fs::write(&bin_path, &encoded).unwrap();
            let json = serde_json::to_string_pretty(&as_json(&encoded[4..])).unwrap();
            std::fs::write(&json_path, json + "\n").unwrap();
            return;
        }
        let golden = match std::fs::read(&bin_path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.failures
                    .push(format!("{name}: cannot read {}: {e}", bin_path.display()));
                return;
            }
        };
        if encoded != golden {
            self.failures.push(format!(
                "{name}: encoding differs from the golden frame\n  got:    {}\n  golden: {}",
                hex(&encoded).replace('\n', " "),
                hex(&golden).replace('\n', " ")
            ));
            return;
        }
        let decoded: T = frame::decode(&golden[4..]).unwrap();
        if decoded != value {
            self.failures.push(format!(
                "{name}: decoding the golden frame gave {decoded:?}, expected {value:?}"
            ));
        }
        let twin: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        if twin != as_json(&golden[4..]) {
            self.failures.push(format!(
                "{name}: {} disagrees with the frame",
                json_path.display()
            ));
        }
    }
}

fn status_result() -> StatusResult {
    StatusResult {
        version: "0.1.0".into(),
        protocol: PROTOCOL_VERSION,
        pid: 4243,
        started_at: 1_790_000_000_000,
        uptime_ms: 61_250,
        socket: "/run/user/1000/sessiond/sessiond.sock".into(),
        runtime_dir: "/run/user/1000/sessiond".into(),
        state_dir: "/home/ada/.local/state/sessiond".into(),
        config: "/home/ada/.config/sessiond/config.toml".into(),
        log_file: None,
        log_level: "info".into(),
        connections: 1,
        max_connections: 256,
        max_frame_bytes: 8_388_608,
        sessions: 12,
        subscriptions: 1,
        database: "/home/ada/.local/state/sessiond/sessiond.db".into(),
        storage_error: None,
        supervisor: None,
    }
}

#[test]
fn golden_vectors_match_typed_messages() {
    let mut c = Checker {
        failures: vec![],
        names: vec![],
    };
    c.check(
        "hello",
        Hello::new(PROTOCOL_VERSION, "sessionctl 0.1.0", Some(4242)),
    );
    c.check("hello_minimal", Hello::new(PROTOCOL_VERSION, "nvim", None));
    c.check(
        "welcome",
        Welcome::new(
            PROTOCOL_VERSION,
            "0.1.0",
            4243,
            vec![
                "ping".into(),
                "status".into(),
                "set_log_level".into(),
                "shutdown".into(),
            ],
        ),
    );
    c.check("request_ping", Request::new(1, Ping::NAME, PingParams {}));
    c.check("response_ping", Response::new(1, Pong {}));
    c.check(
        "request_status",
        Request::new(2, Status::NAME, StatusParams {}),
    );
    c.check("response_status", Response::new(2, status_result()));
    c.check(
        "request_set_log_level",
        Request::new(
            3,
            SetLogLevel::NAME,
            SetLogLevelParams {
                level: "debug".into(),
            },
        ),
    );
    c.check(
        "response_set_log_level",
        Response::new(
            3,
            SetLogLevelResult {
                previous: "info".into(),
                level: "debug".into(),
            },
        ),
    );
    c.check(
        "request_shutdown",
        Request::new(4, Shutdown::NAME, ShutdownParams {}),
    );
    c.check(
        "response_shutdown",
        Response::new(
            4,
            ShutdownResult {
                pid: 4243,
                grace_ms: 5000,
                running_turns: 0,
            },
        ),
    );
    c.check(
        "error_unknown_method",
        ErrorFrame::new(
            Some(5),
            ErrorCode::UNKNOWN_METHOD,
            "unknown method \"frobnicate\"; this daemon has: ping, status, set_log_level, shutdown",
        ),
    );
    c.check(
        "error_version_mismatch",
        ErrorFrame::new(
            None,
            ErrorCode::VERSION_MISMATCH,
            sessiond_proto::envelope::version_mismatch_message(
                ProtocolVersion::new(2, 0),
                PROTOCOL_VERSION,
            ),
        ),
    );
    c.check(
        "event_lagged",
        Event {
            kind: Default::default(),
            seq: 17,
            time: 1_790_000_061_250,
            event: "lagged".into(),
            subscription: None,
            data: Lagged { missed: 3 },
        },
    );
    let id: SessionId = "0b8e3c1a-6a0e-4b7e-9d51-3c2f1e4d5a6b".parse().unwrap();
    let info = SessionInfo {
        id,
        scope: format!("/home/ada/src/app::claude::{id}"),
        provider: "claude".into(),
        project: "/home/ada/src/app".into(),
        cwd: "/home/ada/src/app".into(),
        name: Some("fix-login".into()),
        phase: Phase::Provisional,
        activity: Activity::Idle,
        created_at: 1_790_000_000_000,
        updated_at: 1_790_000_000_000,
        last_active_at: 1_790_000_000_000,
        parent_id: None,
        provider_session_id: None,
        aliases: vec![],
        queue_length: 0,
        owner: None,
    };
    c.check(
        "request_create",
        Request::new(
            6,
            Create::NAME,
            CreateParams {
                project: "/home/ada/src/app".into(),
                provider: "claude".into(),
                name: Some("fix-login".into()),
                cwd: None,
            },
        ),
    );
    c.check("response_create", Response::new(6, info.clone()));
    c.check(
        "request_switch",
        Request::new(
            7,
            Switch::NAME,
            SessionParams {
                session: Some("fix-login".into()),
                project: None,
                context: Some("nvim".into()),
            },
        ),
    );
    c.check(
        "response_switch",
        Response::new(
            7,
            SwitchResult {
                context: "nvim".into(),
                session: Some(info.clone()),
                project: Some("/home/ada/src/app".into()),
                generation: 3,
                reopened: false,
            },
        ),
    );
    c.check(
        "request_subscribe",
        Request::new(
            8,
            Subscribe::NAME,
            SubscribeParams {
                filter: EventFilter {
                    projects: vec!["/home/ada/src/app".into()],
                    ..Default::default()
                },
            },
        ),
    );
    c.check(
        "event_session_switched",
        Event {
            kind: Default::default(),
            seq: 42,
            time: 1_790_000_000_500,
            event: "session_switched".into(),
            subscription: Some(8),
            data: SessionEvent {
                context: Some("nvim".into()),
                generation: Some(3),
                ..SessionEvent::scope(id, "/home/ada/src/app", "claude")
            },
        },
    );
    c.check(
        "error_ambiguous",
        ErrorFrame::new(
            Some(9),
            ErrorCode::AMBIGUOUS,
            "id prefix \"0b8e\" matches 2 sessions; use a longer prefix, the full id, or --project:\n  0b8e3c1a \"fix-login\" (/home/ada/src/app, claude)\n  0b8e77d0 (/home/ada/src/api, codex)",
        ),
    );
    let turn_id: TurnId = "5c0ffee0-1b2c-4d3e-8f40-a1b2c3d4e5f6".parse().unwrap();
    c.check(
        "request_submit",
        Request::new(
            10,
            Submit::NAME,
            SubmitParams {
                session: Some("fix-login".into()),
                project: None,
                context: None,
                prompt: "run the tests and fix what fails".into(),
                no_queue: false,
            },
        ),
    );
    c.check(
        "response_submit",
        Response::new(
            10,
            SubmitResult {
                accepted: false,
                turn: TurnInfo {
                    turn_id,
                    session: id,
                    prompt: "run the tests and fix what fails".into(),
                    kind: TurnKind::Normal,
                    status: TurnStatus::Queued,
                    position: Some(2),
                    created_at: 1_790_000_001_000,
                    started_at: None,
                    ended_at: None,
                    exit_code: None,
                    error: None,
                },
                paused: None,
                attached: None,
            },
        ),
    );
    c.check(
        "event_turn_output",
        Event {
            kind: Default::default(),
            seq: 77,
            time: 1_790_000_002_000,
            event: "turn_output".into(),
            subscription: Some(8),
            data: SessionEvent {
                turn: Some(turn_id),
                stream: Some("stdout".into()),
                chunk: Some(0),
                data: Some("running 42 tests\n".into()),
                ..SessionEvent::scope(id, "/home/ada/src/app", "claude")
            },
        },
    );
    check_protocol_md_examples(&mut c.failures);
    check_no_orphan_vectors(&c.names, &mut c.failures);
    if blessing() {
        return; // the files were just rewritten; the next plain run checks them
    }
    assert!(c.failures.is_empty(), "\n{}", c.failures.join("\n"));
}

/// Every `<!-- vector: NAME -->` marker in PROTOCOL.md is followed by a fenced block holding the
/// frame's bytes in hex; they must be exactly the golden bytes.
fn check_protocol_md_examples(failures: &mut Vec<String>) {
    let path = root().join("PROTOCOL.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let mut seen = 0;
    const MARK: &str = "<!-- vector: ";
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let name_end = after.find(" -->").expect("vector marker is closed");
        let name = &after[..name_end];
        let fence_open = after.find("```hex\n").expect("hex block after marker") + 7;
        let fence_close = fence_open + after[fence_open..].find("```").unwrap();
        let documented: String = after[fence_open..fence_close].split_whitespace().collect();
        let golden = std::fs::read(root().join("vectors").join(format!("{name}.msgpack")))
            .unwrap_or_else(|e| panic!("PROTOCOL.md names vector {name}: {e}"));
        let expected = hex(&golden);
        if documented != expected.split_whitespace().collect::<String>() {
            failures.push(format!(
                "PROTOCOL.md example for {name} does not match vectors/{name}.msgpack"
            ));
        }
        seen += 1;
        let head = at + MARK.len() + fence_open;
        out.push_str(&rest[..head]);
        out.push_str(&expected);
        out.push('\n');
        rest = &rest[at + MARK.len() + fence_close..];
    }
    out.push_str(rest);
    if blessing() {
        std::fs::write(&path, out).unwrap();
    }
    if seen == 0 {
        failures.push("PROTOCOL.md has no worked examples (<!-- vector: NAME --> markers)".into());
    }
}

/// A file in vectors/ that no check produces is a stale promise to implementers.
fn check_no_orphan_vectors(names: &[&str], failures: &mut Vec<String>) {
    for entry in std::fs::read_dir(root().join("vectors")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if !names.contains(&stem.as_str()) && !is_readme(&path) {
            failures.push(format!(
                "{} is not produced by any check; delete it or add a check",
                path.display()
            ));
        }
    }
}

fn is_readme(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "README.md")
}
