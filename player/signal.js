// WHIP/WHEP HTTP signalling shared by whep.js and whip.js (RFC 9725). No dependencies.

/** Parse an HTTP Link header (RFC 8288 §3) into [{url, params: {rel, ...}}], in order. */
export function parseLinkHeader(value) {
  const links = [];
  if (!value) return links;
  let pos = 0;
  const skip = () => {
    while (pos < value.length && " \t".includes(value[pos])) pos++;
  };
  while (pos < value.length) {
    skip();
    if (value[pos] === ",") { pos++; continue; }
    if (value[pos] !== "<") throw new SyntaxError(`Link: expected '<' at ${pos}`);
    const end = value.indexOf(">", pos);
    if (end < 0) throw new SyntaxError("Link: unterminated '<'");
    const link = { url: value.slice(pos + 1, end), params: {} };
    pos = end + 1;
    for (;;) {
      skip();
      if (pos >= value.length || value[pos] === ",") break;
      if (value[pos] !== ";") throw new SyntaxError(`Link: expected ';' at ${pos}`);
      pos++;
      skip();
      const name = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/.exec(value.slice(pos));
      if (!name) throw new SyntaxError(`Link: expected a parameter at ${pos}`);
      pos += name[0].length;
      skip();
      let param = "";
      if (value[pos] === "=") {
        pos++;
        skip();
        if (value[pos] === '"') {
          pos++;
          while (pos < value.length && value[pos] !== '"') {
            if (value[pos] === "\\") pos++;
            param += value[pos++] ?? "";
          }
          if (value[pos] !== '"') throw new SyntaxError("Link: unterminated quoted string");
          pos++;
        } else {
          const token = /^[^\s;,]*/.exec(value.slice(pos))[0];
          param = token;
          pos += token.length;
        }
      }
      const key = name[0].toLowerCase();
      if (!(key in link.params)) link.params[key] = param;
    }
    links.push(link);
  }
  return links;
}

/** RTCIceServer entries from rel="ice-server" links (RFC 9725 §4.6). */
export function iceServersFromLinks(links) {
  return links
    .filter((l) => (l.params.rel || "").split(/\s+/).includes("ice-server"))
    .map((l) => {
      const server = { urls: l.url };
      if (l.params.username !== undefined) server.username = l.params.username;
      if (l.params.credential !== undefined) server.credential = l.params.credential;
      return server;
    });
}

/** The URL of the first link with relation `rel`, resolved against `base`, or null. */
export function linkFor(links, rel, base) {
  const link = links.find((l) => (l.params.rel || "").split(/\s+/).includes(rel));
  return link ? new URL(link.url, base).href : null;
}

/**
 * Reconnect delay in ms for attempt 0, 1, 2, ...: exponential from `base`, capped at `max`,
 * with "equal jitter" (half fixed, half random) so that many clients do not retry in step.
 */
export function backoffDelay(attempt, { base = 500, max = 15000, random = Math.random } = {}) {
  const ceiling = Math.min(max, base * 2 ** Math.max(0, attempt));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** Milliseconds to wait from a Retry-After header (delta-seconds or HTTP-date), or null. */
export function retryAfterMs(value, now = Date.now()) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, when - now);
}

/**
 * A trickle ICE SDP fragment (RFC 8840 §4.4) for local candidates: ufrag/pwd of the
 * offer, then for each media section its mid and candidates, "a=end-of-candidates" when done.
 */
export function candidateFragment(localSdp, candidates, done = false) {
  const ufrag = /^a=ice-ufrag:(.*)$/m.exec(localSdp)?.[1]?.trim();
  const pwd = /^a=ice-pwd:(.*)$/m.exec(localSdp)?.[1]?.trim();
  const lines = [];
  if (ufrag) lines.push(`a=ice-ufrag:${ufrag}`);
  if (pwd) lines.push(`a=ice-pwd:${pwd}`);
  const byMid = new Map();
  for (const c of candidates) {
    const mid = c.sdpMid ?? "0";
    if (!byMid.has(mid)) byMid.set(mid, []);
    if (c.candidate) byMid.get(mid).push(c.candidate);
  }
  if (byMid.size === 0 && done) byMid.set(firstMid(localSdp), []);
  for (const [mid, list] of byMid) {
    lines.push("m=audio 9 RTP/AVP 0", `a=mid:${mid}`);
    for (const c of list) lines.push(`a=${c.replace(/^a=/, "")}`);
    if (done) lines.push("a=end-of-candidates");
  }
  return lines.join("\r\n") + "\r\n";
}

function firstMid(sdp) {
  return /^a=mid:(.*)$/m.exec(sdp)?.[1]?.trim() ?? "0";
}

/** An Error carrying the HTTP status and the server's problem detail (RFC 9457). */
export class HttpError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "HttpError";
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/** Throw an HttpError for a non-2xx response, with the problem+json detail when present. */
export async function checkResponse(response) {
  if (response.ok) return response;
  let detail = "";
  try {
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) {
      const body = await response.json();
      detail = body.detail || body.title || "";
    } else {
      detail = (await response.text()).slice(0, 300);
    }
  } catch {
    detail = "";
  }
  throw new HttpError(response.status, detail, retryAfterMs(response.headers.get("retry-after")));
}

/** Resolve when ICE gathering completes or after `timeoutMs` (a partial offer still works). */
export function waitForGathering(pc, timeoutMs = 1000, timers = globalThis) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      timers.clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = timers.setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Headers for a request, with a bearer token when one is given (RFC 9725 §4.5). */
export function authHeaders(token, extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

/** One-shot timers that can be cancelled one by one or all at once (injectable for tests). */
export class Timers {
  constructor(setTimeoutFn = globalThis.setTimeout, clearTimeoutFn = globalThis.clearTimeout) {
    this._set = setTimeoutFn;
    this._clear = clearTimeoutFn;
    this._live = new Set();
  }

  /** Run `fn` after `ms`; returns a handle for cancel(). */
  start(fn, ms) {
    const handle = this._set(() => {
      this._live.delete(handle);
      fn();
    }, ms);
    this._live.add(handle);
    return handle;
  }

  cancel(handle) {
    if (handle == null) return;
    this._live.delete(handle);
    this._clear(handle);
  }

  cancelAll() {
    for (const handle of this._live) this._clear(handle);
    this._live.clear();
  }
}
