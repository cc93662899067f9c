//! A process of another user is refused at the door, and the daemon carries on.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use sessiond_tests::report::Row;
use sessiond_tests::{is_root, run_bounded, Sandbox};

/// The uid the intruder runs as: `nobody` on Debian.
const OTHER_UID: u32 = 65534;

#[test]
fn connection_from_another_uid_is_refused_with_permission_denied() {
    if !is_root() {
        eprintln!("skipped: refusing another uid can only be tested as root (CI runs as root)");
        return;
    }
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    // Open the way to the socket as an attacker with file access would have it, so that only
    // the peer-credential check stands between them and the daemon.
    std::fs::set_permissions(&sb.root, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&sb.runtime, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(sb.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The build directory may sit below a private directory; give the intruder its own copy.
    let peer = sb.root.join("peer");
    std::fs::copy(env!("CARGO_BIN_EXE_sessiond-test-peer"), &peer).unwrap();
    std::fs::set_permissions(&peer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_bounded(
        std::process::Command::new(&peer)
            .arg(sb.socket())
            .uid(OTHER_UID)
            .gid(OTHER_UID),
    );
    let stdout = out.ok();
    let frame: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "permission_denied", "{frame}");
    assert!(frame["message"]
        .as_str()
        .unwrap()
        .contains(&OTHER_UID.to_string()));
    assert!(daemon.running());
    // Close the directory again (the client refuses an open one) and check the daemon still
    // serves its owner.
    std::fs::set_permissions(&sb.runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    sb.ctl(&["--no-autostart", "ping"]).ok();
    Row::new(
        "security",
        "connection_from_another_uid_is_refused_with_permission_denied",
    )
    .done(format!(
        "a process running as uid {OTHER_UID} connected and sent hello through a socket \
             and directories opened to it (0777 / 0711)"
    ))
    .checked("the first frame it gets; the daemon; the owner's client afterwards")
    .result(format!(
        "refused with {} naming uid {OTHER_UID}; daemon running; owner's ping answered",
        frame["code"].as_str().unwrap()
    ))
    .record();
}
