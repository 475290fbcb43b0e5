/**
 * The signalling core of WHEPClient (whep.js): keeps one WHEP session (draft-ietf-wish-whep,
 * RFC 9725 §4) at a time for a recvonly peer connection. It creates the peer connection and
 * its offer, POSTs it, applies the answer and the Link header (ICE servers, extension URLs
 * in _ext), trickles later candidates with PATCH (RFC 8840), DELETEs the session, watches
 * connection and DTLS state, and reconnects with backoff; it owns state, stream, sessionUrl
 * and attempts, and the "statechange", "track", "datachannel" and "error" events.
 * WHEPClient extends it with the media watchdog, stats and extensions through two hooks:
 * _sessionStarted(gen) once the answer is applied (gen identifies the attempt, see _gen)
 * and _sessionEnded() when a session is torn down, before its peer connection closes.
 */

import {
  authHeaders,
  backoffDelay,
  candidateFragment,
  checkResponse,
  iceServersFromLinks,
  parseLinkHeader,
  Timers,
  waitForGathering,
} from "./signal.js";
import { extensionsFromLinks } from "./whep-extensions.js";

const DISCONNECTED_GRACE_MS = 5000;
const RETRYABLE = new Set([408, 409, 425, 429]);

function detailEvent(type, detail) {
  if (typeof CustomEvent === "function") return new CustomEvent(type, { detail });
  const event = new Event(type);
  event.detail = detail;
  return event;
}

export class WHEPConnection extends EventTarget {
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
      dataChannel: "whep",
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
    this.attempts = 0;

    this._gen = 0; // bumped per attempt; stale async work compares and bails out
    this._pc = null;
    this._etag = null;
    this._pending = []; // local candidates gathered after the offer left, before the 201
    this._sendingCandidates = false;
    this._ext = { sse: null, sseEvents: null, layer: null };
    this._timers = new Timers(this._setTimeout, this._clearTimeout);
    this._retryTimer = null;
    this._disconnectTimer = null;
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
    this._sessionStarted(gen);
  }

  _createPeerConnection(gen) {
    const pc = new this._PC({
      iceServers: this._iceServers,
      bundlePolicy: "max-bundle",
      ...this.options.e2ee?.peerConfig(),
    });
    this._pc = pc;
    this._offerSent = false;
    this._pending = [];
    this.stream = typeof this._MediaStream === "function" ? new this._MediaStream() : null;
    // Audio first, video second: mids "0" and "1" then equal the m-line indices that the
    // layers event uses as keys.
    for (const kind of ["audio", "video"]) {
      const transceiver = pc.addTransceiver(kind, { direction: "recvonly" });
      this._preferCodecs(transceiver, kind);
      // Before the first frame arrives: an encrypted frame must never reach the decoder.
      this.options.e2ee?.receiver(transceiver.receiver, kind);
    }
    // A channel of our own puts m=application in the offer (after the media sections, so
    // the mids above stay), which is what makes the server mirror the publisher's data
    // channels on this session (RFC 8841, RFC 8831 §6.1).
    const label = this.options.dataChannel;
    if (label && typeof pc.createDataChannel === "function") {
      try {
        pc.createDataChannel(label);
      } catch (error) {
        this._emit("error", { error, message: `cannot open a data channel: ${error.message}` });
      }
    }

    pc.addEventListener("datachannel", (event) => {
      if (gen !== this._gen || !event.channel) return;
      event.channel.binaryType = "arraybuffer";
      this._emit("datachannel", { channel: event.channel });
    });

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
    this._ext = extensionsFromLinks(links, this.url);
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

  // ---- reconnecting and helpers ----

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
    if (this._disconnectTimer) this._clearTimer(this._disconnectTimer);
    this._disconnectTimer = null;
    if (this.sessionUrl) this._deleteSession(this.sessionUrl, this.url, keepalive);
    this.sessionUrl = null;
    this._etag = null;
    this._pending = [];
    this._ext = { sse: null, sseEvents: null, layer: null };
    this._sessionEnded();
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
    return this._timers.start(fn, ms);
  }

  _clearTimer(handle) {
    this._timers.cancel(handle);
  }

  _clearRetry() {
    if (this._retryTimer) this._clearTimer(this._retryTimer);
    this._retryTimer = null;
  }
}
