//! The server API's methods. Each is started (checked and, for a publish, queued on the
//! node's publisher in order) and then finished (its outcome awaited), so a batch queues all
//! its publishes before it waits for any.

use std::borrow::Cow;

use bytes::Bytes;
use hyper::StatusCode;
use ringcast_protocol::stored::chat_head;
use ringcast_protocol::ClientCommand;
use ringcast_protocol::{
    validate_client_id, validate_message_id, validate_room, ServerEvent, Since, Target,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::ApiError;
use crate::bus::{dedupe_key, BusError, Channel, Published};
use crate::history_request::{self, HistoryError};
use crate::state::Shared;

/// Every method but `batch`.
pub(crate) const METHODS: [&str; 11] = [
    "publish",
    "broadcast",
    "send",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "presence",
    "presence_stats",
    "history",
    "rooms",
    "info",
];

/// Most rooms one `rooms` answer lists.
const MAX_ROOMS: usize = 1000;

/// Whether `method` is one of the API's (for metrics labels).
pub fn known(method: &str) -> bool {
    METHODS.contains(&method)
}

/// A started call: its outcome, or where it will come from.
pub enum Pending {
    /// Already known.
    Ready(Result<Value, ApiError>),
    /// Queued on the publisher.
    Wait(oneshot::Receiver<Result<Value, ApiError>>),
}

impl Pending {
    /// The call's outcome.
    pub async fn finish(self) -> Result<Value, ApiError> {
        match self {
            Pending::Ready(r) => r,
            Pending::Wait(rx) => rx.await.unwrap_or_else(|_| Err(unavailable())),
        }
    }
}

fn unavailable() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "bus_unavailable",
        message: "the message bus (Redis) is unavailable; nothing was delivered".into(),
    }
}

fn offline() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "target_offline",
        message: "the client is connected nowhere".into(),
    }
}

fn params<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, ApiError> {
    serde_json::from_str(raw.get()).map_err(|e| ApiError::bad(format!("params: {e}")))
}

fn owned<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ApiError> {
    serde_json::from_str(raw.get()).map_err(|e| ApiError::bad(format!("params: {e}")))
}

fn room_ok(room: &str) -> Result<(), ApiError> {
    validate_room(room).map_err(|e| ApiError::bad(format!("room: {e}")))
}

