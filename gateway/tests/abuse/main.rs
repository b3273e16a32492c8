//! The attacks and accidents we survive, one module per area, each run against real servers:
//! release-shaped node and gateway processes or the same `run` on port 0, a real `redis-server`.
//!
//! Every test here was first seen failing against the code before its fix. Each checks what the
//! attacker or the unlucky client sees (HTTP status, close code, error event) and that an
//! ordinary client on the same servers keeps being served.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod edge;
mod links;
