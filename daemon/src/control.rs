//! Handlers for the methods that concern the daemon itself: `ping`, `status`,
//! `set_log_level`, `shutdown`.

use sessiond_proto::methods::{
    PingParams, Pong, SetLogLevelParams, SetLogLevelResult, ShutdownParams, ShutdownResult,
    StatusParams, StatusResult,
};
use sessiond_proto::PROTOCOL_VERSION;

use crate::conn::Conn;
use crate::context::Daemon;
use crate::dispatch::{HandlerResult, Reply, RequestError};

pub fn ping(_ctx: &Daemon, _conn: &Conn, _id: u64, _p: PingParams) -> HandlerResult<Reply<Pong>> {
    Ok(Reply::Now(Pong {}))
}

pub fn status(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    _p: StatusParams,
) -> HandlerResult<Reply<StatusResult>> {
    let path = |p: &std::path::Path| p.display().to_string();
    let (sessions, subscriptions, database, storage_error) = {
        let registry = ctx.registry();
        (
            registry.len() as u64,
            registry.events.subscriber_count() as u64,
            path(registry.store_path()),
            registry.storage_failure(),
        )
    };
    Ok(Reply::Now(StatusResult {
        version: crate::VERSION.to_string(),
        protocol: PROTOCOL_VERSION,
        pid: ctx.pid,
        started_at: ctx.started_at,
        uptime_ms: ctx.started.elapsed().as_millis() as u64,
        socket: path(&ctx.paths.socket()),
        runtime_dir: path(&ctx.paths.runtime_dir),
        state_dir: path(&ctx.paths.state_dir),
        config: path(&ctx.paths.config),
        log_file: ctx.log_file.as_deref().map(path),
        log_level: ctx.log.current(),
        connections: ctx.connection_count(),
        max_connections: ctx.config.max_connections,
        max_frame_bytes: ctx.config.max_frame_bytes,
        sessions,
        subscriptions,
        database,
        storage_error,
        supervisor: ctx.supervisor.clone(),
    }))
}

pub fn set_log_level(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    p: SetLogLevelParams,
) -> HandlerResult<Reply<SetLogLevelResult>> {
    let (previous, level) = ctx
        .log
        .set(&p.level)
        .map_err(RequestError::invalid_argument)?;
    tracing::info!("log filter changed from {previous} to {level}");
    Ok(Reply::Now(SetLogLevelResult { previous, level }))
}

pub fn shutdown(
    ctx: &Daemon,
    _conn: &Conn,
    _id: u64,
    _p: ShutdownParams,
) -> HandlerResult<Reply<ShutdownResult>> {
    let (running_turns, any_running) = {
        let registry = ctx.registry();
        (registry.turns_to_end(), registry.running_turns() > 0)
    };
    ctx.trigger_shutdown("shutdown requested by a client");
    // Running turns are ended first, within a grace of their own; then the connections close
    // and finish within the shutdown grace.
    let ending = if any_running {
        crate::runner::ending_grace(ctx).as_millis() as u64
    } else {
        0
    };
    Ok(Reply::Now(ShutdownResult {
        pid: ctx.pid,
        grace_ms: ctx.config.shutdown_grace_ms + ending,
        running_turns: running_turns as u32,
    }))
}
