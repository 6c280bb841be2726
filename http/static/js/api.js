// Calls to the API, same origin. The credential (a JWT or an API key) lives in
// sessionStorage and travels in a header, never in a URL: event streams are read with
// fetch() too, so they can send it (and Last-Event-ID) as headers.

const STORE = "threadlog.credential";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export function credential() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE) || "null");
  } catch {
    return null;
  }
}

export function setCredential(value) {
  if (value) sessionStorage.setItem(STORE, JSON.stringify(value));
  else sessionStorage.removeItem(STORE);
}

export function authHeaders() {
  const c = credential();
  if (!c) return {};
  return c.kind === "key" ? { "X-API-Key": c.value } : { Authorization: `Bearer ${c.value}` };
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const code = (body && body.error) || response.statusText || "error";
  const message = (body && body.message) || `${response.status} ${response.statusText}`;
  return new ApiError(response.status, code, message, body && body.details);
}

/** fetch() with the credential; JSON in and out; throws ApiError for a non-2xx answer. */
export async function api(path, { method = "GET", body, headers = {}, raw = false, signal } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "the server cannot be reached");
  }
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && !path.startsWith("/v1/users/login")) onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Follows a Server-Sent Events route with fetch(). Calls onEvent({id, event, data}) for
 * each event in order and remembers the last id; when the connection drops it calls
 * onState("reconnecting"), waits, and reconnects with `Last-Event-ID: <last id>`, so no
 * event is missed and none comes twice. onState("live") once connected.
 * Returns {close()}.
 */
export function followEvents(path, { after = null, onEvent, onState = () => {}, onError = () => {} }) {
  let lastId = after;
  let closed = false;
  let controller = null;
  let delay = 250;

  async function connect() {
    while (!closed) {
      controller = new AbortController();
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastId !== null && lastId !== undefined) headers["Last-Event-ID"] = String(lastId);
      try {
        const response = await fetch(path, { headers, signal: controller.signal });
        if (!response.ok) {
          const error = await failure(response);
          if (response.status === 401) onUnauthorized(error);
          if (response.status < 500) {
            onError(error);
            return;
          }
          throw error;
        }
        onState("live");
        delay = 250;
        await read(response.body);
        if (closed) return;
      } catch (error) {
        if (closed) return;
        if (error && error.name === "AbortError") return;
      }
      onState("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 3000);
    }
  }

  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        dispatch(block);
      }
    }
  }

  function dispatch(block) {
    let id = null;
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "id") id = value;
      else if (name === "event") event = value;
      else if (name === "data") data.push(value);
    }
    if (!data.length) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      parsed = data.join("\n");
    }
    if (event === "error") {
      // The server ended the stream (it will be reconnected from the last id).
      return;
    }
    onEvent({ id: id === null ? null : Number(id), event, data: parsed });
    if (id !== null) lastId = Number(id);
  }

  connect();
  return {
    close() {
      closed = true;
      if (controller) controller.abort();
    },
    get lastId() {
      return lastId;
    },
  };
}

/** Downloads a response body as a file (the credential stays in the request header). */
export async function download(path, filename, accept) {
  const response = await api(path, { headers: { Accept: accept }, raw: true });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return blob.size;
}
