//! The node's read-only HTTP views for operators and gateways: `/healthz` (with the hash of
//! the node's room options, which gateways compare across nodes), `/stats` and `/rooms` (which
//! option set each active room got).

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use ringcast_net::health::ROOM_OPTIONS_HEADER;
use ringcast_net::http1::response::{json, json_error, Body};
use serde_json::{json, Value};

use crate::state::Shared;

/// Rooms `/rooms` lists when not asked for a number.
pub const ROOMS_DEFAULT: usize = 100;
/// Most rooms `/rooms` lists.
pub const ROOMS_MAX: usize = 1000;

/// `/healthz`: 200 while the node takes clients, 503 while draining or with the bus down.
pub fn health(shared: &Shared) -> Response<Body> {
    let (status, state) = if shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !*shared.bus_healthy.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus_down")
    } else {
        (StatusCode::OK, "ok")
    };
    let hash = shared.room_options.hash();
    let mut resp = json(
        status,
        json!({"status": state, "node": &*shared.node_id, "room_options": hash}),
    );
    if let Ok(v) = HeaderValue::from_str(hash) {
        resp.headers_mut().insert(ROOM_OPTIONS_HEADER, v);
    }
    resp
}

/// `/stats`: counts, state and the room options in force.
pub fn stats(shared: &Shared) -> Response<Body> {
    let s = shared.hub.stats();
    json(
        StatusCode::OK,
        json!({
            "node": &*shared.node_id,
            "local_connections": s.connections,
            "rooms": s.rooms,
            "clients": s.clients,
            "draining": shared.is_draining(),
            "bus_healthy": *shared.bus_healthy.borrow(),
            "room_options_hash": shared.room_options.hash(),
            "room_options": shared
                .room_options
                .rules()
                .iter()
                .map(|r| json!({"pattern": r.pattern.as_str(), "options": r.settings}))
                .collect::<Vec<Value>>(),
        }),
    )
}

/// `/rooms[?limit=N]`: the rooms with members here, the most members first (at most `N`,
/// default 100, up to 1000), each with the pattern it matched and its options.
pub fn rooms(shared: &Shared, query: Option<&str>) -> Response<Body> {
    let limit = match limit(query) {
        Ok(n) => n,
        Err(msg) => return json_error(StatusCode::BAD_REQUEST, "bad_request", msg),
    };
    let (rooms, total) = shared.hub.rooms(limit);
    let rooms: Vec<Value> = rooms
        .iter()
        .map(|(room, members)| {
            let rule = shared.room_options.resolve(room);
            json!({
                "room": room,
                "members": members,
                "pattern": rule.pattern.as_str(),
                "options": rule.settings,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        json!({
            "node": &*shared.node_id,
            "total": total,
            "truncated": total > rooms.len(),
            "rooms": rooms,
        }),
    )
}

fn limit(query: Option<&str>) -> Result<usize, &'static str> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("limit="))
    else {
        return Ok(ROOMS_DEFAULT);
    };
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=ROOMS_MAX).contains(n))
        .ok_or("limit must be an integer from 1 to 1000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_defaults_and_is_bounded() {
        assert_eq!(limit(None), Ok(ROOMS_DEFAULT));
        assert_eq!(limit(Some("x=1")), Ok(ROOMS_DEFAULT));
        assert_eq!(limit(Some("x=1&limit=5")), Ok(5));
        assert_eq!(limit(Some("limit=1000")), Ok(1000));
        for bad in ["limit=0", "limit=1001", "limit=-1", "limit=", "limit=a"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
