//! Harness for the end-to-end tests: real `sessiond` and `sessionctl` binaries, real sockets,
//! one private temp directory per test so tests run in parallel.
//!
//! The binaries come from the workspace's target directory (the README's test command builds
//! them first); `SESSIOND_TEST_BIN_DIR` points elsewhere. Every wait here is bounded, and
//! every daemon a test starts — in the foreground or autostarted — is killed when its
//! [`Sandbox`] or [`Daemon`] is dropped, pass or fail.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use sessiond_client::ConnectOptions;
use sessiond_proto::envelope::{ErrorFrame, FrameHead, Hello, Request};
use sessiond_proto::frame;
use sessiond_proto::paths::{PathOverrides, Paths};
use sessiond_proto::PROTOCOL_VERSION;

pub mod report;

/// Longest any harness wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESSIOND_TEST_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (the README's test command does this), or set SESSIOND_TEST_BIN_DIR",
        path.display()
    );
    path
}

pub fn sessiond_bin() -> PathBuf {
    binary("sessiond")
}

pub fn sessionctl_bin() -> PathBuf {
    binary("sessionctl")
}

/// A private set of directories for one test.
pub struct Sandbox {
    // Kept for its Drop, which deletes the tree.
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub runtime: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// Fresh directories and an empty (all defaults) config file.
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// Fresh directories and the given `config.toml` text.
    pub fn with_config(toml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sd")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let config = root.join("config.toml");
        std::fs::write(&config, toml).expect("write config");
        // Private whatever the umask: sessiond refuses a config others may write.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod config");
        Sandbox {
            runtime: root.join("run"),
            state: root.join("state"),
            config,
            root,
            _dir: dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime.join("sessiond.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.runtime.join("sessiond.pid")
    }

    pub fn log_file(&self) -> PathBuf {
        self.state.join("sessiond.log")
    }

    pub fn paths(&self) -> Paths {
        Paths::resolve(&PathOverrides {
            runtime_dir: Some(self.runtime.clone()),
            state_dir: Some(self.state.clone()),
            config: Some(self.config.clone()),
        })
        .expect("sandbox paths resolve")
    }

    /// Library connection options for this sandbox (autostart on, sessiond from the build).
    pub fn connect_options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new(self.paths());
        opts.daemon_program = Some(sessiond_bin());
        opts
    }

    /// A `sessiond` command pointed at this sandbox.
    pub fn sessiond(&self) -> Command {
        let mut cmd = Command::new(sessiond_bin());
        cmd.arg("--runtime-dir")
            .arg(&self.runtime)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .env_remove("SESSIOND_LOG");
        cmd
    }

    /// Starts `sessiond` in the foreground and waits until its socket accepts.
    pub fn start_daemon(&self) -> Daemon {
        let child = self
            .sessiond()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sessiond");
        let mut daemon = Daemon { child };
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = daemon.child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = daemon.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("sessiond exited with {status} before accepting: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not accept within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        daemon
    }

    /// A `sessionctl` command pointed at this sandbox through the environment, as a user's
    /// shell would be.
    pub fn sessionctl(&self) -> Command {
        let mut cmd = Command::new(sessionctl_bin());
        cmd.env("SESSIOND_RUNTIME_DIR", &self.runtime)
            .env("SESSIOND_STATE_DIR", &self.state)
            .env("SESSIOND_CONFIG", &self.config)
            .env("SESSIOND_BIN", sessiond_bin())
            .env_remove("SESSIOND_NO_AUTOSTART")
            .env_remove("SESSIOND_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `sessionctl ARGS` (a `watch`, a `log --follow`) in the background, with a
    /// channel of the lines it prints on stdout. The caller ends it.
    pub fn spawn_lines(&self, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead;
        let mut child = self
            .sessionctl()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sessionctl");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// Runs `sessionctl ARGS` to completion (bounded by [`WAIT`]).
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        run_bounded(self.sessionctl().args(args))
    }

    /// A raw connection to the daemon's socket.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket())
    }

    /// Creates the runtime directory ahead of the daemon, with `mode`.
    pub fn make_runtime_dir(&self, mode: u32) {
        std::fs::create_dir_all(&self.runtime).unwrap();
        std::fs::set_permissions(&self.runtime, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Listens on the sandbox socket in place of a daemon, for clients to meet a scripted peer.
    pub fn fake_listener(&self) -> std::os::unix::net::UnixListener {
        self.make_runtime_dir(0o700);
        std::os::unix::net::UnixListener::bind(self.socket()).unwrap()
    }

    /// Asserts a daemon left neither its socket nor its pid file behind.
    pub fn assert_cleaned_up(&self) {
        assert!(!self.socket().exists(), "socket file left behind");
        assert!(!self.pid_file().exists(), "pid file left behind");
    }

    /// The pid recorded in the pid file, if any.
    pub fn recorded_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Autostarted daemons are not our children: end whichever daemon this sandbox has.
        if let Some(pid) = self.recorded_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a command with a time bound; panics (after killing it) if it overruns.
pub fn run_bounded(cmd: &mut Command) -> CtlOutput {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drained while it runs: output larger than a pipe's buffer would otherwise block the
    // command until the deadline.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    CtlOutput(Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    })
}

/// A finished command's output, with helpers for assertions.
pub struct CtlOutput(pub Output);

impl CtlOutput {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Stdout parsed as exactly one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr: {}",
                self.stdout(),
                self.stderr()
            )
        })
    }
    /// Stderr parsed as one JSON error document.
    pub fn json_error(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stderr)
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {}", self.stderr()))
    }
    /// Asserts a `--json` command was refused: exit status `exit`, nothing on stdout, and an
    /// error document with `code` whose message contains `words`; returns that document.
    pub fn refused(&self, exit: i32, code: &str, words: &str) -> serde_json::Value {
        assert_eq!(self.code(), exit, "stdout: {}", self.stdout());
        assert_eq!(
            self.stdout(),
            "",
            "a refused command prints nothing on stdout"
        );
        let err = self.json_error()["error"].clone();
        assert_eq!(err["code"], code, "{err}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "expected {words:?} in: {message}");
        err
    }
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
}

/// A daemon process started by the test. Killed on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection speaking raw frames, for tests of the wire itself.
pub struct RawConn {
    pub stream: UnixStream,
}

impl RawConn {
    pub fn connect(socket: &Path) -> RawConn {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        RawConn { stream }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn send<T: Serialize>(&mut self, value: &T) {
        self.send_bytes(&frame::encode(value).unwrap());
    }

    pub fn hello(&mut self) {
        self.send(&Hello::new(
            PROTOCOL_VERSION,
            "e2e",
            Some(std::process::id()),
        ));
    }

    /// Sends hello and reads the welcome.
    pub fn handshake(&mut self) {
        self.hello();
        let payload = self.read().expect("welcome");
        assert_eq!(kind(&payload), "welcome", "{}", as_json(&payload));
    }

    pub fn request<P: Serialize>(&mut self, id: u64, method: &str, params: P) {
        self.send(&Request::new(id, method, params));
    }

    /// Sends `n` `status` requests and reads none of the answers: far more than the socket
    /// buffers hold, so the daemon's writes to this connection stall.
    pub fn flood_unread(&mut self, n: u64) {
        let mut burst = Vec::new();
        for id in 0..n {
            frame::encode_into(
                &mut burst,
                &Request::new(id, "status", serde_json::json!({})),
            )
            .unwrap();
        }
        let _ = self.stream.write_all(&burst);
    }

    /// Reads one frame's payload; `None` on end of stream (or a reset after it).
    pub fn read(&mut self) -> Option<Vec<u8>> {
        match frame::read_frame(&mut self.stream, 64 * 1024 * 1024) {
            Ok(p) => p,
            Err(frame::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                None
            }
            Err(e) => panic!("reading a frame: {e}"),
        }
    }

    /// Reads the next frame, which must be an error; returns it.
    pub fn read_error(&mut self) -> ErrorFrame {
        let payload = self.read().expect("an error frame, got end of stream");
        frame::decode(&payload)
            .unwrap_or_else(|e| panic!("expected an error frame ({e}): {}", as_json(&payload)))
    }

    /// Asserts the daemon closes the connection (after any frames it still sends).
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "unexpected bytes before close: {rest:?}"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the daemon to close the connection, got {e}"),
        }
    }
}

/// The `type` of a frame.
pub fn kind(payload: &[u8]) -> String {
    FrameHead::decode(payload).expect("frame head").kind
}

/// A payload as generic JSON, for assertions and messages.
pub fn as_json(payload: &[u8]) -> serde_json::Value {
    use serde::Deserialize;
    let mut de = rmp_serde::Deserializer::new(payload);
    serde_json::Value::deserialize(&mut de).expect("valid MessagePack")
}

/// Runs a closure until it returns true or [`WAIT`] passes.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the tests run as root (needed to test refusing another uid).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ---- Sessions and events ---------------------------------------------------------------------

/// A multi-threaded runtime for tests that drive the async client.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Sandbox {
    /// A project directory `root/projects/NAME`, created; returned canonical, as the daemon
    /// stores project paths.
    pub fn project(&self, name: &str) -> PathBuf {
        let dir = self.root.join("projects").join(name);
        std::fs::create_dir_all(&dir).expect("create project dir");
        std::fs::canonicalize(&dir).expect("canonical project dir")
    }

