//! The turn commands: send (with --wait and --follow) and queue.

use std::io::{Read, Write};
use std::path::PathBuf;

use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::envelope::Event;
use sessiond_proto::frame;
use sessiond_proto::methods::{
    Cancel, Get, Log, LogCursor, LogParams, LogResult, LogTurn, Pause, Promote, Queue, Resume,
    SessionParams, Steer, SteerParams, Submit, SubmitParams, Subscribe, SubscribeParams,
    TurnParams, MAX_PROMPT_BYTES,
};
use sessiond_proto::session::{event_kind, EventFilter, SessionEvent, TurnInfo, TurnStatus};
use sessiond_proto::ErrorCode;

use crate::cli::Target;
use crate::output::{visible, written, Out};
use crate::transcript::Transcript;

/// What `send` was told.
pub struct Send<'a> {
    pub args: &'a [String],
    pub project: Option<&'a PathBuf>,
    pub no_queue: bool,
    pub wait: bool,
    pub follow: bool,
    /// Send as a steer (runs next); `Some(true)` without interrupting the running turn.
    pub steer: Option<bool>,
}

pub fn send(
    opts: &ConnectOptions,
    out: &Out,
    context: Option<&str>,
    s: Send,
) -> Result<u8, ClientError> {
    let (session, prompt) = match s.args {
        [prompt] => (None, prompt.clone()),
        [session, prompt] => (Some(session.clone()), prompt.clone()),
        _ => unreachable!("clap takes one or two"),
    };
    let from_stdin = prompt == "-";
    let prompt = if from_stdin {
        // One byte past the limit is enough to refuse it; a runaway pipe is not read whole.
        // Bytes first: the cut may fall inside a character, and over the limit is the error.
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_PROMPT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Local(format!("cannot read the prompt from stdin: {e}")))?;
        if bytes.len() > MAX_PROMPT_BYTES {
            return Err(too_long(format!("more than {MAX_PROMPT_BYTES}")));
        }
        String::from_utf8(bytes).map_err(|e| {
            ClientError::Local(format!("the prompt on stdin is not UTF-8 text: {e}"))
        })?
    } else {
        prompt
    };
    // Refused here as the daemon would refuse it, rather than sent: a prompt past the
    // daemon's frame limit would only break the connection.
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(too_long(prompt.len().to_string()));
    }
    let project = s
        .project
        .map(|p| crate::commands::sessions::absolute(p))
        .transpose()?;
    let mut client = BlockingClient::connect(opts)?;
    let waiting = s.wait || s.follow;
    let (mut session, mut project) = (session, project);
    if waiting {
        // Subscribe before submitting so no event of the turn can be missed.
        let info = client.call::<Get>(SessionParams {
            session: session.clone(),
            project: project.clone(),
            context: context.map(str::to_string),
        })?;
        // Submit to the session subscribed to, by id: resolving the selector again could
        // find another one (a switch or a rename in between) and leave this client waiting
        // on a turn that is not there.
        (session, project) = (Some(info.id.to_string()), None);
        let mut events = vec![event_kind::TURN_SETTLED.to_string()];
        if s.follow {
            events.push(event_kind::TURN_OUTPUT.to_string());
        }
        client.call::<Subscribe>(SubscribeParams {
            filter: EventFilter {
                sessions: vec![info.id],
                events,
                ..Default::default()
            },
        })?;
    }
    let result = match s.steer {
        None => client.call::<Submit>(SubmitParams {
            session,
            project,
            context: context.map(str::to_string),
            prompt,
            no_queue: s.no_queue,
        })?,
        Some(no_interrupt) => client.call::<Steer>(SteerParams {
            session,
            project,
            context: context.map(str::to_string),
            prompt,
            no_interrupt,
        })?,
    };
    let turn = result.turn.turn_id;
    // A turn in a held queue waits for `resume`, which the user must be told of: a `--wait`
    // would otherwise look hung.
    let held = match (&result.paused, result.attached) {
        (Some(reason), _) => Some(format!(
            "the queue is paused: {reason}; `sessionctl resume {}` releases it",
            result.turn.session.short()
        )),
        // Not held, but nothing starts while a `sessionctl run` owns the session.
        (None, Some(pid)) if !result.accepted => Some(format!(
            "the session is attached to pid {pid} (`sessionctl run`); it starts when that ends"
        )),
        (None, _) => None,
    };
    if !waiting {
        out.emit(&result, |w| {
            let held = held.as_ref().map_or(String::new(), |h| format!("; {h}"));
            match result.turn.position {
                Some(position) => writeln!(w, "{turn} (queued at position {position}{held})"),
                None => writeln!(w, "{turn}"),
            }
        })?;
        return Ok(0);
    }
    if let (Some(held), false) = (&held, out.json) {
        eprintln!("sessionctl: turn {} waits: {}", turn.short(), visible(held));
    }
    client.set_timeout(None)?;
    let print = s.follow && !out.json;
    // The next chunk of the turn's output to print: a re-read after a gap and the events
    // that come meanwhile both carry some, and each is printed once.
    let mut next_chunk = 0u64;
    loop {
        let Some(payload) = client.next_event()? else {
            return Err(ClientError::Disconnected(
                "the daemon closed the connection before the turn finished".into(),
            ));
        };
        let Some(event) = session_event(&payload)? else {
            // Fell behind (a pager held stdout, say) and events were dropped: what they
            // said is in the turn's transcript.
            if let Some(end) = catch_up_turn(&mut client, &result.turn, &mut next_chunk, print)? {
                return settled(
                    out,
                    s.follow,
                    turn,
                    end.status,
                    end.exit_code,
                    end.error.as_deref(),
                );
            }
            continue;
        };
        if event.data.turn != Some(turn) {
            continue;
        }
        if event.event == event_kind::TURN_OUTPUT {
            let chunk = event.data.chunk.unwrap_or(0);
            if chunk >= next_chunk {
                next_chunk = chunk + 1;
                if print {
                    let text = event.data.data.unwrap_or_default();
                    print_output(event.data.stream.as_deref(), &text).map_err(cannot_write)?;
                }
            }
        }
        if event.event == event_kind::TURN_SETTLED {
            return settled(
                out,
                s.follow,
                turn,
                event.data.status.unwrap_or(TurnStatus::Failed),
                event.data.exit_code,
                event.data.reason.as_deref(),
            );
        }
    }
}

