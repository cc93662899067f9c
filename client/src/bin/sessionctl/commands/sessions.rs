//! The session commands: new, list, show, switch, current, rename, close, reopen, regenerate,
//! watch. Paths are sent absolute; the daemon canonicalizes and checks them.

use std::io::Write;
use std::path::{Path, PathBuf};

use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::methods::{
    Archive, ContextParams, Create, CreateParams, Current, Get, List, ListParams, Regenerate,
    Rename, RenameParams, Reopen, SessionParams, Subscribe, SubscribeParams, Switch, SwitchResult,
};
use sessiond_proto::session::{Activity, EventFilter, Phase, SessionId, SessionInfo};
use sessiond_proto::ErrorCode;

use crate::cli::{Command, ListArgs, NewArgs, RenameArgs, SwitchArgs, Target, WatchArgs};
use crate::output::{ago, Out};

pub fn run(
    cmd: &Command,
    opts: &ConnectOptions,
    out: &Out,
    context: Option<&str>,
) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let context = context.map(str::to_string);
    let target = |t: &Target| t.params(context.as_deref());
    match cmd {
        Command::New(NewArgs {
            project,
            provider,
            name,
            cwd,
        }) => {
            let project = match project {
                Some(p) => absolute(p)?,
                None => default_project()?,
            };
            let info = client.call::<Create>(CreateParams {
                project,
                provider: provider.clone(),
                name: name.clone(),
                cwd: cwd.as_deref().map(absolute).transpose()?,
            })?;
            out.emit(&info, |w| writeln!(w, "{}", info.id))
        }
        Command::List(ListArgs {
            project,
            provider,
            state,
            all,
        }) => {
            let params = ListParams {
                project: project.as_deref().map(absolute).transpose()?,
                provider: provider.clone(),
                state: state.clone(),
                name: None,
                all: *all,
                context: context.clone(),
            };
            if out.json {
                // Passed through, not decoded: most of a long listing's cost is building
                // typed records only to serialize them again.
                return out.emit_raw(&client.call_raw::<List>(params)?);
            }
            let result = client.call::<List>(params)?;
            let filtered = project.is_some() || provider.is_some() || state.is_some();
            // Archived sessions are in the listing already when asked for by state.
            let archived_in = *all || state.as_deref() == Some("archived");
            let none = match (filtered, archived_in) {
                (true, true) => "no sessions match",
                (true, false) => "no open sessions match (`--all` includes archived ones)",
                (false, true) => "no sessions (create one with `sessionctl new`)",
                (false, false) => {
                    "no open sessions (create one with `sessionctl new`; `--all` lists \
                     archived ones)"
                }
            };
            out.emit(&result, |w| {
                if result.sessions.is_empty() {
                    return writeln!(w, "{none}");
                }
                print_table(w, &result.sessions, result.current.map(|c| c.to_string()))
            })
        }
        Command::Show(t) => {
            let info = client.call::<Get>(target(t)?)?;
            out.emit(&info, |w| print_details(w, &info))
        }
        Command::Switch(SwitchArgs { session, project }) => {
            let result = client.call::<Switch>(SessionParams {
                session: Some(session.clone()),
                project: project.as_deref().map(absolute).transpose()?,
                context: context.clone(),
            })?;
            out.emit(&result, |w| print_pointer(w, &result, "switched"))
        }
        Command::Current => {
            let result = client.call::<Current>(ContextParams {
                context: context.clone(),
            })?;
            out.emit(&result, |w| print_pointer(w, &result, "current"))
        }
        Command::Rename(RenameArgs {
            session,
            name,
            project,
        }) => {
            let info = client.call::<Rename>(RenameParams {
                session: Some(session.clone()),
                project: project.as_deref().map(absolute).transpose()?,
                context: context.clone(),
                name: name.clone(),
            })?;
            out.emit(&info, |w| {
                writeln!(w, "renamed {} to {:?}", info.id.short(), name)
            })
        }
        Command::Close(t) => {
            let info = client.call::<Archive>(target(t)?)?;
            out.emit(&info, |w| writeln!(w, "closed {}", describe(&info)))
        }
        Command::Reopen(t) => {
            let info = client.call::<Reopen>(target(t)?)?;
            out.emit(&info, |w| writeln!(w, "reopened {}", describe(&info)))
        }
        Command::Regenerate(t) => {
            let result = client.call::<Regenerate>(target(t)?)?;
            out.emit(&result, |w| print_pointer(w, &result, "regenerated"))
        }
        Command::Watch(WatchArgs {
            session,
            project,
            provider,
            event,
        }) => watch(&mut client, session, project, provider, event, context),
        Command::Ping
        | Command::Version
        | Command::Daemon(_)
        | Command::Send(_)
        | Command::Queue(_)
        | Command::Pause(_)
        | Command::Resume(_)
        | Command::Cancel(_)
        | Command::Steer(_)
        | Command::Promote(_)
        | Command::Log(_)
        | Command::Export(_)
        | Command::Run(_) => {
            unreachable!("handled by their own modules")
        }
    }
}

