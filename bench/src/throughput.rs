//! In-process load figures through `sessiond_client`: requests per second by method and
//! connection count, durable submits per second, and event delivery latency to many
//! subscribers with and without one that never reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond_client::{Client, ConnectOptions};
use sessiond_proto::methods::{
    ContextParams, Current, Get, List, ListParams, SessionParams, Status, Submit, SubmitParams,
    Subscribe, SubscribeParams, Switch,
};
use sessiond_proto::session::EventFilter;

use crate::stats::Samples;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    List,
    Get,
    Switch,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::List => "list",
            Kind::Get => "get",
            Kind::Switch => "switch",
        }
    }
}

async fn connect_all(opts: &ConnectOptions, n: usize) -> Result<Vec<Arc<Client>>, String> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Arc::new(
            Client::connect(opts).await.map_err(|e| e.to_string())?,
        ));
    }
    Ok(clients)
}

/// Requests of `kind` per second from `conns` connections, each with one request in flight,
/// for `secs`. Each connection switches its own context, so switches never contend on one.
pub fn requests_per_second(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    ids: &[String],
    kind: Kind,
    conns: usize,
    secs: f64,
) -> Result<f64, String> {
    let ids: Arc<Vec<String>> = Arc::new(ids.to_vec());
    rt.block_on(async move {
        let clients = connect_all(opts, conns).await?;
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                let (ids, done) = (ids.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = c;
                    while Instant::now() < until {
                        let session = Some(ids[i % ids.len()].clone());
                        let ok = match kind {
                            Kind::List => client.call::<List>(ListParams::default()).await.is_ok(),
                            Kind::Get => client
                                .call::<Get>(SessionParams {
                                    session,
                                    project: None,
                                    context: None,
                                })
                                .await
                                .is_ok(),
                            Kind::Switch => client
                                .call::<Switch>(SessionParams {
                                    session,
                                    project: None,
                                    context: Some(format!("bench-{c}")),
                                })
                                .await
                                .is_ok(),
                        };
                        assert!(ok, "{} failed under load", kind.name());
                        done.fetch_add(1, Ordering::Relaxed);
                        i += conns;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())?;
        }
        Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
    })
}