    /// Runs `sessionctl ARGS` from directory `dir` (bounded by [`WAIT`]).
    pub fn ctl_in(&self, dir: &Path, args: &[&str]) -> CtlOutput {
        run_bounded(self.sessionctl().current_dir(dir).args(args))
    }

    /// `sessionctl --json list --all`: every session, archived ones included.
    pub fn list_all(&self) -> serde_json::Value {
        self.ctl(&["--json", "list", "--all"]).json()
    }

    /// The full id of the session `selector` names (`sessionctl --json show SELECTOR`).
    pub fn session_id(&self, selector: &str) -> String {
        let shown = self.ctl(&["--json", "show", selector]).json();
        shown["id"]
            .as_str()
            .unwrap_or_else(|| panic!("show {selector} gave no id: {shown}"))
            .to_string()
    }

    /// `sessionctl new --project DIR ARGS`; returns the new session's id.
    pub fn new_session(&self, project: &Path, args: &[&str]) -> String {
        let mut all = vec!["new", "--project", project.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        self.ctl(&all).ok().trim().to_string()
    }
}

/// Connections [`create_sessions`] spreads its requests over, so the daemon's group commit
/// has concurrent writes to batch (one connection's requests are answered one at a time).
const BULK_CONNECTIONS: usize = 16;

/// Creates `n` `shell` sessions in `project` with every request in flight at once, over
/// [`BULK_CONNECTIONS`] async connections; returns them in request order. Each call may wait
/// up to a minute, since a pipelined request waits behind the ones ahead of it.
pub async fn create_sessions(
    opts: &ConnectOptions,
    project: &Path,
    n: usize,
) -> Vec<sessiond_proto::session::SessionInfo> {
    use sessiond_proto::methods::{Create, CreateParams};
    let mut opts = opts.clone();
    opts.timeout = Duration::from_secs(60);
    let mut clients = Vec::with_capacity(BULK_CONNECTIONS);
    for _ in 0..BULK_CONNECTIONS {
        let client = sessiond_client::Client::connect(&opts)
            .await
            .expect("connect for bulk creation");
        clients.push(std::sync::Arc::new(client));
    }
    let project = project.to_str().expect("UTF-8 path").to_string();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = clients[i % BULK_CONNECTIONS].clone();
            let params = CreateParams {
                project: project.clone(),
                provider: "shell".into(),
                name: None,
                cwd: None,
            };
            tokio::spawn(async move { client.call::<Create>(params).await })
        })
        .collect();
    let mut created = Vec::with_capacity(n);
    for task in tasks {
        created.push(task.await.expect("create task").expect("create"));
    }
    created
}

