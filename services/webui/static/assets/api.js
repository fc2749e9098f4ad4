// The scheduler's public Connect API over fetch: unary calls as JSON POSTs,
// server streams with the Connect envelope. No private endpoints.

const SERVICE = "/baton.v1.SchedulerService/";
const TOKEN_KEY = "baton.token";

// ApiError is a Connect error: code is the Connect code name
// ("unauthenticated", "not_found", …), message the server's sentence.
export class ApiError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "ApiError";
    this.code = code;
  }
  // needsToken says whether a token (or another one) would help.
  get needsToken() {
    return this.code === "unauthenticated" || this.code === "permission_denied";
  }
}

// memoryToken holds the token when session storage is unavailable.
let memoryToken = "";
export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
  } catch {
    return memoryToken;
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage can be disabled; the token then lasts as long as the page.
  }
  memoryToken = token;
}

function headers(contentType) {
  const h = { "Content-Type": contentType };
  const token = getToken();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

// Connect maps HTTP statuses to codes when the body is not a Connect error
// (a proxy's page, say): https://connectrpc.com/docs/protocol#http-to-error-code
function codeForStatus(status) {
  switch (status) {
    case 400: return "internal";
    case 401: return "unauthenticated";
    case 403: return "permission_denied";
    case 404: return "unimplemented";
    case 429: case 502: case 503: case 504: return "unavailable";
    default: return "unknown";
  }
}

async function errorFromResponse(res) {
  let body;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (body && typeof body.code === "string") return new ApiError(body.code, body.message || "");
  return new ApiError(codeForStatus(res.status), `HTTP ${res.status} ${res.statusText}`.trim());
}

function networkError(err) {
  if (err && err.name === "AbortError") return err;
  return new ApiError("unavailable", "the scheduler cannot be reached (" + (err && err.message ? err.message : err) + ")");
}

// call makes one unary call and returns the decoded JSON answer.
export async function call(method, request, { signal } = {}) {
  let res;
  try {
    res = await fetch(SERVICE + method, {
      method: "POST",
      headers: { ...headers("application/json"), "Connect-Protocol-Version": "1" },
      body: JSON.stringify(request || {}),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    throw networkError(err);
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res.json();
}

const FLAG_COMPRESSED = 0x01;
const FLAG_END_STREAM = 0x02;

function envelope(message) {
  const payload = new TextEncoder().encode(JSON.stringify(message));
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(1, payload.length, false);
  out.set(payload, 5);
  return out;
}

// stream makes a server-streaming call and calls onMessage with each
// decoded message, in order. It resolves when the server ends the stream
// cleanly and rejects with an ApiError when the end-of-stream message
// carries one (or the connection breaks).
export async function stream(method, request, onMessage, { signal } = {}) {
  let res;
  try {
    res = await fetch(SERVICE + method, {
      method: "POST",
      headers: headers("application/connect+json"),
      body: envelope(request || {}),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    throw networkError(err);
  }
  if (!res.ok) throw await errorFromResponse(res);
  if (!res.body) throw new ApiError("unimplemented", "this browser cannot read streamed responses");

  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = new Uint8Array(0);
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      throw networkError(err);
    }
    if (chunk.done) break;
    buf = concat(buf, chunk.value);
    // Every complete envelope in the buffer: flags (1 byte), length
    // (4 bytes, big-endian), then the message.
    while (buf.length >= 5) {
      const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      const flags = view.getUint8(0);
      const len = view.getUint32(1, false);
      if (buf.length < 5 + len) break;
      const text = decoder.decode(buf.subarray(5, 5 + len));
      buf = buf.subarray(5 + len);
      if (flags & FLAG_COMPRESSED) {
        throw new ApiError("internal", "the server sent a compressed message, which was not asked for");
      }
      const msg = text ? JSON.parse(text) : {};
      if (flags & FLAG_END_STREAM) {
        if (msg.error) throw new ApiError(msg.error.code || "unknown", msg.error.message || "");
        return;
      }
      onMessage(msg);
    }
  }
  // A Connect stream always ends with an end-of-stream message; without
  // one the connection broke midway.
  throw new ApiError("unavailable", "the output stream ended early");
}

function concat(a, b) {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

// base64Bytes decodes a protojson bytes field (standard or URL-safe
// base64, padding optional).
export function base64Bytes(s) {
  if (!s) return new Uint8Array(0);
  let t = s.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
  t += "===".slice((t.length + 3) % 4);
  const bin = atob(t);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
