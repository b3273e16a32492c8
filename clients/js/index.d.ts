// Type declarations for @ringcast/client (hand-written; the package is plain JavaScript).

/** A WebSocket constructor: the browser's, Node 22's global, or the `ws` package's. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** The gateway's (or a node's) WebSocket URL, e.g. `wss://chat.example.com/ws`. */
  url: string;
  /** Sent as `?client_id=`; with a token the server takes the token's `sub` instead. */
  clientId?: string;
  /** A fixed JWT, offered as the `bearer.<jwt>` subprotocol. Cannot be renewed. */
  token?: string;
  /** Called before every connect and before the token expires (in-band `refresh`). */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default `globalThis.WebSocket`. On Node 20: `(await import('ws')).default`. */
  WebSocket?: WebSocketConstructor;
  /** Exponential backoff with full jitter: waits up to `initialMs * 2^attempt`, capped at `maxMs`. Default 500 / 30 000. */
  reconnect?: { initialMs?: number; maxMs?: number };
  /** Most room messages waiting for their ack plus frames waiting for a connection (default 1000). */
  maxQueue?: number;
  /** Refresh the token this long before it expires (default 30 000; half the time left for shorter tokens). `null`: never. */
  refreshMarginMs?: number | null;
  /** Send a ping this often and give up on a connection silent for twice as long (default 20 000; 0: off). */
  pingIntervalMs?: number;
  /** Give up on a connection with no `welcome` after this long (default 10 000). */
  connectTimeoutMs?: number;
  /** Wait before resending a message refused with `bus_unavailable` or `rate_limited` (default 1000). */
  retryDelayMs?: number;
  /** The backoff starts over once a connection has held this long (default 5000). */
  stableAfterMs?: number;
  /** A source of numbers in [0, 1) for jitter and message ids (default `Math.random`). */
  random?: () => number;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StateEvent {
  state: ConnectionState;
  /** The close code that led here (`reconnecting`, `closed`). */
  code?: number;
  reason?: string;
  /** How long until the next attempt (`reconnecting`). */
  delayMs?: number;
  attempt?: number;
  /** The node now serving this client (`open`). */
  node?: string;
}
export interface WelcomeEvent { clientId: string; node: string; expiresAt: number | null }
export interface JoinedEvent { room: string; recovered: boolean; offset?: number; epoch?: string }
export interface RoomMessage {
  room: string;
  from: string;
  content: unknown;
  id?: string;
  offset?: number;
  epoch?: string;
}
export interface DirectMessage { from: string; content: unknown }
export interface ChatMessage { from: string; content: unknown }
export interface MemberEvent { room: string; userId: string }
export interface MembersEvent { room: string; members: string[] }
export interface PresenceAnswer { room: string; members: string[]; count: number; truncated: boolean }
export interface PresenceStats { room: string; clients: number; connections: number }
export interface AckEvent { id: string; room: string; offset?: number; epoch?: string }
export interface HistoryResetEvent { room: string; epoch: string }
export interface RoomRevokedEvent { room: string; reason: string }
export interface TokenRefreshedEvent { expiresAt: number }
export interface DisconnectedEvent { code: number; reason: string; willReconnect: boolean }
export interface ErrorEvent {
  code: string;
  message?: string;
  id?: string;
  /** The room a refused join, leave, history, presence or presence_stats request was about. */
  room?: string;
  closeCode?: number;
}
export interface UserEvent { userId: string }

export interface RingcastEvents {
  state: StateEvent;
  welcome: WelcomeEvent;
  /** Each acknowledged join or rejoin. */
  joined: JoinedEvent;
  /** A rejoin whose `since` history no longer covers: reload the room from your own store. */
  recovery_failed: JoinedEvent;
  /** The room's stream broke on the server (Redis lost its history). */
  history_reset: HistoryResetEvent;
  /** A token refresh took the room away; its unacknowledged messages are rejected. */
  room_revoked: RoomRevokedEvent;
  /** A room message, each once and in order. */
  message: RoomMessage;
  direct: DirectMessage;
  chat: ChatMessage;
  member_joined: MemberEvent;
  member_left: MemberEvent;
  /** The members of a joined room changed (or were fetched). */
  presence: MembersEvent;
  presence_stats: PresenceStats;
  ack: AckEvent;
  token_refreshed: TokenRefreshedEvent;
  disconnected: DisconnectedEvent;
  user_connected: UserEvent;
  user_disconnected: UserEvent;
  error: ErrorEvent;
  /** Any server event this client does not know. */
  event: Record<string, unknown>;
}

export class RingcastError extends Error {
  /** Stable: `queue_full`, `closed`, `token_expired`, `left_room`, `room_revoked`, `duplicate_id`, or a server error code. */
  code: string;
  id?: string;
  room?: string;
  closeCode?: number;
}

export class RingcastClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly rooms: string[];
  /** Room messages waiting for an ack plus frames waiting for a connection. */
  readonly queued: number;
  clientId: string | null;
  node: string | null;
  /** Token expiry (seconds since the Unix epoch) from `welcome` / `token_refreshed`. */
  expiresAt: number | null;
  connect(): Promise<WelcomeEvent>;
  close(): void;
  /**
   * Resolves with the first acknowledgement; rejects with the server's code when it refuses the
   * join for good (`forbidden`, `too_many_rooms`, `room_full`: the room is forgotten). A join
   * answered `bus_unavailable` is sent again every `retryDelayMs`.
   * @throws TypeError for a room name the server would refuse (also from `send` and `presence`).
   */
  join(room: string): Promise<JoinedEvent>;
  leave(room: string): void;
  /** @throws RingcastError `queue_full` */
  send(room: string, content: unknown, options?: { id?: string }): Promise<AckEvent>;
  sendDirect(target: string, content: unknown): void;
  sendChat(content: unknown): void;
  presence(room: string): Promise<PresenceAnswer>;
  members(room: string): string[] | null;
  on<K extends keyof RingcastEvents>(event: K, listener: (value: RingcastEvents[K]) => void): () => void;
  once<K extends keyof RingcastEvents>(event: K, listener: (value: RingcastEvents[K]) => void): () => void;
  off<K extends keyof RingcastEvents>(event: K, listener: (value: RingcastEvents[K]) => void): void;
}

export interface ClosePolicy {
  reconnect: boolean;
  kind: 'backoff' | 'policy' | 'restart' | 'token' | 'none';
  surface: boolean;
  newToken: boolean;
}
export function closePolicy(code: number): ClosePolicy;
export function reconnectDelay(
  kind: ClosePolicy['kind'],
  attempt: number,
  options: { initialMs: number; maxMs: number },
  random: () => number,
): number;
export const CloseCode: {
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly PROTOCOL_ERROR: 1002;
  readonly ABNORMAL: 1006;
  readonly POLICY: 1008;
  readonly TOO_BIG: 1009;
  readonly INTERNAL: 1011;
  readonly RESTART: 1012;
  readonly TRY_AGAIN_LATER: 1013;
  readonly TOKEN_EXPIRED: 4001;
};
export const POLICY_MIN_DELAY_MS: number;
export const RESTART_JITTER_MS: number;