/// A turn's output as it came: stderr's to stderr, the rest to stdout. A closed pipe is no
/// error: the turn goes on, and `--wait` still reports how it ends.
fn print_output(stream: Option<&str>, text: &str) -> std::io::Result<()> {
    let written = if stream == Some("stderr") {
        let mut e = std::io::stderr().lock();
        e.write_all(text.as_bytes()).and_then(|()| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes()).and_then(|()| o.flush())
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn cannot_write(e: std::io::Error) -> ClientError {
    ClientError::Local(format!("cannot write output: {e}"))
}

/// After `lagged`, for `send --wait`/`--follow`: reads the turn back from its transcript,
/// from `next_chunk` on, printing what the dropped events carried (when `print`), and
/// returns the turn when it has settled. The read comes after every change the dropped
/// events reported (the daemon answers reads after the writes queued before them).
fn catch_up_turn(
    client: &mut BlockingClient,
    turn: &TurnInfo,
    next_chunk: &mut u64,
    print: bool,
) -> Result<Option<TurnInfo>, ClientError> {
    let target = Target {
        session: Some(turn.session.to_string()),
        project: None,
    };
    let digits = turn.turn_id.0.simple().to_string();
    let from = LogCursor {
        turn: turn.turn_id,
        chunk: *next_chunk,
    };
    let mut end = None;
    let read = read_log(
        client,
        None,
        &target,
        Some(&digits),
        None,
        Some(from),
        |page| {
            for entry in page.turns.iter().filter(|e| e.turn.turn_id == turn.turn_id) {
                for chunk in &entry.output {
                    if chunk.chunk < *next_chunk {
                        continue;
                    }
                    *next_chunk = chunk.chunk + 1;
                    if print {
                        print_output(Some(&chunk.stream), &chunk.data)?;
                    }
                }
                if entry.turn.status.settled() && ends_here(entry, page.next) {
                    end = Some(entry.turn.clone());
                }
            }
            Ok(())
        },
    )?;
    read.map_err(cannot_write)?;
    Ok(end)
}

/// How `send --wait`/`--follow` ends: the turn's end said (always with `--json`; for
/// people, unless `--follow` showed a turn that completed) and its exit status.
fn settled(
    out: &Out,
    follow: bool,
    turn: sessiond_proto::session::TurnId,
    status: TurnStatus,
    exit_code: Option<i32>,
    reason: Option<&str>,
) -> Result<u8, ClientError> {
    if out.json {
        let report = serde_json::json!({
            "turn_id": turn,
            "status": status,
            "exit_code": exit_code,
            "error": reason,
        });
        out.emit(&report, |_| Ok(()))?;
    } else if !follow || status != TurnStatus::Completed {
        eprintln!(
            "turn {} {}{}{}",
            turn.short(),
            status.as_str(),
            exit_code.map_or(String::new(), |c| format!(" (exit code {c})")),
            reason.map_or(String::new(), |r| format!(": {}", visible(r)))
        );
    }
    Ok(match (status, exit_code) {
        (TurnStatus::Completed, _) => 0,
        // Only a failure's code is the provider's verdict; an interrupted or cancelled
        // turn's is the signal's doing.
        (TurnStatus::Failed, Some(code)) if (1..=255).contains(&code) => code as u8,
        _ => 1,
    })
}

/// Which queue command.
#[derive(Clone, Copy)]
pub enum QueueAction {
    Show,
    Pause,
    Resume,
}

pub fn queue(
    opts: &ConnectOptions,
    out: &Out,
    context: Option<&str>,
    t: &Target,
    action: QueueAction,
) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let params = t.params(context)?;
    let result = match action {
        QueueAction::Show => client.call::<Queue>(params)?,
        QueueAction::Pause => client.call::<Pause>(params)?,
        QueueAction::Resume => client.call::<Resume>(params)?,
    };
    out.emit(&result, |w| {
        if let Some(reason) = &result.paused {
            writeln!(
                w,
                "paused   {reason} (`sessionctl resume {}` releases it)",
                result.session.short()
            )?;
        }
        if let Some(pid) = result.attached {
            writeln!(
                w,
                "attached pid {pid} (`sessionctl run`) owns it; queued turns start when it ends"
            )?;
        }
        let line = |w: &mut dyn Write, label: &str, t: &TurnInfo| {
            let prompt: String = t.prompt.chars().take(60).collect();
            let prompt = prompt.replace('\n', " ");
            writeln!(w, "{label:<8} {}  {prompt}", t.turn_id.short())
        };
        match &result.running {
            Some(t) => line(w, "running", t)?,
            None => writeln!(w, "running  -")?,
        }
        for t in &result.queued {
            line(w, &format!("#{}", t.position.unwrap_or(0)), t)?;
        }
        if result.queued.is_empty() {
            writeln!(w, "(nothing queued)")?;
        }
        Ok(())
    })
}

pub fn cancel(opts: &ConnectOptions, out: &Out, turn: &str) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let info = client.call::<Cancel>(TurnParams {
        turn: turn.to_string(),
    })?;
    out.emit(&info, |w| match info.status {
        TurnStatus::Running => writeln!(
            w,
            "stopping turn {} (it settles as cancelled when its process exits; the queue pauses)",
            info.turn_id.short()
        ),
        _ => writeln!(w, "cancelled turn {}", info.turn_id.short()),
    })
}

