//! In-process figures through `sessiond_client`: the library's `ping` round trip against the
//! floor of a raw tokio Unix socket echo of the same number of bytes, alternating in blocks
//! so all see the same machine. The floor echo runs in its own process on a single-threaded
//! runtime, as sessiond does, so both pay the same wake-ups across processes; an echo served
//! inside this process, which never leaves it, is reported beside it.

use std::path::Path;
use std::time::Instant;

use sessiond_client::{Client, ConnectOptions};
use sessiond_proto::envelope::Request;
use sessiond_proto::frame;
use sessiond_proto::methods::Ping;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::cleanup;
use crate::placement;
use crate::report::{Comparison, Row};
use crate::stats::Samples;

const BLOCK: usize = 100;

/// What an echo reads into: larger than a frame, as the daemon's and the library's buffers
/// are, so a read that returns the whole frame is short, and tokio takes the socket as
/// drained without asking it again. (Reading exactly a frame's length cost the echo a
/// system call more per round trip than the daemon pays.)
const ECHO_BUFFER: usize = 8 * 1024;

pub fn ping_vs_echo(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    daemon_pid: Option<u32>,
    floor_bin: &Path,
    n: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>, String> {
    let opts = opts.clone();
    let dir = cleanup::temp_dir("sdbench-echo")?;
    // The floor: an echo in its own process, on a single-threaded runtime as sessiond is.
    let remote_path = dir.path().join("remote-echo.sock");
    let mut cmd = std::process::Command::new(floor_bin);
    cmd.arg("--echo")
        .arg(&remote_path)
        .stdin(std::process::Stdio::null());
    let mut remote = EchoProcess(
        cleanup::spawn_tracked(&mut cmd)
            .map_err(|e| format!("cannot start {}: {e}", floor_bin.display()))?,
    );
    rt.block_on(async move {
        let client = Client::connect(&opts).await.map_err(|e| e.to_string())?;
        // Each echo moves as many bytes each way as a ping request does.
        let size = frame::encode(&Request::new(1u64, "ping", serde_json::json!({})))
            .map_err(|e| e.to_string())?
            .len();
        let local_path = dir.path().join("local-echo.sock");
        let listener = UnixListener::bind(&local_path).map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; ECHO_BUFFER];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut local = UnixStream::connect(&local_path)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut remote_conn = loop {
            match UnixStream::connect(&remote_path).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = remote.0.try_wait() {
                        return Err(format!("the echo process exited with {status}"));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(e) => return Err(format!("the echo process never listened: {e}")),
            }
        };
        let mut rows = Vec::new();
        for layout in layouts(daemon_pid, remote.0.id(), notes)? {
            // A pinned layout is extra: one the machine refuses is left out, with why.
            let pinned = match layout.pin() {
                Ok(pinned) => pinned,
                Err(why) => {
                    notes.push(format!("{} not measured: {why}", layout.describe()));
                    continue;
                }
            };
            let (ping, remote_floor, local_floor) =
                measure(&client, &mut remote_conn, &mut local, size, n).await?;
            drop(pinned);
            rows.push(row(&layout, &ping, &remote_floor, &local_floor));
        }
        Ok::<_, String>(rows)
    })
}

/// Where the client (this process), the daemon and the echo process run while measured.
enum Layout {
    /// Wherever the scheduler puts them.
    Unpinned,
    /// This process on one CPU; the daemon and the echo both on another.
    Apart {
        client: usize,
        server: usize,
        pids: [u32; 3],
    },
    /// All three on one CPU.
    Together { cpu: usize, pids: [u32; 3] },
}

/// The layouts to measure: unpinned always; pinned apart and together where the daemon's pid
/// is known and this process may use two CPUs (a note says when not).
fn layouts(
    daemon_pid: Option<u32>,
    echo_pid: u32,
    notes: &mut Vec<String>,
) -> Result<Vec<Layout>, String> {
    let mut all = vec![Layout::Unpinned];
    let cpus = placement::allowed_cpus()?;
    if cpus.len() < 2 {
        notes.push(format!(
            "in-process ping measured unpinned only: this process may run on {} CPU",
            cpus.len()
        ));
    }
    if let (Some(daemon), [first, second, ..]) = (daemon_pid, cpus.as_slice()) {
        let pids = [std::process::id(), daemon, echo_pid];
        all.push(Layout::Apart {
            client: *first,
            server: *second,
            pids,
        });
        all.push(Layout::Together { cpu: *first, pids });
    }
    Ok(all)
}

