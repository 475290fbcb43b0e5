/**
 * <whep-player>: a WHEP live player as a custom element. Embed it anywhere with
 *
 *   <script type="module" src="https://HOST/player/whep-player.js"></script>
 *   <whep-player src="https://HOST/whep/mystream"></whep-player>
 *
 * Attributes
 *   src           WHEP endpoint URL (relative URLs resolve against the page).
 *   token         bearer token for the endpoint.
 *   autoplay      on unless autoplay="false" (or "off", "0").
 *   muted         starts muted unless muted="false", so that autoplay is allowed; an
 *                 "Unmute" button is always shown.
 *   stats         show the stats overlay from the start.
 *   no-reconnect  do not reconnect automatically.
 *   codecs        comma-separated codecs to offer, e.g. "VP8,H264,opus" (default: all).
 *   chat          on unless chat="false": offer a data channel so that the server mirrors
 *                 the publisher's data channels, and show their text messages in an
 *                 overlay (whep-chat.js) with an input to answer on the "chat" channel.
 *
 * Properties: video (HTMLVideoElement), client (WHEPClient or null), chat (ChatPanel: its
 * counts are {text, binary} messages received), state, e2eeKey (the
 * end-to-end encryption passphrase, or null: set it from the page's URL fragment, never
 * from anything the server sends; setting it reconnects). With a key, a badge says
 * "End-to-end encrypted", frames that do not decrypt are dropped, and after a few seconds
 * of those the player says "cannot decrypt: wrong key?".
 * Events: "statechange" (detail {state, reason, delayMs?}), re-dispatched from the client,
 * bubbling and composed.
 */

import { DecryptWatch, E2EE } from "./e2ee.js";
import { CHAT_STYLE, CHAT_TEMPLATE, ChatPanel } from "./whep-chat.js";
import { WHEPClient } from "./whep.js";

const STYLE = `
:host { display: block; position: relative; background: #000; color: #fff;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  aspect-ratio: 16 / 9; overflow: hidden; container-type: inline-size; }
:host([hidden]) { display: none; }
:host(:fullscreen) { aspect-ratio: auto; width: 100%; height: 100%; }
video { display: block; width: 100%; height: 100%; object-fit: contain; background: #000; }
.status { position: absolute; inset: 0 0 auto 0; top: 50%; transform: translateY(-50%);
  margin: 0 auto; max-width: 90%; width: max-content; padding: .5em 1em; border-radius: 6px;
  background: rgba(0,0,0,.65); text-align: center; pointer-events: none; }
.status:empty { display: none; }
.status.error { background: rgba(140,20,20,.85); }
.dock { position: absolute; inset: 0; display: flex; flex-direction: column;
  justify-content: flex-end; pointer-events: none; }
.bar { pointer-events: auto; display: flex; flex-wrap: wrap;
  align-items: center; gap: 6px; padding: 6px 8px;
  background: linear-gradient(transparent, rgba(0,0,0,.75)); }
.spacer { flex: 1 1 auto; }
button, select { font: inherit; color: #fff; background: rgba(255,255,255,.14);
  border: 1px solid rgba(255,255,255,.35); border-radius: 5px; padding: 6px 10px;
  min-height: 36px; cursor: pointer; }
button:hover, select:hover { background: rgba(255,255,255,.26); }
button:focus-visible, select:focus-visible { outline: 3px solid #ffbf47; outline-offset: 2px; }
button[aria-pressed="true"] { background: rgba(255,255,255,.34); }
select option { color: #000; background: #fff; }
.unmute[data-muted="true"] { background: #d92f2f; border-color: #ff8080; font-weight: 600; }
.viewers { padding: 0 4px; white-space: nowrap; }
.e2ee { padding: 2px 8px; border-radius: 999px; background: rgba(20,110,60,.85);
  font-size: 12px; white-space: nowrap; }
[hidden] { display: none !important; }
.stats { position: absolute; top: 8px; left: 8px; margin: 0; padding: 8px 10px;
  background: rgba(0,0,0,.7); border-radius: 6px; font: 12px/1.5 ui-monospace, monospace;
  display: grid; grid-template-columns: auto auto; column-gap: 10px; max-width: calc(100% - 16px); }
.stats dt { opacity: .75; } .stats dd { margin: 0; font-variant-numeric: tabular-nums; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@container (max-width: 420px) {
  button, select { padding: 4px 7px; min-height: 32px; font-size: 13px; }
  .stats { font-size: 11px; }
}
${CHAT_STYLE}
`;

