/**
 * The chat overlay of <whep-player> (whep-player.js): shows the text messages that arrive
 * on the publisher's data channels (mirrored by the server, RFC 8831 §6.1), and lets the
 * viewer answer on the channel labelled "chat" while it is open. The server forwards the
 * answers to the publisher only where it allows viewer messages.
 *
 * Messages are untrusted: they are inserted with textContent only. The log keeps the
 * newest `limit` messages, newest at the bottom; it stays hidden until the first text
 * message arrives (or the viewer opens it with the Chat button). Binary messages are not
 * shown, only counted.
 */

export const CHAT_LABEL = "chat";
export const CHAT_LIMIT = 100;
export const MAX_CHARS = 2000; // longer messages are cut for display
const NEAR_BOTTOM_PX = 24;

export const CHAT_STYLE = `
/* In the player's .dock (a column that ends with the control bar): always above the bar,
   however many lines the bar wraps to. */
.chat { flex: 0 1 auto; min-height: 0; max-height: 45%; width: min(340px, calc(100% - 16px));
  margin: 0 8px 4px; display: flex; flex-direction: column; gap: 4px; pointer-events: none; }
.chat > * { pointer-events: auto; }
.chat-log { flex: 0 1 auto; min-height: 0; overflow-y: auto; overscroll-behavior: contain;
  padding: 6px 8px; border-radius: 6px; background: rgba(0,0,0,.65); font-size: 13px; }
.chat-log:focus-visible { outline: 3px solid #ffbf47; outline-offset: 2px; }
.chat-msg { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.chat-msg + .chat-msg { margin-top: 2px; }
.chat-label { margin-right: .4em; font-weight: 600; opacity: .75; }
.chat-msg.own .chat-label { color: #ffbf47; opacity: 1; }
.chat-form { display: flex; gap: 4px; }
.chat-input { flex: 1 1 auto; min-width: 0; font: inherit; font-size: 13px; color: #fff;
  background: rgba(0,0,0,.65); border: 1px solid rgba(255,255,255,.35); border-radius: 5px;
  padding: 4px 8px; min-height: 32px; }
.chat-input::placeholder { color: rgba(255,255,255,.6); }
.chat-input:focus-visible { outline: 3px solid #ffbf47; outline-offset: 2px; }
.chat-form button { min-height: 32px; padding: 4px 10px; }
@container (max-width: 420px) {
  .chat { max-height: 40%; }
  .chat-log, .chat-input { font-size: 12px; }
}
`;

export const CHAT_TEMPLATE = `
<section class="chat" part="chat" hidden aria-label="Chat">
  <div class="chat-log" part="chat-log" role="log" aria-live="polite" aria-label="Messages from the broadcast" tabindex="0"></div>
  <form class="chat-form" hidden>
    <input class="chat-input" type="text" maxlength="500" autocomplete="off" enterkeyhint="send"
           aria-label="Message to the broadcaster" placeholder="Message the broadcaster">
    <button type="submit">Send</button>
  </form>
</section>
`;

/** What a message on channel `label` shows: {label, text}, or null for a binary message. */
export function chatEntry(label, data) {
  if (typeof data !== "string") return null;
  const text = data.length > MAX_CHARS ? `${data.slice(0, MAX_CHARS)}…` : data;
  return { label: label === CHAT_LABEL ? null : `[${label}]`, text };
}

/**
 * Append one message to a chat `log` element (textContent only: messages are untrusted),
 * drop the oldest beyond `limit`, and follow new messages unless the reader scrolled up.
 * Shared by the player's overlay and the publisher page (publish-chat.js).
 */
export function appendEntry(log, { label, text, own = false }, limit = CHAT_LIMIT) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight <= NEAR_BOTTOM_PX;
  const item = document.createElement("p");
  item.className = own ? "chat-msg own" : "chat-msg";
  if (label) {
    const tag = document.createElement("span");
    tag.className = "chat-label";
    tag.textContent = label;
    item.append(tag);
  }
  item.append(document.createTextNode(text));
  log.append(item);
  while (log.childElementCount > limit) log.firstElementChild.remove();
  if (atBottom || own) log.scrollTop = log.scrollHeight;
}