pub fn promote(opts: &ConnectOptions, out: &Out, turn: &str) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let info = client.call::<Promote>(TurnParams {
        turn: turn.to_string(),
    })?;
    out.emit(&info, |w| {
        writeln!(w, "turn {} is now next", info.turn_id.short())
    })
}

/// Bytes of prompts and output asked for per answer when reading a transcript: far below the
/// largest answer a client takes (`CLIENT_MAX_FRAME`), so a transcript of any size comes
/// whole, in pages, and no answer holds much of it at once.
const LOG_PAGE_BYTES: u64 = 16 << 20;

/// Reads a transcript page by page, handing each page to `page` as it comes; stops early,
/// returning what `page` failed with, when that fails (a closed stdout). Pages after the
/// first name the session by id, so a switch meanwhile does not change what is read. With
/// `from`, reading starts there (a page's `next`, or a turn and chunk to go on from).
pub(super) fn read_log(
    client: &mut BlockingClient,
    context: Option<&str>,
    t: &Target,
    turn: Option<&str>,
    last: Option<u32>,
    from: Option<LogCursor>,
    mut page: impl FnMut(LogResult) -> std::io::Result<()>,
) -> Result<std::io::Result<()>, ClientError> {
    let SessionParams {
        session,
        project,
        context,
    } = t.params(context)?;
    let mut params = LogParams {
        session,
        project,
        context,
        turn: turn.map(str::to_string),
        last,
        max_bytes: Some(LOG_PAGE_BYTES),
        from,
    };
    loop {
        let result = client.call::<Log>(params.clone())?;
        let (session, next) = (result.session, result.next);
        if let Err(e) = page(result) {
            return Ok(Err(e));
        }
        let Some(from) = next else {
            return Ok(Ok(()));
        };
        params = LogParams {
            session: Some(session.to_string()),
            project: None,
            context: None,
            last: None,
            from: Some(from),
            ..params
        };
    }
}

