//! Sessions through sessionctl and the async client: creation, scoped lookups, bad input,
//! contexts and switches, regeneration, and ownership as `show` reports it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use sessiond_client::Client;
use sessiond_proto::methods::{SessionParams, Subscribe, SubscribeParams, Switch};
use sessiond_proto::session::EventFilter;
use sessiond_tests::report::Row;
use sessiond_tests::{create_sessions, session_event, tokio_runtime, Sandbox, WAIT};

/// The ids in a `list --json` document, in listed order.
fn ids(list: &serde_json::Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// The listed session with `id`, if any.
fn listed<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .find(|s| s["id"] == id)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn new_session_is_listed_and_shown_as_provisional() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let repo = sb.project("repo");
    std::fs::create_dir(repo.join(".git")).unwrap();
    let subdir = repo.join("src").join("deep");
    std::fs::create_dir_all(&subdir).unwrap();

    // No --project: the enclosing git root of the current directory.
    let out = sb
        .ctl_in(&subdir, &["new", "--name", "first"])
        .ok()
        .trim()
        .to_string();
    assert_eq!(out.len(), 36, "new prints the full id: {out:?}");
    let id = out;

    let list = sb.ctl(&["--json", "list"]).json();
    let entry = listed(&list, &id).unwrap_or_else(|| panic!("{id} not listed: {list}"));
    assert_eq!(entry["phase"], "provisional");
    assert_eq!(entry["activity"], "idle");
    assert_eq!(entry["project"], path_str(&repo));
    assert_eq!(entry["cwd"], path_str(&repo));
    assert_eq!(entry["provider"], "shell");
    assert_eq!(entry["name"], "first");
    assert_eq!(
        entry["scope"],
        format!("{}::shell::{id}", repo.display()),
        "scope is project::provider::id"
    );

    let by_name = sb.ctl(&["--json", "show", "first"]).json();
    let by_prefix = sb.ctl(&["--json", "show", &id[..8]]).json();
    let by_id = sb.ctl(&["--json", "show", &id]).json();
    for shown in [&by_name, &by_prefix, &by_id] {
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown["phase"], "provisional");
        assert_eq!(shown["project"], path_str(&repo));
    }
    // A session at rest has no owner.
    assert!(by_id["owner"].is_null(), "{by_id}");

    // Without a git repository, the current directory itself is the project.
    let plain = sb.project("plain");
    let nested = plain.join("inner");
    std::fs::create_dir(&nested).unwrap();
    let other = sb.ctl_in(&nested, &["new"]).ok().trim().to_string();
    let shown = sb.ctl(&["--json", "show", &other]).json();
    assert_eq!(shown["project"], path_str(&nested));
}

#[test]
fn names_collide_across_projects_but_lookups_stay_scoped() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let a = sb.project("a");
    let b = sb.project("b");
    let in_a = sb.new_session(&a, &["--name", "fix-bug"]);
    let in_b = sb.new_session(&b, &["--name", "fix-bug", "--provider", "claude"]);
    assert_ne!(in_a, in_b);

    let out = sb.ctl(&["--json", "show", "fix-bug"]);
    assert_eq!(out.code(), 1, "stderr: {}", out.stderr());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "ambiguous");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("matches 2 sessions"), "{message}");
    assert!(message.contains(&in_a[..8]), "{message}");
    assert!(message.contains(&in_b[..8]), "{message}");
    assert!(
        message.contains("--project"),
        "says how to narrow: {message}"
    );

    let shown = sb
        .ctl(&["--json", "show", "fix-bug", "--project", path_str(&a)])
        .json();
    assert_eq!(shown["id"], in_a.as_str());
    let shown = sb
        .ctl(&["--json", "show", "fix-bug", "--project", path_str(&b)])
        .json();
    assert_eq!(shown["id"], in_b.as_str());
    let switched = sb
        .ctl(&["--json", "switch", "fix-bug", "--project", path_str(&b)])
        .json();
    assert_eq!(switched["session"]["id"], in_b.as_str());

    // The same name in the same project is refused and nothing changes.
    let before = sb.list_all();
    let out = sb.ctl(&[
        "--json",
        "new",
        "--project",
        path_str(&a),
        "--name",
        "fix-bug",
    ]);
    assert_eq!(out.code(), 1, "stdout: {}", out.stdout());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "invalid_argument");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("already used"), "{message}");
    assert!(message.contains(&in_a[..8]), "names the holder: {message}");
    // Renaming onto a name taken in the same project is refused too.
    let third = sb.new_session(&a, &[]);
    let before_rename = sb.list_all();
    assert_eq!(ids(&before_rename).len(), ids(&before).len() + 1);
    let out = sb.ctl(&["rename", &third, "fix-bug"]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("already used"), "{}", out.stderr());
    assert_eq!(sb.list_all(), before_rename);
}

#[test]
fn a_project_that_does_not_hold_the_session_meant_is_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let a = sb.project("a");
    let b = sb.project("b");
    let in_a = sb.new_session(&a, &["--name", "one"]);
    let in_b = sb.new_session(&b, &["--name", "two"]);
    sb.ctl(&["switch", &in_b]).ok();

    // The context's current session, and a full id, are found without the project; when it
    // is named it must hold them, or the command would act on another project's session.
    let refused: [&[&str]; 3] = [
        &["show", "--project", path_str(&a)],
        &["switch", &in_b, "--project", path_str(&a)],
        &["send", "--project", path_str(&a), "echo wrong project"],
    ];
    for args in refused {
        let mut argv = vec!["--json"];
        argv.extend_from_slice(args);
        let err = sb
            .ctl(&argv)
            .refused(1, "invalid_argument", "belongs to another project");
        assert!(
            err["message"].as_str().unwrap().contains(&in_b[..8]),
            "{args:?}: {err}"
        );
    }
    let current = sb.ctl(&["--json", "current"]).json();
    assert_eq!(current["session"]["id"], in_b.as_str(), "{current}");
    assert_eq!(current["generation"], 1, "no second switch: {current}");
    let log = sb.ctl(&["--json", "log", &in_b]).json();
    assert_eq!(
        log["turns"].as_array().map(Vec::len),
        Some(0),
        "nothing sent: {log}"
    );
    // A project directory that is gone is compared as written, and the refusal says why.
    let gone = sb.project("gone");
    std::fs::remove_dir(&gone).unwrap();
    sb.ctl(&["--json", "show", &in_b, "--project", path_str(&gone)])
        .refused(1, "invalid_argument", "cannot be used");

    // Where the project does hold it, it is only a check.
    let shown = sb
        .ctl(&["--json", "show", "--project", path_str(&b)])
        .json();
    assert_eq!(shown["id"], in_b.as_str());
    let shown = sb
        .ctl(&["--json", "show", &in_a, "--project", path_str(&a)])
        .json();
    assert_eq!(shown["id"], in_a.as_str());
    let with_slash = format!("{}/", path_str(&a));
    let shown = sb
        .ctl(&["--json", "show", &in_a, "--project", &with_slash])
        .json();
    assert_eq!(shown["id"], in_a.as_str());
}