/// Decodes an event frame about a session (any kind but `lagged`).
pub fn session_event(
    payload: &[u8],
) -> sessiond_proto::envelope::Event<sessiond_proto::session::SessionEvent> {
    frame::decode(payload)
        .unwrap_or_else(|e| panic!("not a session event ({e}): {}", as_json(payload)))
}

impl RawConn {
    /// Sends a request and reads until its answer (a response or an error with its id);
    /// returns the events that arrived first, and the answer.
    pub fn call<P: Serialize>(
        &mut self,
        id: u64,
        method: &str,
        params: P,
    ) -> (Vec<Vec<u8>>, Vec<u8>) {
        self.request(id, method, params);
        let mut events = Vec::new();
        loop {
            let payload = self
                .read()
                .unwrap_or_else(|| panic!("connection closed before the answer to {method}"));
            let head = FrameHead::decode(&payload).expect("frame head");
            match (head.kind.as_str(), head.id) {
                ("event", _) => events.push(payload),
                ("response" | "error", Some(got)) if got == id => return (events, payload),
                _ => panic!("unexpected frame: {}", as_json(&payload)),
            }
        }
    }

    /// Reads the next frame, which must be an event.
    pub fn read_event(&mut self) -> Vec<u8> {
        let payload = self.read().expect("an event, got end of stream");
        assert_eq!(kind(&payload), "event", "{}", as_json(&payload));
        payload
    }
}

