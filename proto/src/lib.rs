//! # sessiond-proto: the wire contract between sessiond and its clients
//!
//! Everything a client needs to talk to the daemon, and nothing more: no tokio in the core (an
//! optional `tokio` feature adds async frame reading), no daemon internals. The normative
//! description for implementers in other languages is `PROTOCOL.md` beside this crate; golden
//! frames for every message kind are in `vectors/`, and the tests prove these types encode to
//! exactly those bytes.
//!
//! How the pieces meet:
//!
//! - [`frame`] cuts a byte stream into frames (4-byte big-endian length + one MessagePack map)
//!   and enforces the size limit before buffering.
//! - [`envelope`] defines the six frame types (`hello`, `welcome`, `request`, `response`,
//!   `error`, `event`) and [`envelope::FrameHead`], read first to route a frame.
//! - [`scan`] walks MessagePack without decoding it, so a frame's head is read without
//!   touching a megabyte result, and a result can be passed through untouched.
//! - [`methods`] defines each method as a type with its params and result.
//! - [`error`] holds the stable error codes; [`version`] the protocol version rule.
//! - [`paths`] says where the socket and the daemon's files live, and checks that their
//!   directories are private.
//! - `ownership` is the per-session lock and pid files by which exactly one process (a
//!   daemon worker, or `sessionctl run`) owns a session; `process` has the facts about
//!   processes those decisions rest on.
//!
//! ```
//! use sessiond_proto::{frame, envelope::Request, methods::{Method, Ping, PingParams}};
//! let bytes = frame::encode(&Request::new(1, Ping::NAME, PingParams {})).unwrap();
//! assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_be_bytes());
//! ```
//!
//! Not for: connecting, autostarting or retrying; that is the `sessiond_client` library.

pub mod envelope;
pub mod error;
pub mod frame;
pub mod methods;
#[cfg(unix)]
pub mod ownership;
pub mod paths;
#[cfg(unix)]
pub mod process;
pub mod scan;
pub mod session;
pub mod version;

pub use envelope::version_mismatch_message;
pub use error::ErrorCode;
pub use version::{ProtocolVersion, PROTOCOL_VERSION};

/// The proleptic Gregorian date (year, month, day) `days` after 1970-01-01, for showing
/// times without a date crate. Counted in 400-year eras (146,097 days each, the calendar's
/// full cycle) from 0000-03-01, so that February, with its leap day, ends each counted year
/// (Howard Hinnant's algorithm).
pub fn civil_date(days: u64) -> (u64, u64, u64) {
    // 1970-01-01 is day 719,468 counted from 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    // Years of 365 days, less a day every 4 years, plus one every 100, less one every 400.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, 28/29 — five-month
    // runs of 153 days.
    let m = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * m + 2) / 5 + 1;
    let month = if m < 10 { m + 3 } else { m - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
