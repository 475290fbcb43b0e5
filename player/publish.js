// The publisher page (GET /publish/{stream}): capture camera or screen, preview, go live over
// WHIP. Media is requested only after a click (Start preview / Go live), never on load.

import { HttpError, WHIPClient } from "/player/whip.js";

const TOKEN_KEY = "broadcast.publishToken";
const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const CODECS = [["VP8", "VP8"], ["H264", "H.264"], ["VP9", "VP9"], ["AV1", "AV1"]];
const ACTIVE = new Set(["connecting", "live", "reconnecting"]);

const $ = (id) => document.getElementById(id);
const ui = {
  message: $("message"), messageText: $("message-text"), retry: $("retry"),
  preview: $("preview"), previewEmpty: $("preview-empty"),
  indicator: $("live-indicator"), liveText: $("live-text"),
  previewButton: $("preview-button"), goLive: $("go-live"), stop: $("stop"),
  status: $("status"), stats: $("stats"), watchLink: $("watch-link"), copyLink: $("copy-link"),
  source: $("source"), camera: $("camera"), microphone: $("microphone"),
  resolution: $("resolution"), fps: $("fps"), bitrate: $("bitrate"), codec: $("codec"),
  simulcast: $("simulcast"), token: $("token"),
};

const stream = streamFromPath(location.pathname);
let media = null; // {stream: MediaStream, video, audio, source} while captured
let client = null;
let busy = false;
let statsTimer = null;
let statsRunning = false;

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
    const watch = new URL(`/watch/${encodeURIComponent(stream)}`, location.href).href;
    ui.watchLink.href = watch;
    ui.watchLink.textContent = watch;
    $("nav-watch").href = watch;
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
    if (codecs.has(value)) ui.codec.append(new Option(label, value));
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
    showMessage(explain(insecureError()));
  } else {
    navigator.mediaDevices.addEventListener?.("devicechange", () => fillDevices());
    fillDevices();
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

function insecureError() {
  const error = new Error("navigator.mediaDevices is missing");
  error.name = "InsecureContextError";
  return error;
}

function videoConstraints(s) {
  const video = { width: { ideal: s.width }, height: { ideal: s.height }, frameRate: { ideal: s.frameRate } };
  if (s.camera) video.deviceId = { exact: s.camera };
  return video;
}

function audioConstraints(s) {
  if (s.microphone === "none") return false;
  return s.microphone ? { deviceId: { exact: s.microphone } } : true;
}

/** Tag a capture error with the device it concerns, finding out which one is missing. */
async function tagged(error, device, wantsAudio) {
  if (error && typeof error === "object" && !error.device) {
    error.device = device;
    if (device === "camera" && /NotFound|DevicesNotFound/.test(error.name)) {
      try {
        const devices = await navigator.mediaDevices.enumerateDevices();
        const has = (kind) => devices.some((d) => d.kind === kind);
        if (has("videoinput") && wantsAudio && !has("audioinput")) error.device = "microphone";
      } catch {
        // keep "camera"
      }
    }
  }
  return error;
}

async function captureVideo(s) {
  if (!navigator.mediaDevices?.getUserMedia) throw insecureError();
  if (s.source === "screen") {
    if (!navigator.mediaDevices.getDisplayMedia) {
      const error = new Error("getDisplayMedia is missing");
      error.name = "NotSupportedError";
      error.device = "screen";
      throw error;
    }
    try {
      const display = await navigator.mediaDevices.getDisplayMedia({
        video: { width: { ideal: s.width }, height: { ideal: s.height }, frameRate: { ideal: s.frameRate } },
        audio: false,
      });
      const track = display.getVideoTracks()[0];
      if ("contentHint" in track) track.contentHint = "detail"; // keep text sharp, drop frames
      return track;
    } catch (error) {
      throw await tagged(error, "screen", false);
    }
  }
  try {
    const captured = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(s) });
    return captured.getVideoTracks()[0];
  } catch (error) {
    throw await tagged(error, "camera", false);
  }
}

async function captureAudio(s) {
  if (s.microphone === "none") return null;
  if (!navigator.mediaDevices?.getUserMedia) throw insecureError();
  try {
    const captured = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(s) });
    return captured.getAudioTracks()[0];
  } catch (error) {
    throw await tagged(error, "microphone", true);
  }
}

/** Camera and microphone in one request (one permission prompt); screen, then microphone. */
async function capture(s) {
  if (!navigator.mediaDevices?.getUserMedia) throw insecureError();
  let video = null;
  let audio = null;
  if (s.source === "camera") {
    const wantsAudio = s.microphone !== "none";
    try {
      const captured = await navigator.mediaDevices.getUserMedia({
        video: videoConstraints(s),
        audio: audioConstraints(s),
      });
      video = captured.getVideoTracks()[0];
      audio = captured.getAudioTracks()[0] ?? null;
    } catch (error) {
      throw await tagged(error, "camera", wantsAudio);
    }
  } else {
    video = await captureVideo(s);
    try {
      audio = await captureAudio(s);
    } catch (error) {
      video.stop();
      throw error;
    }
  }
  const captured = new MediaStream([video, ...(audio ? [audio] : [])]);
  const result = { stream: captured, video, audio, source: s.source };
  watchTrack(video, result);
  if (audio) watchTrack(audio, result);
  return result;
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
    await fillDevices();
  } catch (error) {
    setStatus("Not live.");
    showMessage(explain(error), { retry: false });
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
    await fillDevices();
  } catch (error) {
    showMessage(explain(error));
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
        : explain(error),
    );
  } finally {
    busy = false;
    render();
  }
}