/// Whether process `pid` still runs. A zombie (exited, waiting for its parent, often init after
/// its daemon died, to reap it) counts as gone.
pub fn process_running(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && !zombie
}

/// A process's resident memory in KiB; panics, naming the pid, if the process is gone.
pub fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The pid a test's command wrote to `path` (`echo $$ > path`), once it is all there (the
/// shell creates the file before it writes the number).
pub fn pid_written_to(path: &Path) -> i32 {
    let read = || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.ends_with('\n'))
            .and_then(|text| text.trim().parse().ok())
    };
    eventually(&format!("a pid in {}", path.display()), || read().is_some());
    read().expect("the pid was just read")
}

// ---- Starting a batch of processes at one instant ---------------------------------------------

/// A process held at the starting line: a `sh` that says `ready` on stderr, then waits for a
/// line on stdin before it `exec`s the real program (keeping its pid). Spawning takes a few
/// milliseconds per process; the gate makes a batch start within microseconds of each other.
pub struct Gated {
    pub child: Child,
    /// The program's standard error, after the gate's own `ready` line.
    pub stderr: std::io::BufReader<std::process::ChildStderr>,
}

/// Holds `cmd` (program, arguments, environment, working directory) at the gate; its standard
/// output goes to `stdout`.
pub fn gated(cmd: &Command, stdout: Stdio) -> Gated {
    use std::io::BufRead;
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#"echo ready >&2; read _ ; exec "$0" "$@""#)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    sh.stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let mut child = sh.spawn().expect("spawn the gate");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).expect("the gate reports");
    assert_eq!(line, "ready\n", "the gate failed to start");
    Gated { child, stderr }
}

/// A gated process that has exited.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Gated {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits for the process to exit (panicking, after killing it, past `deadline`); returns
    /// its status and output (stdout only if it was piped).
    pub fn finish(mut self, deadline: Instant) -> Finished {
        while !self.exited() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("a gated process did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).unwrap();
        }
        let mut stderr = String::new();
        self.stderr.read_to_string(&mut stderr).unwrap();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

/// Lets every gated process go at once.
pub fn release(gates: &mut [Gated]) {
    for gate in gates.iter_mut() {
        let mut stdin = gate.child.stdin.take().expect("gate not yet released");
        stdin.write_all(b"go\n").expect("release the gate");
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
