// @ringcast/client: a WebSocket client for ringcast that reconnects, resumes and refreshes its
// token by itself. No dependencies: it takes the WebSocket constructor from the caller or from
// the global (browsers, Node 22 and later).

export { RingcastClient, RingcastError } from './client.js';
export { closePolicy, reconnectDelay, CloseCode, POLICY_MIN_DELAY_MS, RESTART_JITTER_MS } from './backoff.js';
