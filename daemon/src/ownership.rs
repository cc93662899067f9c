//! Per-session ownership files (being written).