const TEMPLATE = `
<style>${STYLE}</style>
<video part="video" playsinline autoplay muted></video>
<div class="status" part="status" role="status" aria-live="polite"></div>
<dl class="stats" part="stats" hidden aria-label="Playback statistics">
  <dt>Resolution</dt><dd data-stat="resolution">–</dd>
  <dt>Frame rate</dt><dd data-stat="fps">–</dd>
  <dt>Bitrate</dt><dd data-stat="bitrate">–</dd>
  <dt>Loss</dt><dd data-stat="loss">–</dd>
  <dt>Jitter</dt><dd data-stat="jitter">–</dd>
  <dt>RTT</dt><dd data-stat="rtt">–</dd>
  <dt>Latency</dt><dd data-stat="latency">–</dd>
  <dt>Codec</dt><dd data-stat="codec">–</dd>
  <dt>Layer</dt><dd data-stat="layer">–</dd>
</dl>
<div class="dock">
${CHAT_TEMPLATE}
<div class="bar" part="controls">
  <button type="button" class="play" hidden aria-label="Play">Play</button>
  <button type="button" class="unmute" aria-label="Unmute" data-muted="true">Unmute</button>
  <span class="viewers" hidden aria-label="Viewers"></span>
  <span class="e2ee" part="e2ee" hidden title="Decrypted in this browser with the key in the address">End-to-end encrypted</span>
  <span class="spacer"></span>
  <label class="sr" for="quality">Quality</label>
  <select id="quality" class="quality" hidden aria-label="Quality">
    <option value="">Auto</option>
  </select>
  <button type="button" class="chat-toggle" hidden aria-pressed="false" aria-label="Show chat">Chat</button>
  <button type="button" class="stats-toggle" aria-pressed="false" aria-label="Show statistics">Stats</button>
  <button type="button" class="fullscreen" aria-label="Enter full screen">Fullscreen</button>
</div>
</div>
`;

const OFF = new Set(["false", "off", "0", "no"]);

function flag(el, name, fallback) {
  if (!el.hasAttribute(name)) return fallback;
  return !OFF.has((el.getAttribute(name) || "").trim().toLowerCase());
}

export function formatBitrate(bps) {
  if (typeof bps !== "number" || !Number.isFinite(bps)) return "–";
  const mbit = bps / 1e6;
  if (bps > 0 && mbit < 0.1) return `${mbit.toFixed(3)} Mbit/s`;
  return `${mbit.toFixed(2)} Mbit/s`;
}

function fmt(value, digits, unit) {
  return typeof value === "number" && Number.isFinite(value) ? `${value.toFixed(digits)}${unit}` : "–";
}

function layerLabel(layer) {
  const parts = [];
  if (layer.height) parts.push(`${layer.height}p`);
  if (layer.bitrate) parts.push(formatBitrate(layer.bitrate));
  return parts.length ? `${parts.join(" · ")} (${layer.encodingId})` : layer.encodingId;
}