async function fillDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const current = (kind) => media?.[kind]?.getSettings?.().deviceId;
  fill(ui.camera, devices.filter((d) => d.kind === "videoinput"), "Default camera", "Camera",
    media?.source === "camera" ? current("video") : undefined);
  fill(ui.microphone, devices.filter((d) => d.kind === "audioinput"), "Default microphone", "Microphone",
    current("audio"), true);
}

function fill(select, devices, defaultLabel, noun, activeId, withNone = false) {
  const selected = activeId || select.value;
  const options = [new Option(defaultLabel, "")];
  devices
    .filter((d) => d.deviceId && d.deviceId !== "default")
    .forEach((d, i) => options.push(new Option(d.label || `${noun} ${i + 1}`, d.deviceId)));
  if (withNone) options.push(new Option("No microphone", "none"));
  select.replaceChildren(...options);
  select.value = options.some((o) => o.value === selected) ? selected : "";
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
      fillDevices();
    }
  } catch (error) {
    busy = false;
    setStatus("Not live.");
    showMessage(explain(error), { retry: true });
    render();
    return;
  }

  const kbps = Number(ui.bitrate.value);
  const publisher = new WHIPClient(`/whip/${encodeURIComponent(stream)}`, {
    token: ui.token.value.trim() || undefined,
  });
  client = publisher;
  exposed.client = publisher;
  publisher.addEventListener("statechange", (e) => publisher === client && onState(e.detail));
  busy = false;
  render();
  try {
    await publisher.publish(media.stream, {
      videoCodec: ui.codec.value || undefined,
      maxBitrate: kbps > 0 ? Math.round(kbps * 1000) : undefined,
      simulcast: ui.simulcast.checked,
    });
  } catch (error) {
    if (publisher !== client || error?.name === "AbortError") return;
    showMessage(explain(error), { retry: true });
  } finally {
    render();
  }
}

function onState({ state, reason }) {
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
  publisher?.stop().catch(() => undefined);
  release();
  busy = false;
  setStatus(statusText);
  render();
}

function teardown() {
  if (client || media) stopAll("Stopped.");
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

/** What went wrong and what to do, for #message. */
function explain(error) {
  if (error instanceof HttpError) {
    const said = error.detail ? ` The server said: “${error.detail}”.` : "";
    switch (error.status) {
      case 401:
      case 403:
        return `The server refused to let you publish (HTTP ${error.status}): check the token in Settings and press Go live again.${said}`;
      case 409:
        return `Someone is already live on “${stream}”, so this broadcast could not start. Stop the other broadcast or use another stream name.${said}`;
      case 400:
      case 415:
      case 422:
        return `The server could not accept this stream (HTTP ${error.status}). Choose another codec or turn simulcast off, then press Go live again.${said}`;
      case 404:
        return `This server has no publishing endpoint for “${stream}” (HTTP 404).${said}`;
      default:
        return `The server refused the stream (HTTP ${error.status}). Press Go live to try again.${said}`;
    }
  }
  const device = error?.device ?? "camera";
  const noun = { camera: "camera", microphone: "microphone", screen: "screen" }[device] ?? device;
  switch (error?.name) {
    case "InsecureContextError":
      return "This page cannot use a camera or microphone because it was not opened over HTTPS " +
        "(browsers allow them only on https:// pages and on http://localhost). Open it over HTTPS and try again.";
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      if (device === "screen") {
        return "Screen sharing was cancelled or not allowed. Press Go live again and pick a screen, window or tab, or choose Camera as the source.";
      }
      return "Camera or microphone permission was denied. Allow it in the address bar's site settings and press Go live again.";
    case "NotFoundError":
    case "DevicesNotFoundError":
      if (device === "microphone") {
        return "No microphone found. Connect one, or choose “No microphone”, and press Go live again.";
      }
      return "No camera found. Connect one, or choose Screen as the source.";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return `The ${noun} could not be started: another application may be using it, or the system blocks it. Close that application (or choose another device) and press Go live again.`;
    case "OverconstrainedError":
      return `The selected ${noun} is not available any more. Choose another one in Settings and press Go live again.`;
    case "NotSupportedError":
      return device === "screen"
        ? "This browser cannot share the screen. Choose Camera as the source."
        : `This browser cannot use the ${noun}.`;
    default:
      return `Could not go live: ${error?.message || error}. Press Go live to try again.`;
  }
}

setup();