/// `data` within `--max-message-bytes`, and `from` a valid client id (default `server`).
fn checked<'a>(
    shared: &Shared,
    data: &RawValue,
    from: Option<Cow<'a, str>>,
) -> Result<Cow<'a, str>, ApiError> {
    if data.get().len() > shared.config.max_message_bytes {
        return Err(ApiError::bad(format!(
            "data: over --max-message-bytes ({})",
            shared.config.max_message_bytes
        )));
    }
    let from = from.unwrap_or(Cow::Borrowed("server"));
    validate_client_id(&from).map_err(|e| ApiError::bad(format!("from: {e}")))?;
    Ok(from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastParams<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendParams<'a> {
    #[serde(borrow)]
    client_id: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomParams {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    room: String,
    since: Option<Since>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipParams {
    client_id: String,
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectParams {
    client_id: String,
    code: Option<u16>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomsParams {
    pattern: Option<String>,
}

/// Asks every connection of `client` (on whichever node) to do `command`; 404 when it is
/// connected nowhere.
async fn command(shared: &Shared, client: String, command: ClientCommand) -> Pending {
    let channel = Channel::Client(client.clone());
    let target = Target::Command { client, command };
    let no_frame = Bytes::new();
    queue(shared, channel, target, &no_frame, |n| {
        if n == 0 {
            Err(offline())
        } else {
            Ok(json!({}))
        }
    })
    .await
}

fn client_ok(id: &str) -> Result<(), ApiError> {
    validate_client_id(id).map_err(|e| ApiError::bad(format!("client_id: {e}")))
}

/// Checks a call and starts it.
pub async fn start(shared: &Shared, method: &str, raw: &RawValue) -> Result<Pending, ApiError> {
    match method {
        "publish" => publish(shared, params(raw)?).await,
        "broadcast" => {
            let p: BroadcastParams = params(raw)?;
            let from = checked(shared, p.data, p.from)?;
            let frame = ServerEvent::Chat {
                from: &from,
                room: None,
                content: p.data,
                id: None,
            }
            .encode();
            let target = Target::AllExcept(None);
            Ok(queue(shared, Channel::Broadcast, target, &frame, |_| {
                Ok(json!({}))
            })
            .await)
        }
        "send" => {
            let p: SendParams = params(raw)?;
            validate_client_id(&p.client_id)
                .map_err(|e| ApiError::bad(format!("client_id: {e}")))?;
            let from = checked(shared, p.data, p.from)?;
            let frame = ServerEvent::DirectMessage {
                from: &from,
                content: p.data,
            }
            .encode();
            let channel = Channel::Client(p.client_id.to_string());
            let target = Target::Client(p.client_id.into_owned());
            Ok(queue(shared, channel, target, &frame, |n| {
                if n == 0 {
                    Err(offline())
                } else {
                    Ok(json!({}))
                }
            })
            .await)
        }
        "subscribe" | "unsubscribe" => {
            let p: MembershipParams = owned(raw)?;
            client_ok(&p.client_id)?;
            room_ok(&p.room)?;
            let c = if method == "subscribe" {
                ClientCommand::Subscribe(p.room)
            } else {
                ClientCommand::Unsubscribe(p.room)
            };
            Ok(command(shared, p.client_id, c).await)
        }
        "disconnect" => {
            let p: DisconnectParams = owned(raw)?;
            client_ok(&p.client_id)?;
            let code = p.code.unwrap_or(1000);
            if !(code == 1000 || code == 1012 || (4000..=4999).contains(&code)) {
                return Err(ApiError::bad("code: 1000, 1012 or 4000-4999"));
            }
            let reason = p.reason.unwrap_or_default();
            if reason.len() > 123 {
                return Err(ApiError::bad("reason: at most 123 bytes"));
            }
            let c = ClientCommand::Disconnect { code, reason };
            Ok(command(shared, p.client_id, c).await)
        }
        "rooms" => {
            let p: RoomsParams = owned(raw)?;
            let glob = match p.pattern.as_deref() {
                Some(pattern) => Some(
                    crate::room_options::Glob::new(pattern)
                        .map_err(|e| ApiError::bad(format!("pattern: {e}")))?,
                ),
                None => None,
            };
            Ok(Pending::Ready(rooms(shared, glob).await))
        }
        "presence" | "presence_stats" => {
            let p: RoomParams = owned(raw)?;
            room_ok(&p.room)?;
            Ok(Pending::Ready(
                presence(shared, &p.room, method == "presence_stats").await,
            ))
        }
        "history" => {
            let p: HistoryParams = owned(raw)?;
            room_ok(&p.room)?;
            Ok(Pending::Ready(history(shared, p).await))
        }
        "info" => {
            let _: NoParams = owned(raw)?;
            Ok(Pending::Ready(info(shared).await))
        }
        _ => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_method",
            message: format!("no method {method:?}; see the OpenAPI document"),
        }),
    }
}

/// `publish`: a room message from `from`, stored when the room keeps history (dedupe by `id`).
async fn publish(shared: &Shared, p: PublishParams<'_>) -> Result<Pending, ApiError> {
    room_ok(&p.room)?;
    let from = checked(shared, p.data, p.from)?;
    if let Some(id) = &p.id {
        validate_message_id(id).map_err(|e| ApiError::bad(format!("id: {e}")))?;
    }
    let settings = shared.room_options.resolve(&p.room).settings;
    let Some(keep) = shared.config.keep(&settings) else {
        let frame = ServerEvent::Chat {
            from: &from,
            room: Some(&p.room),
            content: p.data,
            id: p.id.as_deref(),
        }
        .encode();
        let (channel, target) = (
            Channel::Room(p.room.to_string()),
            Target::Room(p.room.into()),
        );
        return Ok(queue(shared, channel, target, &frame, |_| Ok(json!({}))).await);
    };
    let (tx, rx) = oneshot::channel();
    let then: crate::publisher::Then = Box::new(move |result| {
        let _ = tx.send(match result {
            Ok(Published::Stored(s)) => Ok(json!({"offset": s.offset, "epoch": &*s.epoch})),
            Ok(Published::Plain(_) | Published::Presence(_)) => Ok(json!({})),
            Err(_) => Err(unavailable()),
        });
    });
    let head = chat_head(&from, &p.room, p.data, p.id.as_deref());
    let dedupe = p.id.map(|id| dedupe_key(&from, &id));
    shared
        .publisher
        .publish_stored(&p.room, head, keep, dedupe, then)
        .await;
    Ok(Pending::Wait(rx))
}

/// Queues a plain publish; `ok` turns the number of subscribed nodes into the outcome.
async fn queue(
    shared: &Shared,
    channel: Channel,
    target: Target,
    frame: &Bytes,
    ok: fn(usize) -> Result<Value, ApiError>,
) -> Pending {
    let (tx, rx) = oneshot::channel();
    let then: crate::publisher::Then = Box::new(move |result: &Result<Published, BusError>| {
        let _ = tx.send(match result {
            Ok(p) => ok(p.subscribers()),
            Err(_) => Err(unavailable()),
        });
    });
    shared
        .publisher
        .publish_queued(channel, target, frame, then)
        .await;
    Pending::Wait(rx)
}

/// The version, and every live node with its connections (as of its last lease renewal; the
/// answering node alone on the in-memory bus).
async fn info(shared: &Shared) -> Result<Value, ApiError> {
    let listed = timeout(shared.config.bus_timeout(), shared.presence.nodes()).await;
    let Ok(Ok(mut nodes)) = listed else {
        return Err(unavailable());
    };
    if nodes.is_empty() {
        let here = shared.hub.connection_count() as u64;
        nodes.push((shared.presence.instance().to_string(), here));
    }
    let connections: u64 = nodes.iter().map(|(_, n)| n).sum();
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|(instance, n)| {
            // An instance is `NODE_ID.SUFFIX`.
            let node = instance
                .rsplit_once('.')
                .map_or(instance.as_str(), |(id, _)| id);
            json!({"node": node, "instance": instance, "connections": n})
        })
        .collect();
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": &*shared.node_id,
        "nodes": nodes,
        "connections": connections,
    }))
}