export class WHEPPlayerElement extends HTMLElement {
  static get observedAttributes() {
    return ["src", "token", "muted", "stats", "no-reconnect", "codecs", "chat"];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = TEMPLATE;
    const $ = (sel) => root.querySelector(sel);
    this.video = $("video");
    this.client = null;
    this.chat = new ChatPanel(root);
    this._chatSrc = null; // the src whose messages the chat log shows
    this._ui = {
      status: $(".status"),
      stats: $(".stats"),
      play: $(".play"),
      unmute: $(".unmute"),
      viewers: $(".viewers"),
      e2ee: $(".e2ee"),
      quality: $(".quality"),
      statsToggle: $(".stats-toggle"),
      fullscreen: $(".fullscreen"),
    };
    this._statFields = Object.fromEntries(
      [...root.querySelectorAll("[data-stat]")].map((el) => [el.dataset.stat, el]),
    );
    this._statsTimer = null;
    this._countdown = null;
    this._everPlayed = false;
    this._e2ee = null;
    // A key set before this element was upgraded (watch.html does) is an own property that
    // would hide the accessor: take it over.
    const early = Object.getOwnPropertyDescriptor(this, "e2eeKey");
    delete this.e2eeKey;
    this._e2eeKey = early?.value || null;
    this._onPageHide = () => this._stop();
    this._onPageShow = (e) => e.persisted && this.isConnected && this._restart();
    this._onFullscreen = () => this._syncFullscreen();

    const ui = this._ui;
    ui.unmute.addEventListener("click", () => this._setMuted(!this.video.muted));
    ui.play.addEventListener("click", () => this._play());
    ui.statsToggle.addEventListener("click", () => this._showStats(ui.stats.hidden));
    ui.fullscreen.addEventListener("click", () => this._toggleFullscreen());
    ui.quality.addEventListener("change", () => this._selectLayer(ui.quality.value || null));
    this.video.addEventListener("play", () => this._syncPlay());
    this.video.addEventListener("pause", () => this._syncPlay());
    this.video.addEventListener("volumechange", () => this._syncMuted());
  }

  get state() {
    return this.client ? this.client.state : "idle";
  }

  get e2eeKey() {
    return this._e2eeKey;
  }

  set e2eeKey(value) {
    if ((value || null) === this._e2eeKey) return;
    this._e2eeKey = value || null;
    if (this.isConnected) this._restart();
  }

  connectedCallback() {
    this._setMuted(flag(this, "muted", true));
    this._showStats(this.hasAttribute("stats") && flag(this, "stats", true));
    globalThis.addEventListener("pagehide", this._onPageHide);
    globalThis.addEventListener("pageshow", this._onPageShow);
    document.addEventListener("fullscreenchange", this._onFullscreen);
    document.addEventListener("webkitfullscreenchange", this._onFullscreen);
    this._restart();
  }

  disconnectedCallback() {
    globalThis.removeEventListener("pagehide", this._onPageHide);
    globalThis.removeEventListener("pageshow", this._onPageShow);
    document.removeEventListener("fullscreenchange", this._onFullscreen);
    document.removeEventListener("webkitfullscreenchange", this._onFullscreen);
    this._stop();
  }

  attributeChangedCallback(name, oldValue, value) {
    if (oldValue === value || !this.isConnected) return;
    if (["src", "token", "no-reconnect", "codecs", "chat"].includes(name)) this._restart();
    else if (name === "muted") this._setMuted(flag(this, "muted", true));
    else if (name === "stats") this._showStats(this.hasAttribute("stats") && flag(this, "stats", true));
  }

  // ---- connection ----

  _restart() {
    this._stop();
    const src = this.getAttribute("src");
    if (!src) {
      this._status("No stream source (set the src attribute).", true);
      return;
    }
    let client;
    try {
      this._e2ee = this._e2eeKey ? this._startE2EE(this._e2eeKey) : null;
      client = new WHEPClient(src, {
        e2ee: this._e2ee,
        token: this.getAttribute("token") || null,
        codecs: this.getAttribute("codecs")?.split(",").filter((c) => c.trim()) || null,
        reconnect: !this.hasAttribute("no-reconnect") || !flag(this, "no-reconnect", true),
        dataChannel: flag(this, "chat", true) ? "whep" : null,
      });
    } catch (error) {
      this._status(`Cannot play: ${error.message}`, true);
      return;
    }
    this.client = client;
    this._everPlayed = false;
    if (src !== this._chatSrc) this.chat.clear();
    this._chatSrc = src;
    client.addEventListener("statechange", (e) => client === this.client && this._onState(e.detail));
    client.addEventListener("track", () => client === this.client && this._attach());
    client.addEventListener("layers", (e) => client === this.client && this._renderLayers(e.detail.layers));
    client.addEventListener("viewercount", (e) => client === this.client && this._renderViewers(e.detail.viewerCount));
    client.addEventListener("datachannel", (e) => client === this.client && this.chat.add(e.detail.channel));
    client.start().catch((error) => this._status(`Cannot play: ${error.message}`, true));
    if (!this._ui.stats.hidden) this._startStats();
  }

