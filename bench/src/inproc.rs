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
use crate::report::{Comparison, Row};
use crate::stats::Samples;

const BLOCK: usize = 100;

pub fn ping_vs_echo(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    floor_bin: &Path,
    n: usize,
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
            let mut buf = vec![0u8; size];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
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
        let out = vec![7u8; size];
        let mut back = vec![0u8; size];
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
                (&mut remote_conn, &mut remote_floor),
                (&mut local, &mut local_floor),
            ] {
                for _ in 0..BLOCK {
                    let t = Instant::now();
                    echo.write_all(&out).await.map_err(|e| e.to_string())?;
                    echo.read_exact(&mut back)
                        .await
                        .map_err(|e| e.to_string())?;
                    if record {
                        samples.push(t.elapsed());
                    }
                }
            }
        }
        let ours = ping.summary();
        // The ratio of the medians: the target is stated in them, and the samples are taken
        // in blocks, not pairs.
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
        Ok::<_, String>(vec![Row {
            figure: "in-process ping round trip (p50; p99 in note)".into(),
            sessions: None,
            runs: ping.len(),
            warmup: BLOCK,
            sessiond: ours,
            compared: vec![
                compare("raw socket echo, own process", &remote_floor),
                compare("raw socket echo, same process", &local_floor),
            ],
            note: Some(format!(
                "p99 {} vs echo p99 {} (own process), {} round trips each",
                p99(&ping),
                p99(&remote_floor),
                ping.len()
            )),
        }])
    })
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