impl Target {
    /// The wire form of "this session": the selector, the project made absolute, the context.
    pub fn params(&self, context: Option<&str>) -> Result<SessionParams, ClientError> {
        Ok(SessionParams {
            session: self.session.clone(),
            project: self.project.as_deref().map(absolute).transpose()?,
            context: context.map(str::to_string),
        })
    }
}

/// Makes a path absolute against the current directory (the daemon canonicalizes it).
pub fn absolute(path: &Path) -> Result<String, ClientError> {
    let abs = std::path::absolute(path)
        .map_err(|e| ClientError::Local(format!("cannot make {} absolute: {e}", path.display())))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| ClientError::Local(format!("path {p:?} is not valid UTF-8")))
}

/// The project a new session belongs to when none is named: the enclosing git repository of
/// the current directory, else the current directory.
fn default_project() -> Result<String, ClientError> {
    let cwd = std::env::current_dir()
        .map_err(|e| ClientError::Local(format!("cannot read the current directory: {e}")))?;
    let root = cwd
        .ancestors()
        .find(|dir| dir.join(".git").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cwd.clone());
    absolute(&root)
}

fn describe(info: &SessionInfo) -> String {
    match &info.name {
        Some(name) => format!("{} {name:?}", info.id.short()),
        None => info.id.short(),
    }
}

fn state(info: &SessionInfo) -> String {
    if info.activity == Activity::Idle {
        info.phase.as_str().to_string()
    } else {
        format!("{} {}", info.phase.as_str(), info.activity.as_str())
    }
}

/// Shortens a path under the home directory to `~/…`.
fn tilde(path: &str) -> String {
    match std::env::var_os("HOME").map(PathBuf::from) {
        Some(home) if home.as_os_str().len() > 1 => match Path::new(path).strip_prefix(&home) {
            Ok(rest) if rest.as_os_str().is_empty() => "~".to_string(),
            Ok(rest) => format!("~/{}", rest.display()),
            Err(_) => path.to_string(),
        },
        _ => path.to_string(),
    }
}

/// `cell` with its control characters escaped, as the output writer would show them.
fn shown(cell: String) -> String {
    match crate::output::visible(&cell) {
        std::borrow::Cow::Borrowed(_) => cell,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

fn print_table(
    w: &mut dyn Write,
    sessions: &[SessionInfo],
    current: Option<String>,
) -> std::io::Result<()> {
    let now = sessiond_proto::now_ms();
    let rows: Vec<[String; 8]> = sessions
        .iter()
        .map(|s| {
            let marker = if current.as_deref() == Some(&s.id.to_string()) {
                "*"
            } else {
                " "
            };
            // Escaped before measuring, so an escaped cell keeps its column.
            [
                marker.to_string(),
                s.id.short(),
                shown(s.name.clone().unwrap_or_else(|| "-".into())),
                shown(tilde(&s.project)),
                shown(s.provider.clone()),
                shown(state(s)),
                s.queue_length.to_string(),
                ago(now, s.last_active_at),
            ]
        })
        .collect();
    let header = [
        "",
        "ID",
        "NAME",
        "PROJECT",
        "PROVIDER",
        "STATE",
        "QUEUE",
        "LAST ACTIVE",
    ];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |w: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad + if i == 0 { 1 } else { 2 }));
            }
        }
        writeln!(w, "{}", text.trim_end())
    };
    line(w, &header)?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(w, &cells)?;
    }
    Ok(())
}