/// Active rooms (with presence anywhere) and their members, optionally those matching a glob.
async fn rooms(
    shared: &Shared,
    glob: Option<crate::room_options::Glob>,
) -> Result<Value, ApiError> {
    let listed = timeout(
        shared.config.bus_timeout(),
        shared.presence.rooms(usize::MAX),
    )
    .await;
    let Ok(Ok((all, _))) = listed else {
        return Err(unavailable());
    };
    let mut matching = all
        .into_iter()
        .filter(|(room, _)| glob.as_ref().is_none_or(|g| g.matches(room)));
    let rooms: Vec<Value> = matching
        .by_ref()
        .take(MAX_ROOMS)
        .map(|(room, n)| json!({"room": room, "members": n}))
        .collect();
    let truncated = matching.next().is_some();
    Ok(json!({"rooms": rooms, "truncated": truncated}))
}

async fn presence(shared: &Shared, room: &str, stats: bool) -> Result<Value, ApiError> {
    let settings = shared.room_options.resolve(room).settings;
    if !shared.config.keeps_presence(&settings) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "presence_disabled",
            message: "this room keeps no presence (presence=off)".into(),
        });
    }
    let max = if stats {
        0
    } else {
        shared.config.presence_max_members as usize
    };
    let list = timeout(
        shared.config.bus_timeout(),
        shared
            .presence
            .list(room, max, shared.config.bus_timeout() / 2),
    )
    .await;
    let Ok(Ok(list)) = list else {
        return Err(unavailable());
    };
    Ok(if stats {
        json!({"room": room, "clients": list.clients, "connections": list.connections})
    } else {
        let truncated = (list.members.len() as u64) < list.clients;
        json!({"room": room, "members": list.members, "count": list.clients, "truncated": truncated})
    })
}

async fn history(shared: &Shared, p: HistoryParams) -> Result<Value, ApiError> {
    let limit = p
        .limit
        .map_or(ringcast_protocol::client::HISTORY_LIMIT_DEFAULT, |l| {
            usize::try_from(l)
                .unwrap_or(usize::MAX)
                .clamp(1, ringcast_protocol::client::HISTORY_LIMIT_MAX)
        });
    let settings = shared.room_options.resolve(&p.room).settings;
    let answer = history_request::answer(
        shared.publisher.bus(),
        &p.room,
        p.since.as_ref(),
        limit,
        shared.config.keep(&settings).is_some(),
        shared.config.meta_ttl(),
        shared.config.bus_timeout(),
    )
    .await;
    match answer {
        Ok(bytes) => {
            let mut v: Value = serde_json::from_slice(&bytes).map_err(|_| unavailable())?;
            if let Some(map) = v.as_object_mut() {
                map.remove("event");
            }
            Ok(v)
        }
        Err(HistoryError::Bus) => Err(unavailable()),
        Err(HistoryError::BeyondTop) => Err(ApiError::bad(
            "since: offset beyond the room's last offset in that epoch",
        )),
    }
}
