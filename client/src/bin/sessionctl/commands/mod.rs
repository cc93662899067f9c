//! One module per command group; each function connects as it needs, calls the daemon, and
//! hands the result to `Out`.

pub mod daemon;
pub mod follow;
pub mod ping;
pub mod run;
pub mod sessions;
pub mod turns;
pub mod version;
