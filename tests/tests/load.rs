//! A bounded load test on loopback: 200 connections, 64 of them following every event, run a
//! mix of list, get, switch and submit against 10,000 sessions for a fixed time, twice on the
//! same daemon: phase A as is, phase B beside one more subscriber that never reads its socket
//! (filled to overflowing by unmeasured load first, so B measures the stall, not the filling).
//!
//! It checks that no request fails and every answer is right; that every acknowledged switch
//! and turn survives a SIGTERM and restart; that subscribers see strictly increasing `seq`,
//! with every event either delivered or counted in a `lagged` notice; and that the stalled
//! subscriber raises no request kind's p99 by more than [`P99_FACTOR`]. Throughput and
//! p50/p99/p999 per kind and phase are printed (`-- --nocapture`) and recorded as a
//! reliability row. Each connection has one request in flight at a time, and a request's time
//! is taken in the test process, which also decodes every event for the 64 subscribers: the
//! figures compare the phases on one machine, they are not the daemon's own speed.
//!
//! Each phase lasts `SESSIOND_LOAD_SECS` seconds (default 5); every wait is bounded, so the
//! test stops by itself (about 20 s in a debug build on two cores, 35 s when the comparison is
//! retried).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::de::IgnoredAny;
use sessiond_client::{Client, ConnectOptions, EventStream};
use sessiond_proto::envelope::{Event, Lagged, Response};
use sessiond_proto::frame;
use sessiond_proto::methods::{
    ContextParams, Create, CreateParams, Current, Get, List, ListParams, Pause, Queue,
    SessionParams, Status, StatusParams, Submit, SubmitParams, Subscribe, SubscribeParams,
    SubscribeResult, Switch, Unsubscribe, UnsubscribeParams,
};
use sessiond_proto::session::{EventFilter, SessionId, TurnId, TurnStatus};
use sessiond_tests::report::{thousands, Row};
use sessiond_tests::{as_json, kind, tokio_runtime, RawConn, Sandbox, WAIT};

const SESSIONS: usize = 10_000;
/// Sessions are spread over this many projects so a `list` filtered by project returns 100 of
/// them: listing all 10,000 costs a debug build tens of milliseconds per call, which would
/// make the test measure serialisation rather than the daemon's handling of contention.
const PROJECTS: usize = 100;
const CONNECTIONS: usize = 200;
const SUBSCRIBERS: usize = 64;
const DEFAULT_PHASE_SECS: f64 = 5.0;

/// How much the stalled subscriber may raise any request kind's p99 (phase B over phase A).
///
/// A stalled subscriber costs the daemon one encoded frame per event it would have received
/// (counted and dropped once its queue of 1,024 is full) and a writer parked on its socket;
/// nothing else waits for it, so the expected ratio is 1, and what is measured is noise: the
/// phases run one after the other, 5 s each, on a debug build sharing two cores. Over 17 runs
/// on such a machine (load average 3 to 5 from other jobs, some beside `--test turns`) the
/// worst kind's ratio was 0.4 to 2.2, except once, 5.1, when `--test turns` started just as
/// B did (its retry: 1.3). A daemon made to wait 2 ms under its lock for each event to a full
/// subscriber scored 7.4 and 5.4 and failed. 3 sits above the noise and below that.
const P99_FACTOR: f64 = 3.0;

/// Pairs of phases run at most. A 5-second window on a shared two-core machine sometimes
/// catches a neighbour's burst of CPU or disk use (the 5.1 above, with no stall at all); a
/// second pair is run only when the first breaks the factor, and passes only if it is within
/// it. A stall that really slows others breaks both.
const ATTEMPTS: usize = 2;

/// The longest the lead-in may take to fill the stalled subscriber (it takes seconds).
const LEAD_IN_LIMIT: Duration = Duration::from_secs(60);

/// Each load request's time limit. Generous, because a request slowed by a loaded machine is
/// no failure of the daemon; one held up by the stalled subscriber would wait for the
/// daemon's write timeout (longer than this) and still fail.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// PROTOCOL.md 7: events one connection may have waiting in the daemon before it lags.
const EVENT_QUEUE: u64 = 1024;

/// PROTOCOL.md 6b: a restart moves every context's generation up by 2^20.
const GENERATION_RESTART_STEP: u64 = 1 << 20;

/// Connections the sessions are created over: enough concurrent writes for group commit to
/// batch them.
const POPULATE_CONNECTIONS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    List,
    Get,
    Switch,
    Submit,
}