#[test]
fn an_empty_listing_says_whether_filters_or_archiving_hid_sessions() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    assert_eq!(
        sb.ctl(&["list", "--all"]).ok().trim(),
        "no sessions (create one with `sessionctl new`)"
    );
    let a = sb.project("a");
    let id = sb.new_session(&a, &[]);
    sb.ctl(&["close", &id]).ok();
    assert!(
        sb.ctl(&["list"])
            .ok()
            .contains("no open sessions (create one"),
        "the archived session is only hidden"
    );
    assert_eq!(
        sb.ctl(&["list", "--state", "running"]).ok().trim(),
        "no open sessions match (`--all` includes archived ones)"
    );
    assert_eq!(
        sb.ctl(&["list", "--all", "--state", "running"]).ok().trim(),
        "no sessions match"
    );
    sb.ctl(&["reopen", &id]).ok();
    assert_eq!(
        sb.ctl(&["list", "--state", "archived"]).ok().trim(),
        "no sessions match",
        "archived ones were asked for: `--all` would not help"
    );
    // A filter nothing could match is a typo, and named; one that merely matches nothing now
    // is an empty listing.
    let out = sb.ctl(&["--json", "list", "--provider", "shel"]);
    let err = out.refused(1, "invalid_argument", "unknown provider \"shel\"");
    assert!(err["message"].as_str().unwrap().contains("shell"), "{err}");
    let gone = sb.root.join("no-such-project");
    let out = sb.ctl(&["--json", "list", "--project", path_str(&gone)]);
    out.refused(1, "invalid_argument", "no session belongs to project");
    let empty = sb.project("empty");
    assert_eq!(
        sb.ctl(&["--json", "list", "--project", path_str(&empty)])
            .json()["sessions"],
        serde_json::json!([])
    );
    assert_eq!(
        sb.ctl(&["--json", "list", "--provider", "claude"]).json()["sessions"],
        serde_json::json!([])
    );
    // A deleted project directory still lists the sessions made in it.
    std::fs::remove_dir(&a).unwrap();
    let listed = sb
        .ctl(&["--json", "list", "--project", path_str(&a)])
        .json();
    assert_eq!(listed["sessions"][0]["id"], id.as_str(), "{listed}");
}

#[test]
fn a_name_held_by_an_archived_session_says_where_it_is_and_how_to_free_it() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let a = sb.project("a");
    let id = sb.new_session(&a, &["--name", "b"]);
    sb.ctl(&["close", &id]).ok();
    let out = sb.ctl_in(&a, &["--json", "new", "--name", "b"]);
    let err = out.refused(1, "invalid_argument", "already used");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("archived"), "{message}");
    let short = &id[..8];
    assert!(
        message.contains(&format!("sessionctl rename {short} ")),
        "{message}"
    );
    // The way out it names works.
    sb.ctl(&["rename", short, "old-b"]).ok();
    sb.ctl_in(&a, &["new", "--name", "b"]).ok();
}

#[test]
fn an_empty_context_variable_means_the_default_context() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let a = sb.project("a");
    let id = sb.new_session(&a, &[]);
    sb.ctl(&["switch", &id]).ok();
    let current = sessiond_tests::run_bounded(
        sb.sessionctl()
            .env("SESSIOND_CONTEXT", "")
            .args(["--json", "current"]),
    )
    .json();
    assert_eq!(current["context"], "default", "{current}");
    assert_eq!(current["session"]["id"], id.as_str(), "{current}");
}

#[test]
fn ambiguous_prefix_lists_candidates() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let rt = tokio_runtime();
    let mut all: Vec<String> = Vec::new();
    // 300 ids over 65,536 four-digit prefixes collide about half the time; by 3,000 a miss is
    // beyond belief.
    let group = loop {
        let batch = rt.block_on(create_sessions(&sb.connect_options(), &project, 300));
        all.extend(batch.iter().map(|s| s.id.to_string()));
        let mut by_prefix: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for id in &all {
            by_prefix.entry(&id[..4]).or_default().push(id);
        }
        if let Some(group) = by_prefix.values().find(|g| g.len() >= 2) {
            break group.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        }
        assert!(
            all.len() < 3000,
            "no shared 4-digit prefix among {} ids",
            all.len()
        );
    };
    let prefix = &group[0][..4];

    let out = sb.ctl(&["--json", "show", prefix]);
    assert_eq!(out.code(), 1, "stdout: {}", out.stdout());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "ambiguous");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("matches {} sessions", group.len())),
        "{message}"
    );
    for id in &group {
        assert!(message.contains(&id[..8]), "{id} not listed: {message}");
    }

    // The shortest prefix that tells the first apart from every other id resolves to it.
    let target = &group[0];
    let unique_len = (5..=8)
        .find(|&k| all.iter().filter(|id| id[..k] == target[..k]).count() == 1)
        .expect("8 hex digits tell these ids apart");
    let shown = sb.ctl(&["--json", "show", &target[..unique_len]]).json();
    assert_eq!(shown["id"], target.as_str());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let p = path_str(&project);
    let known = sb.new_session(&project, &["--name", "taken"]);
    let before = sb.list_all();
    assert_eq!(ids(&before), vec![known.clone()]);

    let missing = sb.root.join("no-such-dir");
    let missing = path_str(&missing);
    let long_name = "x".repeat(101);
    let three = &known[..3];
    let cases: Vec<(Vec<&str>, &str, Vec<String>)> = vec![
        (
            vec!["new", "--project", p, "--provider", "nope"],
            "invalid_argument",
            vec!["unknown provider \"nope\"".into(), "shell".into()],
        ),
        (
            vec!["new", "--project", missing],
            "invalid_argument",
            vec![missing.to_string(), "exists".into()],
        ),
        (
            vec!["new", "--project", p, "--name", ""],
            "invalid_argument",
            vec!["empty".into()],
        ),
        (
            vec!["new", "--project", p, "--name", "   "],
            "invalid_argument",
            vec!["empty or only spaces".into()],
        ),
        (
            vec!["new", "--project", p, "--name", &long_name],
            "invalid_argument",
            vec!["101 characters".into(), "limit is 100".into()],
        ),
        (
            vec!["new", "--project", p, "--name", "two\nlines"],
            "invalid_argument",
            vec!["control characters".into()],
        ),
        (
            vec!["new", "--project", p, "--name", "taken"],
            "invalid_argument",
            vec!["already used".into()],
        ),
        (
            vec!["show", "no-such-session"],
            "not_found",
            vec!["no session matches \"no-such-session\"".into()],
        ),
        (
            vec!["switch", "no-such-session"],
            "not_found",
            vec!["no session matches".into()],
        ),
        (
            vec!["switch", "  "],
            "invalid_argument",
            vec!["session to act on is empty".into()],
        ),
        (
            vec!["close", ""],
            "invalid_argument",
            vec!["session to act on is empty".into()],
        ),
        (
            vec!["cancel", " "],
            "invalid_argument",
            vec!["turn to act on is empty".into(), "sessionctl queue".into()],
        ),
        (
            vec!["rename", &known, "   "],
            "invalid_argument",
            vec!["empty".into()],
        ),
        (
            vec!["show", three],
            "not_found",
            vec!["at least 4 hex digits".into()],
        ),
        (
            vec!["close", "00000000-0000-4000-8000-000000000000"],
            "not_found",
            vec!["no session has id".into()],
        ),
        (
            vec!["reopen", &known],
            "invalid_state",
            vec!["not archived".into()],
        ),
    ];
    for (args, code, words) in &cases {
        let mut argv = vec!["--json"];
        argv.extend(args.iter().copied());
        let out = sb.ctl(&argv);
        assert_eq!(
            out.code(),
            1,
            "{args:?} should fail with exit 1\nstdout: {}\nstderr: {}",
            out.stdout(),
            out.stderr()
        );
        assert!(out.stdout().is_empty(), "{args:?} printed {}", out.stdout());
        let err = out.json_error();
        assert_eq!(err["error"]["code"], *code, "{args:?}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        for word in words {
            assert!(
                message.contains(word.as_str()),
                "{args:?}: {message:?} lacks {word:?}"
            );
        }
        // The human form says the same on stderr.
        let human = sb.ctl(args);
        assert_eq!(human.code(), 1);
        assert!(
            human.stderr().starts_with("sessionctl: "),
            "{args:?}: {}",
            human.stderr()
        );
    }
    assert_eq!(
        sb.list_all(),
        before,
        "a refused request changed the registry"
    );
    let current = sb.ctl(&["--json", "current"]).json();
    assert_eq!(current["generation"], 0, "no switch happened: {current}");
    Row::new("bad input", "bad_input_is_refused_and_changes_nothing")
        .done(format!(
            "{} bad session commands (unknown provider, missing dir, empty/long/duplicate/\
             multi-line names, unknown or too-short selectors, wrong state), each as JSON and \
             as text",
            cases.len()
        ))
        .runs(2 * cases.len() as u64)
        .checked("exit status, error code and message words, stdout empty, registry unchanged")
        .result(format!(
            "{} of {} refused with exit 1 and the expected code; registry and context \
             generation unchanged",
            2 * cases.len(),
            2 * cases.len()
        ))
        .record();
}

