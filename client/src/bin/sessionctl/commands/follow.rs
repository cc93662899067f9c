//! `log --follow`: a session's transcript, then what happens next, live, with nothing lost.
//!
//! Three sources print through one [`Shown`] record of what is on the screen already: the
//! stored transcript read first, the session's events after it, and — when the daemon says
//! this client fell behind (`lagged`: it stopped reading, a pager held it) — the transcript
//! read again from the turn the gap can first have touched. Each prints only what the others
//! have not: a turn's header once per state, its output from the next unprinted chunk. So a
//! follower paused for as long as it likes still shows every byte, once, in order.
//!
//! Where the re-read starts: the daemon drops a contiguous run of events and delivers all
//! before it, so what was missed began after the last event seen. Transcripts are ordered by
//! when each turn started (or settled unstarted), so everything the gap touched comes at or
//! after the turn seen running (its start shown, or its output), or, with none running, the
//! turn seen settling last, or, with neither (`--last` chose only queued turns), the first
//! turn printed. Only with nothing printed at all is the whole transcript new. One case it
//! cannot cover: with `--last` leaving out a turn that was running, output of that turn
//! dropped before any of it was printed is not read back.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::methods::{Get, LogCursor, LogTurn, Subscribe, SubscribeParams};
use sessiond_proto::session::{event_kind, EventFilter, TurnId, TurnStatus};

use super::turns::{ends_here, read_log, session_event};
use crate::cli::Target;
use crate::transcript::Transcript;

/// What `log --follow` has printed, turn by turn.
#[derive(Default)]
struct Shown {
    /// The next chunk to print of each turn.
    printed: HashMap<TurnId, u64>,
    /// Turns shown running or settled (a start is shown once).
    started: HashSet<TurnId>,
    /// Turns shown settled.
    settled: HashSet<TurnId>,
    /// The turn shown starting and not yet settling: a re-read goes on from it.
    running: Option<TurnId>,
    /// The turn shown settling last: a re-read goes on from it when none is running.
    last_settled: Option<TurnId>,
    /// The first turn the first reading printed: a re-read goes on from it when no turn
    /// has been seen to run (`--last` chose only queued turns).
    first: Option<TurnId>,
}

impl Shown {
    fn start<W: Write>(&mut self, w: &mut Transcript<W>, turn: TurnId) -> std::io::Result<()> {
        if !self.started.insert(turn) {
            return Ok(());
        }
        self.running = Some(turn);
        w.header(turn, "running", None, None)
    }

    fn output<W: Write>(
        &mut self,
        w: &mut Transcript<W>,
        turn: TurnId,
        chunk: u64,
        data: &str,
    ) -> std::io::Result<()> {
        let next = self.printed.entry(turn).or_insert(0);
        if chunk < *next {
            return Ok(());
        }
        *next = chunk + 1;
        // Output means it runs, though its start came before what was printed (`--last`
        // left it out): a re-read must go on from it.
        if !self.settled.contains(&turn) {
            self.started.insert(turn);
            self.running = Some(turn);
        }
        w.output_of(turn, data)
    }