const KINDS: [Kind; 4] = [Kind::List, Kind::Get, Kind::Switch, Kind::Submit];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::List => "list",
            Kind::Get => "get",
            Kind::Switch => "switch",
            Kind::Submit => "submit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Each connection walks this cycle from an offset of its own: reads dominate, as with an
/// editor, and 40% writes keep group commit and event fan-out busy.
const MIX: [Kind; 10] = [
    Kind::Get,
    Kind::List,
    Kind::Switch,
    Kind::Get,
    Kind::Submit,
    Kind::Get,
    Kind::Switch,
    Kind::List,
    Kind::Get,
    Kind::Submit,
];

/// What every connection reads from.
struct Shared {
    sessions: Vec<SessionId>,
    projects: Vec<String>,
}

/// One connection and what it has been told succeeded.
struct Worker {
    client: Arc<Client>,
    /// Its own context, so its last acknowledged switch is the context's final state.
    context: String,
    /// Its own paused session: turns submitted there are stored and queued, never run, so the
    /// test measures the daemon rather than process spawning, and the queue's order is this
    /// connection's order of acknowledgements.
    queue_session: SessionId,
    rng: u64,
    step: usize,
    generation: u64,
    last_switch: Option<SessionId>,
    turns: Vec<TurnId>,
}

