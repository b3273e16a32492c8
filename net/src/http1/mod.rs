//! The one HTTP/1 home of the workspace, as pure codecs on `httparse` (no I/O, no tokio):
//! request heads read by a server ([`request`]), response heads written by one
//! ([`response`], with the JSON answers), and the client side ([`client`]): the request heads a
//! gateway or the load generator writes and the response heads they read back.
//!
//! The reads and writes on a socket are in the sibling module `http1_io`; hyper serves the rest.

pub mod client;
pub mod request;
pub mod response;