#[test]
fn switch_sets_session_and_project_and_bumps_generation() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let pa = sb.project("a");
    let pb = sb.project("b");
    let a = sb.new_session(&pa, &["--name", "alpha"]);
    let b = sb.new_session(&pb, &["--name", "beta"]);

    let none = sb.ctl(&["--json", "current"]).json();
    assert!(none["session"].is_null(), "{none}");
    assert_eq!(none["generation"], 0);

    let first = sb.ctl(&["--json", "switch", "alpha"]).json();
    assert_eq!(first["context"], "default");
    assert_eq!(first["session"]["id"], a.as_str());
    assert_eq!(first["project"], path_str(&pa));
    assert_eq!(first["generation"], 1);
    let second = sb.ctl(&["--json", "switch", &b[..8]]).json();
    assert_eq!(second["session"]["id"], b.as_str());
    assert_eq!(second["project"], path_str(&pb));
    assert_eq!(second["generation"], 2);
    let current = sb.ctl(&["--json", "current"]).json();
    assert_eq!(
        (
            current["session"]["id"].as_str(),
            current["generation"].as_u64()
        ),
        (Some(b.as_str()), Some(2))
    );
    let list = sb.ctl(&["--json", "list"]).json();
    assert_eq!(list["current"], b.as_str());

    // Another context is independent, in both directions.
    let editor = sb.ctl(&["--json", "--context", "nvim", "current"]).json();
    assert!(editor["session"].is_null(), "{editor}");
    assert_eq!(editor["generation"], 0);
    let editor = sb
        .ctl(&["--json", "--context", "nvim", "switch", "alpha"])
        .json();
    assert_eq!(
        (editor["context"].as_str(), editor["generation"].as_u64()),
        (Some("nvim"), Some(1))
    );
    let default = sb.ctl(&["--json", "current"]).json();
    assert_eq!(default["session"]["id"], b.as_str());
    assert_eq!(default["generation"], 2);
    // SESSIOND_CONTEXT names the context as --context does.
    let by_env = sessiond_tests::run_bounded(
        sb.sessionctl()
            .env("SESSIOND_CONTEXT", "nvim")
            .args(["--json", "current"]),
    )
    .json();
    assert_eq!(by_env["session"]["id"], a.as_str());
    let list = sb.ctl(&["--json", "--context", "nvim", "list"]).json();
    assert_eq!(list["current"], a.as_str());

    // Switching to a closed session reopens it.
    let closed = sb.ctl(&["--json", "close", "alpha"]).json();
    assert_eq!(closed["phase"], "archived");
    assert!(listed(&sb.ctl(&["--json", "list"]).json(), &a).is_none());
    let back = sb.ctl(&["--json", "switch", "alpha"]).json();
    assert_eq!(back["session"]["id"], a.as_str());
    assert_eq!(back["session"]["phase"], "provisional");
    assert_eq!(back["project"], path_str(&pa));
    assert_eq!(back["generation"], 3);
    assert_eq!(
        back["reopened"], true,
        "the switch says it reopened: {back}"
    );
    // Said to people too; a switch to an open session says nothing of the kind.
    sb.ctl(&["close", "alpha"]).ok();
    let told = sb.ctl(&["switch", "alpha"]).ok();
    assert!(told.contains("reopened: it was closed"), "{told}");
    let again = sb.ctl(&["--json", "switch", "alpha"]).json();
    assert!(again.get("reopened").is_none(), "{again}");
    assert!(!sb.ctl(&["switch", "alpha"]).ok().contains("reopened"));
    let list = sb.ctl(&["--json", "list"]).json();
    let entry = listed(&list, &a).expect("reopened session is listed without --all");
    assert_eq!(entry["phase"], "provisional");
    assert_eq!(list["current"], a.as_str());
    // Most recently active first: the switch made alpha the latest.
    assert_eq!(ids(&list)[0], a);
}

/// `list --json` passes the daemon's result through without decoding it into typed records;
/// the document must still be exactly the typed result, field for field, with every optional
/// field a session can carry.
#[test]
fn list_json_is_the_protocol_result_field_for_field() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p ünï \"q\"");
    // A name needing JSON escapes and multi-byte UTF-8.
    let odd = sb.new_session(&project, &["--name", "say \"hi\" \\ ünï ✓"]);
    sb.ctl(&["switch", &odd]).ok();
    // A child (parent_id), the context's current session.
    sb.ctl(&["regenerate", &odd]).ok();
    // A queue held with two turns waiting (queue_length).
    let queued = sb.new_session(&project, &["--name", "queued"]);
    sb.ctl(&["pause", "queued"]).ok();
    sb.ctl(&["send", "queued", "true"]).ok();
    sb.ctl(&["send", "queued", "true"]).ok();
    // An archived one, listed only with --all.
    let closed = sb.new_session(&project, &["--name", "closed"]);
    sb.ctl(&["close", "closed"]).ok();

    let mut client =
        sessiond_client::BlockingClient::connect(&sb.connect_options()).expect("connect");
    for all in [false, true] {
        let typed = client
            .call::<sessiond_proto::methods::List>(sessiond_proto::methods::ListParams {
                all,
                ..Default::default()
            })
            .expect("list");
        let args: &[&str] = if all {
            &["--json", "list", "--all"]
        } else {
            &["--json", "list"]
        };
        let printed = sb.ctl(args);
        assert_eq!(
            printed.json(),
            serde_json::to_value(&typed).unwrap(),
            "list --json (all: {all}) differs from the typed result"
        );
        // Pretty-printed, one field per line, like every other --json document.
        assert!(
            printed.stdout().lines().count() > 10 * typed.sessions.len(),
            "{}",
            printed.stdout()
        );
        let ids: Vec<String> = typed.sessions.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(
            ids.contains(&closed),
            all,
            "archived listed only with --all"
        );
        assert!(ids.contains(&odd) && ids.contains(&queued));
        assert!(typed.sessions.iter().any(|s| s.parent_id.is_some()));
        assert!(typed.sessions.iter().any(|s| s.queue_length == 2));
        assert!(typed.current.is_some());
    }
}