    fn settle<W: Write>(
        &mut self,
        w: &mut Transcript<W>,
        turn: TurnId,
        status: &str,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> std::io::Result<()> {
        if !self.settled.insert(turn) {
            return Ok(());
        }
        self.started.insert(turn);
        if self.running == Some(turn) {
            self.running = None;
        }
        self.last_settled = Some(turn);
        w.header(turn, status, exit_code, None)?;
        match error {
            Some(error) => w.error(error),
            None => Ok(()),
        }
    }

    /// Takes note of the output the first reading of the transcript printed.
    fn printed_output(&mut self, entry: &LogTurn) {
        if let Some(last) = entry.output.last() {
            self.printed.insert(entry.turn.turn_id, last.chunk + 1);
        }
    }

    /// Takes note of the state a header of the first reading showed.
    fn printed_state(&mut self, entry: &LogTurn) {
        let id = entry.turn.turn_id;
        match entry.turn.status {
            TurnStatus::Queued => {}
            TurnStatus::Running => {
                self.started.insert(id);
                self.running = Some(id);
            }
            _ => {
                self.started.insert(id);
                self.settled.insert(id);
                if self.running == Some(id) {
                    self.running = None;
                }
                self.last_settled = Some(id);
            }
        }
    }

    /// A turn read again after a gap, printed as its events would have printed it: a start,
    /// output, a settling, each only if not shown yet. Queued turns are left for their
    /// events, as they are live.
    fn catch_up<W: Write>(
        &mut self,
        w: &mut Transcript<W>,
        entry: &LogTurn,
        ends: bool,
    ) -> std::io::Result<()> {
        let t = &entry.turn;
        if t.status == TurnStatus::Queued {
            return Ok(());
        }
        if t.started_at.is_some() {
            self.start(w, t.turn_id)?;
        }
        for chunk in &entry.output {
            self.output(w, t.turn_id, chunk.chunk, &chunk.data)?;
        }
        if ends && t.status != TurnStatus::Running {
            self.settle(
                w,
                t.turn_id,
                t.status.as_str(),
                t.exit_code,
                t.error.as_deref(),
            )?;
        }
        Ok(())
    }

    /// Where a re-read after a gap begins: `None` (the whole transcript) only when the first
    /// reading printed nothing, so every turn is new.
    fn resume_from(&self) -> Option<LogCursor> {
        let turn = self.running.or(self.last_settled).or(self.first);
        turn.map(|turn| LogCursor {
            turn,
            chunk: self.printed.get(&turn).copied().unwrap_or(0),
        })
    }
}

/// Prints the transcript, then what happens next, live. Subscribing comes first so nothing
/// falls between the transcript and the first event; chunk numbers drop what was printed.
pub fn follow_log(
    opts: &ConnectOptions,
    context: Option<&str>,
    t: &Target,
    last: Option<u32>,
) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let info = client.call::<Get>(t.params(context)?)?;
    client.call::<Subscribe>(SubscribeParams {
        filter: EventFilter {
            sessions: vec![info.id],
            events: vec![
                event_kind::TURN_STARTED.into(),
                event_kind::TURN_OUTPUT.into(),
                event_kind::TURN_SETTLED.into(),
            ],
            ..Default::default()
        },
    })?;
    let target = Target {
        session: Some(info.id.to_string()),
        project: None,
    };
    let mut shown = Shown::default();
    let mut w = Transcript::new(std::io::stdout().lock());
    let fail = |e: std::io::Error| ClientError::Local(format!("cannot write output: {e}"));
    let now = sessiond_proto::now_ms();
    let history = read_log(&mut client, None, &target, None, last, None, |page| {
        for entry in &page.turns {
            let id = entry.turn.turn_id;
            shown.first.get_or_insert(id);
            // A turn cut between pages goes on without a header: what it did by the later
            // page (settling, say) is left for the events to show, unless its header showed
            // it settled already.
            if w.showing(id) {
                let ends = ends_here(entry, page.next) && shown.settled.contains(&id);
                w.turn(entry, now, ends)?;
                shown.printed_output(entry);
                continue;
            }
            w.turn(entry, now, ends_here(entry, page.next))?;
            shown.printed_output(entry);
            shown.printed_state(entry);
        }
        Ok(())
    })?;
    match history.and_then(|()| w.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.map_err(fail)?,
    }
    client.set_timeout(None)?;
    while let Some(payload) = client.next_event()? {
        let step = match session_event(&payload)? {
            None => catch_up(&mut client, &target, &mut shown, &mut w)?,
            Some(event) => {
                let Some(turn) = event.data.turn else {
                    continue;
                };
                match event.event.as_str() {
                    event_kind::TURN_STARTED => shown.start(&mut w, turn),
                    event_kind::TURN_OUTPUT => shown.output(
                        &mut w,
                        turn,
                        event.data.chunk.unwrap_or(0),
                        &event.data.data.unwrap_or_default(),
                    ),
                    event_kind::TURN_SETTLED => shown.settle(
                        &mut w,
                        turn,
                        event.data.status.map_or("settled", |s| s.as_str()),
                        event.data.exit_code,
                        event.data.reason.as_deref(),
                    ),
                    _ => Ok(()),
                }
            }
        };
        match step.and_then(|()| w.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.map_err(fail)?,
        }
    }
    // The daemon went away: leave the terminal on a line of its own.
    let _ = w.end_line().and_then(|()| w.flush());
    Ok(())
}

/// After `lagged`: reads the transcript again from where the gap can first have touched it
/// and prints what the missed events would have. The events that arrive meanwhile repeat
/// some of it, and print nothing twice.
fn catch_up<W: Write>(
    client: &mut BlockingClient,
    target: &Target,
    shown: &mut Shown,
    w: &mut Transcript<W>,
) -> Result<std::io::Result<()>, ClientError> {
    let from = shown.resume_from();
    read_log(client, None, target, None, None, from, |page| {
        for entry in &page.turns {
            shown.catch_up(w, entry, ends_here(entry, page.next))?;
        }
        Ok(())
    })
}
