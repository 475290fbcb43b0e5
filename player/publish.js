// The publisher page (GET /publish/{stream}): capture camera or screen, preview, go live over
// WHIP. Media is requested only after a click (Start preview / Go live), never on load.
// Capture and the device lists are in publish-media.js, the error messages in
// publish-messages.js, the chat box in publish-chat.js. A `#key=...` fragment turns on
// end-to-end encryption (e2ee.js): the key stays in this page; only VP8 and H.264 can be
// chosen then (their headers stay clear).

import {
  capture,
  captureAudio,
  captureVideo,
  fillDevices,
  insecureError,
  listDevices,
} from "./publish-media.js";
import { E2EE, e2eeSupported, keyFromFragment } from "./e2ee.js";
import { CHAT_CHANNEL, PublishChat } from "./publish-chat.js";
import { explain } from "./publish-messages.js";
import { WHIPClient } from "./whip.js";

const TOKEN_KEY = "broadcast.publishToken";
const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const CODECS = [["VP8", "VP8"], ["H264", "H.264"], ["VP9", "VP9"], ["AV1", "AV1"]];
const ACTIVE = new Set(["connecting", "live", "reconnecting"]);
const E2EE_CODECS = new Set(["VP8", "H264"]);

const $ = (id) => document.getElementById(id);
const ui = {
  message: $("message"), messageText: $("message-text"), retry: $("retry"),
  preview: $("preview"), previewEmpty: $("preview-empty"),
  indicator: $("live-indicator"), liveText: $("live-text"),
  previewButton: $("preview-button"), goLive: $("go-live"), stop: $("stop"),
  status: $("status"), stats: $("stats"), watchLink: $("watch-link"), copyLink: $("copy-link"),
  source: $("source"), camera: $("camera"), microphone: $("microphone"),
  resolution: $("resolution"), fps: $("fps"), bitrate: $("bitrate"), codec: $("codec"),
  simulcast: $("simulcast"), token: $("token"), e2ee: $("e2ee-indicator"),
};

const stream = streamFromPath(location.pathname);
const e2eeKey = keyFromFragment(location.hash);
let e2ee = null; // the E2EE of the current client
let media = null; // {stream: MediaStream, video, audio, source} while captured
let client = null;
let busy = false;
let statsTimer = null;
let statsRunning = false;
const chat = new PublishChat({
  log: $("chat-log"), form: $("chat-form"), input: $("chat-input"), send: $("chat-send"),
});

// For tests and the console: the current WHIPClient and MediaStream, or null.
const exposed = { client: null, stream: null };
window.broadcastPublisher = exposed;

// --- setup ------------------------------------------------------------------------------

function streamFromPath(pathname) {
  try {
    const name = decodeURIComponent(pathname.split("/").filter(Boolean).pop() || "");
    return STREAM_NAME.test(name) ? name : null;
  } catch {
    return null;
  }
}

