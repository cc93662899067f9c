//! `sessionctl ping`.

use std::time::Instant;

use serde::Serialize;
use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::methods::{Ping, PingParams};

use crate::output::Out;

#[derive(Serialize)]
struct PingReport {
    pong: bool,
    daemon_version: String,
    daemon_pid: u32,
    /// Microseconds from sending the request to reading the answer (the handshake rides along
    /// in the same round trip).
    round_trip_us: u64,
}

pub fn run(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let start = Instant::now();
    client.call::<Ping>(PingParams {})?;
    let round_trip_us = start.elapsed().as_micros() as u64;
    let welcome = client.welcome()?;
    let report = PingReport {
        pong: true,
        daemon_version: welcome.version.clone(),
        daemon_pid: welcome.pid,
        round_trip_us,
    };
    out.emit(&report, |w| {
        writeln!(
            w,
            "pong from sessiond {} (pid {}) in {:.3} ms",
            report.daemon_version,
            report.daemon_pid,
            report.round_trip_us as f64 / 1000.0
        )
    })
}