impl Layout {
    fn pin(&self) -> Result<Vec<placement::Pinned>, String> {
        match self {
            Layout::Unpinned => Ok(Vec::new()),
            Layout::Apart {
                client,
                server,
                pids: [me, daemon, echo],
            } => Ok(vec![
                placement::Pinned::new(*me, *client)?,
                placement::Pinned::new(*daemon, *server)?,
                placement::Pinned::new(*echo, *server)?,
            ]),
            Layout::Together { cpu, pids } => pids
                .iter()
                .map(|pid| placement::Pinned::new(*pid, *cpu))
                .collect(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Layout::Unpinned => "in-process ping round trip (p50; p99 in note)".into(),
            Layout::Apart { client, server, .. } => format!(
                "in-process ping round trip, client on CPU {client}, daemon and echo on CPU \
                 {server} (p50; p99 in note)"
            ),
            Layout::Together { cpu, .. } => format!(
                "in-process ping round trip, client, daemon and echo all on CPU {cpu} (p50; \
                 p99 in note)"
            ),
        }
    }
}

/// `n` pings and as many echoes of each kind, alternating in blocks of [`BLOCK`].
async fn measure(
    client: &Client,
    remote: &mut UnixStream,
    local: &mut UnixStream,
    size: usize,
    n: usize,
) -> Result<(Samples, Samples, Samples), String> {
    let out = vec![7u8; size];
    let mut back = vec![0u8; ECHO_BUFFER];
    let (mut ping, mut remote_floor, mut local_floor) =
        (Samples::default(), Samples::default(), Samples::default());
    for round in 0.. {
        // The first block of each warms its path and is not recorded.
        let record = round > 0;
        if record && ping.len() >= n {
            break;
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            client
                .call::<Ping>(Default::default())
                .await
                .map_err(|e| e.to_string())?;
            if record {
                ping.push(t.elapsed());
            }
        }
        for (echo, samples) in [
            (&mut *remote, &mut remote_floor),
            (&mut *local, &mut local_floor),
        ] {
            for _ in 0..BLOCK {
                let t = Instant::now();
                echo.write_all(&out).await.map_err(|e| e.to_string())?;
                let mut got = 0;
                while got < size {
                    match echo.read(&mut back).await {
                        Ok(0) => return Err("the echo closed the connection".into()),
                        Ok(n) => got += n,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                if record {
                    samples.push(t.elapsed());
                }
            }
        }
    }
    Ok((ping, remote_floor, local_floor))
}

fn row(layout: &Layout, ping: &Samples, remote_floor: &Samples, local_floor: &Samples) -> Row {
    let ours = ping.summary();
    // The ratio of the medians: the target is stated in them, and the samples are taken in
    // blocks, not pairs.
    let compare = |against: &str, theirs: &Samples| {
        let summary = theirs.summary();
        Comparison {
            against: against.to_string(),
            summary,
            ratio: ours.median_ms / summary.median_ms,
            paired: false,
        }
    };
    let p99 = |s: &Samples| {
        s.summary()
            .p99_ms
            .map_or("none (too few samples)".into(), |p| format!("{p:.3} ms"))
    };
    Row {
        figure: layout.describe(),
        sessions: None,
        runs: ping.len(),
        warmup: BLOCK,
        sessiond: ours,
        compared: vec![
            compare("raw socket echo, own process", remote_floor),
            compare("raw socket echo, same process", local_floor),
        ],
        note: Some(format!(
            "p99 {} vs echo p99 {} (own process), {} round trips each",
            p99(ping),
            p99(remote_floor),
            ping.len()
        )),
    }
}

/// The echo process, killed when measuring ends however it ends.
struct EchoProcess(std::process::Child);

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        cleanup::untrack_child(self.0.id());
    }
}