function setup() {
  $("stream-name").textContent = stream ?? "(invalid stream name)";
  if (stream) {
    document.title = `Go live: ${stream} · broadcast`;
    const watch = new URL(`/watch/${encodeURIComponent(stream)}`, location.href);
    // Viewers need the key: the link carries it in its fragment, as this page's does.
    watch.hash = e2eeKey ? `key=${encodeURIComponent(e2eeKey)}` : "";
    ui.watchLink.href = watch.href;
    ui.watchLink.textContent = watch.href;
    $("nav-watch").href = watch.href;
  } else {
    showMessage(
      "This address has no valid stream name. Use /publish/<name> with letters, digits, " +
        "'-' or '_' (at most 64), for example /publish/my-show.",
    );
  }

  try {
    ui.token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    // storage blocked: the token just is not remembered
  }
  ui.token.addEventListener("input", () => {
    try {
      if (ui.token.value) sessionStorage.setItem(TOKEN_KEY, ui.token.value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // as above
    }
  });

  const codecs = new Set(
    (globalThis.RTCRtpSender?.getCapabilities?.("video")?.codecs ?? []).map((c) =>
      c.mimeType.split("/")[1].toUpperCase(),
    ),
  );
  for (const [value, label] of CODECS) {
    if (codecs.has(value) && (!e2eeKey || E2EE_CODECS.has(value))) {
      ui.codec.append(new Option(label, value));
    }
  }
  ui.e2ee.hidden = !e2eeKey;
  if (e2eeKey && !e2eeSupported()) {
    showMessage("This browser cannot encrypt end to end (#key= in the address). Use a current Chrome, Edge or Safari.");
  }

  ui.previewButton.addEventListener("click", () => startPreview());
  ui.goLive.addEventListener("click", () => goLive());
  ui.retry.addEventListener("click", () => goLive());
  ui.stop.addEventListener("click", () => stopAll("Stopped."));
  ui.copyLink.addEventListener("click", copyLink);
  ui.source.addEventListener("change", () => switchVideo());
  ui.camera.addEventListener("change", () => switchVideo());
  ui.resolution.addEventListener("change", () => switchVideo());
  ui.fps.addEventListener("change", () => switchVideo());
  ui.microphone.addEventListener("change", () => switchAudio());
  ui.settingsForm = $("settings");
  ui.settingsForm.addEventListener("submit", (e) => e.preventDefault());

  // Leaving the page ends the broadcast: DELETE with keepalive, camera light off.
  window.addEventListener("pagehide", teardown);
  window.addEventListener("beforeunload", teardown);
  window.addEventListener("pageshow", (e) => e.persisted && render());

  if (!navigator.mediaDevices?.getUserMedia) {
    showMessage(explain(insecureError(), stream));
  } else {
    navigator.mediaDevices.addEventListener?.("devicechange", () => refreshDevices());
    refreshDevices();
  }
  if (!globalThis.RTCPeerConnection) {
    showMessage("This browser does not support WebRTC, so it cannot go live. Use a current Chrome, Edge, Firefox or Safari.");
  }
  render();
}

// --- capture ------------------------------------------------------------------------------

function settings() {
  const [width, height] = ui.resolution.value.split("x").map(Number);
  return {
    source: ui.source.value,
    camera: ui.camera.value,
    microphone: ui.microphone.value,
    width,
    height,
    frameRate: Number(ui.fps.value) || 30,
  };
}

async function refreshDevices() {
  const devices = await listDevices();
  if (devices) fillDevices(ui.camera, ui.microphone, devices, media);
}

// A track that ends by itself (screen sharing stopped from the browser's bar, camera
// unplugged) ends the broadcast: the viewers would otherwise see a frozen frame.
function watchTrack(track, owner) {
  track.addEventListener("ended", () => {
    if (media !== owner || !owner.stream.getTracks().includes(track)) return;
    const what =
      track.kind === "audio" ? "The microphone" : owner.source === "screen" ? "Screen sharing" : "The camera";
    stopAll(`${what} stopped, so the broadcast was stopped.`);
    showMessage(`${what} stopped (ended outside this page). Press Go live to start again.`, { retry: true });
  });
}

function release() {
  if (!media) return;
  for (const track of media.stream.getTracks()) track.stop();
  media = null;
  exposed.stream = null;
  ui.preview.srcObject = null;
}

function attach(captured) {
  media = captured;
  watchTrack(captured.video, captured);
  if (captured.audio) watchTrack(captured.audio, captured);
  exposed.stream = captured.stream;
  ui.preview.srcObject = captured.stream;
  ui.preview.play?.()?.catch?.(() => undefined); // autoplay of a muted video may still be refused
}

async function startPreview() {
  if (busy || media) return;
  clearMessage();
  busy = true;
  render();
  setStatus("Starting the camera…");
  try {
    attach(await capture(settings()));
    setStatus("Preview only: nothing is sent until you press Go live.");
    await refreshDevices();
  } catch (error) {
    setStatus("Not live.");
    showMessage(explain(error, stream), { retry: false });
  } finally {
    busy = false;
    render();
  }
}

/** Source, camera, resolution or frame rate changed: recapture video, live or not. */
async function switchVideo() {
  render();
  if (!media || busy) return;
  busy = true;
  render();
  const s = settings();
  try {
    const track = await captureVideo(s);
    const old = media.video;
    if (isActive()) await client.replaceTrack("video", track);
    media.stream.removeTrack(old);
    media.stream.addTrack(track);
    media.video = track;
    media.source = s.source;
    watchTrack(track, media);
    old.stop();
    clearMessage();
    await refreshDevices();
  } catch (error) {
    showMessage(explain(error, stream));
  } finally {
    busy = false;
    render();
  }
}

/** Microphone changed: recapture audio (or drop it for "No microphone"). */
async function switchAudio() {
  if (!media || busy) return;
  busy = true;
  render();
  const s = settings();
  let track = null;
  try {
    track = await captureAudio(s);
    const old = media.audio;
    if (isActive()) await client.replaceTrack("audio", track);
    if (old) {
      media.stream.removeTrack(old);
      old.stop();
    }
    if (track) {
      media.stream.addTrack(track);
      watchTrack(track, media);
    }
    media.audio = track;
    clearMessage();
  } catch (error) {
    track?.stop();
    showMessage(
      error?.name === "Error" && isActive()
        ? "A microphone cannot be added while live. Stop, then Go live again with the microphone selected."
        : explain(error, stream),
    );
  } finally {
    busy = false;
    render();
  }
}

// --- publishing ---------------------------------------------------------------------------

function isActive() {
  return Boolean(client && ACTIVE.has(client.state));
}

async function goLive() {
  if (busy || isActive() || !stream) return;
  clearMessage();
  busy = true;
  render();
  const s = settings();
  try {
    if (media && (media.source !== s.source || (!media.audio && s.microphone !== "none"))) release();
    if (!media) {
      setStatus(s.source === "screen" ? "Choose what to share…" : "Starting the camera…");
      attach(await capture(s));
      refreshDevices();
    }
  } catch (error) {
    busy = false;
    setStatus("Not live.");
    showMessage(explain(error, stream), { retry: true });
    render();
    return;
  }

  const kbps = Number(ui.bitrate.value);
  let publisher;
  try {
    e2ee?.close();
    e2ee = e2eeKey ? startE2EE() : null;
    publisher = new WHIPClient(`/whip/${encodeURIComponent(stream)}`, {
      token: ui.token.value.trim() || undefined,
      e2ee,
      dataChannels: [CHAT_CHANNEL],
    });
  } catch (error) {
    busy = false;
    showMessage(`Cannot go live: ${error.message}`);
    render();
    return;
  }
  client = publisher;
  exposed.client = publisher;
  publisher.addEventListener("statechange", (e) => publisher === client && onState(e.detail));
  publisher.addEventListener("datachannel", (e) => publisher === client && chat.attach(e.detail.channel));
  busy = false;
  render();
  try {
    await publisher.publish(media.stream, {
      // "Auto" could land on VP9 or AV1, whose frames cannot be encrypted here.
      videoCodec: ui.codec.value || (e2eeKey ? "VP8" : undefined),
      maxBitrate: kbps > 0 ? Math.round(kbps * 1000) : undefined,
      simulcast: ui.simulcast.checked,
    });
  } catch (error) {
    if (publisher !== client || error?.name === "AbortError") return;
    showMessage(explain(error, stream), { retry: true });
  } finally {
    render();
  }
}

function onState({ state, reason }) {
  // The attempt's pc closed, and its chat channel without a "close" event.
  if (state === "reconnecting" || state === "failed" || state === "stopped") chat.detach();
  if (state === "connecting") setStatus("Connecting to the server…");
  else if (state === "live") {
    setStatus("Live. Share the link below with your viewers.");
    clearMessage();
    startStats();
  } else if (state === "reconnecting") {
    setStatus(`Reconnecting… (${reason || "connection lost"})`);
    clearStats();
  } else if (state === "failed") {
    setStatus("Not live: the server refused the stream. Your preview is still on.");
    stopStats();
  } else if (state === "stopped") {
    stopStats();
  }
  render();
}

function stopAll(statusText) {
  const publisher = client;
  client = null;
  exposed.client = null;
  stopStats();
  chat.detach();
  publisher?.stop().catch(() => undefined);
  e2ee?.close();
  e2ee = null;
  release();
  busy = false;
  setStatus(statusText);
  render();
}

function teardown() {
  if (client || media) stopAll("Stopped.");
}

function startE2EE() {
  const current = new E2EE(e2eeKey);
  current.addEventListener("counts", (e) => {
    if (current === e2ee && e.detail.unsupported) {
      showMessage("The video codec the server chose cannot be encrypted end to end, so no video is sent. Stop, choose VP8 or H.264, and Go live again.");
    }
  });
  return current;
}

// --- stats --------------------------------------------------------------------------------

function startStats() {
  stopStats();
  statsTimer = setInterval(updateStats, 1000);
  updateStats();
}

function stopStats() {
  clearInterval(statsTimer);
  statsTimer = null;
  clearStats();
}

function clearStats() {
  for (const el of ui.stats.querySelectorAll("[data-stat]")) el.textContent = "—";
}

async function updateStats() {
  const publisher = client;
  if (statsRunning || !publisher || publisher.state !== "live") return;
  statsRunning = true;
  try {
    const s = await publisher.getStats();
    if (!s || publisher !== client || publisher.state !== "live") return;
    const set = (name, text) => {
      ui.stats.querySelector(`[data-stat="${name}"]`).textContent = text;
    };
    set("bitrate", s.bitrate == null ? "—" : `${(s.bitrate / 1e6).toFixed(2)} Mbit/s`);
    set("fps", s.fps == null ? "—" : `${Math.round(s.fps)} fps`);
    set("resolution", s.width && s.height ? `${s.width}×${s.height}` : "—");
    set("rtt", s.rttMs == null ? "—" : `${Math.round(s.rttMs)} ms`);
    set("codec", s.codec ? (s.layers > 1 ? `${s.codec} · ${s.layers} layers` : s.codec) : "—");
    set("quality-limitation", s.qualityLimitationReason || "—");
  } catch {
    // the connection closed between two ticks
  } finally {
    statsRunning = false;
  }
}

// --- UI -----------------------------------------------------------------------------------

function render() {
  const active = isActive();
  const live = client?.state === "live";
  const s = settings();
  ui.goLive.disabled = busy || active || !stream;
  ui.previewButton.disabled = busy || Boolean(media) || active;
  ui.stop.disabled = !active && !media;
  for (const control of [ui.bitrate, ui.codec, ui.simulcast, ui.token]) control.disabled = active;
  ui.camera.disabled = s.source === "screen";
  ui.indicator.hidden = !live;
  const what = media?.source === "screen" ? "screen" : "camera";
  ui.liveText.textContent = media?.audio
    ? `LIVE — ${what} and microphone are being sent`
    : `LIVE — ${what} is being sent (no microphone)`;
  ui.previewEmpty.hidden = Boolean(media);
  ui.preview.classList.toggle("is-live", live);
  document.body.classList.toggle("is-live", live);
}

function setStatus(text) {
  ui.status.textContent = text;
}

function showMessage(text, { retry = false } = {}) {
  ui.messageText.textContent = text;
  ui.retry.hidden = !retry;
  ui.message.hidden = false;
}

function clearMessage() {
  ui.message.hidden = true;
  ui.messageText.textContent = "";
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText(ui.watchLink.href);
    ui.copyLink.textContent = "Copied";
  } catch {
    // No clipboard (insecure origin or refused): select the link text instead.
    const range = document.createRange();
    range.selectNodeContents(ui.watchLink);
    getSelection()?.removeAllRanges();
    getSelection()?.addRange(range);
    ui.copyLink.textContent = "Press Ctrl+C";
  }
  setTimeout(() => (ui.copyLink.textContent = "Copy link"), 2000);
}

setup();