/// A listing larger than the socket's buffers prints whole, as the typed result field for
/// field, even to a reader that waits longer than the daemon's write timeout before reading
/// (a paused pager): sessionctl takes the whole answer off the socket first, so the daemon
/// never sees a stalled client. A reader that stops early (`| head`) is no error.
#[test]
fn a_large_listing_prints_whole_to_a_slow_reader_and_a_closed_pipe_is_no_error() {
    use sessiond_proto::methods::{List, ListParams};
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 300\n");
    let _daemon = sb.start_daemon();
    let project = sb.project("big");
    let opts = sb.connect_options();
    // About 300 bytes of MessagePack each: some 900 KiB in all, more than the socket's
    // buffers and a pipe's hold together, so a client reading only as fast as its reader
    // would stall the daemon's write.
    tokio_runtime().block_on(create_sessions(&opts, &project, 3_000));
    let mut client = sessiond_client::BlockingClient::connect(&opts).expect("connect");
    let typed = client.call::<List>(ListParams::default()).expect("list");
    assert_eq!(typed.sessions.len(), 3_000);
    let typed = serde_json::to_value(&typed).unwrap();

    let spawn = || {
        sb.sessionctl()
            .args(["--json", "list"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sessionctl")
    };
    // Waits for sessionctl; it must have exited 0 and said nothing on stderr.
    let quietly_succeeded = |child: std::process::Child| {
        let out = child.wait_with_output().expect("sessionctl exits");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
        assert!(stderr.is_empty(), "{stderr}");
        out
    };
    // Read nothing for three write timeouts, then everything.
    let slow = spawn();
    std::thread::sleep(std::time::Duration::from_millis(900));
    let out = quietly_succeeded(slow);
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(printed, typed);

    // `sessionctl list --json | head -c 100`: exit 0, nothing said.
    let mut child = spawn();
    let mut head = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).expect("first bytes");
    drop(child.stdout.take());
    quietly_succeeded(child);
}

/// A listing over 2 MiB, which sessionctl reads into memory advised for huge pages and prints
/// reusing the text of keys it has met, prints as the typed result field for field: named
/// sessions among unnamed ones shift every later key of their record by one place, so
/// remembered keys match at some entries and not at others.
#[test]
fn a_listing_over_two_mebibytes_prints_whole_as_the_typed_result() {
    use sessiond_proto::methods::{List, ListParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("big");
    let opts = sb.connect_options();
    tokio_runtime().block_on(create_sessions(&opts, &project, 8_000));
    for name in ["first", "with \"quotes\" and ünïcödé", "last"] {
        sb.new_session(&project, &["--name", name]);
    }
    let mut client = sessiond_client::BlockingClient::connect(&opts).expect("connect");
    let typed = client.call::<List>(ListParams::default()).expect("list");
    assert_eq!(typed.sessions.len(), 8_003);
    let encoded = rmp_serde::to_vec_named(&typed).unwrap().len();
    assert!(encoded > 2 << 20, "the answer is only {encoded} bytes");
    let out = sb
        .sessionctl()
        .args(["--json", "list"])
        .output()
        .expect("run sessionctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(printed, serde_json::to_value(&typed).unwrap());
}

#[test]
fn an_idle_daemon_gives_back_the_memory_of_a_large_listing() {
    use sessiond_proto::methods::{List, ListParams};
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 200\n");
    let daemon = sb.start_daemon();
    let project = sb.project("big");
    let opts = sb.connect_options();
    // About 2.5 MB of answer: well past the size the allocator hands straight back.
    tokio_runtime().block_on(create_sessions(&opts, &project, 8_000));
    std::thread::sleep(std::time::Duration::from_millis(800));
    let before = sessiond_tests::rss_kb(daemon.pid());
    let mut client = sessiond_client::BlockingClient::connect(&opts).expect("connect");
    for _ in 0..3 {
        let listing = client.call::<List>(ListParams::default()).expect("list");
        assert_eq!(listing.sessions.len(), 8_000);
    }
    let after_listing = sessiond_tests::rss_kb(daemon.pid());
    // Two full ticks with no large answer, then some slack for a loaded machine.
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    let idle = sessiond_tests::rss_kb(daemon.pid());
    assert!(
        idle <= before + 1_024,
        "resident memory {before} kB before three listings of 8,000 sessions, \
         {after_listing} kB right after, still {idle} kB after a second idle"
    );
    // The connection is still served.
    client
        .call::<List>(ListParams::default())
        .expect("list again");
}

#[test]
fn regenerate_creates_a_child_and_makes_it_current() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let cwd = project.join("sub");
    std::fs::create_dir(&cwd).unwrap();
    let parent = sb.new_session(
        &project,
        &[
            "--provider",
            "claude",
            "--name",
            "old",
            "--cwd",
            path_str(&cwd),
        ],
    );
    sb.ctl(&["switch", "old"]).ok();

    // With no SESSION, regenerate the context's current one.
    let fresh = sb.ctl(&["--json", "regenerate"]).json();
    let child = fresh["session"]["id"].as_str().unwrap().to_string();
    assert_ne!(child, parent);
    assert_eq!(fresh["context"], "default");
    assert_eq!(fresh["generation"], 2);
    assert_eq!(fresh["project"], path_str(&project));
    let info = &fresh["session"];
    assert_eq!(info["parent_id"], parent.as_str());
    assert_eq!(info["project"], path_str(&project));
    assert_eq!(info["provider"], "claude");
    assert_eq!(info["cwd"], path_str(&cwd));
    assert_eq!(info["phase"], "provisional");
    assert!(
        info["name"].is_null(),
        "a name stays with its session: {info}"
    );

    let current = sb.ctl(&["--json", "current"]).json();
    assert_eq!(current["session"]["id"], child.as_str());
    assert_eq!(current["generation"], 2);
    let shown = sb.ctl(&["--json", "show", &child]).json();
    assert_eq!(shown["parent_id"], parent.as_str());
    // The parent is untouched and still listed.
    let old = sb.ctl(&["--json", "show", "old"]).json();
    assert_eq!(old["id"], parent.as_str());
    assert_eq!(old["phase"], "provisional");

    // Regenerating a named session in another context points that context only.
    let other = sb
        .ctl(&["--json", "--context", "ci", "regenerate", "old"])
        .json();
    assert_eq!(other["session"]["parent_id"], parent.as_str());
    assert_eq!(other["generation"], 1);
    assert_eq!(
        sb.ctl(&["--json", "current"]).json()["session"]["id"],
        child.as_str()
    );
}

#[test]
fn fifty_concurrent_switches_from_ten_clients_end_consistent() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let rt = tokio_runtime();
    rt.block_on(async {
        let opts = sb.connect_options();
        let sessions = create_sessions(&opts, &project, 5).await;
        let subscriber = Client::connect(&opts).await.unwrap();
        let mut events = subscriber.take_events().unwrap();
        subscriber
            .call::<Subscribe>(SubscribeParams {
                filter: EventFilter {
                    events: vec!["session_switched".into()],
                    ..Default::default()
                },
            })
            .await
            .unwrap();

        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(Arc::new(Client::connect(&opts).await.unwrap()));
        }
        let start = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let client = client.clone();
            let start = start.clone();
            let targets: Vec<String> = (0..5)
                .map(|j| sessions[(i + j) % 5].id.to_string())
                .collect();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let calls = targets.into_iter().map(|target| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        client
                            .call::<Switch>(SessionParams {
                                session: Some(target),
                                ..Default::default()
                            })
                            .await
                    })
                });
                let calls: Vec<_> = calls.collect();
                let mut answers = Vec::new();
                for call in calls {
                    answers.push(call.await.unwrap().unwrap());
                }
                answers
            }));
        }
        let mut by_generation = BTreeMap::new();
        for task in tasks {
            for answer in task.await.unwrap() {
                let session = answer.session.expect("a switch names its session").id;
                assert_eq!(answer.project.as_deref(), Some(path_str(&project)));
                let previous = by_generation.insert(answer.generation, session);
                assert!(
                    previous.is_none(),
                    "generation {} answered twice",
                    answer.generation
                );
            }
        }
        assert_eq!(
            by_generation.keys().copied().collect::<Vec<_>>(),
            (1..=50).collect::<Vec<u64>>(),
            "every switch got its own generation"
        );

        // A switch in another context marks the end of the stream for this test.
        clients[0]
            .call::<Switch>(SessionParams {
                session: Some(sessions[0].id.to_string()),
                context: Some("sentinel".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut received = Vec::new();
        loop {
            let payload = tokio::time::timeout(WAIT, events.recv())
                .await
                .expect("events keep coming")
                .expect("event stream open");
            let event = session_event(&payload);
            if event.data.context.as_deref() == Some("sentinel") {
                break;
            }
            received.push(event);
        }
        assert_eq!(received.len(), 50, "exactly one event per switch");
        for (n, event) in received.iter().enumerate() {
            let generation = n as u64 + 1;
            assert_eq!(event.event, "session_switched");
            assert_eq!(event.data.context.as_deref(), Some("default"));
            assert_eq!(
                event.data.generation,
                Some(generation),
                "events in generation order"
            );
            assert_eq!(
                event.data.session, by_generation[&generation],
                "generation {generation}"
            );
            assert_eq!(event.data.project, path_str(&project));
        }
        for pair in received.windows(2) {
            assert!(
                pair[0].seq < pair[1].seq,
                "seq {} then {}",
                pair[0].seq,
                pair[1].seq
            );
        }
        assert_eq!(subscriber.events_dropped(), 0);
        let last = received.last().unwrap().data.session;
        let current = sb.ctl(&["--json", "current"]).json();
        assert_eq!(current["session"]["id"], last.to_string());
        assert_eq!(current["generation"], 50);
        Row::new(
            "race",
            "fifty_concurrent_switches_from_ten_clients_end_consistent",
        )
        .done("10 clients released together, each sending 5 concurrent switches of one context")
        .runs(by_generation.len() as u64)
        .checked("generations answered, events received and their order, the final pointer")
        .result(format!(
            "{} switches got {} distinct generations 1..50; {} events in generation and seq \
                 order, 0 dropped; final pointer = last event",
            by_generation.len(),
            by_generation.len(),
            received.len()
        ))
        .record();
    });
}

