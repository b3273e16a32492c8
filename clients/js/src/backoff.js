// What the client does after a close, by close code, and how long it waits: exponential backoff
// with full jitter (a random delay between 0 and the current cap), so a node that closes many
// clients at once does not get them all back in the same instant.

/** The close codes the server uses (see the server README, "Close codes"). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  TOKEN_EXPIRED: 4001,
});

/** Least wait after 1008 (sustained flooding): coming back at once would flood again. */
export const POLICY_MIN_DELAY_MS = 10_000;
/** Most jitter after 1012: the node is draining and another one is ready now. */
export const RESTART_JITTER_MS = 500;

/**
 * What to do after the connection closed with `code`.
 * @param {number} code
 * @returns {{reconnect: boolean, kind: string, surface: boolean, newToken: boolean}}
 *   `kind` picks the delay (`backoff`, `policy`, `restart`, `token`, `none`); `surface` says the
 *   app should hear about it as an error; `newToken` that a fresh token must be fetched first.
 */
export function closePolicy(code) {
  switch (code) {
    case CloseCode.NORMAL:
      return { reconnect: false, kind: 'none', surface: false, newToken: false };
    case CloseCode.POLICY:
      return { reconnect: true, kind: 'policy', surface: true, newToken: false };
    case CloseCode.TOO_BIG:
      return { reconnect: true, kind: 'backoff', surface: true, newToken: false };
    case CloseCode.RESTART:
      return { reconnect: true, kind: 'restart', surface: false, newToken: false };
    case CloseCode.TOKEN_EXPIRED:
      return { reconnect: true, kind: 'token', surface: false, newToken: true };
    default:
      if (code >= 4000 && code <= 4999) {
        // The server API's `disconnect`: the operator wants this client gone.
        return { reconnect: false, kind: 'none', surface: true, newToken: false };
      }
      // 1001, 1006, 1011, 1013 and anything unexpected (1002, 1003, 1007, 1015, …).
      return { reconnect: true, kind: 'backoff', surface: false, newToken: false };
  }
}

/**
 * Milliseconds to wait before reconnect attempt number `attempt` (0 for the first after a
 * working connection) for a close of the given `kind`.
 * @param {string} kind from {@link closePolicy}
 * @param {number} attempt
 * @param {{initialMs: number, maxMs: number}} options
 * @param {() => number} random a number in [0, 1)
 */
export function reconnectDelay(kind, attempt, options, random) {
  const cap = Math.min(options.maxMs, options.initialMs * 2 ** Math.min(attempt, 30));
  const jitter = Math.floor(random() * cap);
  switch (kind) {
    case 'restart':
      // At once, spread over at most half a second; later attempts back off as usual.
      return attempt === 0 ? Math.floor(random() * RESTART_JITTER_MS) : jitter;
    case 'token':
      // A fresh token is fetched first; a first retry needs no wait.
      return attempt === 0 ? 0 : jitter;
    case 'policy':
      return POLICY_MIN_DELAY_MS + jitter;
    default:
      return jitter;
  }
}
