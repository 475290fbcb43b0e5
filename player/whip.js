/**
 * WHIP publisher (RFC 9725) for browsers. No dependencies; signalling helpers are in signal.js,
 * the video sender's codec order and encodings in whip-sender.js, the stats arithmetic in
 * whip-stats.js.
 *
 *   import { WHIPClient } from "/player/whip.js";
 *   const client = new WHIPClient("/whip/mystream", { token });
 *   client.addEventListener("statechange", (e) => console.log(e.detail.state, e.detail.reason));
 *   await client.publish(mediaStream, { videoCodec: "VP8", maxBitrate: 2_500_000 });
 *   ...
 *   await client.stop();
 *
 * new WHIPClient(url, options)
 *   url                 the WHIP endpoint, resolved against the page's location.
 *   options.token       bearer token sent on POST, PATCH and DELETE (RFC 9725 §4.5).
 *   options.iceServers  RTCIceServer[] to start with (default []: nothing leaves the LAN
 *                       unless the server's Link headers name STUN/TURN servers).
 *   options.reconnect   reconnect on network errors, 5xx, 408/429 and ICE failure (default true).
 *   options.fetch, options.RTCPeerConnection, options.RTCRtpSender, options.setTimeout,
 *   options.clearTimeout  injectable for tests; default to the globals.
 *   options.gatherTimeout  ms to wait for ICE gathering before the POST (default 800); later
 *                       candidates are trickled with PATCH (RFC 8840).
 *   options.connectTimeout ms from POST until connectionState "connected" (default 15000).
 *   options.e2ee        an E2EE (e2ee.js): every frame sent is encrypted end to end.
 *   options.dataChannels  [{label, ...RTCDataChannelInit}] opened before each offer (so
 *                       they are in-band, RFC 8832); the server mirrors them on its viewers.
 *
 * Properties (read-only):
 *   state       "idle" | "connecting" | "live" | "reconnecting" | "stopped" | "failed"
 *   sessionUrl  absolute URL of the current WHIP session resource, or null
 *   attempts    consecutive failed attempts since the last time it was live
 *   error       the last error (an HttpError carries .status and the server's .detail)
 *   pc          the current RTCPeerConnection, or null
 *
 * Methods:
 *   publish(mediaStream, {videoCodec, maxBitrate, simulcast}) → Promise<void>
 *       videoCodec: "VP8" | "H264" | "VP9" | "AV1" | undefined (browser default). The codec
 *       is put first with setCodecPreferences; the browser's other codecs stay after it, so
 *       a server without it still answers (getStats().codec tells what is really sent).
 *       maxBitrate: bit/s for the top video encoding. simulcast: offer rids l/m/h (¼, ½, full
 *       size); an answer without a=simulcast gets one full-size layer.
 *       Resolves when the peer connection is connected; rejects with an HttpError on a
 *       4xx that retrying cannot fix (400/401/403/404/409/415/422...), with the error itself
 *       when reconnect is false, or with an AbortError when stop() comes first.
 *   stop() → Promise<void>       no more reconnects; DELETE the session (keepalive), close
 *                                the peer connection. The tracks keep running: the page
 *                                owns them.
 *   replaceTrack(kind, track) → Promise<void>  switch camera/screen/microphone while live.
 *   getStats() → Promise<{bitrate, audioBitrate, fps, width, height, packetsSent, rttMs,
 *       qualityLimitationReason, codec, layers}>  bitrate is video+audio bit/s since the
 *       previous call; layers counts the active outbound video encodings.
 *
 * Events: "statechange" (detail {state, reason}), "error" (detail {error, fatal}),
 *   "datachannel" (detail {channel}): one of options.dataChannels, new at every attempt.
 * Every reconnect DELETEs the old session first (best effort) and re-POSTs with the same
 * tracks; the server answers an ICE restart with 422, so this client never tries one.
 */

import {
  authHeaders,
  backoffDelay,
  candidateFragment,
  checkResponse,
  HttpError,
  iceServersFromLinks,
  parseLinkHeader,
  Timers,
  waitForGathering,
} from "./signal.js";
import { preferCodec, videoEncodings } from "./whip-sender.js";
import { outboundSample, senderStats } from "./whip-stats.js";

export { HttpError, preferCodec, videoEncodings };

const SDPFRAG = "application/trickle-ice-sdpfrag";
const DISCONNECTED_GRACE_MS = 5000;
const DELETE_WAIT_MS = 2000;