  _stop() {
    this._clearCountdown();
    this._stopStats();
    if (this.client) {
      const client = this.client;
      this.client = null;
      client.stop();
    }
    this._e2ee?.close();
    this._e2ee = null;
    this._ui.e2ee.hidden = true;
    this._renderLayers([]);
    this._renderViewers(null);
    this.chat.detach();
  }

  _startE2EE(key) {
    const e2ee = new E2EE(key);
    const watch = new DecryptWatch();
    let shown = null;
    e2ee.addEventListener("counts", (e) => {
      if (e2ee !== this._e2ee) return;
      const message = watch.update(e.detail);
      if (message) this._status(message, true);
      else if (shown && this._ui.status.textContent === shown) this._status("");
      shown = message;
    });
    this._ui.e2ee.hidden = false;
    return e2ee;
  }

  _attach() {
    const stream = this.client?.stream;
    if (stream && this.video.srcObject !== stream) this.video.srcObject = stream;
    if (flag(this, "autoplay", true)) this._play();
    else this._syncPlay();
  }

  _play() {
    const attempt = this.video.play();
    if (!attempt?.catch) return;
    attempt.catch((error) => {
      if (error?.name === "AbortError") return; // a newer srcObject replaced this one
      if (error?.name === "NotAllowedError" && !this.video.muted) {
        // Autoplay with sound is blocked until the viewer interacts: play muted instead.
        this._setMuted(true);
        this._status("Sound is off: press Unmute to hear it.");
        this.video.play().catch(() => this._syncPlay());
        return;
      }
      this._syncPlay();
      this._status(`Cannot start playback: ${error?.message || error}`, true);
    });
  }

  _onState(detail) {
    const { state, reason } = detail;
    this._clearCountdown();
    // That session's channels closed with it (without "close" events); the log stays.
    if (["reconnecting", "failed", "stopped"].includes(state)) this.chat.detach();
    if (state === "connecting") this._status(this._everPlayed ? "Reconnecting…" : "Connecting…");
    else if (state === "waiting") this._status("Waiting for the stream to start…");
    else if (state === "playing") {
      this._everPlayed = true;
      this._status("");
    } else if (state === "reconnecting") {
      // Connected without media, or "not live": the publisher is not there (yet).
      if (reason === "no media" || detail.error?.status === 409) {
        this._status("Waiting for the stream to start…");
      } else {
        this._countdownTo(detail.delayMs || 0, reason);
      }
    } else if (state === "failed") this._status(reason ? `Playback failed: ${reason}` : "Playback failed.", true);
    else if (state === "stopped") this._status("");
    this.dispatchEvent(new CustomEvent("statechange", { detail, bubbles: true, composed: true }));
  }

  _countdownTo(delayMs, reason) {
    const until = Date.now() + delayMs;
    const why = reason ? ` (${reason})` : "";
    const render = () => {
      const s = Math.ceil((until - Date.now()) / 1000);
      this._status(s > 0 ? `Reconnecting in ${s} s…${why}` : `Reconnecting…${why}`);
    };
    render();
    this._countdown = setInterval(render, 500);
  }

  _clearCountdown() {
    if (this._countdown) clearInterval(this._countdown);
    this._countdown = null;
  }

  _status(text, isError = false) {
    const el = this._ui.status;
    if (el.textContent !== text) el.textContent = text;
    el.classList.toggle("error", Boolean(isError && text));
  }

  // ---- controls ----

  _setMuted(muted) {
    this.video.muted = muted;
    this._syncMuted();
    if (!muted && this.video.paused && this.video.srcObject && flag(this, "autoplay", true)) this._play();
  }

