/**
 * WHEP client: plays one stream from a WHEP endpoint (draft-ietf-wish-whep) in the browser.
 * Dependency-free ES module; the HTTP signalling helpers live in ./signal.js.
 *
 *   import { WHEPClient } from "/player/whep.js";
 *   const client = new WHEPClient("https://host/whep/cam", { token });
 *   client.addEventListener("statechange", (e) => console.log(e.detail.state, e.detail.reason));
 *   client.addEventListener("track", () => { video.srcObject = client.stream; });
 *   await client.start();
 *   ...
 *   client.stop();
 *
 * new WHEPClient(url, options)
 *   url                   WHEP endpoint; resolved against location.href when relative.
 *   options.token         bearer token sent as "Authorization: Bearer <token>" (RFC 9725 §4.5).
 *   options.iceServers    RTCIceServer[] used until the server's Link headers name others. []
 *   options.reconnect     reconnect automatically (see below). true
 *   options.noMediaTimeoutMs  reconnect when no RTP arrives for this long. 10000
 *   options.jitterBufferTargetMs  receiver jitter buffer target; 0 = as low as possible.
 *                         Uses RTCRtpReceiver.jitterBufferTarget, else playoutDelayHint. 0
 *   options.codecs        e.g. ["VP8", "H264", "opus"]: offer only these (and RTX), in this
 *                         order of preference; kinds with none listed keep the browser's list.
 *                         null = everything the browser can receive. null
 *   options.fetch, options.RTCPeerConnection, options.MediaStream   injectable (tests).
 *   options.setTimeout, options.clearTimeout, options.random, options.now  injectable (tests).
 *   options.gatherTimeoutMs   how long to wait for ICE gathering before the POST. 500
 *   options.statsIntervalMs   media watchdog period. 1000
 *
 * Properties (read-only): state, stream (MediaStream|null), sessionUrl (string|null),
 *   layers (Layer[]), viewerCount (number|null), attempts (reconnects since media last flowed),
 *   url, layer (selected encodingId or null = automatic).
 *   state is one of "idle" | "connecting" | "waiting" (connected, no media yet) | "playing" |
 *   "reconnecting" | "stopped" | "failed".
 *   Layer = {mediaId, encodingId, bitrate, width, height, active}.
 *
 * Methods:
 *   start(): Promise<void>   connect; resolves once the first attempt is under way or settled.
 *   stop(): void             no more reconnects; DELETE the session (keepalive); close the pc.
 *   getStats(): Promise<Stats>  {width, height, fps, bitrate (bit/s, audio+video, measured
 *                            since the previous call), packetsLost, lossPct, jitterMs, rttMs,
 *                            latencyMs (estimate), codec ("VP8"...), audioPackets,
 *                            videoFramesDecoded, layer}; fields are null when unknown.
 *   selectLayer(encodingId | null): Promise<void>  layer extension; null = automatic.
 *
 * Events (event.detail):
 *   "statechange" {state, reason, delayMs?, error?}   delayMs when state is "reconnecting".
 *   "track"       {track, stream}
 *   "layers"      {layers}
 *   "viewercount" {viewerCount}
 *   "error"       {error, message}   non-fatal problems (a failed PATCH, event stream, ...).
 *
 * Reconnects (with backoffDelay(attempts), or the server's Retry-After) on: 409, 429, 503 and
 * other 5xx answers to the POST, network failures, connectionState "failed"/"closed" or
 * "disconnected" for more than 5 s, no media for noMediaTimeoutMs, a 404 on PATCH.
 * Other 4xx answers (400, 401, 403, 404...) end in state "failed" with the server's detail.
 * Every reconnect DELETEs the old session first (best effort) and POSTs a new offer: the
 * server does not support ICE restarts.
 */

import {
  HttpError,
  authHeaders,
  backoffDelay,
  candidateFragment,
  checkResponse,
  iceServersFromLinks,
  linkFor,
  parseLinkHeader,
  waitForGathering,
} from "./signal.js";

// draft-ietf-wish-whep §4.7 (protocol extensions).
export const SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events";
export const LAYER_REL = "urn:ietf:params:whep:ext:core:layer";
export const SSE_EVENTS = ["active", "inactive", "layers", "viewercount"];

