//! The listener: binds the socket, accepts connections, keeps the socket file alive, and runs
//! the shutdown sequence.
//!
//! Binding assumes the instance lock is held (see `instance`): with it, any file at the socket
//! path is a leftover of a dead daemon and is replaced. While serving, a slow housekeeping tick
//! checks that the socket file is still ours (a /tmp cleaner may delete it, tmux #1036) and
//! binds a fresh one if not, and hands the memory of large answers back once they stop.
//! Shutdown stops accepting, removes the socket so no new client can reach a dying daemon, and
//! waits (up to `shutdown_grace`) for every connection to finish.

use std::io;
use std::path::Path;
use std::sync::Arc;

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use tracing::{info, warn, Instrument};

use crate::conn;
use crate::context::Daemon;
use crate::platform;
use crate::shutdown::Drain;

/// A bound socket and the identity of its file, to notice when the file is replaced.
pub struct Bound {
    listener: Listener,
    file_id: Option<(u64, u64)>,
}

/// Binds the daemon's socket, replacing a stale file. Requires the instance lock.
pub fn bind(socket: &Path) -> io::Result<Bound> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is a directory, where the socket should be; remove it",
                    socket.display()
                ),
            ))
        }
        // We hold the instance lock, so no live daemon owns this file.
        Ok(_) => std::fs::remove_file(socket)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let options = || -> io::Result<ListenerOptions<'_>> {
        Ok(ListenerOptions::new()
            .name(socket.to_fs_name::<GenericFilePath>()?)
            .reclaim_name(false))
    };
    #[cfg(unix)]
    let listener = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        // Setting the mode before bind leaves no window with a wider mode; platforms that
        // cannot (macOS) get a chmod right after, which the 0700 directory makes just as safe.
        match options()?.mode(0o600).create_tokio() {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let listener = options()?.create_tokio()?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
                listener
            }
            other => other?,
        }
    };
    #[cfg(not(unix))]
    let listener = options()?.create_tokio()?;
    Ok(Bound {
        listener,
        file_id: file_id(socket),
    })
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Accepts and serves connections until shutdown, then drains. Removes the socket file.
/// `lock_identity` is the runtime lock file this daemon holds; if that file disappears (the
/// whole runtime directory was deleted, as at logout), the daemon shuts down rather than
/// serve a socket nobody can find while a new daemon starts beside it.
pub async fn serve(ctx: Arc<Daemon>, mut bound: Bound, lock_identity: Option<(u64, u64)>) {
    let socket = ctx.paths.socket();
    let drain = Drain::new();
    let mut shutdown = ctx.shutdown_listener();
    let mut tick = tokio::time::interval(ctx.config.socket_check_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate

    // Large answers seen at the last tick, and whether memory may be waiting to go back.
    let mut large_answers = ctx.large_answers();
    let mut memory_to_return = false;
    let mut next_conn: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.triggered() => break,
            accepted = bound.listener.accept() => match accepted {
                Ok(stream) => {
                    next_conn += 1;
                    spawn_connection(&ctx, stream, next_conn, &drain);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the error is transient
                    // or the log will show it repeating.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = tick.tick() => {
                if lock_identity.is_some() && file_id(&ctx.paths.lock_file()) != lock_identity {
                    warn!(
                        runtime_dir = %ctx.paths.runtime_dir.display(),
                        "the runtime directory was removed under the daemon"
                    );
                    ctx.trigger_shutdown("runtime directory removed");
                    continue;
                }
                // A large answer (a listing of thousands of sessions) leaves megabytes the
                // allocator keeps for the next one. Keep them while such answers keep coming;
                // a full tick without one, and an idle daemon gives them back.
                let answers = ctx.large_answers();
                if answers != large_answers {
                    large_answers = answers;
                    memory_to_return = true;
                } else if memory_to_return {
                    memory_to_return = false;
                    platform::return_free_memory();
                }
                if file_id(&socket) != bound.file_id || bound.file_id.is_none() {
                    warn!(socket = %socket.display(), "socket file vanished or was replaced; recreating it");
                    match bind(&socket) {
                        Ok(fresh) => bound = fresh,
                        Err(e) => warn!("cannot recreate the socket: {e}; will retry"),
                    }
                }
            }
        }
    }
    // Stop accepting before anything else, and take the name away so new clients see at once
    // that no daemon serves here.
    let still_ours = file_id(&socket) == bound.file_id;
    drop(bound);
    if still_ours {
        if let Err(e) = std::fs::remove_file(&socket) {
            warn!(socket = %socket.display(), "cannot remove socket: {e}");
        }
    }
    // Running turns are ended while the connections stay open (refusing new requests), so
    // subscribers and clients waiting on a turn see it settle. Then they close.
    crate::runner::end_all(&ctx).await;
    ctx.close_connections();
    if !drain.wait(ctx.config.shutdown_grace()).await {
        warn!(
            "connections still busy after {:?}; exiting anyway",
            ctx.config.shutdown_grace()
        );
    }
}

fn spawn_connection(ctx: &Arc<Daemon>, stream: Stream, id: u64, drain: &Drain) {
    let span = tracing::debug_span!("conn", id);
    tokio::spawn(conn::serve(ctx.clone(), stream, id, drain.guard()).instrument(span));
}

/// Turns SIGTERM, SIGINT and SIGHUP (the terminal of a foreground daemon closed) into a
/// graceful shutdown. A second signal while shutting down means "now": the socket and pid file
/// are removed and the process exits at once, without waiting for the grace period.
pub fn spawn_signal_handlers(ctx: &Arc<Daemon>) -> io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                let which = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => "SIGHUP",
                };
                if ctx.shutting_down() {
                    warn!("received {which} again during shutdown; exiting now");
                    // "Now" leaves no time for graces, but no worker may outlive its daemon.
                    for pid in ctx.registry().worker_pids() {
                        let _ =
                            crate::platform::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    let _ = std::fs::remove_file(ctx.paths.socket());
                    let _ = std::fs::remove_file(ctx.paths.pid_file());
                    std::process::exit(1);
                }
                info!("received {which}");
                ctx.trigger_shutdown(which);
            }
        });
    }
    Ok(())
}
