/**
 * The chat box of the publisher page (publish.js): what is typed goes to every viewer on
 * the "chat" data channel that WHIPClient opens before its offer (the server mirrors it on
 * each viewer, RFC 8831 §6.1). Viewers' answers arrive on the same channel, where the
 * server allows viewer messages, and are listed with the publisher's own messages.
 * Messages are untrusted: textContent only (appendEntry in whep-chat.js).
 */

import { appendEntry, chatEntry, sendText } from "./whep-chat.js";

export const CHAT_CHANNEL = { label: "chat", ordered: true }; // reliable: no maxRetransmits

export class PublishChat {
  /** `ui`: {log, form, input, send} elements of publish.html's chat section. */
  constructor(ui) {
    this._ui = ui;
    this._channel = null;
    this.binary = 0; // binary messages from viewers: counted, not shown
    ui.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send(ui.input.value);
    });
    this._render();
  }

  /** The current attempt's chat channel (WHIPClient "datachannel" event). */
  attach(channel) {
    this._channel = channel;
    channel.addEventListener("message", (e) => {
      if (channel !== this._channel) return;
      const entry = chatEntry(channel.label, e.data);
      if (entry) this._append({ label: "Viewer", text: entry.text });
      else this.binary++;
    });
    for (const type of ["open", "close"]) {
      channel.addEventListener(type, () => channel === this._channel && this._render());
    }
    this._render();
  }

  /** Not live any more: the channel closed with the peer connection. The list stays. */
  detach() {
    this._channel = null;
    this._render();
  }

  send(text) {
    const message = sendText(this._channel, text);
    if (message === null) return false;
    this._ui.input.value = "";
    this._append({ label: "You", text: message, own: true });
    return true;
  }

  _append(entry) {
    appendEntry(this._ui.log, entry);
    this._render();
  }

  _render() {
    const open = this._channel?.readyState === "open";
    const { log, input, send } = this._ui;
    const hadFocus = document.activeElement === input;
    input.disabled = !open;
    send.disabled = !open;
    input.placeholder = open ? "Message your viewers" : "Go live to chat";
    if (hadFocus && open) input.focus();
    log.hidden = log.childElementCount === 0;
  }
}