/// A child process holding a session's lock; killed on drop, so a failed test leaves no
/// holder behind.
struct LockHolder(std::process::Child);

impl LockHolder {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills the holder and reaps it, so its pid names no process at all.
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds an exclusive flock on `path` from a child process; returns once it is held.
fn hold_lock(path: &Path) -> LockHolder {
    let script = format!(
        "exec 9>'{}' && flock -n 9 && echo locked && exec sleep 30",
        path.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let holder = LockHolder(child);
    let line = rx.recv_timeout(WAIT).expect("the lock holder reports");
    assert_eq!(line.trim(), "locked", "the lock holder failed");
    holder
}

fn write_pid_file(path: &Path, pid: u32, start_time: Option<u64>, since: u64) {
    let record = serde_json::json!({
        "pid": pid,
        "start_time": start_time,
        "owner": "test",
        "since": since,
    });
    std::fs::write(path, record.to_string()).unwrap();
}

/// A pid that has just exited (and been reaped).
fn exited_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// This process's start time in clock ticks since boot (`/proc/self/stat` field 22).
fn own_start_time() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn show_reports_the_owner_and_recognises_stale_pid_files() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let id = sb.new_session(&project, &["--name", "owned"]);
    let dir = sb.state.join("sessions");
    assert!(dir.is_dir(), "the daemon makes STATE/sessions");
    let lock = dir.join(format!("{id}.lock"));
    let pid_file = dir.join(format!("{id}.pid"));

    let mut holder = hold_lock(&lock);
    let since = sessiond_proto::now_ms();
    write_pid_file(&pid_file, holder.pid(), None, since);
    let shown = sb.ctl(&["--json", "show", "owned"]).json();
    let owner = &shown["owner"];
    assert_eq!(owner["live"], true, "{shown}");
    assert_eq!(owner["pid"], holder.pid());
    assert_eq!(owner["owner"], "test");
    assert_eq!(owner["since"], since);
    assert!(owner["stale_reason"].is_null(), "{owner}");
    let human = sb.ctl(&["show", "owned"]).ok();
    assert!(
        human.contains(&format!("pid {} (test)", holder.pid())),
        "{human}"
    );

    let pid = holder.pid();
    holder.kill();
    let shown = sb.ctl(&["--json", "show", "owned"]).json();
    let owner = &shown["owner"];
    assert_eq!(owner["live"], false, "{shown}");
    assert_eq!(owner["pid"], pid);
    assert_eq!(
        owner["stale_reason"],
        format!("owner pid {pid} has exited"),
        "{owner}"
    );
    let human = sb.ctl(&["show", "owned"]).ok();
    assert!(
        human.contains(&format!("stale: owner pid {pid} has exited")),
        "{human}"
    );

    // A pid file with no lock file at all, naming a process that has exited.
    let other = sb.new_session(&project, &[]);
    let gone = exited_pid();
    write_pid_file(&dir.join(format!("{other}.pid")), gone, Some(1), 1);
    let shown = sb.ctl(&["--json", "show", &other]).json();
    assert_eq!(shown["owner"]["live"], false, "{shown}");
    assert_eq!(shown["owner"]["pid"], gone);
    assert_eq!(
        shown["owner"]["stale_reason"],
        format!("owner pid {gone} has exited")
    );

    // A pid file naming a running process that started at another time: the pid was reused.
    let third = sb.new_session(&project, &[]);
    let me = std::process::id();
    write_pid_file(
        &dir.join(format!("{third}.pid")),
        me,
        Some(own_start_time() + 1),
        1,
    );
    let shown = sb.ctl(&["--json", "show", &third]).json();
    assert_eq!(shown["owner"]["live"], false, "{shown}");
    assert_eq!(
        shown["owner"]["stale_reason"],
        format!("pid {me} now belongs to another process (start time differs)")
    );

    // The session without files still reports no owner.
    let free = sb.new_session(&project, &[]);
    assert!(sb.ctl(&["--json", "show", &free]).json()["owner"].is_null());
    Row::new(
        "race",
        "show_reports_the_owner_and_recognises_stale_pid_files",
    )
    .done(
        "pid files for 4 sessions: a live lock holder; the same after it was killed; an \
             exited pid with no lock file; a running pid (this test) with another start time",
    )
    .runs(4)
    .checked("`show`'s owner: live or stale, and the reason given")
    .result(
        "1 live owner named with pid and kind; 3 of 3 stale files recognised: 2 `has \
             exited`, 1 `now belongs to another process (start time differs)`",
    )
    .record();
}

/// The start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_time_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn a_stale_pid_file_naming_a_live_unrelated_process_does_not_block_ownership() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let dir = sb.state.join("sessions");
    std::fs::create_dir_all(&dir).unwrap();
    // An unrelated, running process; nothing may signal it on the strength of a stale file.
    let mut bystander = LockHolder(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // 1. The pid was reused: it names this test process, with another start time, and no
    //    lock file is left. A turn must start.
    let reused = sb.new_session(&project, &["--name", "reused"]);
    let me = std::process::id();
    write_pid_file(
        &dir.join(format!("{reused}.pid")),
        me,
        Some(own_start_time() + 1),
        1,
    );
    let shown = sb.ctl(&["--json", "show", "reused"]).json();
    assert_eq!(shown["owner"]["live"], false, "{shown}");
    assert_eq!(
        shown["owner"]["stale_reason"],
        format!("pid {me} now belongs to another process (start time differs)")
    );
    let turn = sb.ctl(&["send", "--wait", "reused", "echo $$ > turn.pid"]);
    assert_eq!(turn.code(), 0, "the turn ran: {}", turn.stderr());
    let worker = sessiond_tests::pid_written_to(&project.join("turn.pid"));
    assert_ne!(worker as u32, me);

    // 2. The pid file names a live process with its true start time, beside a lock file that
    //    nobody holds (an owner that died after its pid was taken by `sleep`, say): the free
    //    lock alone makes it stale. `sessionctl run` must get the session.
    let orphan = sb.new_session(&project, &["--name", "orphan"]);
    std::fs::write(dir.join(format!("{orphan}.lock")), "").unwrap();
    write_pid_file(
        &dir.join(format!("{orphan}.pid")),
        bystander.pid(),
        Some(start_time_of(bystander.pid())),
        1,
    );
    let shown = sb.ctl(&["--json", "show", "orphan"]).json();
    assert_eq!(shown["owner"]["live"], false, "{shown}");
    assert_eq!(
        shown["owner"]["stale_reason"],
        format!(
            "pid {} is running but does not hold the session's lock",
            bystander.pid()
        )
    );
    let run = sb.ctl(&["run", "orphan", "--", "sh", "-c", "echo $$ > run.pid"]);
    assert_eq!(run.code(), 0, "the run got the session: {}", run.stderr());
    sessiond_tests::pid_written_to(&project.join("run.pid"));

    // Afterwards both are free, their stale files replaced and then released, and the
    // processes the stale files named were left alone.
    for (name, id) in [("reused", &reused), ("orphan", &orphan)] {
        let shown = sb.ctl(&["--json", "show", name]).json();
        assert!(shown["owner"].is_null(), "{name}: {shown}");
        assert!(!dir.join(format!("{id}.pid")).exists(), "{name}: pid file");
        assert!(
            !dir.join(format!("{id}.lock")).exists(),
            "{name}: lock file"
        );
    }
    assert!(
        sessiond_tests::process_running(bystander.pid() as i32),
        "the process a stale pid file named was signalled"
    );
    bystander.kill();
    Row::new(
        "race",
        "a_stale_pid_file_naming_a_live_unrelated_process_does_not_block_ownership",
    )
    .done(
        "left stale pid files naming live processes: one with another start time (pid reuse), \
         one with the true start time beside a free lock; then sent a turn to the first and \
         `sessionctl run` on the second",
    )
    .runs(2)
    .checked(
        "`show` calls both stale; the turn and the run take ownership; the files are gone \
         afterwards; the named processes are not signalled",
    )
    .result(
        "2 of 2 stale files replaced: turn exit 0, run exit 0; 0 ownership files left; both \
         named processes still running",
    )
    .record();
}

#[test]
fn a_uuid_that_is_not_a_session_id_is_still_looked_up_as_a_name() {
    // Providers' own session ids are UUIDs (Claude's, Codex's); a selector shaped like one
    // must fall through to the other lookups when no session has it as its id.
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let uuid_name = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
    let out = sb.ctl(&["new", "--project", path_str(&project), "--name", uuid_name]);
    let id = out.ok().trim().to_string();
    let shown = sb.ctl(&["--json", "show", uuid_name]).json();
    assert_eq!(shown["id"], id.as_str());
    let missing = sb.ctl(&["show", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(missing.code(), 1);
    assert!(
        missing.stderr().contains("no session has id"),
        "{}",
        missing.stderr()
    );
}

#[test]
fn names_with_surrounding_spaces_are_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    for name in [" lead", "trail ", "\tboth\t"] {
        let out = sb.ctl(&["new", "--project", path_str(&project), "--name", name]);
        assert_eq!(out.code(), 1, "{name:?} accepted");
        assert!(
            out.stderr().contains("spaces") || out.stderr().contains("control"),
            "{}",
            out.stderr()
        );
    }
    assert_eq!(ids(&sb.ctl(&["--json", "list", "--all"]).json()).len(), 0);
    Row::new("bad input", "names_with_surrounding_spaces_are_refused")
        .done("3 `new --name` with leading, trailing and tab-surrounded names")
        .runs(3)
        .checked("exit status and message; sessions stored")
        .result("3 of 3 refused with exit 1; 0 sessions stored")
        .record();
}

/// `--json new --project P ARGS` run from `dir`; returns the stored session.
fn create_in(sb: &Sandbox, dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["--json", "new"];
    argv.extend_from_slice(args);
    sb.ctl_in(dir, &argv).json()
}

#[test]
fn project_and_cwd_paths_with_dot_dot_and_symlinks_are_stored_canonical() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let real = sb.project("real");
    let sub = real.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let link = sb.root.join("link-to-real");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let chain = sb.root.join("link-to-link");
    std::os::unix::fs::symlink(&link, &chain).unwrap();
    let sub_link = sb.root.join("link-to-sub");
    std::os::unix::fs::symlink(&sub, &sub_link).unwrap();
    // A link whose `..` differs from the lexical one: link-to-sub/.. is `real`, not the
    // directory holding the link.
    let (r, s) = (path_str(&real).to_string(), path_str(&sub).to_string());
    let l = path_str(&link).to_string();
    let sl = path_str(&sub_link).to_string();
    let c = path_str(&chain).to_string();
    let cases: Vec<(Vec<String>, &Path, &str, &str)> = vec![
        (
            vec!["--project".into(), format!("{r}/sub/..")],
            &sb.root,
            &r,
            &r,
        ),
        (vec!["--project".into(), l.clone()], &sb.root, &r, &r),
        (
            vec!["--project".into(), format!("{l}/sub/..")],
            &sb.root,
            &r,
            &r,
        ),
        (
            vec!["--project".into(), format!("{sl}/..")],
            &sb.root,
            &r,
            &r,
        ),
        (vec!["--project".into(), c.clone()], &sb.root, &r, &r),
        (
            vec!["--project".into(), l.clone(), "--cwd".into(), sl.clone()],
            &sb.root,
            &r,
            &s,
        ),
        (
            vec![
                "--project".into(),
                format!("{r}/./sub/../"),
                "--cwd".into(),
                format!("{c}/sub/./"),
            ],
            &sb.root,
            &r,
            &s,
        ),
        // Relative paths, from inside the project.
        (
            vec!["--project".into(), "..".into(), "--cwd".into(), ".".into()],
            &sub,
            &r,
            &s,
        ),
        // No --project: from a directory reached through a link.
        (vec![], &sub_link, &s, &s),
    ];
    for (i, (args, from, project, cwd)) in cases.iter().enumerate() {
        let name = format!("n{i}");
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        argv.extend(["--name", &name]);
        let made = create_in(&sb, from, &argv);
        assert_eq!(made["project"], *project, "case {i} {args:?}: {made}");
        assert_eq!(made["cwd"], *cwd, "case {i} {args:?}: {made}");
        assert!(
            made["scope"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{project}::")),
            "{made}"
        );
        // Looked up through a link, it is found in its canonical project.
        let through = if *project == r { &l } else { &sl };
        let shown = sb
            .ctl(&["--json", "show", &name, "--project", through])
            .json();
        assert_eq!(shown["id"], made["id"], "case {i}");
    }
    // The command run for the session runs in the canonical directory.
    let out = sb.ctl(&[
        "run",
        "n5",
        "--",
        "sh",
        "-c",
        "pwd -P; echo \"$SESSIOND_PROJECT\"",
    ]);
    assert_eq!(out.ok(), format!("{s}\n{r}\n"));

    // Paths that do not lead to a directory are refused and store nothing.
    let before = sb.list_all();
    let dangling = sb.root.join("dangling");
    std::os::unix::fs::symlink(sb.root.join("nowhere"), &dangling).unwrap();
    let file = real.join("file");
    std::fs::write(&file, "").unwrap();
    let to_file = sb.root.join("link-to-file");
    std::os::unix::fs::symlink(&file, &to_file).unwrap();
    let refused: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--project".into(), path_str(&dangling).into()],
            "cannot be used",
        ),
        (
            vec!["--project".into(), format!("{r}/nowhere/..")],
            "cannot be used",
        ),
        (
            vec!["--project".into(), path_str(&to_file).into()],
            "not a directory",
        ),
        (
            vec![
                "--project".into(),
                r.clone(),
                "--cwd".into(),
                path_str(&to_file).into(),
            ],
            "not a directory",
        ),
        (
            vec![
                "--project".into(),
                r.clone(),
                "--cwd".into(),
                path_str(&dangling).into(),
            ],
            "cannot be used",
        ),
    ];
    for (args, words) in &refused {
        let mut argv = vec!["--json", "new"];
        argv.extend(args.iter().map(String::as_str));
        let out = sb.ctl(&argv);
        assert_eq!(out.code(), 1, "{args:?} accepted: {}", out.stdout());
        let err = out.json_error();
        assert_eq!(err["error"]["code"], "invalid_argument", "{args:?}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{args:?}: {message}");
    }
    assert_eq!(sb.list_all(), before, "a refused path stored something");
    Row::new(
        "security",
        "project_and_cwd_paths_with_dot_dot_and_symlinks_are_stored_canonical",
    )
    .done(format!(
        "{} `sessionctl new` with `..`, `.`, trailing slashes, relative paths, symlinks, a \
         chain of symlinks and a symlinked current dir as --project/--cwd; {} with paths that \
         lead nowhere or to a file",
        cases.len(),
        refused.len()
    ))
    .runs((cases.len() + refused.len()) as u64)
    .checked(
        "the stored project, cwd and scope; lookup through a symlinked --project; the cwd a \
         `run` command gets; refusals and the registry afterwards",
    )
    .result(format!(
        "{} of {} stored with the canonical project and cwd and found through the link; the \
         command ran in the canonical cwd; {} of {} refused with invalid_argument, 0 sessions \
         stored",
        cases.len(),
        cases.len(),
        refused.len(),
        refused.len()
    ))
    .record();
}