/// Whether `entry` ends in this page: the page's `next` continues no other turn's output.
pub(super) fn ends_here(entry: &LogTurn, next: Option<LogCursor>) -> bool {
    next.is_none_or(|n| n.turn != entry.turn.turn_id)
}

pub fn log(
    opts: &ConnectOptions,
    out: &Out,
    context: Option<&str>,
    t: &Target,
    turn: Option<&str>,
    last: Option<u32>,
    follow: bool,
) -> Result<(), ClientError> {
    if follow {
        return super::follow::follow_log(opts, context, t, last);
    }
    let mut client = BlockingClient::connect(opts)?;
    if out.json {
        // One document: the pages joined, a turn cut between two made whole again.
        let mut whole: Option<LogResult> = None;
        let joined = read_log(&mut client, context, t, turn, last, None, |page| {
            let Some(whole) = whole.as_mut() else {
                whole = Some(LogResult { next: None, ..page });
                return Ok(());
            };
            let mut turns = page.turns.into_iter();
            if let (Some(cut), Some(first)) = (whole.turns.last_mut(), turns.as_slice().first()) {
                if cut.turn.turn_id == first.turn.turn_id {
                    // The later page's view of the turn is the newer one (it may have settled).
                    let rest = turns.next().expect("looked at above");
                    cut.turn = rest.turn;
                    cut.output.extend(rest.output);
                }
            }
            whole.turns.extend(turns);
            Ok(())
        })?;
        written(joined)?;
        return out.emit_verbatim(&whole.expect("a first page"), |_| Ok(()));
    }
    let now = sessiond_proto::now_ms();
    let mut w = Transcript::new(std::io::BufWriter::new(std::io::stdout().lock()));
    let mut session = None;
    let printed = read_log(&mut client, context, t, turn, last, None, |page| {
        session.get_or_insert(page.session);
        for entry in &page.turns {
            w.turn(entry, now, ends_here(entry, page.next))?;
        }
        Ok(())
    })?;
    let ended = printed.and_then(|()| match session {
        Some(session) if w.is_empty() => writeln!(
            w.inner(),
            "no turns yet (`sessionctl send {} PROMPT` starts one)",
            session.short()
        ),
        _ => w.end_line(),
    });
    written(ended.and_then(|()| w.flush()))
}

pub fn export(opts: &ConnectOptions, context: Option<&str>, t: &Target) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    // The turn whose output a page cut: its `turn` line is out already.
    let mut cut = None;
    let exported = read_log(&mut client, context, t, None, None, None, |page| {
        for entry in &page.turns {
            if cut != Some(entry.turn.turn_id) {
                let mut turn = serde_json::to_value(&entry.turn).map_err(std::io::Error::from)?;
                turn["type"] = "turn".into();
                writeln!(w, "{turn}")?;
            }
            for chunk in &entry.output {
                let line = serde_json::json!({
                    "type": "output",
                    "turn_id": entry.turn.turn_id,
                    "chunk": chunk.chunk,
                    "stream": chunk.stream,
                    "data": chunk.data,
                });
                writeln!(w, "{line}")?;
            }
        }
        // `next` may name the turn after the page's last (a page can end between turns).
        cut = page
            .next
            .map(|n| n.turn)
            .filter(|turn| page.turns.last().is_some_and(|t| t.turn.turn_id == *turn));
        Ok(())
    })?;
    written(exported.and_then(|()| w.flush()))
}

/// Decodes an event of a session subscription; `None` for `lagged`, which carries no session
/// (only how many events were dropped for this client).
pub(super) fn session_event(payload: &[u8]) -> Result<Option<Event<SessionEvent>>, ClientError> {
    let undecodable = |e| ClientError::Protocol(format!("undecodable event: {e}"));
    let head: Event<serde::de::IgnoredAny> = frame::decode(payload).map_err(undecodable)?;
    if head.event == event_kind::LAGGED {
        return Ok(None);
    }
    frame::decode(payload).map(Some).map_err(undecodable)
}

/// The refusal of a prompt over the limit, as the daemon gives it.
fn too_long(size: String) -> ClientError {
    ClientError::Remote {
        code: ErrorCode::INVALID_ARGUMENT,
        message: sessiond_proto::methods::prompt_too_long(&size),
    }
}
