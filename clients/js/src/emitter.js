// A small event emitter that works the same in browsers and Node (no `events` import), with
// `on` returning the function that removes the listener.

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /** Calls `listener` for every `event`; returns a function that stops it. */
  on(event, listener) {
    let set = this._listeners.get(event);
    if (!set) {
      set = new Set();
      this._listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Calls `listener` for the next `event` only. */
  once(event, listener) {
    const off = this.on(event, (value) => {
      off();
      listener(value);
    });
    return off;
  }

  /** Removes a listener added with `on`. */
  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /**
   * Calls each listener of `event` with `value`. A listener that throws does not stop the
   * others nor the client: its error is rethrown on its own, outside the client's code.
   */
  emit(event, value) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
