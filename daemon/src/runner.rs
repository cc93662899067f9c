//! The runner: turns become processes, and processes become output and settled turns.
//!
//! The registry decides *when* a turn starts (one at a time per session, in queue order) and
//! hands the runner a [`StartOrder`]. The runner waits for a slot under the global limit
//! (`runner.max_concurrent_turns`), builds the argv from the session's provider (never through
//! a shell), and starts the worker in its own process group, in the session's working
//! directory, with `SESSIOND_SESSION_ID`, `SESSIOND_TURN_ID` and `SESSIOND_PROJECT` set.
//! Output is read as it comes, in chunks, and handed to the registry (which publishes and
//! stores it); when the process exits the registry settles the turn and may hand back the
//! session's next one. The runner never changes session or turn state itself.

use std::process::Stdio;
use std::sync::Arc;

use sessiond_proto::session::{TurnId, TurnStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::context::Daemon;
use crate::provider::{LineScanner, OutputFormat, PromptChannel, Vars};
use crate::registry::{StartOrder, Yielded};
use sessiond_proto::ownership::ClaimError;

/// Bytes read from a worker's stdout or stderr at a time: one output event at most.
const CHUNK: usize = 16 * 1024;

/// How long output may keep coming once the worker and its group are gone (a descendant that
/// left the group can hold the pipes open).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What the runner is asked to do.
pub enum Order {
    /// Start a turn the registry has marked running.
    Start(StartOrder),
    /// Stop a running turn's worker (it settles when it exits).
    Stop {
        turn: sessiond_proto::session::TurnId,
        pid: u32,
    },
}

/// Where orders go.
pub type Orders = mpsc::UnboundedSender<Order>;

/// Runs orders until the daemon stops. `limit` turns run at once across all sessions; the rest
/// wait in order for a slot.
pub async fn run(ctx: Arc<Daemon>, mut orders: mpsc::UnboundedReceiver<Order>, limit: usize) {
    let slots = Arc::new(Semaphore::new(limit.max(1)));
    while let Some(order) = orders.recv().await {
        let order = match order {
            Order::Start(order) => order,
            Order::Stop { turn, pid } => {
                tokio::spawn(stop_worker(ctx.clone(), turn, pid));
                continue;
            }
        };
        let ctx = ctx.clone();
        let saved = ctx.registry().barrier();
        let slots = slots.clone();
        // The slot is awaited inside the task, so this loop keeps reading orders (a stop must
        // never wait behind a start that waits for a slot); the semaphore is fair, so starts
        // still get slots in order.
        tokio::spawn(async move {
            let Ok(slot) = slots.acquire_owned().await else {
                return;
            };
            launch(ctx, slot, order, saved).await;
        });
    }
}

/// Starts the turn `order` names in `slot`, once `saved` (the write that marked it running) is
/// durable, and settles it when it ends. A turn a steer came for while it waited for the slot
/// hands the slot to the steer instead.
async fn launch(
    ctx: Arc<Daemon>,
    slot: OwnedSemaphorePermit,
    mut order: StartOrder,
    mut saved: crate::store::Commit,
) {
    let turn = loop {
        let turn = order.turn;
        // Cancelled while it waited for the slot: settled already, nothing to start.
        if !ctx.registry().begin_launch(turn) {
            return;
        }
        if ctx.registry().hold_if_stopping(turn) {
            return;
        }
        // Bound first: a guard in the match's head would live through its arms.
        let yielded = ctx.registry().yield_to_steer(turn);
        match yielded {
            Yielded::No => break turn,
            Yielded::To(Some(steer)) => {
                saved = ctx.registry().barrier();
                order = steer;
            }
            Yielded::To(None) | Yielded::Held => return,
        }
    };
    if ctx.registry().stop_requested(turn) {
        drop(slot);
        // Settle maps the stop to its status (cancelled, or interrupted by a steer).
        let next = ctx
            .registry()
            .settle(turn, TurnStatus::Cancelled, None, None);
        if let Some(next) = next {
            ctx.start_turn(next);
        }
        return;
    }
    // Never start a worker for a turn a crash could forget (it would run again after a
    // restart): while the database cannot be written the turn waits at the head of its queue,
    // which is paused until someone resumes it.
    if !matches!(saved.await, Ok(Ok(()))) {
        drop(slot);
        // A stop of the daemon that came meanwhile holds it, as it would have held it before
        // its save.
        if ctx.registry().hold_if_stopping(turn) {
            return;
        }
        // A cancel or steer that came while the save failed still counts: settle maps it to
        // its status (a steer then runs next, or waits, like this one).
        if ctx.registry().stop_requested(turn) {
            let next = ctx
                .registry()
                .settle(turn, TurnStatus::Cancelled, None, None);
            if let Some(next) = next {
                ctx.start_turn(next);
            }
            return;
        }
        ctx.registry().requeue_blocked(
            turn,
            "the database could not be written, so the turn was not started; free disk \
             space, then resume the queue",
        );
        return;
    }
    let outcome = run_turn(&ctx, order).await;
    drop(slot);
    // Err: the turn went back to its queue (its session is owned by another process).
    let Ok((status, exit_code, error)) = outcome else {
        return;
    };
    let next = ctx.registry().settle(turn, status, exit_code, error);
    if let Some(next) = next {
        ctx.start_turn(next);
    }
}

/// Stops a running turn's worker: SIGINT to its process group, SIGTERM after the interrupt
/// grace, SIGKILL after the terminate grace, each only if that same worker still runs the
/// turn. The turn settles when the process exits.
pub async fn stop_worker(ctx: Arc<Daemon>, turn: sessiond_proto::session::TurnId, pid: u32) {
    use nix::sys::signal::Signal;
    let steps = [
        (Signal::SIGINT, ctx.config.interrupt_grace()),
        (Signal::SIGTERM, ctx.config.terminate_grace()),
        (Signal::SIGKILL, std::time::Duration::ZERO),
    ];
    for (signal, then_wait) in steps {
        if ctx.registry().worker_to_press(turn) != Some(pid) {
            return;
        }
        debug!(turn = %turn, pid, ?signal, "stopping worker");
        let _ = crate::platform::signal_group(pid, signal);
        tokio::time::sleep(then_wait).await;
    }
}

/// The longest ending every running turn at a graceful stop may take: each worker's interrupt
/// and terminate graces, its output's drain, and a moment to settle and save.
pub fn ending_grace(ctx: &Daemon) -> std::time::Duration {
    ctx.config.interrupt_grace()
        + ctx.config.terminate_grace()
        + DRAIN
        + std::time::Duration::from_secs(1)
}

/// At a graceful stop: ends every running turn's worker as a cancel does (SIGINT, then SIGTERM
/// and SIGKILL after the graces), each turn settling `interrupted` with its queue paused, and
/// waits until all have settled and been saved (at most [`ending_grace`]). A worker must not
/// outlive its daemon: nothing would read its output, and it would work on unsupervised
/// until the next daemon ended it anyway.
pub async fn end_all(ctx: &Daemon) {
    // Turns not started yet go back to their queues as their slots come (`hold_if_stopping`);
    // a worker starting meanwhile is stopped as it starts (`worker_started`).
    let to_signal = ctx.registry().stop_all();
    if ctx.registry().running_turns() == 0 {
        return;
    }
    tracing::info!(
        turns = ctx.registry().running_turns(),
        "ending the running turns"
    );
    for (turn, pid) in to_signal {
        ctx.stop_worker(turn, pid);
    }
    let deadline = tokio::time::Instant::now() + ending_grace(ctx);
    while ctx.registry().running_turns() > 0 {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                turns = ctx.registry().running_turns(),
                "turns still running after {:?}; the next daemon settles them",
                ending_grace(ctx)
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let saved = ctx.registry().barrier();
    let _ = saved.await;
}

/// SIGINT, SIGTERM, SIGKILL to a worker's group with the configured grace periods, stopping
/// as soon as the leader is gone.
async fn stop_group(ctx: &Daemon, pid: u32) {
    use nix::sys::signal::Signal;
    for (signal, grace) in [
        (Signal::SIGINT, ctx.config.interrupt_grace()),
        (Signal::SIGTERM, ctx.config.terminate_grace()),
        (Signal::SIGKILL, std::time::Duration::ZERO),
    ] {
        if !crate::platform::process_alive(pid) {
            return;
        }
        let _ = crate::platform::signal_group(pid, signal);
        let deadline = tokio::time::Instant::now() + grace;
        while crate::platform::process_alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Runs one turn's process to the end; returns how it ended.
/// How a turn ended: status, exit code, error.
type Ended = (TurnStatus, Option<i32>, Option<String>);

/// A turn that cannot start goes back to the head of its queue, held for `reason`; but one a
/// cancel or steer came for while it was being started ends as that asked (settle maps the
/// stop to its status), or the cancel would be lost, or the steer run after it.
fn hold(ctx: &Daemon, turn: TurnId, reason: &str) -> Result<Ended, ()> {
    let mut registry = ctx.registry();
    if registry.stopped_by_client(turn) {
        return Ok((TurnStatus::Cancelled, None, None));
    }
    registry.requeue_blocked(turn, reason);
    Err(())
}

/// Runs one turn's process to the end. `Err(())` when it could not start because another
/// process owns the session, or the daemon began to stop; it is then back at the head of its
/// queue, which is paused.
async fn run_turn(ctx: &Daemon, order: StartOrder) -> Result<Ended, ()> {
    let Some(provider) = ctx.providers.get(&*order.provider) else {
        // Failing it would start the next queued turn only to fail it too: hold them all.
        return hold(
            ctx,
            order.turn,
            &format!(
                "provider {:?} is no longer configured; add it back to the config, run \
                 `sessionctl daemon restart` and resume, or cancel the queued turns",
                &*order.provider
            ),
        );
    };
    let id = order.session.to_string();
    let vars = Vars {
        prompt: &order.prompt,
        id: &id,
        provider_session_id: order.provider_session_id.as_deref(),
        project: &order.project,
        cwd: &order.cwd,
    };
    let argv = match provider.argv(&vars) {
        Ok(argv) => argv,
        Err(e) => return failed(e.message),
    };
    // The session's lock, taken before the worker exists and inherited by it: the session
    // stays owned exactly as long as a process that can write it lives, even if this daemon
    // dies first.
    let files = ctx.session_files.clone();
    let claim_id = id.clone();
    // Claiming may wait briefly for a racing claimant; keep that off the event loop.
    let claimed = tokio::task::spawn_blocking(move || {
        files.claim(&claim_id, std::process::id(), "daemon worker")
    })
    .await;
    let mut claim = match claimed {
        Ok(Ok(claim)) => claim,
        Ok(Err(ClaimError::Held { record, .. })) => {
            let who = record.map_or("another process".to_string(), |r| {
                format!("pid {} ({})", r.pid, r.owner)
            });
            return hold(
                ctx,
                order.turn,
                &format!("the session is owned by {who}; resume once it is free"),
            );
        }
        Ok(Err(e)) => return failed(e.to_string()),
        Err(e) => return failed(format!("claiming the session failed: {e}")),
    };
    let lock_fd = claim.lock_fd();
    if !std::path::Path::new(&order.cwd).is_dir() {
        return failed(sessiond_proto::methods::missing_cwd(&order.cwd));
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&order.cwd)
        // The daemon's environment is that of whichever client started it: its context and
        // log filter are that client's, not the turn's. The paths lead a `sessionctl` run by
        // the turn (a hook, an agent) to this daemon.
        .env_remove("SESSIOND_CONTEXT")
        .env_remove("SESSIOND_LOG")
        .env("SESSIOND_RUNTIME_DIR", &ctx.paths.runtime_dir)
        .env("SESSIOND_STATE_DIR", &ctx.paths.state_dir);
    if ctx.paths.config_explicit {
        cmd.env("SESSIOND_CONFIG", &ctx.paths.config);
    }
    cmd.envs(&provider.env)
        .env("SESSIOND_SESSION_ID", &id)
        .env("SESSIOND_TURN_ID", order.turn.to_string())
        .env("SESSIOND_PROJECT", &*order.project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(match provider.prompt {
            PromptChannel::Stdin => Stdio::piped(),
            PromptChannel::Argv => Stdio::null(),
        });
    #[cfg(unix)]
    {
        cmd.process_group(0);
        // SAFETY: runs in the child between fork and exec and only calls fcntl, which is
        // async-signal-safe; it clears close-on-exec on the lock so the worker inherits it.
        unsafe {
            cmd.pre_exec(move || sessiond_proto::process::inherit_in_child(lock_fd));
        }
    }
    // The last moment a stop of the daemon can hold the turn instead of interrupting it:
    // returning releases the session's lock, and the turn waits at the head of its queue.
    if ctx.registry().hold_if_stopping(order.turn) {
        return Err(());
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return failed(format!(
                "provider_unavailable: the program {:?} of provider {:?} was not found; install \
                 it, or point the provider's command at it in config.toml",
                argv[0], &*order.provider
            ))
        }
        Err(e) => {
            return failed(format!(
                "cannot start {:?} for provider {:?}: {e}",
                argv[0], &*order.provider
            ))
        }
    };
    let pid = child.id().unwrap_or(0);
    if let Err(e) = claim.hand_to(pid, "daemon worker") {
        warn!(turn = %order.turn, "cannot name the worker in the session's pid file: {e}");
    }
    claim.mark_inherited();
    let stop_now =
        ctx.registry()
            .worker_started(order.turn, pid, crate::platform::process_start_time(pid));
    if stop_now {
        // A cancel or steer arrived before the worker existed; act on it now.
        ctx.stop_worker(order.turn, pid);
    }
    debug!(turn = %order.turn, pid, "worker started");
    if let Some(mut stdin) = child.stdin.take() {
        let prompt = order.prompt.clone().into_bytes();
        tokio::spawn(async move {
            // A provider that exits without reading its input is not an error of ours.
            let _ = stdin.write_all(&prompt).await;
        });
    }
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let turn = order.turn;
    let limit = provider.timeout_secs.map(std::time::Duration::from_secs);
    let waited = async {
        let exit = match limit {
            None => child.wait().await.map(Some),
            Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
                Ok(exit) => exit.map(Some),
                Err(_) => {
                    stop_group(ctx, pid).await;
                    let _ = child.wait().await;
                    Ok(None)
                }
            },
        };
        // Whatever the worker started and left behind belongs to the turn: end it, so it
        // cannot hold the session's lock or keep the output pipes (and this turn) open.
        #[cfg(unix)]
        let _ = crate::platform::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        exit
    };
    let scanner = (provider.output == OutputFormat::Jsonl).then(|| LineScanner::new(provider));
    let pumps = async {
        tokio::join!(
            pump(ctx, turn, "stdout", stdout, scanner),
            pump(ctx, turn, "stderr", stderr, None)
        )
    };
    tokio::pin!(pumps, waited);
    let mut drained = false;
    let exit = loop {
        tokio::select! {
            exit = &mut waited => break exit,
            _ = &mut pumps, if !drained => drained = true,
        }
    };
    ctx.registry().worker_exited(turn);
    // A descendant that left the process group could keep the pipes open for ever: give the
    // output a moment to drain, then stop reading.
    if !drained {
        let _ = tokio::time::timeout(DRAIN, &mut pumps).await;
    }
    if let Err(e) = claim.release() {
        warn!(turn = %turn, "cannot release the session's ownership files: {e}");
    }
    let exit = match exit {
        Ok(None) => {
            return Ok((
                TurnStatus::Failed,
                None,
                Some(format!(
                    "timed out after {} s (timeout_secs of provider {:?})",
                    limit.map_or(0, |l| l.as_secs()),
                    &*order.provider
                )),
            ))
        }
        Ok(Some(status)) => Ok(status),
        Err(e) => Err(e),
    };
    Ok(match exit {
        Ok(status) if status.success() => (TurnStatus::Completed, Some(0), None),
        Ok(status) => match status.code() {
            Some(code) => (TurnStatus::Failed, Some(code), None),
            None => (
                TurnStatus::Failed,
                None,
                Some(format!("the provider was ended by a signal ({status})")),
            ),
        },
        Err(e) => {
            warn!(turn = %turn, "waiting for the worker failed: {e}");
            return failed(format!("waiting for the provider failed: {e}"));
        }
    })
}

fn failed(message: String) -> Result<Ended, ()> {
    Ok((TurnStatus::Failed, None, Some(message)))
}

/// Copies one output stream into the registry, chunk by chunk, until it closes; with a
/// scanner (a `jsonl` provider's stdout), also hands on what the lines say. A chunk never ends
/// inside a UTF-8 character: the unfinished bytes wait for the next read (or the end).
async fn pump(
    ctx: &Daemon,
    turn: sessiond_proto::session::TurnId,
    stream: &'static str,
    mut from: impl AsyncRead + Unpin,
    mut scanner: Option<LineScanner<'_>>,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut held = 0;
    loop {
        let n = match from.read(&mut buf[held..]).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let end = held + n;
        let complete = if n == 0 {
            end
        } else {
            crate::turn::utf8_complete_prefix(&buf[..end])
        };
        let mut signals = scanner
            .as_mut()
            .map(|s| s.feed(&buf[held..end]))
            .unwrap_or_default();
        if n == 0 {
            signals.extend(scanner.as_mut().map(|s| s.finish()).unwrap_or_default());
        }
        let mut registry = ctx.registry();
        if complete > 0 {
            registry.turn_output(turn, stream, &buf[..complete], ctx.config.max_output_bytes);
        }
        for signal in signals {
            registry.provider_signal(turn, signal);
        }
        drop(registry);
        if n == 0 {
            return;
        }
        buf.copy_within(complete..end, 0);
        held = end - complete;
    }
}
