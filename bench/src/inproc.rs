//! In-process figures through `sessiond_client`: the library's `ping` round trip against the
//! floor of a raw tokio Unix socket echo of the same number of bytes, in the same runtime,
//! alternating in blocks so both see the same machine.

use std::time::Instant;

use sessiond_client::{Client, ConnectOptions};
use sessiond_proto::envelope::Request;
use sessiond_proto::frame;
use sessiond_proto::methods::Ping;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::stats::Samples;
use crate::{compare, Row};

const BLOCK: usize = 100;

pub fn ping_vs_echo(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    n: usize,
) -> Result<Vec<Row>, String> {
    let opts = opts.clone();
    rt.block_on(async move {
        let client = Client::connect(&opts).await.map_err(|e| e.to_string())?;
        // The echo moves as many bytes each way as a ping request does.
        let size = frame::encode(&Request::new(1u64, "ping", serde_json::json!({})))
            .map_err(|e| e.to_string())?
            .len();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; size];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let mut echo = UnixStream::connect(&path)
            .await
            .map_err(|e| e.to_string())?;
        let out = vec![7u8; size];
        let mut back = vec![0u8; size];
        let (mut ping, mut floor) = (Samples::default(), Samples::default());
        // Warm both paths.
        for _ in 0..BLOCK {
            client
                .call::<Ping>(Default::default())
                .await
                .map_err(|e| e.to_string())?;
            echo.write_all(&out).await.map_err(|e| e.to_string())?;
            echo.read_exact(&mut back)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut done = 0;
        while done < n {
            for _ in 0..BLOCK {
                let t = Instant::now();
                client
                    .call::<Ping>(Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                ping.push(t.elapsed());
            }
            for _ in 0..BLOCK {
                let t = Instant::now();
                echo.write_all(&out).await.map_err(|e| e.to_string())?;
                echo.read_exact(&mut back)
                    .await
                    .map_err(|e| e.to_string())?;
                floor.push(t.elapsed());
            }
            done += BLOCK;
        }
        let ours = ping.summary();
        Ok::<_, String>(vec![Row {
            figure: "in-process ping round trip (p50; p99 in note)".into(),
            sessions: None,
            sessiond: ours,
            compared: vec![compare("raw socket echo", &ours, floor.summary())],
            note: Some(format!(
                "p99 {:.3} ms vs echo p99 {:.3} ms, {} round trips each",
                ours.p99_ms,
                floor.summary().p99_ms,
                n
            )),
        }])
    })
}
