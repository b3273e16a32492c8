//! The attacks and accidents we survive, one module per area, each run against real servers:
//! release-shaped node and gateway processes or the same `run` on port 0, a real `redis-server`.
//!
//! Every test here was first seen failing against the code before its fix. Each checks what the
//! attacker or the unlucky client sees (HTTP status, close code, error event) and that an
//! ordinary client on the same servers keeps being served.
//!
//! The modules here hold the attacks best shown against whole servers. The rest of the list, and
//! where each one's test lives (each was seen failing before its fix):
//!
//! | attack or accident | what the attacker or victim now sees | test |
//! |---|---|---|
//! | a shared Redis with 300 000 unrelated keys | every node stays on the ring | `membership.rs`: `a_shared_redis_full_of_other_keys_keeps_every_registered_node` |
//! | one byte of the HTTP/2 preface, then silence | no CPU spent, closed at the handshake timeout | `edge`: `a_first_byte_of_the_http2_preface_costs_no_wakeups_while_it_waits` |
//! | a token with `exp` = 10^19 | 401 `invalid_token`, no ghost connection | `auth`: `a_token_with_a_huge_exp_is_refused_by_the_gateway_and_the_node` |
//! | a session that panics | 1011 after its queued frames, gone from `/stats` and fan-out | node `session/guard.rs`: `a_panicking_session_leaves_the_hub_and_does_not_hold_up_shutdown` |
//! | a link without the secret, from off the host | 401 / 403, no link | node `tests/link.rs`: `without_a_secret_only_loopback_peers_get_a_link` |
//! | a link flooding PINGs and never reading | the node stops reading it and closes it | `links`: `a_ping_flood_whose_pongs_are_never_read_stops_being_read_and_is_closed` |
//! | 20 000 OPENs on links | each counts against `--max-connections`: 503 past it | `links`: `opens_past_the_connection_limit_are_refused_with_a_503_across_links` |
//! | a refresh to a token without a joined room | `room_revoked`, no more of its traffic | node `tests/auth.rs`: `a_refresh_revokes_rooms_and_chat_the_new_token_does_not_allow` |
//! | a node at its connection limit | 503 `node_full`, next replica, node stays healthy | `links.rs`: `a_full_node_sends_its_clients_to_the_next_replica_and_stays_healthy` |
//! | a frozen node when a new link is needed | failover within `--connect-timeout-ms` | `links.rs`: `a_new_link_to_a_frozen_node_fails_over_within_the_connect_timeout` |
//! | a list-valued `aud` | accepted by gateway and node | `auth`: `a_list_audience_is_accepted_by_the_gateway_and_the_node` |
//! | a drain or 1009 while a write is stuck | whole frames, then the close frame | node `tests/lifecycle.rs`: `a_drain_during_a_stalled_write_ends_with_1012_after_whole_frames`, `a_slow_reader_at_shutdown_still_gets_its_1012_after_the_frames_written` |
//! | a burst of slow consumers | logged once, after the hub lock | node `hub.rs`: `slow_consumers_are_logged_after_the_hub_lock_is_released` |
//! | a 16 KiB head through the gateway | the node accepts what the gateway accepted | `edge`: `a_head_the_gateway_accepts_is_one_its_node_accepts` |
//! | node ids churning through the registry | their metric series leave with them | `membership.rs`: `the_metrics_of_a_node_that_left_go_with_it` |
//! | a join while Redis resubscribes | acked only once its subscription is live; `/healthz` 503 until then | node `tests/redis_failures.rs`: `a_join_while_redis_resubscribes_is_acknowledged_only_once_the_room_is_followed_again` |
//! | a WebSocket server that is not a node | reached with one connection per client | `links.rs`: `a_websocket_server_that_closes_link_requests_is_reached_with_a_connection_per_client` |
//! | hostile bytes to every decoder | no panic, no allocation past its bound | `protocol/tests/decode_bounds.rs`, node `link/frame.rs` and `head.rs`, gateway `upstream.rs` (proptest) |

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod edge;
mod links;