/** Whether a failed attempt is worth another POST. */
export function isRetryable(error) {
  if (error instanceof HttpError) {
    return error.status >= 500 || error.status === 408 || error.status === 429;
  }
  // fetch rejects with a TypeError on network errors; ours on ICE failure or timeout.
  return error?.name === "TypeError" || error?.name === "ConnectionError";
}

class ConnectionError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionError";
  }
}

function abortError() {
  const error = new Error("publishing was stopped");
  error.name = "AbortError";
  return error;
}

const Custom =
  globalThis.CustomEvent ??
  class extends Event {
    constructor(type, init = {}) {
      super(type, init);
      this.detail = init.detail ?? null;
    }
  };

export class WHIPClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = new URL(url, globalThis.location?.href).href;
    this.token = options.token || null;
    this.iceServers = options.iceServers ?? [];
    this.reconnect = options.reconnect ?? true;
    this.gatherTimeout = options.gatherTimeout ?? 800;
    this.connectTimeout = options.connectTimeout ?? 15000;
    this._fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this._PC = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this._Sender = options.RTCRtpSender ?? globalThis.RTCRtpSender;
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._e2ee = options.e2ee ?? null;
    this._dataChannels = options.dataChannels ?? [];
    this.state = "idle";
    this.sessionUrl = null;
    this.etag = null;
    this.attempts = 0;
    this.error = null;
    this.pc = null;
    this._linkIceServers = null;
    this._generation = 0;
    this._timers = new Timers(this._setTimeout, this._clearTimeout);
    this._pending = null;
    this._tracks = {};
    this._options = {};
    this._sample = null;
  }

  /** Start publishing `mediaStream`'s first audio and video track; see the module doc. */
  publish(mediaStream, options = {}) {
    if (this.state !== "idle" && this.state !== "stopped" && this.state !== "failed") {
      return Promise.reject(new Error(`publish() while ${this.state}`));
    }
    this._stream = mediaStream;
    this._tracks = {
      audio: mediaStream.getAudioTracks()[0] ?? null,
      video: mediaStream.getVideoTracks()[0] ?? null,
    };
    if (!this._tracks.audio && !this._tracks.video) {
      return Promise.reject(new TypeError("the MediaStream has no audio or video track"));
    }
    this._options = { ...options };
    this._stopped = false;
    this.attempts = 0;
    this.error = null;
    const promise = new Promise((resolve, reject) => {
      this._pending = { resolve, reject };
    });
    this._setState("connecting", "publish");
    this._connect();
    return promise;
  }

  /** No more reconnects; DELETE the session (keepalive survives page unload); close the pc. */
  async stop() {
    this._stopped = true;
    this._generation++;
    this._timers.cancelAll();
    const url = this.sessionUrl;
    const pc = this.pc;
    this.pc = null;
    this.sessionUrl = null;
    this.etag = null;
    this._settle(abortError());
    if (this.state !== "idle") this._setState("stopped", "stop");
    if (url) {
      // RFC 9725 §4.4: the session is ended with DELETE; ETags are not used on it. Sent
      // before the pc closes: a server that sees DTLS close_notify first may already have
      // ended the session and answer 404. keepalive lets it outlive an unloading page.
      const request = this._fetch(url, {
        method: "DELETE",
        keepalive: true,
        headers: authHeaders(this.token),
      }).catch(() => undefined);
      let timer;
      await Promise.race([request, new Promise((resolve) => (timer = this._setTimeout(resolve, 1000)))]);
      this._clearTimeout(timer);
    }
    try {
      pc?.close();
    } catch {
      // already closed
    }
  }

  /** Replace the `kind` ("audio" | "video") track on the wire without renegotiation. */
  async replaceTrack(kind, track) {
    if (!this._tracks[kind] && track) {
      throw new Error(`no ${kind} was published; go live again to add one`);
    }
    const transceiver = this.pc?.getTransceivers().find((t) => t.receiver?.track?.kind === kind);
    if (transceiver) await transceiver.sender.replaceTrack(track);
    this._tracks[kind] = track; // a reconnect sends what is on the wire now
  }

  /** Sender statistics; bitrate is measured from the previous call (or over 250 ms). */
  async getStats() {
    const pc = this.pc;
    if (!pc) return null;
    let now = outboundSample(await pc.getStats());
    if (!this._sample || this._sample.pc !== pc) {
      this._sample = { pc, ...now };
      await new Promise((resolve) => globalThis.setTimeout(resolve, 250));
      if (this.pc !== pc) return null;
      now = outboundSample(await pc.getStats());
    }
    const result = senderStats(this._sample, now);
    this._sample = { pc, ...now };
    return result;
  }

  // --- one attempt -------------------------------------------------------------------------

  async _connect() {
    const generation = ++this._generation;
    const current = () => generation === this._generation && !this._stopped;
    let pc;
    try {
      pc = new this._PC({
        iceServers: this._linkIceServers ?? this.iceServers,
        bundlePolicy: "max-bundle",
        ...this._e2ee?.peerConfig(),
      });
      this.pc = pc;
      this._sample = null;
      const trickle = { queue: [], done: false, open: false, chain: Promise.resolve(), off: false };
      pc.addEventListener("icecandidate", (e) => {
        if (!current() || trickle.off) return;
        if (!e.candidate || !e.candidate.candidate) trickle.done = true;
        else trickle.queue.push(e.candidate);
        if (trickle.open) this._trickle(pc, trickle, generation);
      });
      pc.addEventListener("connectionstatechange", () => this._onConnectionState(pc, generation));
      this._addTransceivers(pc);
      for (const { label, ...init } of this._dataChannels) {
        const channel = pc.createDataChannel(label, init);
        channel.binaryType = "arraybuffer";
        this.dispatchEvent(new Custom("datachannel", { detail: { channel } }));
      }

      await pc.setLocalDescription(await pc.createOffer());
      await waitForGathering(pc, this.gatherTimeout);
      if (!current()) return;
      // Whatever was gathered so far is in the offer; only later candidates are trickled.
      const offer = pc.localDescription.sdp;
      trickle.queue = [];
      trickle.done = false;
      trickle.off = pc.iceGatheringState === "complete";

      const response = await checkResponse(
        await this._fetch(this.url, {
          method: "POST",
          headers: authHeaders(this.token, { "Content-Type": "application/sdp" }),
          body: offer,
        }),
      );
      const answer = await response.text();
      const location = response.headers.get("location");
      if (!current()) {
        // Stopped or superseded while the POST was in flight: end the session we got.
        if (location) this._deleteSession(new URL(location, this.url).href);
        return;
      }
      this.sessionUrl = location ? new URL(location, this.url).href : null;
      this.etag = response.headers.get("etag");
      this._applyIceServers(pc, response.headers.get("link"));
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      if (!current()) return;
      if (this._options.simulcast && !/^a=simulcast:/m.test(answer)) await this._singleLayer(pc);
      if (!current()) return;
      trickle.open = Boolean(this.sessionUrl);
      if (trickle.open) this._trickle(pc, trickle, generation);
      this._timer(() => {
        if (current() && this.state !== "live") {
          this._failed(new ConnectionError("the connection was not established in time"));
        }
      }, this.connectTimeout);
      this._onConnectionState(pc, generation);
    } catch (error) {
      if (current()) this._failed(error);
      else if (pc && pc !== this.pc) pc.close();
    }
  }

  _addTransceivers(pc) {
    const { audio, video } = this._tracks;
    const streams = this._stream ? [this._stream] : [];
    if (audio) {
      const transceiver = pc.addTransceiver(audio, { direction: "sendonly", streams });
      this._e2ee?.sender(transceiver.sender, "audio");
    }
    if (video) {
      const transceiver = pc.addTransceiver(video, {
        direction: "sendonly",
        streams,
        sendEncodings: videoEncodings(this._options),
      });
      this._e2ee?.sender(transceiver.sender, "video");
      const codec = this._options.videoCodec;
      const available = this._Sender?.getCapabilities?.("video")?.codecs;
      if (codec && available && transceiver.setCodecPreferences) {
        try {
          transceiver.setCodecPreferences(preferCodec(available, codec));
        } catch {
          // An older browser may reject the list; its default order still works.
        }
      }
    }
  }

  // An answer without a=simulcast leaves only the first encoding (RFC 8853 §5.3), which is
  // rid "l" at a quarter of the size: make that one layer full size at the full bitrate.
  async _singleLayer(pc) {
    const sender = pc.getTransceivers().find((t) => t.receiver?.track?.kind === "video")?.sender;
    if (!sender?.getParameters) return;
    try {
      const parameters = sender.getParameters();
      if (!parameters.encodings || parameters.encodings.length !== 1) return;
      const [top] = videoEncodings({ maxBitrate: this._options.maxBitrate });
      parameters.encodings[0].scaleResolutionDownBy = 1;
      parameters.encodings[0].maxBitrate = top.maxBitrate ?? 2_500_000;
      await sender.setParameters(parameters);
    } catch {
      // The browser keeps its own choice; still one working layer.
    }
  }

  // RFC 9725 §4.6: ICE servers from Link headers; used now and for every reconnect.
  _applyIceServers(pc, link) {
    let servers = [];
    try {
      servers = iceServersFromLinks(parseLinkHeader(link));
    } catch {
      return; // a malformed Link header must not cost the session
    }
    if (servers.length === 0) return;
    this._linkIceServers = servers;
    try {
      pc.setConfiguration({ ...pc.getConfiguration(), iceServers: servers });
    } catch {
      // Some browsers refuse a change after gathering started; the next attempt uses them.
    }
  }

  // RFC 8840 / RFC 9725 §4.3.1: PATCH later candidates, one request at a time, in order.
  _trickle(pc, trickle, generation) {
    if (trickle.queue.length === 0 && !trickle.done) return;
    const candidates = trickle.queue.splice(0);
    const done = trickle.done;
    trickle.done = false;
    const url = this.sessionUrl;
    const etag = this.etag;
    trickle.chain = trickle.chain.then(async () => {
      if (generation !== this._generation || trickle.off) return;
      const headers = authHeaders(this.token, { "Content-Type": SDPFRAG });
      if (etag) headers["If-Match"] = etag;
      try {
        const response = await this._fetch(url, {
          method: "PATCH",
          headers,
          body: candidateFragment(pc.localDescription.sdp, candidates, done),
        });
        // 405/501: the server does not trickle; the offer's candidates must do.
        if (response.status === 405 || response.status === 501) trickle.off = true;
      } catch {
        // Best effort: a lost PATCH only loses a candidate pair.
      }
    });
  }

  _onConnectionState(pc, generation) {
    if (generation !== this._generation || this._stopped) return;
    const state = pc.connectionState;
    if (state === "connected") {
      this._clearDisconnect();
      if (this.state !== "live") {
        this.attempts = 0;
        this._setState("live", "connected");
        this._settle(null);
      }
    } else if (state === "failed" || state === "closed") {
      this._failed(new ConnectionError(`the connection ${state}`));
    } else if (state === "disconnected" && !this._disconnectTimer) {
      this._disconnectTimer = this._timer(() => {
        this._disconnectTimer = null;
        if (generation === this._generation && pc.connectionState === "disconnected") {
          this._failed(new ConnectionError("the connection was lost for 5 s"));
        }
      }, DISCONNECTED_GRACE_MS);
    }
  }

  _clearDisconnect() {
    if (this._disconnectTimer) {
      this._timers.cancel(this._disconnectTimer);
      this._disconnectTimer = null;
    }
  }

  // --- failure and reconnect -----------------------------------------------------------------

  _failed(error) {
    if (this._stopped) return;
    this._generation++; // whatever the old attempt still does is ignored from now on
    this.error = error;
    this._timers.cancelAll();
    this._disconnectTimer = null;
    const retry = this.reconnect && isRetryable(error);
    this.dispatchEvent(new Custom("error", { detail: { error, fatal: !retry } }));
    const oldUrl = this.sessionUrl;
    this._closePc();
    this.sessionUrl = null;
    this.etag = null;
    if (!retry) {
      if (oldUrl) this._deleteSession(oldUrl);
      this._setState("failed", describe(error));
      this._settle(error);
      return;
    }
    const delay = error.retryAfter ?? backoffDelay(this.attempts);
    this.attempts++;
    this._setState("reconnecting", describe(error));
    const generation = this._generation;
    this._timer(async () => {
      // Best effort, and bounded: the old session must not make our new POST a 409.
      if (oldUrl) await this._deleteSession(oldUrl);
      if (generation === this._generation && !this._stopped) this._connect();
    }, delay);
  }

  _deleteSession(url) {
    const request = this._fetch(url, { method: "DELETE", headers: authHeaders(this.token) })
      .catch(() => undefined);
    return Promise.race([request, new Promise((resolve) => this._timer(resolve, DELETE_WAIT_MS))]);
  }

  _closePc() {
    if (!this.pc) return;
    try {
      this.pc.close();
    } catch {
      // already closed
    }
    this.pc = null;
  }

  _timer(fn, ms) {
    return this._timers.start(fn, ms);
  }

  _settle(error) {
    const pending = this._pending;
    if (!pending) return;
    this._pending = null;
    if (error) pending.reject(error);
    else pending.resolve();
  }

  _setState(state, reason) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this.dispatchEvent(new Custom("statechange", { detail: { state, reason } }));
  }
}

function describe(error) {
  if (error instanceof HttpError) return error.detail || error.message;
  return error?.message || String(error);
}
