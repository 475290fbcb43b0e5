/**
 * WHEP client: plays one stream from a WHEP endpoint (draft-ietf-wish-whep) in the browser.
 * Dependency-free ES module. The signalling and reconnects are in ./whep-connection.js
 * (HTTP helpers in ./signal.js), the protocol extensions in ./whep-extensions.js and the
 * stats arithmetic in ./whep-stats.js; this class adds the media watchdog, stats and
 * extensions to them.
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
 *   options.e2ee          an E2EE (e2ee.js): frames are decrypted end to end; those that
 *                         do not decrypt are dropped. null
 *   options.dataChannel   label of a data channel opened before the offer, so that the offer
 *                         has m=application and the server mirrors the publisher's channels
 *                         on this session ("datachannel" events); null = no data channels. "whep"
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
 *   "datachannel" {channel}   a publisher's channel mirrored by the server (RTCDataChannel,
 *                 binaryType "arraybuffer"), once per channel and session: a reconnect brings
 *                 new ones. Same label, ordered and maxRetransmits as the publisher's.
 *   "error"       {error, message}   non-fatal problems (a failed PATCH, event stream, ...).
 *
 * Reconnects (with backoffDelay(attempts), or the server's Retry-After) on: 409, 429, 503 and
 * other 5xx answers to the POST, network failures, connectionState "failed"/"closed" or
 * "disconnected" for more than 5 s, no media for noMediaTimeoutMs, a 404 on PATCH.
 * Other 4xx answers (400, 401, 403, 404...) end in state "failed" with the server's detail.
 * Every reconnect DELETEs the old session first (best effort) and POSTs a new offer: the
 * server does not support ICE restarts.
 */

import { HttpError, authHeaders, checkResponse } from "./signal.js";
import { WHEPConnection } from "./whep-connection.js";
import { EventSubscription, layerRequest, layersFromEvent } from "./whep-extensions.js";
import { inboundSample, receiverStats } from "./whep-stats.js";

export {
  LAYER_REL,
  SSE_EVENTS,
  SSE_REL,
  createEventStreamParser,
  layersFromEvent,
} from "./whep-extensions.js";

export class WHEPClient extends WHEPConnection {
  constructor(url, options = {}) {
    super(url, options);
    this.layers = [];
    this.viewerCount = null;
    this.layer = null;
    this._events = null; // EventSubscription while the server-sent events extension is on
    this._watch = null;
    this._lastSample = null;
  }

  // ---- session hooks (whep-connection.js) ----

  _sessionStarted(gen) {
    this._startWatchdog(gen);
    if (this._ext.sse) this._subscribe();
  }

  _sessionEnded() {
    if (this._watch) this._clearTimer(this._watch);
    this._watch = null;
    this._events?.close();
    this._events = null;
    this._lastSample = null;
    if (this.layers.length) {
      this.layers = [];
      this._emit("layers", { layers: [] });
    }
    this.layer = null;
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

  /** Raw totals from the pc's stats. */
  async _sample() {
    const pc = this._pc;
    const timestamp = this._now();
    return inboundSample(pc ? await pc.getStats() : new Map(), timestamp);
  }

  async getStats() {
    const sample = await this._sample();
    const prev = this._lastSample;
    this._lastSample = sample;
    return receiverStats(sample, prev, this.layer);
  }

  // ---- extensions (draft-ietf-wish-whep: server sent events, video layer selection) ----

  _subscribe() {
    this._events = new EventSubscription({
      fetch: this._fetch,
      token: this.options.token,
      timer: (fn, ms) => this._timer(fn, ms),
      onEvent: (event) => this._onServerEvent(event),
      onError: (error, message) => this._emit("error", { error, message }),
    });
    this._events.open(this._ext.sse, this._ext.sseEvents);
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
    const body = layerRequest(encodingId, this.layers, () =>
      this._pc?.getTransceivers?.().find((t) => t.receiver?.track?.kind === "video")?.mid,
    );
    const response = await this._fetch(this._ext.layer, {
      method: "POST",
      headers: authHeaders(this.options.token, { "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    await checkResponse(response);
    this.layer = body.encodingId ?? null;
  }
}

export { HttpError };
