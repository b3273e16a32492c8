//! Test helpers for the readers and the link that face the network, shared with other crates'
//! tests through the `testing` feature (never part of a release build).

pub mod chunked;
pub mod link;