const DISCONNECTED_GRACE_MS = 5000;
const SSE_RETRY_MS = 3000;
const RETRYABLE = new Set([408, 409, 425, 429]);

function detailEvent(type, detail) {
  if (typeof CustomEvent === "function") return new CustomEvent(type, { detail });
  const event = new Event(type);
  event.detail = detail;
  return event;
}

/**
 * Incremental text/event-stream parser (WHATWG HTML §9.2.6). feed() takes decoded text in any
 * chunking and calls onEvent({event, data, id}) per dispatched event.
 */
export function createEventStreamParser(onEvent) {
  let buffer = "";
  let event = "";
  let data = [];
  let id = "";
  const line = (text) => {
    if (text === "") {
      if (data.length) onEvent({ event: event || "message", data: data.join("\n"), id });
      event = "";
      data = [];
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  };
  return {
    feed(text) {
      buffer += text;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        // A lone "\r" at the end may be the first half of "\r\n": wait for more.
        if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break;
        line(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
      }
    },
  };
}

/**
 * Selectable layers from a "layers" event (draft-ietf-wish-whep, server sent events
 * extension): {"<m-line>": {active: [{id,...}], inactive: [...], layers: [{encodingId,...}]}}.
 * One entry per (media, encodingId), in the server's order (best first, by convention).
 */
export function layersFromEvent(data) {
  const layers = [];
  if (!data || typeof data !== "object") return layers;
  for (const [mediaId, info] of Object.entries(data)) {
    if (!info || typeof info !== "object") continue;
    const active = new Set((info.active || []).map((a) => String(a.id)));
    const seen = new Set();
    for (const layer of info.layers || []) {
      if (layer.encodingId === undefined || layer.encodingId === null) continue;
      const encodingId = String(layer.encodingId);
      if (seen.has(encodingId)) continue;
      seen.add(encodingId);
      layers.push({
        mediaId,
        encodingId,
        bitrate: layer.bitrate ?? null,
        width: layer.width ?? null,
        height: layer.height ?? null,
        active: active.size === 0 || active.has(encodingId),
      });
    }
  }
  return layers;
}

export class WHEPClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = new URL(url, globalThis.location?.href).href;
    this.options = {
      token: null,
      iceServers: [],
      reconnect: true,
      noMediaTimeoutMs: 10000,
      jitterBufferTargetMs: 0,
      codecs: null,
      gatherTimeoutMs: 500,
      statsIntervalMs: 1000,
      ...options,
    };
    const o = this.options;
    this._fetch = o.fetch || globalThis.fetch.bind(globalThis);
    this._PC = o.RTCPeerConnection || globalThis.RTCPeerConnection;
    this._MediaStream = o.MediaStream || globalThis.MediaStream;
    this._setTimeout = o.setTimeout || globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = o.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this._random = o.random || Math.random;
    this._now = o.now || Date.now;
    this._iceServers = o.iceServers || [];

    this.state = "idle";
    this.stream = null;
    this.sessionUrl = null;
    this.layers = [];
    this.viewerCount = null;
    this.attempts = 0;
    this.layer = null;

    this._gen = 0; // bumped per attempt; stale async work compares and bails out
    this._pc = null;
    this._etag = null;
    this._pending = []; // local candidates gathered after the offer left, before the 201
    this._sendingCandidates = false;
    this._ext = { sse: null, sseEvents: null, layer: null };
    this._sseAbort = null;
    this._timers = new Set();
    this._retryTimer = null;
    this._disconnectTimer = null;
    this._watch = null;
    this._lastSample = null;
  }

  async start() {
    if (!["idle", "stopped", "failed"].includes(this.state)) return;
    this.attempts = 0;
    await this._connect();
  }

  stop() {
    if (this.state === "stopped") return;
    this._clearRetry();
    this._teardown({ keepalive: true });
    this._gen++;
    this._setState("stopped", "stopped");
  }

  // ---- connection ----

  async _connect() {
    const gen = ++this._gen;
    this._teardown({ keepalive: false });
    this._setState("connecting", this.attempts ? "reconnecting" : "starting");
    let pc;
    try {
      pc = this._createPeerConnection(gen);
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await waitForGathering(pc, this.options.gatherTimeoutMs);
      if (gen !== this._gen) return;
    } catch (error) {
      if (gen === this._gen) this._fail(`cannot create the offer: ${error.message}`, error);
      return;
    }
    // From here on, new local candidates are trickled; those before are in the offer.
    const offerSdp = pc.localDescription.sdp;
    this._offerSent = true;

    let response;
    try {
      response = await this._fetch(this.url, {
        method: "POST",
        headers: authHeaders(this.options.token, { "Content-Type": "application/sdp" }),
        body: offerSdp,
      });
    } catch (error) {
      if (gen === this._gen) this._retry(`network error: ${error.message}`, null, error);
      return;
    }
    if (gen !== this._gen) {
      this._deleteSession(response.headers.get("location"), this.url, false);
      return;
    }
    try {
      await checkResponse(response);
    } catch (error) {
      if (gen !== this._gen) return;
      const status = error.status;
      const detail = error.detail || `HTTP ${status}`;
      if (RETRYABLE.has(status) || status >= 500) this._retry(detail, error.retryAfter, error);
      else this._fail(detail, error);
      return;
    }

    const location = response.headers.get("location");
    if (!location) {
      this._fail("the server did not return a session URL (Location)");
      return;
    }
    this.sessionUrl = new URL(location, this.url).href;
    this._etag = response.headers.get("etag");
    this._applyLinks(pc, response.headers.get("link"));

    try {
      const answer = await response.text();
      if (gen !== this._gen) return;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (error) {
      if (gen === this._gen) this._retry(`cannot apply the answer: ${error.message}`, null, error);
      return;
    }
    if (gen !== this._gen) return;
    this._flushCandidates(gen);
    this._startWatchdog(gen);
    if (this._ext.sse) this._openEvents(gen);
  }

  _createPeerConnection(gen) {
    const pc = new this._PC({ iceServers: this._iceServers, bundlePolicy: "max-bundle" });
    this._pc = pc;
    this._offerSent = false;
    this._pending = [];
    this.stream = typeof this._MediaStream === "function" ? new this._MediaStream() : null;
    // Audio first, video second: mids "0" and "1" then equal the m-line indices that the
    // layers event uses as keys.
    for (const kind of ["audio", "video"]) {
      this._preferCodecs(pc.addTransceiver(kind, { direction: "recvonly" }), kind);
    }

    pc.addEventListener("track", (event) => {
      if (gen !== this._gen) return;
      this._tuneReceiver(event.receiver);
      this._watchDtls(gen, event.receiver?.transport);
      if (this.stream) {
        for (const old of this.stream.getTracks()) {
          if (old.kind === event.track.kind) this.stream.removeTrack(old);
        }
        this.stream.addTrack(event.track);
      }
      this._emit("track", { track: event.track, stream: this.stream });
    });
    pc.addEventListener("icecandidate", (event) => {
      if (gen !== this._gen || !this._offerSent) return;
      this._pending.push(event.candidate || { candidate: "", done: true });
      if (this.sessionUrl) this._flushCandidates(gen);
    });
    pc.addEventListener("connectionstatechange", () => this._onConnectionState(gen, pc));
    return pc;
  }

  /** Offer only the codecs named in options.codecs (plus their RTX), when any are of `kind`. */
  _preferCodecs(transceiver, kind) {
    const wanted = this.options.codecs;
    const caps = globalThis.RTCRtpReceiver?.getCapabilities?.(kind);
    if (!wanted?.length || !caps || !transceiver?.setCodecPreferences) return;
    const names = wanted.map((c) => String(c).trim().toLowerCase().replace(/^(audio|video)\//, ""));
    const name = (c) => c.mimeType.toLowerCase().split("/")[1];
    const chosen = names.flatMap((n) => caps.codecs.filter((c) => name(c) === n));
    if (!chosen.length) return;
    try {
      transceiver.setCodecPreferences([...chosen, ...caps.codecs.filter((c) => name(c) === "rtx")]);
    } catch (error) {
      this._emit("error", { error, message: `cannot restrict the ${kind} codecs: ${error.message}` });
    }
  }

  /**
   * The server ending the session (DELETE, expiry, shutdown) closes DTLS with close_notify
   * (RFC 5246 §7.2.1): reconnect at once instead of waiting for ICE consent to expire.
   */
  _watchDtls(gen, transport) {
    if (!transport?.addEventListener || this._watchedDtls?.has(transport)) return;
    (this._watchedDtls ??= new WeakSet()).add(transport);
    transport.addEventListener("statechange", () => {
      if (gen !== this._gen) return;
      if (transport.state === "closed" || transport.state === "failed") {
        this.sessionUrl = null; // gone already: a DELETE would only earn a 404
        this._retry("the server ended the session");
      }
    });
  }

  _tuneReceiver(receiver) {
    if (!receiver) return;
    const ms = Math.max(0, Number(this.options.jitterBufferTargetMs) || 0);
    try {
      if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = ms;
      else receiver.playoutDelayHint = ms / 1000;
    } catch {
      // Out-of-range values throw; the browser default is a fine fallback.
    }
  }

  _onConnectionState(gen, pc) {
    if (gen !== this._gen) return;
    const s = pc.connectionState;
    if (s !== "disconnected" && this._disconnectTimer) {
      this._clearTimer(this._disconnectTimer);
      this._disconnectTimer = null;
    }
    if (s === "connected") {
      if (this.state === "connecting") this._setState("waiting", "connected");
    } else if (s === "disconnected") {
      if (!this._disconnectTimer) {
        this._disconnectTimer = this._timer(() => {
          this._disconnectTimer = null;
          if (gen === this._gen) this._retry("connection lost");
        }, DISCONNECTED_GRACE_MS);
      }
    } else if (s === "failed" || s === "closed") {
      this._retry(s === "failed" ? "connection failed" : "connection closed by the server");
    }
  }

  _applyLinks(pc, header) {
    let links = [];
    try {
      links = parseLinkHeader(header);
    } catch (error) {
      this._emit("error", { error, message: `ignoring a malformed Link header: ${error.message}` });
    }
    const servers = iceServersFromLinks(links);
    if (servers.length) {
      // RFC 9725 §4.6: servers from the Link header apply to candidates gathered later
      // and to the next attempts.
      this._iceServers = servers;
      try {
        pc.setConfiguration({ ...(pc.getConfiguration?.() || {}), iceServers: servers });
      } catch (error) {
        this._emit("error", { error, message: `cannot use the ICE servers: ${error.message}` });
      }
    }
    this._ext.sse = linkFor(links, SSE_REL, this.url);
    const sseLink = links.find((l) => (l.params.rel || "").split(/\s+/).includes(SSE_REL));
    this._ext.sseEvents = sseLink?.params.events
      ? sseLink.params.events.split(",").map((e) => e.trim()).filter(Boolean)
      : null;
    this._ext.layer = linkFor(links, LAYER_REL, this.url);
  }

  // ---- trickle ICE (RFC 8840, RFC 9725 §4.3) ----

  async _flushCandidates(gen) {
    if (this._sendingCandidates || !this._pending.length || !this.sessionUrl) return;
    this._sendingCandidates = true;
    try {
      while (this._pending.length && gen === this._gen) {
        const batch = this._pending.splice(0);
        const done = batch.some((c) => c.done);
        const candidates = batch.filter((c) => !c.done && c.candidate);
        if (!candidates.length && !done) continue;
        const body = candidateFragment(this._pc.localDescription.sdp, candidates, done);
        const headers = authHeaders(this.options.token, {
          "Content-Type": "application/trickle-ice-sdpfrag",
        });
        if (this._etag) headers["If-Match"] = this._etag;
        let response;
        try {
          response = await this._fetch(this.sessionUrl, { method: "PATCH", headers, body });
        } catch (error) {
          this._emit("error", { error, message: `trickle ICE failed: ${error.message}` });
          continue;
        }
        if (gen !== this._gen) return;
        if (response.status === 404) {
          this._retry("the session ended on the server");
          return;
        }
        if (!response.ok) {
          const error = await checkResponse(response).catch((e) => e);
          this._emit("error", { error, message: `trickle ICE refused: ${error.message}` });
        }
      }
    } finally {
      this._sendingCandidates = false;
    }
  }

  // ---- media watchdog ----

  _startWatchdog(gen) {
    let lastBytes = -1;
    let lastChange = this._now();
    let growing = 0;
    let ticks = 0;
    const tick = async () => {
      if (gen !== this._gen) return;
      try {
        const sample = await this._sample();
        if (gen !== this._gen) return;
        const now = this._now();
        if (sample.bytes > lastBytes && sample.bytes > 0) {
          lastBytes = sample.bytes;
          lastChange = now;
          growing++;
          // Two samples in a row: media flows (one burst, e.g. a cached keyframe, is not).
          if (growing >= 2 && this.state !== "playing") {
            this.attempts = 0;
            this._setState("playing", "media flowing");
          }
          if (this.state === "playing" && !this._ext.sse && ticks++ % 5 === 0) {
            this._pollViewerCount(gen);
          }
        } else {
          growing = 0;
          if (now - lastChange >= this.options.noMediaTimeoutMs) {
            this._retry(this.state === "playing" ? "media stopped" : "no media");
            return;
          }
        }
      } catch (error) {
        this._emit("error", { error, message: `getStats failed: ${error.message}` });
      }
      if (gen === this._gen) this._watch = this._timer(tick, this.options.statsIntervalMs);
    };
    this._watch = this._timer(tick, Math.min(250, this.options.statsIntervalMs));
  }

  /**
   * Without the server-sent events extension, the viewer count comes from a broadcast
   * server's `GET /api/streams/{stream}` (next to the WHEP URL); a server without it is
   * asked once.
   */
  async _pollViewerCount(gen) {
    if (this._noStreamApi) return;
    const whep = new URL(this.url, globalThis.location?.href);
    const name = whep.pathname.split("/").pop();
    try {
      const response = await this._fetch(new URL(`/api/streams/${name}`, whep).href, {
        headers: authHeaders(this.options.token),
      });
      if (!response.ok) {
        this._noStreamApi = true;
        return;
      }
      const body = await response.json();
      if (gen !== this._gen || typeof body?.viewers !== "number") return;
      if (body.viewers !== this.viewerCount) {
        this.viewerCount = body.viewers;
        this._emit("viewercount", { viewerCount: body.viewers });
      }
    } catch {
      this._noStreamApi = true;
    }
  }

  /** Raw totals from the pc's stats (RTCStatsReport, W3C webrtc-stats). */
  async _sample() {
    const pc = this._pc;
    const out = {
      timestamp: this._now(),
      bytes: 0,
      video: null,
      audio: null,
      codecs: new Map(),
      pair: null,
      selectedPairId: null,
      remoteRtt: null,
    };
    if (!pc) return out;
    const report = await pc.getStats();
    const pairs = new Map();
    report.forEach((s) => {
      if (s.type === "inbound-rtp") {
        out.bytes += s.bytesReceived || 0;
        const kind = s.kind || s.mediaType;
        if (kind === "video") out.video = s;
        else if (kind === "audio") out.audio = s;
      } else if (s.type === "codec") out.codecs.set(s.id, s);
      else if (s.type === "candidate-pair") pairs.set(s.id, s);
      else if (s.type === "transport" && s.selectedCandidatePairId) {
        out.selectedPairId = s.selectedCandidatePairId;
      } else if (
        (s.type === "remote-outbound-rtp" || s.type === "remote-inbound-rtp") &&
        typeof s.roundTripTime === "number"
      ) {
        out.remoteRtt = s.roundTripTime;
      }
    });
    out.pair =
      pairs.get(out.selectedPairId) ||
      [...pairs.values()].find((p) => p.nominated && p.state === "succeeded") ||
      null;
    return out;
  }

  async getStats() {
    const s = await this._sample();
    const v = s.video;
    const a = s.audio;
    const prev = this._lastSample;
    this._lastSample = { timestamp: s.timestamp, bytes: s.bytes, v, a };

    let bitrate = null;
    if (prev && s.timestamp > prev.timestamp && s.bytes >= prev.bytes) {
      bitrate = Math.round(((s.bytes - prev.bytes) * 8 * 1000) / (s.timestamp - prev.timestamp));
    }
    const lost = (v?.packetsLost || 0) + (a?.packetsLost || 0);
    const received = (v?.packetsReceived || 0) + (a?.packetsReceived || 0);
    let lossPct = null;
    if (prev) {
      const dLost = lost - ((prev.v?.packetsLost || 0) + (prev.a?.packetsLost || 0));
      const dRecv = received - ((prev.v?.packetsReceived || 0) + (prev.a?.packetsReceived || 0));
      if (dLost + dRecv > 0) lossPct = Math.max(0, (100 * dLost) / (dLost + dRecv));
    }
    if (lossPct === null && lost + received > 0) lossPct = (100 * Math.max(0, lost)) / (lost + received);

    const rtt = s.pair?.currentRoundTripTime ?? s.remoteRtt;
    const rttMs = typeof rtt === "number" ? rtt * 1000 : null;
    const jb = v && v.jitterBufferEmittedCount ? v : a;
    let latencyMs = null;
    if (jb?.jitterBufferEmittedCount) {
      latencyMs = (1000 * jb.jitterBufferDelay) / jb.jitterBufferEmittedCount + (rttMs ?? 0) / 2;
    }
    const jitter = v?.jitter ?? a?.jitter;
    const codec = v?.codecId ? s.codecs.get(v.codecId)?.mimeType : null;
    const fps =
      v?.framesPerSecond ??
      (prev?.v && v && s.timestamp > prev.timestamp
        ? ((v.framesDecoded - prev.v.framesDecoded) * 1000) / (s.timestamp - prev.timestamp)
        : null);
    return {
      width: v?.frameWidth ?? null,
      height: v?.frameHeight ?? null,
      fps: fps ?? null,
      bitrate,
      packetsLost: lost,
      lossPct,
      jitterMs: typeof jitter === "number" ? jitter * 1000 : null,
      rttMs,
      latencyMs,
      codec: codec ? codec.replace(/^[a-z]+\//i, "") : null,
      audioPackets: a?.packetsReceived ?? 0,
      videoFramesDecoded: v?.framesDecoded ?? 0,
      layer: this.layer,
    };
  }

  // ---- extensions (draft-ietf-wish-whep: server sent events, video layer selection) ----

  async _openEvents(gen) {
    const wanted = this._ext.sseEvents
      ? SSE_EVENTS.filter((e) => this._ext.sseEvents.includes(e))
      : SSE_EVENTS;
    let streamUrl;
    try {
      const response = await this._fetch(this._ext.sse, {
        method: "POST",
        headers: authHeaders(this.options.token, { "Content-Type": "application/json" }),
        body: JSON.stringify(wanted),
      });
      await checkResponse(response);
      const location = response.headers.get("location");
      if (!location) throw new Error("no Location for the event stream");
      streamUrl = new URL(location, this._ext.sse).href;
    } catch (error) {
      if (gen === this._gen) this._emit("error", { error, message: `event stream: ${error.message}` });
      return;
    }
    while (gen === this._gen) {
      const ended = await this._readEvents(gen, streamUrl);
      if (ended === "gone" || gen !== this._gen) return;
      await new Promise((resolve) => this._timer(resolve, SSE_RETRY_MS));
    }
  }

  /** One long pull of the event stream; "gone" when the server says it no longer exists. */
  async _readEvents(gen, streamUrl) {
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    this._sseAbort = abort;
    try {
      const response = await this._fetch(streamUrl, {
        headers: authHeaders(this.options.token, { Accept: "text/event-stream" }),
        signal: abort?.signal,
        cache: "no-store",
      });
      if (response.status === 404) return "gone";
      await checkResponse(response);
      const parser = createEventStreamParser((e) => gen === this._gen && this._onServerEvent(e));
      if (!response.body?.getReader) {
        parser.feed(await response.text());
        return "ended";
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || gen !== this._gen) break;
        parser.feed(decoder.decode(value, { stream: true }));
      }
      return "ended";
    } catch (error) {
      if (gen === this._gen && error?.name !== "AbortError") {
        this._emit("error", { error, message: `event stream: ${error.message}` });
      }
      return gen === this._gen ? "ended" : "gone";
    } finally {
      if (this._sseAbort === abort) this._sseAbort = null;
    }
  }

  _onServerEvent({ event, data }) {
    let body = null;
    try {
      body = data ? JSON.parse(data) : null;
    } catch {
      return;
    }
    if (event === "layers") {
      this.layers = layersFromEvent(body);
      this._emit("layers", { layers: this.layers });
    } else if (event === "viewercount") {
      const count = Number(body?.viewercount);
      if (Number.isFinite(count)) {
        this.viewerCount = count;
        this._emit("viewercount", { viewerCount: count });
      }
    } else if (event === "inactive") {
      if (this.state === "playing") this._setState("waiting", "the publisher stopped");
    }
    // "active": media arriving is what moves the state to "playing".
  }

  /** Ask for one encoding (simulcast rid), or automatic selection with null. */
  async selectLayer(encodingId) {
    if (!this._ext.layer) throw new Error("this server does not offer layer selection");
    let body = {};
    if (encodingId !== null && encodingId !== undefined) {
      const id = String(encodingId);
      const known = this.layers.find((l) => l.encodingId === id);
      const video = this._pc?.getTransceivers?.().find((t) => t.receiver?.track?.kind === "video");
      body = { mediaId: known?.mediaId ?? video?.mid ?? "1", encodingId: id };
    }
    const response = await this._fetch(this._ext.layer, {
      method: "POST",
      headers: authHeaders(this.options.token, { "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    await checkResponse(response);
    this.layer = body.encodingId ?? null;
  }

  // ---- helpers ----

  _retry(reason, retryAfterMs = null, error = null) {
    if (this.state === "stopped" || this.state === "failed") return;
    if (!this.options.reconnect) {
      this._fail(reason, error);
      return;
    }
    const gen = ++this._gen;
    this._teardown({ keepalive: false });
    const delayMs = retryAfterMs ?? backoffDelay(this.attempts, { random: this._random });
    this.attempts++;
    this._setState("reconnecting", reason, { delayMs, error });
    this._clearRetry();
    this._retryTimer = this._timer(() => {
      this._retryTimer = null;
      if (gen === this._gen) this._connect();
    }, delayMs);
  }

  _fail(reason, error = null) {
    this._gen++;
    this._clearRetry();
    this._teardown({ keepalive: false });
    this._setState("failed", reason, { error });
  }

  _teardown({ keepalive }) {
    if (this._watch) this._clearTimer(this._watch);
    if (this._disconnectTimer) this._clearTimer(this._disconnectTimer);
    this._watch = this._disconnectTimer = null;
    this._sseAbort?.abort();
    this._sseAbort = null;
    if (this.sessionUrl) this._deleteSession(this.sessionUrl, this.url, keepalive);
    this.sessionUrl = null;
    this._etag = null;
    this._pending = [];
    this._ext = { sse: null, sseEvents: null, layer: null };
    this._lastSample = null;
    if (this.layers.length) {
      this.layers = [];
      this._emit("layers", { layers: [] });
    }
    this.layer = null;
    if (this._pc) {
      try {
        this._pc.close();
      } catch {
        // already closed
      }
      this._pc = null;
    }
  }

  _deleteSession(location, base, keepalive) {
    if (!location) return;
    const url = new URL(location, base).href;
    // RFC 9725 §4.4. Best effort: a session of a vanished client expires by itself.
    // Called synchronously so that the request leaves before pc.close() and before a
    // pagehide handler returns.
    try {
      const request = this._fetch(url, {
        method: "DELETE",
        headers: authHeaders(this.options.token),
        keepalive,
      });
      request?.catch?.(() => {});
    } catch {
      // a fetch that throws synchronously: nothing more to do
    }
  }

  _setState(state, reason, extra = {}) {
    this.state = state;
    this._emit("statechange", { state, reason, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(detailEvent(type, detail));
  }

  _timer(fn, ms) {
    const handle = this._setTimeout(() => {
      this._timers.delete(handle);
      fn();
    }, ms);
    this._timers.add(handle);
    return handle;
  }

  _clearTimer(handle) {
    this._timers.delete(handle);
    this._clearTimeout(handle);
  }

  _clearRetry() {
    if (this._retryTimer) this._clearTimer(this._retryTimer);
    this._retryTimer = null;
  }
}

export { HttpError };
