//! Handlers for the session methods: each takes the registry's lock for one short, synchronous
//! step, releases it, and only then waits for the commit (never holding the lock across an
//! await), so a slow disk delays the writer alone.

use sessiond_proto::methods::{
    ContextParams, CreateParams, ListParams, ListResult, RenameParams, SessionParams,
    SubscribeParams, SubscribeResult, SwitchResult, UnsubscribeParams, UnsubscribeResult,
};
use sessiond_proto::session::{Owner, SessionInfo};
use sessiond_proto::ErrorCode;

use crate::conn::Conn;
use crate::context::Daemon;
use crate::dispatch::{HandlerResult, RequestError};
use crate::events::{SubscribeError, MAX_SUBSCRIPTIONS};
use crate::ownership::OwnerStatus;
use crate::store::Commit;

/// Waits until a change is durable; the answer is sent only then.
async fn durable<T>((value, commit): (T, Commit)) -> HandlerResult<T> {
    match commit.await {
        Ok(Ok(())) => Ok(value),
        Ok(Err(e)) => Err(RequestError::new(
            ErrorCode::INTERNAL,
            format!(
                "{e}; the change is in effect but was not saved and will not survive a restart"
            ),
        )),
        Err(_) => Err(RequestError::new(
            ErrorCode::INTERNAL,
            "the store stopped before saving the change",
        )),
    }
}

pub async fn create(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: CreateParams,
) -> HandlerResult<SessionInfo> {
    let step = ctx.registry().create(p);
    durable(step?).await
}

pub async fn list(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: ListParams,
) -> HandlerResult<ListResult> {
    ctx.registry().list(&p)
}

pub async fn get(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<SessionInfo> {
    let mut info = ctx.registry().get(&p)?;
    info.owner = ctx.session_files.inspect(&info.id.to_string()).map(owner);
    Ok(info)
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

pub async fn switch(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<SwitchResult> {
    let step = ctx.registry().switch(&p);
    durable(step?).await
}

pub async fn current(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: ContextParams,
) -> HandlerResult<SwitchResult> {
    ctx.registry().current(p.context.as_deref())
}

pub async fn rename(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: RenameParams,
) -> HandlerResult<SessionInfo> {
    let step = ctx.registry().rename(&p);
    durable(step?).await
}

pub async fn archive(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<SessionInfo> {
    let step = ctx.registry().archive(&p);
    durable(step?).await
}

pub async fn reopen(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<SessionInfo> {
    let step = ctx.registry().reopen(&p);
    durable(step?).await
}

pub async fn regenerate(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SessionParams,
) -> HandlerResult<SwitchResult> {
    let step = ctx.registry().regenerate(&p);
    durable(step?).await
}

pub async fn subscribe(
    ctx: &Daemon,
    conn: &Conn,
    id: u64,
    mut p: SubscribeParams,
) -> HandlerResult<SubscribeResult> {
    // Sessions carry canonical project paths; match what the client meant, symlinks and all.
    for project in &mut p.filter.projects {
        if let Ok(canonical) = std::fs::canonicalize(&*project) {
            if let Some(text) = canonical.to_str() {
                *project = text.to_string();
            }
        }
    }
    let seq = ctx
        .registry()
        .events
        .subscribe(conn.id, id, p.filter, conn.events.clone())
        .map_err(|e| match e {
            SubscribeError::TooMany => RequestError::new(
                ErrorCode::BUSY,
                format!(
                    "this connection already has {MAX_SUBSCRIPTIONS} subscriptions; unsubscribe \
                     from some, or combine their filters"
                ),
            ),
            SubscribeError::UnknownKind(kind) => RequestError::invalid_argument(format!(
                "unknown event kind {kind:?}; known kinds: {}",
                sessiond_proto::session::event_kind::ALL.join(", ")
            )),
        })?;
    Ok(SubscribeResult {
        subscription: id,
        seq,
    })
}

pub async fn unsubscribe(
    ctx: &Daemon,
    conn: &Conn,
    _id: u64,
    p: UnsubscribeParams,
) -> HandlerResult<UnsubscribeResult> {
    if ctx.registry().events.unsubscribe(conn.id, p.subscription) {
        Ok(UnsubscribeResult {})
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
