//! ringcast's wire: every byte format the gateway, the node and the load generator share, each
//! a pure codec kept apart from the I/O that drives it.
//!
//! - [`link`]: many client connections over one gateway-node TCP connection; [`link::frame`]
//!   is its codec, the rest its driver and streams.
//! - [`http1`]: request and response heads (pure), and [`http1_io`] reading and writing them on
//!   a socket for connections that make one request.
//! - [`ws_handshake`]: the one check of a WebSocket upgrade request, with its status codes.
//! - [`detect`]: what a connection's first bytes say it is, and the prefixed stream that hands
//!   them on.
//! - [`health`]: what a node's `/healthz` tells a gateway beyond its status.
//! - [`registry`]: the layout of the node registry in Redis (written by nodes, read by gateways).
//! - [`redis_target`]: one Redis or a Redis Cluster, and a command connection to either.
//! - [`drain`]: a process's two-phase shutdown, the one value both binaries pass down.
//! - [`x509`]: a certificate's serial and validity, read from its DER (the gateway reports
//!   them for its TLS certificate).
//! - [`cork`], [`split`], [`process`]: small transport and process helpers both binaries use.

pub mod api_auth;
pub mod cork;
pub mod detect;
pub mod drain;
pub mod health;
pub mod http1;
pub mod http1_io;
pub mod link;
pub mod process;
pub mod redis_target;
pub mod registry;
pub mod split;
pub mod tls;
pub mod ws_handshake;
pub mod x509;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
