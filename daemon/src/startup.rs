//! Start-up and exit: the order in which the daemon takes its resources, and gives them back.
//!
//! 1. Resolve paths, make sure both directories are private, read the config.
//! 2. Take the instance lock: from here on this process is *the* daemon for this runtime dir.
//! 3. With `--detach`, fork now (before any thread exists); the parent waits on a pipe until
//!    the child says the socket accepts, or says why it failed, and exits with that.
//! 4. Start logging, write the pid file, bind the socket, report ready, serve.
//! 5. On shutdown: the server removes the socket and drains; then the pid file goes, then the
//!    lock (with the process).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sessiond_proto::paths::{check_private_dir, ensure_private_dir, DirKind, PathOverrides, Paths};

use crate::cli::Args;
use crate::config::Config;
use crate::context::Daemon;
use crate::instance::{Instance, InstanceError};
use crate::logging::{LogControl, DEFAULT_FILTER};
use crate::ownership::SessionFiles;
use crate::platform::{self, Fork, ReadySignal};
use crate::registry::Registry;
use crate::server;
use crate::store::Store;

/// How long `--detach` waits for the daemon to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit status when another daemon holds the instance lock.
pub const EXIT_ALREADY_RUNNING: u8 = 3;

/// Runs the daemon to completion and returns its exit status.
pub fn run(args: Args) -> ExitCode {
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::AlreadyRunning(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(EXIT_ALREADY_RUNNING)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("sessiond: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    AlreadyRunning(String),
    Other(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Other(e.to_string())
    }
}

fn start(args: Args) -> Result<(), Failure> {
    // Before anything of ours is opened: what the parent left open stays ours, not workers'.
    platform::cloexec_inherited_fds();
    let paths = Paths::resolve(&PathOverrides {
        runtime_dir: args.runtime_dir.clone(),
        state_dir: args.state_dir.clone(),
        config: args.config.clone(),
    })?;
    if args.check_config {
        return check_config(&paths, &args);
    }
    ensure_private_dir(&paths.runtime_dir, DirKind::Runtime)?;
    ensure_private_dir(&paths.state_dir, DirKind::State)?;
    let settings = read_settings(&paths, &args)?;
    let mut instance = match Instance::acquire(&paths) {
        Ok(instance) => instance,
        Err(e @ InstanceError::AlreadyRunning { .. }) => {
            return Err(Failure::AlreadyRunning(e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };

    let mut ready = None;
    let mut log_file = None;
    if args.detach {
        match platform::daemonize(&paths.log_file(), &instance.lock_fds())? {
            Fork::Parent(wait) => {
                let child = wait.child;
                // The child holds the lock through its inherited descriptor; ours must not
                // outlive this process, but it does not matter when it closes.
                return match wait.wait(READY_TIMEOUT) {
                    Ok(()) => {
                        println!(
                            "sessiond {} running (pid {child}, socket {})",
                            crate::VERSION,
                            paths.socket().display()
                        );
                        Ok(())
                    }
                    Err(why) => Err(Failure::Other(format!(
                        "{why}\n(log: {})",
                        paths.log_file().display()
                    ))),
                };
            }
            Fork::Child(signal) => {
                ready = Some(signal);
                log_file = Some(paths.log_file());
            }
        }
    }

    let outcome = serve(paths, settings, &mut instance, log_file, &mut ready);
    if let (Err(why), Some(signal)) = (&outcome, ready.take()) {
        signal.fail(why);
    }
    instance.release();
    outcome.map_err(Failure::Other)
}

/// Refuses a directory a start could not create: its nearest existing ancestor must be a
/// directory this user may write into.
fn creatable(dir: &std::path::Path) -> Result<(), Failure> {
    let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.exists()) else {
        return Ok(());
    };
    let writable = ancestor.is_dir()
        && nix::unistd::access(
            ancestor,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok();
    if writable {
        return Ok(());
    }
    Err(Failure::Other(format!(
        "cannot create {}: {} is not a directory you may write into; create it yourself \
         (mode 0700), or choose another place",
        dir.display(),
        ancestor.display()
    )))
}

/// `--check-config`: the checks a start makes before it takes anything, made without taking
/// or creating anything — both directories (when they exist; a start creates missing ones),
/// the config file, the log filter — and what a daemon would use, printed.
fn check_config(paths: &Paths, args: &Args) -> Result<(), Failure> {
    let mut dirs = Vec::new();
    for (dir, kind) in [
        (&paths.runtime_dir, DirKind::Runtime),
        (&paths.state_dir, DirKind::State),
    ] {
        let shown = match std::fs::symlink_metadata(dir) {
            // Absent, or under something that is not a directory: could a start create it?
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory =>
            {
                creatable(dir)?;
                format!("{} (absent: a start creates it)", dir.display())
            }
            _ => {
                check_private_dir(dir, kind)?;
                dir.display().to_string()
            }
        };
        dirs.push(shown);
    }
    // A detached start (as autostart makes) appends to this file; one that cannot be opened
    // as a file stops it.
    let log = paths.log_file();
    if std::fs::metadata(&log).is_ok_and(|m| m.is_dir()) {
        return Err(Failure::Other(format!(
            "the log file {} is a directory, so a detached start (as sessionctl's autostart \
             makes) cannot write it; remove it",
            log.display()
        )));
    }
    let settings = read_settings(paths, args)?;
    let config_note = if paths.config.exists() {
        ""
    } else {
        " (absent: defaults)"
    };
    let providers: Vec<String> = settings.config.providers().into_keys().collect();
    println!("sessiond would start with:");
    for (key, value) in [
        ("config", format!("{}{config_note}", paths.config.display())),
        (
            "log filter",
            format!("{} ({})", settings.log_filter, settings.log_source),
        ),
        ("providers", providers.join(", ")),
        ("runtime dir", dirs[0].clone()),
        ("state dir", dirs[1].clone()),
    ] {
        println!("  {key:<12} {value}");
    }
    for warning in &settings.warnings {
        eprintln!("sessiond: warning: {warning}");
    }
    Ok(())
}

/// What a start reads before it takes anything, checked.
struct Settings {
    config: Config,
    /// Normalised by [`crate::logging::parse_filter`].
    log_filter: String,
    /// Where the filter came from, for messages.
    log_source: &'static str,
    /// What is valid but surely a mistake: logged once logging is up.
    warnings: Vec<String>,
}

/// Reads and checks the config file and the log filter (`--log-level`, else a non-empty
/// `SESSIOND_LOG`, else the config's, else the default).
fn read_settings(paths: &Paths, args: &Args) -> Result<Settings, Failure> {
    let config = Config::load(paths)?;
    let from_env = std::env::var("SESSIOND_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (spec, source) = if let Some(spec) = &args.log_level {
        (spec.clone(), "from --log-level")
    } else if let Some(spec) = from_env {
        (spec, "from SESSIOND_LOG")
    } else if let Some(spec) = &config.daemon.log_level {
        (spec.clone(), "from daemon.log_level in the config file")
    } else {
        (DEFAULT_FILTER.to_string(), "the default")
    };
    let (_, log_filter) = crate::logging::parse_filter(&spec)
        .map_err(|e| format!("log filter {spec:?} ({source}): {e}"))?;
    // A target that matches nothing is a warning here, not a refusal: a config that ran
    // before must still start (a filter changed at runtime is refused instead).
    let mut warnings = config.warnings();
    let unmatched = crate::logging::unmatched_targets(&log_filter);
    if !unmatched.is_empty() {
        warnings.push(format!(
            "log filter ({source}): {}",
            crate::logging::unmatched_message(&unmatched)
        ));
    }
    Ok(Settings {
        config,
        log_filter,
        log_source: source,
        warnings,
    })
}

/// Everything after the daemon process is settled: logging, runtime, socket, serving.
fn serve(
    paths: Paths,
    settings: Settings,
    instance: &mut Instance,
    log_file: Option<std::path::PathBuf>,
    ready: &mut Option<ReadySignal>,
) -> Result<(), String> {
    let (log, _flush_on_exit) = LogControl::init(&settings.log_filter)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let outcome = run_server(paths, settings.config, instance, log, log_file, ready);
    if let Err(why) = &outcome {
        // Into the log too: a detached daemon's parent may be gone by the time anyone looks.
        tracing::error!("sessiond failed: {why}");
    }
    outcome
}

/// Pid file, runtime, socket, serving: everything that runs with logging in place.
fn run_server(
    paths: Paths,
    config: Config,
    instance: &mut Instance,
    log: LogControl,
    log_file: Option<std::path::PathBuf>,
    ready: &mut Option<ReadySignal>,
) -> Result<(), String> {
    instance.write_pid()?;
    let lock_identity = instance.runtime_lock_identity();
    // Threads start here (the store's), so this comes after detaching.
    let started = std::time::Instant::now();
    let (store, loaded) = Store::open(&paths.state_dir)?;
    let sessions_dir = paths.state_dir.join("sessions");
    let session_files = SessionFiles::open(&sessions_dir)
        .map_err(|e| format!("cannot use {}: {e}", sessions_dir.display()))?;
    let owned = |id: sessiond_proto::session::SessionId| {
        matches!(
            session_files.inspect(&id.to_string()),
            Some(crate::ownership::OwnerStatus::Live { .. })
        )
    };
    let providers = config.providers();
    let mut registry = Registry::new(store, loaded, providers.clone(), owned)?;
    crate::recovery::settle_at_startup(
        &mut registry,
        &session_files,
        config.daemon.terminate_grace(),
    );
    tracing::info!(
        sessions = registry.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "registry loaded"
    );

    // One thread serves every connection: requests are short, and a single event loop keeps
    // latency free of cross-thread wake-ups. Blocking work gets threads of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let socket = paths.socket();
        let (orders, order_queue) = tokio::sync::mpsc::unbounded_channel();
        let turn_limit = config.daemon.turn_limit();
        // A detached daemon (the one with a log file) is never a service's.
        let supervisor = supervisor(log_file.is_some());
        let ctx = Arc::new(Daemon::new(crate::context::Parts {
            paths,
            config: config.daemon,
            log,
            log_file,
            registry,
            session_files,
            providers,
            supervisor,
            orders,
        }));
        tokio::spawn(crate::runner::run(ctx.clone(), order_queue, turn_limit));
        // Handlers before the socket: a client can signal the daemon as soon as it answers,
        // and a SIGTERM then must mean a graceful shutdown, not the default death.
        server::spawn_signal_handlers(&ctx)
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let bound = server::bind(&socket)
            .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
        tracing::info!(
            version = crate::VERSION,
            pid = ctx.pid,
            socket = %socket.display(),
            "sessiond ready"
        );
        if let Some(signal) = ready.take() {
            signal.ready();
        }
        server::serve(ctx, bound, lock_identity).await;
        tracing::info!("sessiond stopped");
        Ok(())
    })
}

/// The service manager running this daemon, if any: `sessionctl daemon stop` and `restart`
/// must then go through it. systemd gives each service an `INVOCATION_ID` and is the parent
/// of its main process. A detached daemon is never a service's main process, whatever it
/// inherited, though its parent may be a subreaping `systemd --user`.
fn supervisor(detached: bool) -> Option<String> {
    if detached || std::env::var_os("INVOCATION_ID").is_none_or(|id| id.is_empty()) {
        return None;
    }
    let parent = std::os::unix::process::parent_id();
    let name = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    (name.trim_end() == "systemd").then(|| "systemd".to_string())
}