/** Send `text`, trimmed, on `channel` if it is open: the text sent, or null. */
export function sendText(channel, text) {
  const message = String(text ?? "").trim();
  if (!message || channel?.readyState !== "open") return null;
  try {
    channel.send(message);
  } catch {
    return null; // closing between the check and the send
  }
  return message;
}

export class ChatPanel {
  /** `root`: the player's shadow root, holding CHAT_TEMPLATE and a `.chat-toggle` button. */
  constructor(root, { limit = CHAT_LIMIT } = {}) {
    const $ = (sel) => root.querySelector(sel);
    this.limit = limit;
    this.counts = { text: 0, binary: 0 };
    this._ui = {
      panel: $(".chat"),
      log: $(".chat-log"),
      form: $(".chat-form"),
      input: $(".chat-input"),
      toggle: $(".chat-toggle"),
    };
    this._channels = new Set();
    this._chat = null; // the open "chat" channel that answers go to
    this._closedByViewer = false;
    this._ui.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send(this._ui.input.value);
    });
    this._ui.toggle.addEventListener("click", () => {
      this._closedByViewer = !this._ui.panel.hidden;
      this._show(this._ui.panel.hidden);
    });
  }

  /** A data channel of the current session ("datachannel" event of WHEPClient). */
  add(channel) {
    this._channels.add(channel);
    channel.addEventListener("message", (e) => {
      if (this._channels.has(channel)) this._receive(channel.label, e.data);
    });
    const sync = () => this._channels.has(channel) && this._sync();
    channel.addEventListener("open", sync);
    channel.addEventListener("close", () => {
      this._channels.delete(channel);
      this._sync();
    });
    this._sync();
  }

  /** The session ended: forget its channels (they close with it); the log stays. */
  detach() {
    this._channels.clear();
    this._sync();
  }

  /** Empty the log and hide the panel (another stream). */
  clear() {
    this._ui.log.replaceChildren();
    this.counts = { text: 0, binary: 0 };
    this._closedByViewer = false;
    this._show(false);
    this._sync();
  }

  /** Send `text` on the open "chat" channel; returns whether it left. */
  send(text) {
    const message = sendText(this._chat, text);
    if (message === null) return false;
    this._ui.input.value = "";
    this._append("You", message, true);
    return true;
  }

  _receive(label, data) {
    const entry = chatEntry(label, data);
    if (!entry) {
      this.counts.binary++;
      return;
    }
    this.counts.text++;
    this._append(entry.label, entry.text, false);
    if (this._ui.panel.hidden && !this._closedByViewer) this._show(true);
  }

  _append(label, text, own) {
    appendEntry(this._ui.log, { label, text, own }, this.limit);
    this._sync();
  }

  _show(show) {
    this._ui.panel.hidden = !show;
    this._ui.toggle.setAttribute("aria-pressed", String(show));
    this._ui.toggle.setAttribute("aria-label", show ? "Hide chat" : "Show chat");
    if (show) this._ui.log.scrollTop = this._ui.log.scrollHeight;
  }

  _sync() {
    this._chat =
      [...this._channels].find((c) => c.label === CHAT_LABEL && c.readyState === "open") || null;
    const ui = this._ui;
    const focused = ui.form.contains(ui.form.getRootNode().activeElement);
    ui.form.hidden = !this._chat;
    if (focused && ui.form.hidden) ui.toggle.focus?.();
    ui.log.hidden = ui.log.childElementCount === 0;
    ui.toggle.hidden = !this._chat && ui.log.childElementCount === 0;
    if (ui.toggle.hidden) ui.panel.hidden = true;
  }
}
