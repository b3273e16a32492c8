//! The gateway's HTTP answers: the body type every path returns and the JSON shapes of its
//! answers and refusals (`{"error": code, "message": …}`).
//!
//! The hyper path, the direct upgrade path and the proxy all answer with these, so they live
//! apart from all three. They are defined once for both binaries (today in the node's `http`
//! module, which issue 17 moves into `net/`'s HTTP/1 home); this file is the gateway's only
//! door to them, so that move changes one line here.

pub use ringcast_node::response::{json, json_error, metrics_text, Body};