/// Names a shell would act on if anything ever passed them through one.
const SHELL_NAMES: &[&str] = &[
    "$(touch pwned)",
    "`touch pwned`",
    "a; touch pwned",
    "a && touch pwned || touch pwned",
    "a | tee pwned > pwned < pwned",
    "*?[a-z]{x,y}~!#%^",
    "'single' \"double\" \\back\\slash",
    "${HOME} $PATH $$",
    "--name",
    "-x",
    "%s%n%x%p",
    "日本語 ünïcødé 🎉",
];

#[test]
fn names_with_shell_metacharacters_are_stored_and_shown_byte_exact() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let p = path_str(&project);
    let mut stored = 0;
    for (i, name) in SHELL_NAMES.iter().enumerate() {
        let flag = format!("--name={name}");
        let made = sb
            .ctl_in(&project, &["--json", "new", "--project", p, &flag])
            .json();
        assert_eq!(made["name"], *name, "{made}");
        let id = made["id"].as_str().unwrap().to_string();
        // Found by that name, and printed as it is in JSON and in text.
        // `--` so that names like `--name` are taken as names.
        let shown = sb.ctl_in(&project, &["--json", "show", "--", name]).json();
        assert_eq!(shown["id"], id.as_str(), "{name:?}");
        assert_eq!(shown["name"], *name);
        let text = sb.ctl_in(&project, &["show", &id]).ok();
        let line = text
            .lines()
            .find(|l| l.starts_with("name "))
            .unwrap_or_else(|| panic!("no name line: {text}"));
        assert_eq!(line["name".len()..].trim_start(), *name, "{text}");
        let listed = sb.ctl(&["--json", "list"]).json();
        assert_eq!(super_listed(&listed, &id)["name"], *name);
        // Renamed to another such name and back, still exact.
        let other = format!("{name} #{i}");
        let renamed = sb.ctl(&["--json", "rename", "--", &id, &other]).json();
        assert_eq!(renamed["name"], other.as_str());
        let back = sb.ctl(&["--json", "rename", "--", &id, name]).json();
        assert_eq!(back["name"], *name);
        stored += 1;
    }
    // Nothing was ever run through a shell.
    for dir in [&project, &sb.root, &sb.state] {
        assert!(
            !dir.join("pwned").exists(),
            "a name was run in {}",
            dir.display()
        );
    }
    Row::new(
        "security",
        "names_with_shell_metacharacters_are_stored_and_shown_byte_exact",
    )
    .done(format!(
        "{} names with $( ), backticks, ; && || | > <, globs, quotes, backslashes, $VARS, \
             option look-alikes, printf formats and non-ASCII, created, shown, listed, renamed",
        SHELL_NAMES.len()
    ))
    .runs(SHELL_NAMES.len() as u64)
    .checked("JSON and text output, lookup by name, rename round trip; no `pwned` file")
    .result(format!(
        "{stored} of {} names stored and shown byte-exact and found by name; 0 commands \
             executed",
        SHELL_NAMES.len()
    ))
    .record();
}