/// Durable submits per second: `clients` connections each submitting `each` prompts, one in
/// flight per connection, into sessions whose queues are paused (stored and acknowledged
/// after the commit, never run).
pub fn durable_submits(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    paused: &[String],
    clients: usize,
    each: usize,
) -> Result<f64, String> {
    let paused: Arc<Vec<String>> = Arc::new(paused.to_vec());
    rt.block_on(async move {
        let all = connect_all(opts, clients).await?;
        let started = Instant::now();
        let tasks: Vec<_> = all
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                let paused = paused.clone();
                tokio::spawn(async move {
                    for i in 0..each {
                        client
                            .call::<Submit>(SubmitParams {
                                session: Some(paused[(c + i) % paused.len()].clone()),
                                project: None,
                                context: None,
                                prompt: format!("echo {c} {i}"),
                                no_queue: false,
                            })
                            .await
                            .expect("submit");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())?;
        }
        Ok((clients * each) as f64 / started.elapsed().as_secs_f64())
    })
}

/// Longest a subscriber waits for its next event before the figure counts the rest as lost.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(30);

/// What one event-delivery measurement got.
pub struct Delivery {
    /// One per event that arrived: from sending its switch to its arrival.
    pub samples: Samples,
    /// Deliveries there should have been: subscribers × switches.
    pub expected: usize,
    /// With a stalled subscriber: whether its connection and subscription were still open at
    /// the end, and if not, what was found.
    pub stalled: Option<Result<(), String>>,
}

/// Latency from sending a switch to each of `subscribers` receiving its event, over
/// `switches` switches, optionally beside one subscriber that never reads its socket.
pub fn event_delivery(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    socket: &std::path::Path,
    session: &str,
    subscribers: usize,
    switches: u64,
    stalled: bool,
) -> Result<Delivery, String> {
    let session = session.to_string();
    let socket = socket.to_path_buf();
    rt.block_on(async move {
        let context = format!("bench-events-{}", if stalled { "stalled" } else { "clean" });
        let filter = EventFilter {
            events: vec!["session_switched".into()],
            ..Default::default()
        };
        // Raw, so it can subscribe and then never read.
        let stalled_conn = if stalled {
            Some(stalled_subscriber(&socket, &filter)?)
        } else {
            None
        };
        let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let received: Arc<Mutex<Samples>> = Arc::default();
        let mut readers = Vec::new();
        let mut keep = Vec::new();
        for _ in 0..subscribers {
            let client = Client::connect(opts).await.map_err(|e| e.to_string())?;
            let mut events = client.take_events().expect("events");
            client
                .call::<Subscribe>(SubscribeParams {
                    filter: filter.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
            let (sent, received, context) = (sent.clone(), received.clone(), context.clone());
            // An event that never comes, or one for a switch never sent, is not counted:
            // the shortfall against `expected` fails the figure.
            readers.push(tokio::spawn(async move {
                let mut got = 0;
                while got < switches {
                    let Ok(Some(payload)) =
                        tokio::time::timeout(DELIVERY_PATIENCE, events.recv()).await
                    else {
                        break;
                    };
                    let at = Instant::now();
                    let v: serde_json::Value = rmp_serde::from_slice(&payload).unwrap_or_default();
                    if v["data"]["context"] != context.as_str() {
                        continue;
                    }
                    let generation = v["data"]["generation"].as_u64().unwrap_or(0);
                    if let Some(t) = sent.lock().unwrap().get(&generation) {
                        received.lock().unwrap().push(at - *t);
                    }
                    got += 1;
                }
            }));
            keep.push(client);
        }
        let driver = Client::connect(opts).await.map_err(|e| e.to_string())?;
        if stalled {
            // Enough events, on another context, to overflow the stalled subscriber's socket
            // and its 1,024-event queue before anything is measured.
            for _ in 0..2_500 {
                driver
                    .call::<Switch>(SessionParams {
                        session: Some(session.clone()),
                        project: None,
                        context: Some(format!("{context}-prefill")),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let mut generation = driver
            .call::<Current>(ContextParams {
                context: Some(context.clone()),
            })
            .await
            .map_err(|e| e.to_string())?
            .generation;
        for _ in 0..switches {
            generation += 1;
            sent.lock().unwrap().insert(generation, Instant::now());
            driver
                .call::<Switch>(SessionParams {
                    session: Some(session.clone()),
                    project: None,
                    context: Some(context.clone()),
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        for reader in readers {
            reader.await.map_err(|e| e.to_string())?;
        }
        let stalled = match &stalled_conn {
            Some(conn) => {
                let subscriptions = driver
                    .call::<Status>(Default::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .subscriptions;
                Some(still_subscribed(
                    conn,
                    subscriptions,
                    subscribers as u64 + 1,
                ))
            }
            None => None,
        };
        let samples = received.lock().unwrap().clone();
        Ok(Delivery {
            samples,
            expected: subscribers * switches as usize,
            stalled,
        })
    })
}

/// Whether the stalled subscriber is still connected and subscribed: its socket not hung up
/// (checked without reading it), and the daemon counting `expected` subscriptions, the 100
/// readers' and its own.
fn still_subscribed(
    conn: &std::os::unix::net::UnixStream,
    subscriptions: u64,
    expected: u64,
) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let rdhup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
    let mut fds = [PollFd::new(conn.as_fd(), rdhup)];
    poll(&mut fds, PollTimeout::ZERO).map_err(|e| format!("poll: {e}"))?;
    let closed = fds[0]
        .revents()
        .is_some_and(|r| r.intersects(rdhup | PollFlags::POLLHUP | PollFlags::POLLERR));
    if closed {
        return Err("the daemon closed the stalled subscriber's connection".into());
    }
    if subscriptions != expected {
        return Err(format!(
            "the daemon held {subscriptions} subscriptions at the end, not {expected} (the \
             readers' and the stalled subscriber's)"
        ));
    }
    Ok(())
}

/// A connection that subscribes to `filter` and then never reads.
fn stalled_subscriber(
    socket: &std::path::Path,
    filter: &EventFilter,
) -> Result<std::os::unix::net::UnixStream, String> {
    use sessiond_proto::envelope::{Hello, Request};
    use sessiond_proto::{frame, PROTOCOL_VERSION};
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let mut out = frame::encode(&Hello::new(PROTOCOL_VERSION, "stalled", None)).unwrap();
    frame::encode_into(
        &mut out,
        &Request::new(
            1,
            "subscribe",
            SubscribeParams {
                filter: filter.clone(),
            },
        ),
    )
    .unwrap();
    stream.write_all(&out).map_err(|e| e.to_string())?;
    Ok(stream)
}
