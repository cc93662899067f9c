//! `sessionctl version`: both sides' versions, without starting a daemon.

use serde::Serialize;
use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::{ProtocolVersion, PROTOCOL_VERSION};

use crate::output::Out;

#[derive(Serialize)]
struct Side {
    version: String,
    protocol: ProtocolVersion,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
}

#[derive(Serialize)]
struct VersionReport {
    client: Side,
    /// Absent (null) when no daemon runs.
    daemon: Option<Side>,
}

pub fn run(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    let mut opts = opts.clone();
    opts.autostart = false;
    let daemon = match BlockingClient::connect(&opts).and_then(|mut c| c.welcome().cloned()) {
        Ok(w) => Some(Side {
            version: w.version,
            protocol: w.protocol,
            pid: Some(w.pid),
        }),
        Err(ClientError::NotRunning { .. }) => None,
        Err(e) if !out.json => {
            // Whatever went wrong with the daemon (a version mismatch, which this command
            // exists for; a missing socket), what we are is known: say it first.
            println!(
                "sessionctl {} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let report = VersionReport {
        client: Side {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            pid: None,
        },
        daemon,
    };
    out.emit(&report, |w| {
        writeln!(
            w,
            "sessionctl {} (protocol {})",
            report.client.version, report.client.protocol
        )?;
        match &report.daemon {
            Some(d) => writeln!(
                w,
                "sessiond   {} (protocol {}, pid {})",
                d.version,
                d.protocol,
                d.pid.unwrap_or_default()
            ),
            None => writeln!(w, "sessiond   not running"),
        }
    })
}