/// The listed session with `id` (panics when absent).
fn super_listed<'a>(list: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    listed(list, id).unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

#[test]
fn names_with_nul_newlines_or_control_characters_are_refused_and_change_nothing() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let p = path_str(&project);
    let known = sb.new_session(&project, &["--name", "keep"]);
    let before = sb.list_all();
    let bad: Vec<String> = vec![
        "two\nlines".into(),
        "carriage\rreturn".into(),
        "tab\tinside".into(),
        "bell\u{7}".into(),
        "\u{1b}[31mred\u{1b}[0m".into(),
        "back\u{8}space".into(),
        "del\u{7f}".into(),
        "next\u{85}line".into(),
        "csi\u{9b}31m".into(),
        "nul\0byte".into(),
        // Not controls to `char::is_control`, but they break lines or disguise a name.
        "line\u{2028}separator".into(),
        "para\u{2029}separator".into(),
        "evil\u{202E}txt.exe".into(),
        "isolate\u{2066}x\u{2069}".into(),
        "mark\u{200F}".into(),
        "zero\u{200B}width".into(),
        "soft\u{AD}hyphen".into(),
    ];
    let mut refused = 0;
    // Through the wire: the only way to send a NUL (argv cannot hold one), and the most
    // direct for the rest.
    let mut conn = sb.raw();
    conn.handshake();
    for (i, name) in bad.iter().enumerate() {
        let id = 10 + 2 * i as u64;
        let (_, answer) = conn.call(
            id,
            "create",
            serde_json::json!({"project": p, "provider": "shell", "name": name}),
        );
        let err: sessiond_proto::envelope::ErrorFrame = sessiond_proto::frame::decode(&answer)
            .unwrap_or_else(|e| panic!("{name:?} accepted ({e})"));
        assert_eq!(
            err.code,
            sessiond_proto::ErrorCode::INVALID_ARGUMENT,
            "{name:?}"
        );
        assert!(
            err.message.contains("control characters"),
            "{name:?}: {}",
            err.message
        );
        let (_, answer) = conn.call(
            id + 1,
            "rename",
            serde_json::json!({"session": known.as_str(), "name": name}),
        );
        let err: sessiond_proto::envelope::ErrorFrame = sessiond_proto::frame::decode(&answer)
            .unwrap_or_else(|e| panic!("rename to {name:?} accepted ({e})"));
        assert_eq!(
            err.code,
            sessiond_proto::ErrorCode::INVALID_ARGUMENT,
            "{name:?}"
        );
        refused += 2;
        // And through sessionctl, where argv can carry it.
        if !name.contains('\0') {
            let flag = format!("--name={name}");
            let out = sb.ctl(&["--json", "new", "--project", p, &flag]);
            assert_eq!(out.code(), 1, "{name:?} accepted by new");
            assert!(
                out.json_error()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("control characters"),
                "{name:?}"
            );
            let out = sb.ctl(&["--json", "rename", &known, name]);
            assert_eq!(out.code(), 1, "{name:?} accepted by rename");
            refused += 2;
        }
    }
    assert_eq!(sb.list_all(), before, "a refused name changed the registry");
    Row::new(
        "security",
        "names_with_nul_newlines_or_control_characters_are_refused_and_change_nothing",
    )
    .done(format!(
        "{} names holding NUL, LF, CR, TAB, BEL, ESC sequences, BS, DEL and C1 controls (NEL, \
         CSI), sent to create and rename over the wire and (all but NUL) through sessionctl",
        bad.len()
    ))
    .runs(refused)
    .checked("error code and message for each; the registry afterwards")
    .result(format!(
        "{refused} of {refused} refused with invalid_argument naming control characters; \
         registry unchanged"
    ))
    .record();
}

