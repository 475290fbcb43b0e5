// Streams list for GET /: polls /api/streams every 3 s and renders #streams.

const REFRESH_MS = 3000;
const NAME = /^[A-Za-z0-9_-]{1,64}$/;

const table = document.getElementById("streams");
const tbody = table.querySelector("tbody");
const status = document.getElementById("streams-status");
const empty = document.getElementById("empty");
const message = document.getElementById("message");
const form = document.getElementById("go-live");
const nameInput = document.getElementById("stream-name");

export function formatUptime(startedAt, now = Date.now() / 1000) {
  if (typeof startedAt !== "number") return "–";
  let s = Math.max(0, Math.floor(now - startedAt));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${s} s`;
}

function videoTrack(stream) {
  return (stream.tracks || []).find((t) => t.kind === "video") || null;
}

function cell(row, label, text) {
  const td = row.insertCell();
  td.dataset.label = label;
  td.textContent = text;
  return td;
}

function link(text, href, className) {
  const a = document.createElement("a");
  a.className = className;
  a.href = href;
  a.textContent = text;
  return a;
}

function renderRow(stream, now) {
  const row = document.createElement("tr");
  row.dataset.stream = stream.stream;
  const name = row.insertCell();
  name.dataset.label = "Stream";
  const strong = document.createElement("strong");
  strong.textContent = stream.stream;
  name.append(strong);
  if (stream.live) {
    const badge = document.createElement("span");
    badge.className = "live-badge";
    badge.textContent = "Live";
    name.append(" ", badge);
  }
  const video = videoTrack(stream);
  const layer = video?.layers?.[0];
  cell(row, "Viewers", String(stream.viewers ?? 0)).dataset.field = "viewers";
  const codec = video?.codec ? video.codec.replace(/^video\//i, "").toUpperCase() : "–";
  cell(row, "Video", codec).dataset.field = "codec";
  cell(row, "Resolution", layer?.width && layer?.height ? `${layer.width}×${layer.height}` : "–")
    .dataset.field = "resolution";
  cell(row, "Uptime", formatUptime(stream.started_at, now)).dataset.field = "uptime";
  const actions = row.insertCell();
  actions.className = "actions";
  const path = encodeURIComponent(stream.stream);
  actions.append(
    link("Watch", `/watch/${path}`, "btn btn-primary btn-small"),
    link("Publish", `/publish/${path}`, "btn btn-small"),
  );
  return row;
}

function render(streams) {
  const live = streams.filter((s) => s.live);
  const now = Date.now() / 1000;
  live.sort((a, b) => (b.viewers || 0) - (a.viewers || 0) || a.stream.localeCompare(b.stream));
  tbody.replaceChildren(...live.map((s) => renderRow(s, now)));
  table.hidden = live.length === 0;
  empty.hidden = live.length !== 0;
  status.textContent = live.length
    ? `${live.length} live ${live.length === 1 ? "stream" : "streams"}`
    : "";
  message.hidden = true;
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("/api/streams", { cache: "no-store" });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    const streams = await response.json();
    render(Array.isArray(streams) ? streams : []);
  } catch (error) {
    message.hidden = false;
    message.querySelector("p").textContent = `Cannot load the stream list (${error.message}); retrying…`;
    if (status.textContent === "Loading…") status.textContent = "";
  }
  if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
  else clearTimeout(timer);
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = nameInput.value.trim();
  if (!NAME.test(name)) {
    nameInput.setCustomValidity("Use 1–64 letters, digits, “_” or “-”.");
    nameInput.reportValidity();
    return;
  }
  location.href = `/publish/${encodeURIComponent(name)}`;
});
nameInput.addEventListener("input", () => nameInput.setCustomValidity(""));

refresh();