  _syncMuted() {
    const b = this._ui.unmute;
    const muted = this.video.muted;
    b.textContent = muted ? "Unmute" : "Mute";
    b.setAttribute("aria-label", muted ? "Unmute" : "Mute");
    b.dataset.muted = String(muted);
  }

  _syncPlay() {
    this._ui.play.hidden = !(this.video.paused && this.video.srcObject);
  }

  _showStats(show) {
    const ui = this._ui;
    ui.stats.hidden = !show;
    ui.statsToggle.setAttribute("aria-pressed", String(show));
    ui.statsToggle.setAttribute("aria-label", show ? "Hide statistics" : "Show statistics");
    if (show && this.client) this._startStats();
    else if (!show) this._stopStats();
  }

  _startStats() {
    if (this._statsTimer) return;
    const update = async () => {
      const client = this.client;
      if (!client) return;
      try {
        const s = await client.getStats();
        if (client === this.client) this._renderStats(s);
      } catch {
        // The pc was closed between two updates; the next reconnect brings a new one.
      }
    };
    update();
    this._statsTimer = setInterval(update, 1000);
  }

  _stopStats() {
    if (this._statsTimer) clearInterval(this._statsTimer);
    this._statsTimer = null;
  }

  _renderStats(s) {
    const f = this._statFields;
    const set = (key, text) => {
      if (f[key] && f[key].textContent !== text) f[key].textContent = text;
    };
    set("resolution", s.width && s.height ? `${s.width}×${s.height}` : "–");
    set("fps", fmt(s.fps, 0, ""));
    set("bitrate", formatBitrate(s.bitrate));
    set("loss", s.lossPct === null ? "–" : `${s.lossPct.toFixed(1)} % (${s.packetsLost})`);
    set("jitter", fmt(s.jitterMs, 0, " ms"));
    set("rtt", fmt(s.rttMs, 0, " ms"));
    set("latency", fmt(s.latencyMs, 0, " ms"));
    set("codec", s.codec || "–");
    set("layer", s.layer || (this._ui.quality.hidden ? "–" : "auto"));
  }

  _renderLayers(layers) {
    const select = this._ui.quality;
    const current = select.value;
    select.replaceChildren(new Option("Auto", ""));
    for (const layer of layers || []) {
      select.append(new Option(layerLabel(layer), layer.encodingId));
    }
    select.value = [...select.options].some((o) => o.value === current) ? current : "";
    select.hidden = !layers || layers.length === 0;
  }

  _renderViewers(count) {
    const el = this._ui.viewers;
    el.hidden = typeof count !== "number";
    if (!el.hidden) {
      el.textContent = `${count} watching`;
      el.setAttribute("aria-label", `${count} ${count === 1 ? "viewer" : "viewers"}`);
    }
  }

  _selectLayer(encodingId) {
    const client = this.client;
    if (!client) return;
    client.selectLayer(encodingId).catch((error) => {
      this._status(`Cannot change quality: ${error.message}`, true);
      setTimeout(() => this.client === client && client.state === "playing" && this._status(""), 4000);
    });
  }

  _toggleFullscreen() {
    const doc = document;
    const current = doc.fullscreenElement || doc.webkitFullscreenElement;
    let result;
    try {
      if (current === this) result = (doc.exitFullscreen || doc.webkitExitFullscreen).call(doc);
      else if (this.requestFullscreen) result = this.requestFullscreen();
      else if (this.webkitRequestFullscreen) result = this.webkitRequestFullscreen();
      else if (this.video.webkitEnterFullscreen) result = this.video.webkitEnterFullscreen(); // iOS
    } catch (error) {
      this._status(`Full screen is not available: ${error.message}`, true);
    }
    result?.catch?.((error) => this._status(`Full screen is not available: ${error.message}`, true));
  }

  _syncFullscreen() {
    const on = (document.fullscreenElement || document.webkitFullscreenElement) === this;
    const b = this._ui.fullscreen;
    b.textContent = on ? "Exit full screen" : "Fullscreen";
    b.setAttribute("aria-label", on ? "Exit full screen" : "Enter full screen");
  }
}

if (!customElements.get("whep-player")) customElements.define("whep-player", WHEPPlayerElement);