#[test]
fn a_session_whose_provider_was_dropped_takes_no_new_work() {
    let sb = Sandbox::with_config("[providers.niv]\ncommand = [\"sh\", \"-c\", \"{prompt}\"]\n");
    let mut daemon = sb.start_daemon();
    let project = sb.project("p");
    let id = sb.new_session(&project, &["--provider", "niv", "--name", "n"]);
    // Two prompts wait in a held queue when the provider goes.
    sb.ctl(&["pause", &id]).ok();
    sb.ctl(&["send", &id, "touch first"]).ok();
    sb.ctl(&["send", &id, "touch second"]).ok();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().success());
    // The provider is dropped from the config; the session stays, and says why it is stuck.
    std::fs::write(&sb.config, "").unwrap();
    let _daemon = sb.start_daemon();
    let before = sb.list_all();
    let out = sb.ctl(&["--json", "send", &id, "echo hi"]);
    let err = out.refused(1, "invalid_state", "no longer configured");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("niv") && message.contains("shell"),
        "{message}"
    );
    let out = sb.ctl(&["--json", "regenerate", &id]);
    out.refused(1, "invalid_state", "no longer configured");
    assert_eq!(sb.list_all(), before, "a refusal changed the registry");
    // Resuming would start them only to fail each in turn: refused, and they stay queued.
    let out = sb.ctl(&["--json", "resume", &id]);
    out.refused(1, "invalid_state", "no longer configured");
    let queue = sb.ctl(&["--json", "queue", &id]).json();
    assert_eq!(queue["queued"].as_array().map(Vec::len), Some(2), "{queue}");
    assert!(queue["paused"].is_string(), "{queue}");
    assert!(!project.join("first").exists());
}

#[test]
fn configured_providers_can_be_used_and_bad_ones_stop_start_up() {
    let sb = Sandbox::with_config(
        "[providers.aider]\ncommand = [\"aider\", \"--message\", \"{prompt}\"]\n",
    );
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let out = sb.ctl(&[
        "--json",
        "new",
        "--project",
        path_str(&project),
        "--provider",
        "aider",
    ]);
    assert_eq!(out.json()["provider"], "aider");
    let unknown = sb.ctl(&["new", "--project", path_str(&project), "--provider", "aidr"]);
    assert_eq!(unknown.code(), 1);
    assert!(
        unknown.stderr().contains("aider"),
        "lists the configured ones: {}",
        unknown.stderr()
    );

    let broken = Sandbox::with_config(
        "# agents\n[providers.aider]\ncommand = [\"aider\", \"--message\", \"{promt}\"]\n",
    );
    let out = sessiond_tests::run_bounded(&mut broken.sessiond());
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("unknown placeholder {promt}"), "{err}");

    // A provider no session could ever run is refused at start, not at every turn: here
    // nothing would ever give the session the id its command resumes.
    let unusable = Sandbox::with_config(
        "[providers.resumer]\ncommand = [\"agent\", \"--resume\", \"{provider_session_id}\", \
         \"{prompt}\"]\n",
    );
    let out = sessiond_tests::run_bounded(&mut unusable.sessiond());
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains("[providers.resumer]"), "{err}");
    assert!(err.contains("add a first_command"), "{err}");

    let not_a_table = Sandbox::with_config("[providers]\naider = \"aider\"\n");
    let out = sessiond_tests::run_bounded(&mut not_a_table.sessiond());
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr().contains("expected a [providers.NAME] table"),
        "{}",
        out.stderr()
    );
}

#[test]
fn current_prints_nothing_without_a_session_and_says_when_it_is_closed() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    // A status line's `$(sessionctl current)` is empty, not a sentence, when none is set.
    let none = sb.ctl(&["--context", "fresh", "current"]);
    assert_eq!(none.code(), 0, "{}", none.stderr());
    assert_eq!(none.stdout(), "");
    assert!(
        none.stderr().contains("has no current session"),
        "{}",
        none.stderr()
    );
    let project = sb.project("p");
    sb.new_session(&project, &["--name", "beta"]);
    sb.ctl(&["switch", "beta"]).ok();
    assert!(!sb.ctl(&["current"]).ok().contains("closed"));
    sb.ctl(&["close", "beta"]).ok();
    let current = sb.ctl(&["current"]).ok();
    assert!(
        current.contains("\"beta\"") && current.contains("closed"),
        "{current}"
    );
}

#[test]
fn text_from_elsewhere_cannot_drive_the_terminal_but_json_keeps_it_exact() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    // A directory name that would clear the screen, retitle the window and turn text red.
    let hostile = "p\u{1b}[2J\u{1b}]0;T\u{7}\u{1b}[31mX";
    let project = sb.project(hostile);
    sb.ctl(&["new", "--project", path_str(&project), "--name", "esc"])
        .ok();
    sb.ctl(&["switch", "esc"]).ok();
    // A prompt whose carriage return would hide what ran behind a harmless-looking line.
    sb.ctl(&["send", "--wait", "echo ran # \r\u{1b}[2K$ echo harmless"])
        .ok();
    for args in [
        &["list"][..],
        &["show", "esc"],
        &["current"],
        &["switch", "esc"],
        &["queue"],
        &["log", "esc"],
    ] {
        let shown = sb.ctl(args).ok();
        assert!(!shown.contains('\u{1b}'), "{args:?}: {shown:?}");
        assert!(!shown.contains('\r'), "{args:?}: {shown:?}");
    }
    assert!(sb
        .ctl(&["show", "esc"])
        .ok()
        .contains("p\\u{1b}[2J\\u{1b}]0;T\\u{7}\\u{1b}[31mX"));
    assert!(sb
        .ctl(&["log", "esc"])
        .ok()
        .contains("$ echo ran # \\r\\u{1b}[2K$ echo harmless\nran\n"));
    // Errors that quote it, too.
    let missing = project.join("missing");
    let refused = sb.ctl(&["new", "--project", path_str(&missing)]);
    assert_eq!(refused.code(), 1, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("\\u{1b}[2J"),
        "{}",
        refused.stderr()
    );
    assert!(!refused.stderr().contains('\u{1b}'), "{}", refused.stderr());
    // JSON carries the exact text, escaped as JSON.
    let json = sb.ctl(&["--json", "show", "esc"]).json();
    assert!(
        json["project"].as_str().unwrap().ends_with(hostile),
        "{json}"
    );
}