impl Worker {
    /// splitmix64: a fixed seed per connection makes each run issue the same requests.
    fn next(&mut self, below: usize) -> usize {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % below as u64) as usize
    }

    /// One request of `kind`, with its answer checked; Err says what went wrong.
    async fn request(&mut self, kind: Kind, shared: &Shared) -> Result<(), String> {
        match kind {
            Kind::List => {
                let project = &shared.projects[self.next(PROJECTS)];
                let listed = self
                    .client
                    .call::<List>(ListParams {
                        project: Some(project.clone()),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let expected = SESSIONS / PROJECTS;
                if listed.sessions.len() != expected
                    || listed.sessions.iter().any(|s| s.project != *project)
                {
                    return Err(format!(
                        "list of {project} gave {} sessions, expected its {expected}",
                        listed.sessions.len()
                    ));
                }
            }
            Kind::Get => {
                let id = shared.sessions[self.next(SESSIONS)];
                let info = self
                    .client
                    .call::<Get>(SessionParams {
                        session: Some(id.to_string()),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                if info.id != id {
                    return Err(format!("get {id} answered {}", info.id));
                }
            }
            Kind::Switch => {
                let id = shared.sessions[self.next(SESSIONS)];
                let pointer = self
                    .client
                    .call::<Switch>(SessionParams {
                        session: Some(id.to_string()),
                        project: None,
                        context: Some(self.context.clone()),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let expected = self.generation + 1;
                self.generation = pointer.generation;
                self.last_switch = Some(id);
                let got = pointer.session.as_ref().map(|s| s.id);
                // Only this connection switches this context, so its generations count on
                // without a gap; a gap or a repeat would be a switch lost or applied twice.
                if got != Some(id)
                    || pointer.context != self.context
                    || pointer.generation != expected
                {
                    return Err(format!(
                        "switch of {} to {id} answered {got:?} in {} at generation {} \
                         (expected {expected})",
                        self.context, pointer.context, pointer.generation
                    ));
                }
            }
            Kind::Submit => {
                let submitted = self
                    .client
                    .call::<Submit>(SubmitParams {
                        session: Some(self.queue_session.to_string()),
                        prompt: format!("load {} #{}", self.context, self.turns.len()),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                // Acknowledged, whatever the checks below find: the restart must keep it.
                self.turns.push(submitted.turn.turn_id);
                let turn = &submitted.turn;
                let expected = self.turns.len() as u32;
                if submitted.accepted
                    || turn.status != TurnStatus::Queued
                    || turn.session != self.queue_session
                    || turn.position != Some(expected)
                {
                    return Err(format!(
                        "submit to paused {} answered accepted={} status={:?} session={} \
                         position={:?} (expected queued at {expected})",
                        self.queue_session,
                        submitted.accepted,
                        turn.status,
                        turn.session,
                        turn.position
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What one connection was told succeeded, to look for after the restart.
struct Acked {
    context: String,
    last_switch: Option<SessionId>,
    /// The generation of the last switch; only this connection switched its context.
    generation: u64,
    queue_session: SessionId,
    /// In the order they were acknowledged, which must be their order in the queue.
    turns: Vec<TurnId>,
}

/// Latencies (µs) per kind, and failures, of one connection or one phase.
#[derive(Default)]
struct Samples {
    micros: [Vec<u32>; 4],
    errors: u64,
    first_errors: Vec<String>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        for (mine, theirs) in self.micros.iter_mut().zip(other.micros) {
            mine.extend(theirs);
        }
        self.errors += other.errors;
        for e in other.first_errors {
            if self.first_errors.len() < 10 {
                self.first_errors.push(e);
            }
        }
    }

    fn requests(&self) -> u64 {
        self.micros.iter().map(|m| m.len() as u64).sum::<u64>() + self.errors
    }
}

async fn run_worker(
    mut w: Worker,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> (Worker, Samples) {
    let mut samples = Samples::default();
    while !stop.load(Ordering::Relaxed) {
        let kind = MIX[w.step % MIX.len()];
        w.step += 1;
        let started = Instant::now();
        let outcome = w.request(kind, &shared).await;
        let took = started.elapsed();
        match outcome {
            Ok(()) => samples.micros[kind.index()]
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Err(e) => {
                samples.errors += 1;
                if samples.first_errors.len() < 10 {
                    samples
                        .first_errors
                        .push(format!("{} ({}): {e}", kind.name(), w.context));
                }
            }
        }
    }
    (w, samples)
}

/// Runs every worker for `duration`; returns them, their merged samples and how long the
/// phase took, last answer included.
fn run_phase(
    rt: &tokio::runtime::Runtime,
    workers: Vec<Worker>,
    shared: &Arc<Shared>,
    duration: Duration,
) -> (Vec<Worker>, Samples, Duration) {
    // The timer is made inside the runtime, which it needs.
    rt.block_on(async { run_until(workers, shared, tokio::time::sleep(duration)).await })
}

/// Runs every worker until `done` resolves, then lets each finish the request it has in
/// flight.
async fn run_until(
    workers: Vec<Worker>,
    shared: &Arc<Shared>,
    done: impl std::future::Future<Output = ()>,
) -> (Vec<Worker>, Samples, Duration) {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(run_worker(w, shared.clone(), stop.clone())))
        .collect();
    done.await;
    stop.store(true, Ordering::Relaxed);
    // The request in flight is bounded by the client's own timeout.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
    let mut back = Vec::with_capacity(tasks.len());
    let mut samples = Samples::default();
    for task in tasks {
        let (w, s) = tokio::time::timeout_at(deadline, task)
            .await
            .expect("a worker did not stop after its phase ended")
            .expect("worker task");
        back.push(w);
        samples.merge(s);
    }
    (back, samples, started.elapsed())
}

/// Percentiles of one kind in one phase.
#[derive(Clone, Copy, Default)]
struct KindStats {
    count: u64,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

fn stats(samples: &mut Samples, elapsed: Duration) -> [KindStats; 4] {
    let mut out = [KindStats::default(); 4];
    for (stats, micros) in out.iter_mut().zip(samples.micros.iter_mut()) {
        micros.sort_unstable();
        // Nearest rank: the smallest sample at or above the fraction q of all samples.
        let pick = |q: f64| -> Duration {
            if micros.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            Duration::from_micros(u64::from(micros[rank - 1]))
        };
        *stats = KindStats {
            count: micros.len() as u64,
            per_sec: micros.len() as f64 / elapsed.as_secs_f64(),
            p50: pick(0.50),
            p99: pick(0.99),
            p999: pick(0.999),
        };
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    start: u64,
    delivered: u64,
    lagged: u64,
    missed: u64,
    last_seq: u64,
    out_of_order: Vec<String>,
    closed: bool,
}

impl Seen {
    fn new(start: u64) -> Seen {
        Seen {
            start,
            last_seq: start,
            ..Default::default()
        }
    }

    fn take(&mut self, payload: &[u8]) {
        let head: Event<IgnoredAny> = frame::decode(payload)
            .unwrap_or_else(|e| panic!("not an event ({e}): {}", as_json(payload)));
        if head.seq <= self.last_seq && self.out_of_order.len() < 5 {
            self.out_of_order.push(format!(
                "{} seq {} after seq {}",
                head.event, head.seq, self.last_seq
            ));
        }
        if head.event == "lagged" {
            let lagged: Event<Lagged> = frame::decode(payload).expect("a lagged event");
            self.lagged += 1;
            self.missed += lagged.data.missed;
        } else {
            self.delivered += 1;
        }
        self.last_seq = self.last_seq.max(head.seq);
    }
}

/// Reads a subscriber's events until it has seen `target` (set once the load has stopped).
async fn drain(mut events: EventStream, start: u64, target: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen::new(start);
    loop {
        let goal = target.load(Ordering::SeqCst);
        if goal != 0 && seen.last_seq >= goal {
            return seen;
        }
        // Short waits, so the target set after the load is noticed without a wake-up channel.
        let Ok(next) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await else {
            continue;
        };
        match next {
            Some(payload) => seen.take(&payload),
            None => {
                seen.closed = true;
                return seen;
            }
        }
    }
}

/// The seq of the most recent event: a subscription reports it, and is dropped at once.
async fn current_seq(client: &Client) -> u64 {
    let sub = client
        .call::<Subscribe>(SubscribeParams {
            filter: EventFilter {
                events: vec!["queue_resumed".into()],
                ..Default::default()
            },
        })
        .await
        .expect("probe subscribe");
    client
        .call::<Unsubscribe>(UnsubscribeParams {
            subscription: sub.subscription,
        })
        .await
        .expect("probe unsubscribe");
    sub.seq
}

/// Creates `SESSIONS` shell sessions, session i in project i % PROJECTS, all requests in flight
/// at once over [`POPULATE_CONNECTIONS`] connections; returns their ids in request order.
async fn populate(opts: &ConnectOptions, projects: &[String]) -> Vec<SessionId> {
    let mut opts = opts.clone();
    // Pipelined requests wait behind each other: the last one waits for all 10,000.
    opts.timeout = Duration::from_secs(60);
    let mut clients = Vec::with_capacity(POPULATE_CONNECTIONS);
    for _ in 0..POPULATE_CONNECTIONS {
        clients.push(Arc::new(Client::connect(&opts).await.expect("connect")));
    }
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let client = clients[i % POPULATE_CONNECTIONS].clone();
            let params = CreateParams {
                project: projects[i % PROJECTS].clone(),
                provider: "shell".into(),
                name: None,
                cwd: None,
            };
            tokio::spawn(async move { client.call::<Create>(params).await })
        })
        .collect();
    let mut ids = Vec::with_capacity(SESSIONS);
    for task in tasks {
        ids.push(task.await.expect("create task").expect("create").id);
    }
    ids
}

fn phase_duration() -> Duration {
    let secs = match std::env::var("SESSIOND_LOAD_SECS") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or_else(|| panic!("SESSIOND_LOAD_SECS={text:?} is not a positive number")),
        _ => DEFAULT_PHASE_SECS,
    };
    Duration::from_secs_f64(secs)
}

#[test]
fn load_200_connections_10k_sessions() {
    let phase = phase_duration();
    // The stalled subscriber must stay stalled, not dropped, through the lead-in, phase B and
    // the read-back (the default write timeout, 10 s, would cut it off); and were it to hold
    // anyone up, they must time out waiting (REQUEST_TIMEOUT), not be released by its drop.
    let write_timeout_ms = (LEAD_IN_LIMIT + phase + REQUEST_TIMEOUT)
        .as_millis()
        .min(600_000) as u64;
    let sb = Sandbox::with_config(&format!(
        "[daemon]\nwrite_timeout_ms = {write_timeout_ms}\n"
    ));
    let mut daemon = sb.start_daemon();
    let mut opts = sb.connect_options();
    opts.autostart = false;
    let mut load_opts = opts.clone();
    load_opts.timeout = REQUEST_TIMEOUT;
    let projects: Vec<String> = (0..PROJECTS)
        .map(|p| {
            sb.project(&format!("p{p:03}"))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let rt = tokio_runtime();

    let setup = Instant::now();
    let sessions = rt.block_on(populate(&opts, &projects));
    let populate_took = setup.elapsed();
    let shared = Arc::new(Shared { sessions, projects });

    // Connect, pause each connection's own session, and subscribe the first 64 to everything.
    let target = Arc::new(AtomicU64::new(0));
    let (mut workers, drains, probe) = rt.block_on(async {
        let mut workers = Vec::with_capacity(CONNECTIONS);
        let mut drains = Vec::with_capacity(SUBSCRIBERS);
        for i in 0..CONNECTIONS {
            let client = Arc::new(Client::connect(&load_opts).await.expect("connect"));
            let queue_session = shared.sessions[i];
            let paused = client
                .call::<Pause>(SessionParams {
                    session: Some(queue_session.to_string()),
                    ..Default::default()
                })
                .await
                .expect("pause");
            assert!(paused.paused.is_some(), "{paused:?}");
            if i < SUBSCRIBERS {
                let events = client.take_events().expect("events");
                let sub = client
                    .call::<Subscribe>(SubscribeParams::default())
                    .await
                    .expect("subscribe");
                drains.push(tokio::spawn(drain(events, sub.seq, target.clone())));
            }
            workers.push(Worker {
                client,
                context: format!("load-{i:03}"),
                queue_session,
                rng: 0x5eed_0000 + i as u64,
                step: i,
                generation: 0,
                last_switch: None,
                turns: Vec::new(),
            });
        }
        let probe = Client::connect(&opts).await.expect("connect probe");
        (workers, drains, probe)
    });
    let setup_took = setup.elapsed();

    // Unmeasured: first requests on fresh connections and a cold database cache belong to
    // neither phase.
    let mut tally = Tally::default();
    let warm_up = (phase / 5).min(Duration::from_secs(1));
    let (back, warm, _) = run_phase(&rt, workers, &shared, warm_up);
    workers = back;
    tally.add(warm);

    let mut pairs: Vec<Pair> = Vec::with_capacity(ATTEMPTS);
    loop {
        let (back, pair) = run_pair(&rt, &sb, &probe, workers, &shared, phase, &mut tally);
        workers = back;
        let passed = pair.worst().1 <= P99_FACTOR;
        pairs.push(pair);
        if passed || pairs.len() == ATTEMPTS {
            break;
        }
    }
    let final_seq = rt.block_on(current_seq(&probe));

    // The draining subscribers catch up to the last event.
    target.store(final_seq, Ordering::SeqCst);
    let seen: Vec<Seen> = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::with_capacity(drains.len());
        for (i, task) in drains.into_iter().enumerate() {
            let s = tokio::time::timeout_at(deadline, task)
                .await
                .unwrap_or_else(|_| {
                    panic!("subscriber {i} did not receive events up to seq {final_seq}")
                })
                .expect("drain task");
            seen.push(s);
        }
        seen
    });

    // Everything the clients were told succeeded must survive a restart.
    let acked: Vec<Acked> = workers
        .iter()
        .map(|w| Acked {
            context: w.context.clone(),
            last_switch: w.last_switch,
            generation: w.generation,
            queue_session: w.queue_session,
            turns: w.turns.clone(),
        })
        .collect();
    let switch_acks: u64 = acked.iter().map(|a| a.generation).sum();
    let turn_acks: u64 = acked.iter().map(|a| a.turns.len() as u64).sum();
    drop(workers);
    drop(probe);
    let restart = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait();
    assert!(exit.success(), "sessiond exited with {exit} on SIGTERM");
    let _daemon = sb.start_daemon();
    let restart_took = restart.elapsed();
    let lost = rt.block_on(verify_after_restart(&opts, acked));

    // The table, before the assertions, so a failing run still shows its figures.
    println!(
        "\nload: {CONNECTIONS} connections ({SUBSCRIBERS} subscribed to all events), \
         {SESSIONS} sessions in {PROJECTS} projects, {:.1} s per phase; populated in {:.1} s, \
         set up in {:.1} s, restarted in {:.1} s",
        phase.as_secs_f64(),
        populate_took.as_secs_f64(),
        setup_took.as_secs_f64(),
        restart_took.as_secs_f64()
    );
    for (n, pair) in pairs.iter().enumerate() {
        pair.print(n + 1);
    }
    let lagged_subscribers = seen.iter().filter(|s| s.lagged > 0).count();
    let delivered: u64 = seen.iter().map(|s| s.delivered).sum();
    let missed: u64 = seen.iter().map(|s| s.missed).sum();
    println!(
        "events: seq {final_seq} at the end; {SUBSCRIBERS} draining subscribers received \
         {delivered} ({lagged_subscribers} lagged, {missed} missed)"
    );
    println!(
        "writes acknowledged: {switch_acks} switches, {turn_acks} turns; requests: {} ({} \
         failed)",
        tally.requests, tally.errors
    );

    assert_eq!(
        tally.errors, 0,
        "requests failed under load, first ones: {:#?}",
        tally.first_errors
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost across the restart: {lost:#?}"
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(!s.closed, "subscriber {i}'s connection closed: {s:?}");
        assert!(
            s.out_of_order.is_empty(),
            "subscriber {i} saw seq go backwards: {:?}",
            s.out_of_order
        );
        // Only without a gap is the count exact: a `lagged` notice the client library itself
        // drops counts as one missed event, whatever it carried.
        if s.lagged == 0 {
            assert_eq!(
                s.delivered,
                final_seq - s.start,
                "subscriber {i} missed events without a lagged notice"
            );
        }
    }
    for (n, pair) in pairs.iter().enumerate() {
        let attempt = n + 1;
        assert_eq!(
            pair.subscriptions_after_b,
            (SUBSCRIBERS + 1) as u64,
            "attempt {attempt}: every draining subscriber and the stalled one are still \
             subscribed after phase B"
        );
        let stalled = &pair.stalled;
        assert!(
            stalled.out_of_order.is_empty(),
            "attempt {attempt}: the stalled subscriber saw seq go backwards: {:?}",
            stalled.out_of_order
        );
        assert!(
            stalled.lagged > 0 && stalled.missed > 0,
            "attempt {attempt}: the stalled subscriber never overflowed, so phase B tested \
             nothing: {stalled:?}"
        );
        assert_eq!(
            stalled.delivered + stalled.missed,
            pair.b_end - stalled.start,
            "attempt {attempt}: the stalled subscriber's events and lagged counts do not add \
             up: {stalled:?}"
        );
        for k in KINDS {
            assert!(
                pair.a[k.index()].count > 0 && pair.b[k.index()].count > 0,
                "attempt {attempt}: no {} completed in a phase",
                k.name()
            );
        }
    }
    let last = pairs.last().expect("one pair at least");
    let (worst_kind, worst) = last.worst();
    let history: Vec<String> = pairs
        .iter()
        .map(|p| format!("×{:.2} ({})", p.worst().1, p.worst().0.name()))
        .collect();
    assert!(
        worst <= P99_FACTOR,
        "the stalled subscriber raised {}'s p99 from {} ms to {} ms (×{worst:.2}, limit \
         ×{P99_FACTOR}); every attempt: {}",
        worst_kind.name(),
        ms(last.a[worst_kind.index()].p99),
        ms(last.b[worst_kind.index()].p99),
        history.join(", ")
    );

    let figures: Vec<String> = KINDS
        .iter()
        .map(|k| {
            let (sa, sb_) = (last.a[k.index()], last.b[k.index()]);
            format!(
                "{} {:.0}/s p50/p99/p999 {}/{}/{} ms (B: {:.0}/s {}/{}/{} ms)",
                k.name(),
                sa.per_sec,
                ms(sa.p50),
                ms(sa.p99),
                ms(sa.p999),
                sb_.per_sec,
                ms(sb_.p50),
                ms(sb_.p99),
                ms(sb_.p999)
            )
        })
        .collect();
    let retried = if pairs.len() > 1 {
        format!(
            " (pairs of phases run: {}; worst per pair {})",
            pairs.len(),
            history.join(", ")
        )
    } else {
        String::new()
    };
    Row::new("load", "load_200_connections_10k_sessions")
        .done(format!(
            "{CONNECTIONS} connections ({SUBSCRIBERS} draining all events) ran get/list/switch/\
             submit (4:2:2:2) against {} sessions for {:.0} s (A), then again beside a \
             subscriber that never reads, filled to overflowing first (B); list filtered to \
             one project (100 sessions), submits queued on paused sessions (nothing spawned); \
             debug build",
            thousands(SESSIONS as u64),
            phase.as_secs_f64()
        ))
        .runs(tally.requests)
        .checked(
            "every request answered and its answer correct; after SIGTERM and restart, every \
             acknowledged turn in its queue in order and each context on its last acknowledged \
             switch; per-subscriber seq strictly increasing; the stalled subscriber kept, with \
             lagged accounting exact; p99 in B within the factor of A",
        )
        .result(format!(
            "0 of {} requests failed; 0 of {} acknowledged switches and {} turns lost; {}; \
             worst p99 B/A ×{worst:.2} ({}; limit ×{P99_FACTOR}){retried}; the stalled \
             subscriber got {} events and a lagged notice for the other {}; \
             {lagged_subscribers} of {SUBSCRIBERS} draining subscribers lagged",
            thousands(tally.requests),
            thousands(switch_acks),
            thousands(turn_acks),
            figures.join("; "),
            worst_kind.name(),
            thousands(last.stalled.delivered),
            thousands(last.stalled.missed)
        ))
        .record();
}

/// Requests made and failed, over every phase.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    first_errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, s: Samples) {
        self.requests += s.requests();
        self.errors += s.errors;
        for e in s.first_errors {
            if self.first_errors.len() < 10 {
                self.first_errors.push(e);
            }
        }
    }
}

/// Phase A, then phase B beside a stalled subscriber, and what that subscriber saw.
struct Pair {
    a: [KindStats; 4],
    b: [KindStats; 4],
    /// The last seq of phase B: what the stalled subscriber must account for.
    b_end: u64,
    stalled: Seen,
    /// What its socket held when the daemon's writer blocked.
    stalled_socket_bytes: usize,
    /// The unmeasured load between A and B that filled the stalled subscriber.
    lead_in: Duration,
    subscriptions_after_b: u64,
}

impl Pair {
    fn ratio(&self, k: Kind) -> f64 {
        self.b[k.index()].p99.as_secs_f64() / self.a[k.index()].p99.as_secs_f64().max(1e-6)
    }

    fn worst(&self) -> (Kind, f64) {
        KINDS
            .iter()
            .map(|k| (*k, self.ratio(*k)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .expect("four kinds")
    }

    fn print(&self, attempt: usize) {
        println!(
            "{:<7} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>7}",
            format!("#{attempt}"),
            "A n",
            "A /s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "B n",
            "B /s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "p99 B/A"
        );
        for k in KINDS {
            let (a, b) = (self.a[k.index()], self.b[k.index()]);
            println!(
                "{:<7} | {:>7} {:>7.0} {:>7} {:>7} {:>7} | {:>7} {:>7.0} {:>7} {:>7} {:>7} \
                 | {:>7.2}",
                k.name(),
                a.count,
                a.per_sec,
                ms(a.p50),
                ms(a.p99),
                ms(a.p999),
                b.count,
                b.per_sec,
                ms(b.p50),
                ms(b.p99),
                ms(b.p999),
                self.ratio(k)
            );
        }
        println!(
            "stalled subscriber: filled ({} bytes in its socket, then {EVENT_QUEUE} events \
             queued) in {:.1} s of unmeasured load before B; read afterwards: {} events, then \
             {} lagged notice(s) for {} missed",
            self.stalled_socket_bytes,
            self.lead_in.as_secs_f64(),
            self.stalled.delivered,
            self.stalled.lagged,
            self.stalled.missed
        );
    }
}

/// Runs phase A; then subscribes one more connection to everything and stops reading it; runs
/// the load unmeasured until that subscriber has overflowed; runs phase B; then reads the
/// stalled subscriber's socket at last and closes it.
fn run_pair(
    rt: &tokio::runtime::Runtime,
    sb: &Sandbox,
    probe: &Client,
    workers: Vec<Worker>,
    shared: &Arc<Shared>,
    phase: Duration,
    tally: &mut Tally,
) -> (Vec<Worker>, Pair) {
    let (workers, mut a, a_took) = run_phase(rt, workers, shared, phase);
    let a_stats = stats(&mut a, a_took);
    tally.add(a);

    let mut stalled = sb.raw();
    stalled.handshake();
    let (early, answer) = stalled.call(1, "subscribe", SubscribeParams::default());
    assert!(early.is_empty(), "events before the subscription began");
    let stalled_start = frame::decode::<Response<SubscribeResult>>(&answer)
        .unwrap_or_else(|e| panic!("subscribe failed ({e}): {}", as_json(&answer)))
        .result
        .seq;

    // Until its socket is full and its queue in the daemon has overflowed, a subscriber that
    // does not read costs exactly what one that reads does; B measures the stall itself. How
    // much the socket holds depends on the kernel, so watch it fill rather than guess.
    let lead_in_started = Instant::now();
    let mut socket_bytes = 0;
    let filled = async {
        let mut peek = vec![0u8; 16 << 20];
        // Since when the unread bytes have not grown, and the seq then.
        let mut unchanged_since: Option<(Instant, u64)> = None;
        let mut full_at: Option<u64> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let seq = current_seq(probe).await;
            let bytes = unread_bytes(&stalled, &mut peek);
            assert!(
                lead_in_started.elapsed() < LEAD_IN_LIMIT,
                "the stalled subscriber did not fill within {LEAD_IN_LIMIT:?} ({bytes} bytes \
                 unread, {} events since it subscribed)",
                seq - stalled_start
            );
            if let Some(full) = full_at {
                if seq > full + EVENT_QUEUE + 64 {
                    return;
                }
                continue;
            }
            if bytes == 0 || bytes != socket_bytes {
                socket_bytes = bytes;
                unchanged_since = Some((Instant::now(), seq));
                continue;
            }
            // Events kept coming and the bytes waiting for us did not grow: the daemon's
            // writer for this connection is blocked. Held for 300 ms and 50 events, so a
            // writer merely starved of CPU for a moment is not taken for one blocked.
            if let Some((since, seq_then)) = unchanged_since {
                if since.elapsed() >= Duration::from_millis(300) && seq >= seq_then + 50 {
                    full_at = Some(seq);
                }
            }
        }
    };
    let (workers, lead, _) = rt.block_on(run_until(workers, shared, filled));
    tally.add(lead);
    let lead_in = lead_in_started.elapsed();

    let (workers, mut b, b_took) = run_phase(rt, workers, shared, phase);
    let b_stats = stats(&mut b, b_took);
    tally.add(b);

    let (b_end, subscriptions_after_b) = rt.block_on(async {
        let seq = current_seq(probe).await;
        let status = probe.call::<Status>(StatusParams {}).await.expect("status");
        (seq, status.subscriptions)
    });
    // What was queued before its gap, one `lagged` counting the rest, then anything after.
    let mut seen = Seen::new(stalled_start);
    while seen.last_seq < b_end {
        let payload = stalled
            .read()
            .expect("the stalled subscriber was kept, not dropped");
        assert_eq!(kind(&payload), "event", "{}", as_json(&payload));
        seen.take(&payload);
    }
    (
        workers,
        Pair {
            a: a_stats,
            b: b_stats,
            b_end,
            stalled: seen,
            stalled_socket_bytes: socket_bytes,
            lead_in,
            subscriptions_after_b,
        },
    )
}

/// Bytes the daemon has written to `conn` that it has not read, by peeking at them.
fn unread_bytes(conn: &RawConn, buf: &mut [u8]) -> usize {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    match recv(
        conn.stream.as_raw_fd(),
        buf,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => panic!("peeking at the stalled subscriber's socket: {e}"),
    }
}

/// Looks for every acknowledged write in the restarted daemon; returns what is missing.
async fn verify_after_restart(opts: &ConnectOptions, acked: Vec<Acked>) -> Vec<String> {
    let client = Arc::new(Client::connect(opts).await.expect("connect after restart"));
    let status = client
        .call::<Status>(StatusParams {})
        .await
        .expect("status");
    assert_eq!(
        status.sessions, SESSIONS as u64,
        "sessions after the restart"
    );
    let checks: Vec<_> = acked
        .into_iter()
        .map(|acked| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut lost = Vec::new();
                let now = client
                    .call::<Current>(ContextParams {
                        context: Some(acked.context.clone()),
                    })
                    .await
                    .expect("current");
                let now_session = now.session.as_ref().map(|s| s.id);
                let expected_generation = match acked.last_switch {
                    Some(_) => acked.generation + GENERATION_RESTART_STEP,
                    None => 0,
                };
                if now_session != acked.last_switch || now.generation != expected_generation {
                    lost.push(format!(
                        "context {}: last acknowledged switch {:?} at generation {}, after the \
                         restart {now_session:?} at {}",
                        acked.context, acked.last_switch, acked.generation, now.generation
                    ));
                }
                let queue = client
                    .call::<Queue>(SessionParams {
                        session: Some(acked.queue_session.to_string()),
                        ..Default::default()
                    })
                    .await
                    .expect("queue");
                let stored: Vec<TurnId> = queue.queued.iter().map(|t| t.turn_id).collect();
                if stored != acked.turns || queue.running.is_some() || queue.paused.is_none() {
                    let missing = acked.turns.iter().filter(|t| !stored.contains(t)).count();
                    lost.push(format!(
                        "session {}: {} acknowledged turns, {} stored ({missing} missing), \
                         running {:?}, paused {:?}",
                        acked.queue_session,
                        acked.turns.len(),
                        stored.len(),
                        queue.running.map(|t| t.turn_id),
                        queue.paused
                    ));
                }
                lost
            })
        })
        .collect();
    let mut lost = Vec::new();
    for check in checks {
        lost.extend(check.await.expect("check task"));
    }
    lost
}
