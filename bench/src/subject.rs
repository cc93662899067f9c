//! A sessiond under measurement: its own temp directories, started in the foreground,
//! populated through the async client, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_client::{BlockingClient, Client, ConnectOptions};
use sessiond_proto::methods::{
    Cancel, Create, CreateParams, Pause, Queue, Resume, SessionParams, Status, Submit,
    SubmitParams, Switch, TurnParams,
};
use sessiond_proto::paths::{PathOverrides, Paths};

use crate::binaries::Binaries;
use crate::cleanup;

/// The daemon's housekeeping tick (`socket_check_interval_ms`), written into its config as
/// the default it is, so the idle-CPU figure can say how many ticks its window held.
pub const HOUSEKEEPING_TICK: Duration = Duration::from_secs(10);

pub struct Subject {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub project: PathBuf,
    paths: Paths,
    sessiond: PathBuf,
    child: Option<Child>,
}

/// Connections populating spreads its requests over, so group commit has writes to batch.
const POPULATE_CONNECTIONS: usize = 16;

impl Subject {
    pub fn new(bins: &Binaries) -> Result<Subject, String> {
        let dir = cleanup::temp_dir("sdbench")?;
        let root = dir.path().to_path_buf();
        let project = root.join("project");
        std::fs::create_dir_all(&project).map_err(|e| e.to_string())?;
        let project = project.canonicalize().map_err(|e| e.to_string())?;
        std::fs::write(
            root.join("config.toml"),
            format!(
                "[daemon]\nsocket_check_interval_ms = {}\n",
                HOUSEKEEPING_TICK.as_millis()
            ),
        )
        .map_err(|e| e.to_string())?;
        let paths = Paths::resolve(&PathOverrides {
            runtime_dir: Some(root.join("run")),
            state_dir: Some(root.join("state")),
            config: Some(root.join("config.toml")),
        })
        .map_err(|e| e.to_string())?;
        Ok(Subject {
            _dir: dir,
            root,
            project,
            paths,
            sessiond: bins.sessiond.clone(),
            child: None,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.paths.socket()
    }

    /// The variables pointing a `sessionctl` at this daemon, with autostart off.
    pub fn environment(&self) -> [(&'static str, PathBuf); 4] {
        [
            ("SESSIOND_RUNTIME_DIR", self.paths.runtime_dir.clone()),
            ("SESSIOND_STATE_DIR", self.paths.state_dir.clone()),
            ("SESSIOND_CONFIG", self.root.join("config.toml")),
            ("SESSIOND_NO_AUTOSTART", PathBuf::from("1")),
        ]
    }

    /// A `sessionctl` command pointed at this daemon, with autostart off.
    pub fn ctl(&self, sessionctl: &Path) -> Command {
        let mut cmd = Command::new(sessionctl);
        cmd.envs(self.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    pub fn options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new(self.paths.clone());
        opts.autostart = false;
        opts.timeout = Duration::from_secs(120);
        opts
    }

    /// Starts the daemon; returns the time from its exec to the first answered `ping`.
    ///
    /// Timed from when `spawn` returns, which is once the exec has succeeded: the parent-death
    /// signal makes std fork the harness rather than `posix_spawn` it, and copying the
    /// harness's page tables (hundreds of MB by the start-up figures) cost 20 ms and more,
    /// the harness's cost and not the daemon's.
    pub fn start(&mut self) -> Result<Duration, String> {
        let mut cmd = Command::new(&self.sessiond);
        cmd.arg("--runtime-dir")
            .arg(&self.paths.runtime_dir)
            .arg("--state-dir")
            .arg(&self.paths.state_dir)
            .arg("--config")
            .arg(self.root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            cleanup::spawn_tracked(&mut cmd).map_err(|e| format!("cannot start sessiond: {e}"))?;
        let started = Instant::now();
        self.child = Some(child);
        let deadline = started + Duration::from_secs(120);
        let opts = self.options();
        loop {
            let pinged = sessiond_client::BlockingClient::connect(&opts)
                .and_then(|mut c| c.call::<sessiond_proto::methods::Ping>(Default::default()));
            if pinged.is_ok() {
                return Ok(started.elapsed());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("sessiond exited with {status} during start-up"));
            }
            if Instant::now() > deadline {
                return Err("sessiond did not answer within 120 s".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            cleanup::untrack_child(child.id());
        }
    }

    /// Sessions the daemon holds, as its `status` counts them.
    pub fn sessions_held(&self) -> Result<u64, String> {
        let mut client = BlockingClient::connect(&self.options()).map_err(|e| e.to_string())?;
        let status = client
            .call::<Status>(Default::default())
            .map_err(|e| e.to_string())?;
        Ok(status.sessions)
    }

    /// A connection that keeps `session`'s queue at `queued` turns: see [`QueueKeeper`].
    pub fn queue_keeper(&self, session: &str, queued: usize) -> Result<QueueKeeper, String> {
        Ok(QueueKeeper {
            client: BlockingClient::connect(&self.options()).map_err(|e| e.to_string())?,
            session: session.to_string(),
            queued,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's resident memory, in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// The connections populating spreads its requests over.
    async fn populating_clients(&self) -> Vec<Arc<Client>> {
        let opts = self.options();
        let mut clients = Vec::with_capacity(POPULATE_CONNECTIONS);
        for _ in 0..POPULATE_CONNECTIONS {
            clients.push(Arc::new(Client::connect(&opts).await.expect("connect")));
        }
        clients
    }

    /// Adds `n` sessions (all requests in flight at once); returns their ids in order.
    pub fn add_sessions(&self, rt: &tokio::runtime::Runtime, n: usize) -> Vec<String> {
        let project = self.project.display().to_string();
        rt.block_on(async move {
            let clients = self.populating_clients().await;
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let client = clients[i % POPULATE_CONNECTIONS].clone();
                    let params = CreateParams {
                        project: project.clone(),
                        provider: "shell".into(),
                        name: None,
                        cwd: None,
                    };
                    tokio::spawn(async move { client.call::<Create>(params).await })
                })
                .collect();
            let mut ids = Vec::with_capacity(n);
            for task in tasks {
                ids.push(task.await.expect("task").expect("create").id.to_string());
            }
            ids
        })
    }

    /// Brings the store to the state a daemon in use is in, and returns how many writes that
    /// took. A fresh database's write-ahead log grows with every commit until it first wraps
    /// (after about 1,000 pages, a few hundred switches), and an fsync that lengthens a file
    /// also commits the file system's journal: a switch measured 0.38–0.53 ms per commit
    /// then and 0.25–0.30 ms after. Without this the smallest sizes, measured first, would
    /// be timed in that transient and the largest after it. Switches `session` in a context
    /// of its own until a batch leaves the log's length unchanged; `Err` with the count if it
    /// never did.
    pub fn settle_storage(
        &self,
        rt: &tokio::runtime::Runtime,
        session: &str,
    ) -> Result<usize, usize> {
        const BATCH: usize = 50;
        const MOST: usize = 4_000;
        let wal = self.paths.state_dir.join("sessiond.db-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let opts = self.options();
        rt.block_on(async move {
            let client = Client::connect(&opts).await.expect("connect");
            let mut written = 0;
            while written < MOST {
                let before = wal_len();
                for _ in 0..BATCH {
                    client
                        .call::<Switch>(SessionParams {
                            session: Some(session.to_string()),
                            project: None,
                            context: Some("bench-settle".into()),
                        })
                        .await
                        .expect("switch");
                }
                written += BATCH;
                if wal_len() == before {
                    return Ok(written);
                }
            }
            Err(written)
        })
    }

    /// Gives every session in `ids` a history of `per_session` settled turns: pauses it,
    /// queues each turn and cancels it (a queued turn settles `cancelled` at once), and
    /// resumes it, so the store holds the turns, nothing runs, and the session is idle again
    /// (a paused one costs the daemon memory a session in long use does not). Sessions
    /// proceed in parallel, each in order.
    pub fn add_settled_turns(
        &self,
        rt: &tokio::runtime::Runtime,
        ids: &[String],
        per_session: usize,
    ) {
        rt.block_on(async move {
            let clients = self.populating_clients().await;
            let tasks: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let client = clients[i % POPULATE_CONNECTIONS].clone();
                    let session = Some(id.clone());
                    tokio::spawn(async move {
                        let target = SessionParams {
                            session: session.clone(),
                            ..Default::default()
                        };
                        client.call::<Pause>(target.clone()).await.expect("pause");
                        for k in 0..per_session {
                            let params = SubmitParams {
                                session: session.clone(),
                                project: None,
                                context: None,
                                prompt: format!("echo settled {k}"),
                                no_queue: false,
                            };
                            let queued = client.call::<Submit>(params).await.expect("submit");
                            let turn = queued.turn.turn_id.to_string();
                            client
                                .call::<Cancel>(TurnParams { turn })
                                .await
                                .expect("cancel");
                        }
                        client.call::<Resume>(target).await.expect("resume");
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        });
    }

    /// Pauses `session` and queues `n` turns in it (stored, never run).
    pub fn queue_turns(&self, rt: &tokio::runtime::Runtime, session: &str, n: usize) {
        let opts = self.options();
        let session = session.to_string();
        rt.block_on(async move {
            let client = Arc::new(Client::connect(&opts).await.expect("connect"));
            client
                .call::<Pause>(SessionParams {
                    session: Some(session.clone()),
                    project: None,
                    context: None,
                })
                .await
                .expect("pause");
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let client = client.clone();
                    let params = SubmitParams {
                        session: Some(session.clone()),
                        project: None,
                        context: None,
                        prompt: format!("echo queued {i}"),
                        no_queue: false,
                    };
                    tokio::spawn(async move { client.call::<Submit>(params).await })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("submit");
            }
        });
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            cleanup::untrack_child(child.id());
        }
    }
}

/// Cancels the turn each measured `send` queued, between runs and untimed, so every send
/// finds the queue as long as the row says. A cancelled queued turn settles at once and is
/// kept as history, which a send does not read.
pub struct QueueKeeper {
    client: BlockingClient,
    session: String,
    queued: usize,
}

impl QueueKeeper {
    /// Cancels the newest queued turn, which must be the one sent since the last call.
    pub fn cancel_sent(&mut self) -> Result<(), String> {
        let queue = self
            .client
            .call::<Queue>(SessionParams {
                session: Some(self.session.clone()),
                ..Default::default()
            })
            .map_err(|e| format!("queue: {e}"))?;
        if queue.queued.len() != self.queued + 1 {
            return Err(format!(
                "the session held {} queued turns after a send, not {}",
                queue.queued.len(),
                self.queued + 1
            ));
        }
        let newest = queue.queued.last().expect("checked above");
        self.client
            .call::<Cancel>(TurnParams {
                turn: newest.turn_id.to_string(),
            })
            .map_err(|e| format!("cancel: {e}"))?;
        Ok(())
    }
}
