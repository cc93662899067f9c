//! Handlers for the session methods: each takes the registry's lock for one short, synchronous
//! step and returns. A change answers once its commit is durable (`Reply::AfterCommit`); the
//! connection waits for that, never the registry, so a slow disk delays the writer alone.

use sessiond_proto::methods::{AttachParams, LogParams, LogResult, SteerParams, TurnParams};
use sessiond_proto::methods::{
    ContextParams, CreateParams, ListParams, ListResult, QueueResult, RenameParams, SessionParams,
    SubmitParams, SubmitResult, SubscribeParams, SubscribeResult, SwitchResult, UnsubscribeParams,
    UnsubscribeResult,
};
use sessiond_proto::session::{Owner, SessionInfo, TurnInfo, TurnStatus};
use sessiond_proto::ErrorCode;

use crate::conn::Conn;
use crate::context::Daemon;
use crate::dispatch::{HandlerResult, Reply, RequestError};
use crate::events::{self, SubscribeError, MAX_FILTER_ENTRIES, MAX_SUBSCRIPTIONS};
use crate::ownership::OwnerStatus;
use crate::registry::project_as_meant;
use crate::store::Commit;

/// A change's answer, sent once its commit is durable.
fn after_commit<T>((value, commit): (T, Commit)) -> Reply<T> {
    Reply::AfterCommit(value, commit)
}

pub fn create(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: CreateParams,
) -> HandlerResult<Reply<SessionInfo>> {
    ctx.registry().create(p).map(after_commit)
}

pub fn list(
    ctx: &Daemon,
    _conn: &Conn,
    id: u64,
    p: ListParams,
) -> HandlerResult<Reply<ListResult>> {
    let registry = ctx.registry();
    let listing = registry.list(&p)?;
    // Encoded while the registry is held, straight from its records (see `Reply::Frame`).
    Ok(Reply::Frame(listing.response_frame(id)))
}