fn print_details(w: &mut dyn Write, s: &SessionInfo) -> std::io::Result<()> {
    let now = sessiond_proto::now_ms();
    let owner = match &s.owner {
        None => "none".to_string(),
        Some(o) => {
            let who = match o.pid {
                Some(pid) => format!("pid {pid} ({}), since {}", o.owner, ago(now, o.since)),
                None => "a process that left no readable pid file".to_string(),
            };
            match (&o.live, &o.stale_reason) {
                (true, _) => who,
                (false, Some(reason)) => format!("stale: {reason}"),
                (false, None) => format!("stale: {who}"),
            }
        }
    };
    let rows = [
        ("id", s.id.to_string()),
        ("name", s.name.clone().unwrap_or_else(|| "-".into())),
        ("scope", s.scope.clone()),
        ("project", s.project.clone()),
        ("cwd", s.cwd.clone()),
        ("provider", s.provider.clone()),
        (
            "state",
            format!("{}, {}", s.phase.as_str(), s.activity.as_str()),
        ),
        ("created", ago(now, s.created_at)),
        ("last active", ago(now, s.last_active_at)),
        (
            "parent",
            s.parent_id.map_or("-".to_string(), |p| p.to_string()),
        ),
        (
            "provider id",
            s.provider_session_id.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "aliases",
            if s.aliases.is_empty() {
                "-".to_string()
            } else {
                s.aliases.join(", ")
            },
        ),
        ("queue", s.queue_length.to_string()),
        ("owner", owner),
    ];
    for (key, value) in rows {
        writeln!(w, "{key:<12} {value}")?;
    }
    Ok(())
}

/// A context's pointer, for people. No current session prints nothing on stdout (the advice
/// goes to stderr), so `$(sessionctl current)` in a status line is empty, not a sentence.
fn print_pointer(w: &mut dyn Write, r: &SwitchResult, verb: &str) -> std::io::Result<()> {
    match &r.session {
        Some(s) => {
            let closed = if r.reopened {
                " — reopened: it was closed"
            } else if s.phase == Phase::Archived {
                " — closed (`sessionctl reopen` or `switch` brings it back)"
            } else {
                ""
            };
            writeln!(
                w,
                "{verb}: context {} → {} ({}, {}), generation {}{closed}",
                r.context,
                describe(s),
                tilde(&s.project),
                s.provider,
                r.generation
            )
        }
        None => {
            eprintln!(
                "sessionctl: context {} has no current session (`sessionctl switch SESSION` \
                 sets one)",
                r.context
            );
            Ok(())
        }
    }
}

/// The sessions `--session SELECTOR` means. Events must match every filter, so a session
/// outside the `--project`s given would never be heard from: a name is looked up in those
/// projects — in each, when there are several, keeping every session it names.
fn watched_sessions(
    client: &mut BlockingClient,
    selector: &str,
    projects: &[String],
    context: &Option<String>,
) -> Result<Vec<SessionId>, ClientError> {
    let mut get = |project: Option<&String>| {
        client
            .call::<Get>(SessionParams {
                session: Some(selector.to_string()),
                project: project.cloned(),
                context: context.clone(),
            })
            .map(|info| info.id)
    };
    let [_, _, ..] = projects else {
        return get(projects.first()).map(|id| vec![id]);
    };
    let mut ids = Vec::new();
    let mut first_refusal = None;
    for project in projects {
        match get(Some(project)) {
            Ok(id) => ids.push(id),
            // Not there, or (a full id) in another project: the other projects may hold it.
            Err(e) if elsewhere(&e) => {
                first_refusal.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match first_refusal {
        Some(e) if ids.is_empty() => Err(e),
        _ => Ok(ids),
    }
}

/// Whether a refusal says the session is not in the project asked (absent from it, or a
/// full id of another project's session).
fn elsewhere(e: &ClientError) -> bool {
    matches!(e, ClientError::Remote { code, .. }
        if *code == ErrorCode::NOT_FOUND || *code == ErrorCode::INVALID_ARGUMENT)
}

/// Subscribes and prints every event as one JSON line, until the daemon goes away or the user
/// interrupts.
fn watch(
    client: &mut BlockingClient,
    sessions: &[String],
    projects: &[PathBuf],
    providers: &[String],
    events: &[String],
    context: Option<String>,
) -> Result<(), ClientError> {
    let projects: Vec<String> = projects
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<_, _>>()?;
    let mut ids = Vec::with_capacity(sessions.len());
    for selector in sessions {
        ids.extend(watched_sessions(client, selector, &projects, &context)?);
    }
    let filter = EventFilter {
        sessions: ids,
        projects,
        providers: providers.to_vec(),
        events: events.to_vec(),
    };
    client.call::<Subscribe>(SubscribeParams { filter })?;
    client.set_timeout(None)?;
    let stdout = std::io::stdout();
    while let Some(payload) = client.next_event()? {
        let mut de = rmp_serde::Deserializer::new(payload.as_slice());
        let value: serde_json::Value = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| ClientError::Protocol(format!("undecodable event: {e}")))?;
        let mut lock = stdout.lock();
        let written = writeln!(lock, "{value}").and_then(|()| lock.flush());
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(ClientError::Local(format!("cannot write output: {e}")));
        }
    }
    Err(ClientError::Disconnected(
        "the daemon closed the connection".into(),
    ))
}