pub fn get(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<SessionInfo>> {
    let mut info = ctx.registry().get(&p)?;
    info.owner = ctx.session_files.inspect(&info.id.to_string()).map(owner);
    Ok(Reply::Now(info))
}

fn owner(status: OwnerStatus) -> Owner {
    let (record, live, stale_reason) = match status {
        OwnerStatus::Live { record } => (record, true, None),
        OwnerStatus::Stale { record, reason } => (record, false, Some(reason)),
    };
    Owner {
        pid: record.as_ref().map(|r| r.pid),
        owner: record.as_ref().map(|r| r.owner.clone()).unwrap_or_default(),
        since: record.as_ref().map_or(0, |r| r.since),
        live,
        stale_reason,
    }
}

pub fn switch(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<SwitchResult>> {
    ctx.registry().switch(&p).map(after_commit)
}

pub fn current(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: ContextParams,
) -> HandlerResult<Reply<SwitchResult>> {
    ctx.registry().current(p.context.as_deref()).map(Reply::Now)
}

pub fn rename(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: RenameParams,
) -> HandlerResult<Reply<SessionInfo>> {
    ctx.registry().rename(&p).map(after_commit)
}

pub fn archive(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<SessionInfo>> {
    ctx.registry().archive(&p).map(after_commit)
}

pub fn reopen(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<SessionInfo>> {
    ctx.registry().reopen(&p).map(after_commit)
}

pub fn regenerate(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<SwitchResult>> {
    ctx.registry().regenerate(&p).map(after_commit)
}

pub fn submit(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SubmitParams,
) -> HandlerResult<Reply<SubmitResult>> {
    let (result, commit, start) = ctx.registry().submit(&p)?;
    if let Some(order) = start {
        ctx.start_turn(order);
    }
    Ok(Reply::AfterCommit(result, commit))
}

pub fn queue(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<QueueResult>> {
    ctx.registry().queue(&p).map(Reply::Now)
}

pub fn steer(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SteerParams,
) -> HandlerResult<Reply<SubmitResult>> {
    let (result, commit, start, stop) = ctx.registry().steer(&p)?;
    if let Some(order) = start {
        ctx.start_turn(order);
    }
    if let Some((turn, pid)) = stop {
        ctx.stop_worker(turn, pid);
    }
    Ok(Reply::AfterCommit(result, commit))
}

pub fn promote(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: TurnParams,
) -> HandlerResult<Reply<TurnInfo>> {
    ctx.registry().promote(&p.turn).map(after_commit)
}

pub fn log(ctx: &Daemon, _conn: &Conn, _id: u64, p: LogParams) -> HandlerResult<Reply<LogResult>> {
    let registry = ctx.registry();
    let (session, generation) = registry.log_target(
        p.session.as_deref(),
        p.project.as_deref(),
        p.context.as_deref(),
    )?;
    if p.last == Some(0) {
        return Err(RequestError::new(
            ErrorCode::INVALID_ARGUMENT,
            "last must be at least 1; leave it out for every turn",
        ));
    }
    let digits = match p.turn.as_deref() {
        None => None,
        Some(turn) => Some(crate::registry::turn_digits(turn).ok_or_else(|| {
            RequestError::new(
                ErrorCode::INVALID_ARGUMENT,
                format!(
                    "turn {turn:?} is not a turn id or the start of one: give hex digits of \
                     its id (`sessionctl log` shows each turn's)"
                ),
            )
        })?),
    };
    if p.max_bytes == Some(0) {
        return Err(RequestError::new(
            ErrorCode::INVALID_ARGUMENT,
            "max_bytes must be at least 1; leave it out for the whole transcript at once",
        ));
    }
    // The store does not know queue positions; taken now, they are as of the request.
    let positions = registry.queue_positions(session);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (last, from, max_bytes) = (p.last, p.from, p.max_bytes);
    registry.read(Box::new(move |conn| {
        let select = crate::store::Selection {
            digits: digits.as_deref(),
            last,
            from,
            max_bytes,
        };
        let _ = tx.send(crate::store::transcript(conn, session, select));
    }));
    let turn = p.turn;
    Ok(Reply::Deferred(Box::pin(async move {
        match rx.await {
            Ok(Ok(Some((mut turns, next)))) => {
                for entry in &mut turns {
                    if entry.turn.status == TurnStatus::Queued {
                        entry.turn.position = positions.get(&entry.turn.turn_id).copied();
                    }
                }
                Ok(LogResult {
                    session,
                    generation,
                    turns,
                    next,
                })
            }
            Ok(Ok(None)) if from.is_some() => Err(RequestError::new(
                ErrorCode::NOT_FOUND,
                format!(
                    "session {} has no turn {} to go on from{}; start again without `from`",
                    session.short(),
                    from.map_or(String::new(), |f| f.turn.short()),
                    if turn.is_some() {
                        " among the turns asked for"
                    } else {
                        ""
                    }
                ),
            )),
            Ok(Ok(None)) => Err(RequestError::new(
                ErrorCode::NOT_FOUND,
                format!(
                    "session {} has no turn whose id starts with {:?}; `sessionctl log` \
                     without --turn shows them all",
                    session.short(),
                    turn.unwrap_or_default()
                ),
            )),
            Ok(Err(e)) => Err(RequestError::new(
                ErrorCode::INTERNAL,
                format!("cannot read the transcript: {e}"),
            )),
            Err(_) => Err(RequestError::new(
                ErrorCode::INTERNAL,
                "the store stopped before reading the transcript; see the daemon's log",
            )),
        }
    })))
}

pub fn attach(
    ctx: &Daemon,
    conn: &Conn,
    _id: u64,
    p: AttachParams,
) -> HandlerResult<Reply<SessionInfo>> {
    ctx.registry().attach(&p, conn.id).map(after_commit)
}

pub fn detach(
    ctx: &Daemon,
    conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<SessionInfo>> {
    let (info, commit, start) = ctx.registry().detach(&p, conn.id)?;
    if let Some(order) = start {
        ctx.start_turn(order);
    }
    Ok(Reply::AfterCommit(info, commit))
}

pub fn pause(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<QueueResult>> {
    ctx.registry()
        .pause(&p, "paused by a client")
        .map(after_commit)
}

pub fn resume(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<Reply<QueueResult>> {
    let (result, commit, start) = ctx.registry().resume(&p)?;
    if let Some(order) = start {
        ctx.start_turn(order);
    }
    Ok(Reply::AfterCommit(result, commit))
}

pub fn cancel(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: TurnParams,
) -> HandlerResult<Reply<TurnInfo>> {
    let cancelled = ctx.registry().cancel(&p.turn)?;
    if let Some(pid) = cancelled.worker {
        ctx.stop_worker(cancelled.turn.turn_id, pid);
    }
    if let Some(next) = cancelled.next {
        ctx.start_turn(next);
    }
    Ok(Reply::AfterCommit(cancelled.turn, cancelled.saved))
}

pub fn subscribe(
    ctx: &Daemon,
    conn: &Conn,
    id: u64,
    mut p: SubscribeParams,
) -> HandlerResult<Reply<SubscribeResult>> {
    events::check_filter(&p.filter).map_err(refusal)?;
    // Sessions carry canonical project paths; match what the client meant, symlinks and all.
    // Resolved before the registry is taken: up to a thousand paths to look up on disk.
    let mut unresolved = Vec::new();
    for project in &mut p.filter.projects {
        match project_as_meant(project) {
            Ok(canonical) => *project = canonical,
            Err((lexical, why)) => {
                project.clone_from(&lexical);
                unresolved.push((lexical, why));
            }
        }
    }
    let mut registry = ctx.registry();
    registry.check_filter(&p.filter, &unresolved)?;
    let seq = registry
        .events
        .subscribe(conn.id, id, p.filter, conn.events.clone())
        .map_err(refusal)?;
    Ok(Reply::Now(SubscribeResult {
        subscription: id,
        seq,
    }))
}

fn refusal(e: SubscribeError) -> RequestError {
    match e {
        SubscribeError::TooMany => RequestError::new(
            ErrorCode::BUSY,
            format!(
                "this connection already has {MAX_SUBSCRIPTIONS} subscriptions; unsubscribe from \
                 some, or combine their filters"
            ),
        ),
        SubscribeError::FilterTooLarge => RequestError::invalid_argument(format!(
            "a filter list may hold at most {MAX_FILTER_ENTRIES} entries; subscribe to \
             everything and filter on your side, or split the subscription"
        )),
        SubscribeError::UnknownKind(kind) => RequestError::invalid_argument(format!(
            "unknown event kind {kind:?}; known kinds: {}",
            sessiond_proto::session::event_kind::ALL.join(", ")
        )),
    }
}

pub fn unsubscribe(
    ctx: &Daemon,
    conn: &Conn,
    _id: u64,
    p: UnsubscribeParams,
) -> HandlerResult<Reply<UnsubscribeResult>> {
    if ctx.registry().events.unsubscribe(conn.id, p.subscription) {
        Ok(Reply::Now(UnsubscribeResult {}))
    } else {
        Err(RequestError::new(
            ErrorCode::NOT_FOUND,
            format!(
                "this connection has no subscription {}; it is the id of the subscribe request",
                p.subscription
            ),
        ))
    }
}
