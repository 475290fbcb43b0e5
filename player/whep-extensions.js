/**
 * WHEP protocol extensions (draft-ietf-wish-whep §4.7) for whep.js: the extension URLs that a
 * 201's Link header offers, the server-sent events extension (the subscription, an incremental
 * text/event-stream parser, the selectable layers in a "layers" event) and the request body
 * of the video layer extension. Dependency-free ES module; the HTTP helpers are in signal.js.
 */

import { authHeaders, checkResponse, linkFor } from "./signal.js";

export const SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events";
export const LAYER_REL = "urn:ietf:params:whep:ext:core:layer";
export const SSE_EVENTS = ["active", "inactive", "layers", "viewercount"];

const SSE_RETRY_MS = 3000;

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

/**
 * The extensions offered in parsed Link headers, URLs resolved against `base`:
 * {sse, sseEvents (the event names the server lists, or null), layer}; null when absent.
 */
export function extensionsFromLinks(links, base) {
  const sseLink = links.find((l) => (l.params.rel || "").split(/\s+/).includes(SSE_REL));
  return {
    sse: linkFor(links, SSE_REL, base),
    sseEvents: sseLink?.params.events
      ? sseLink.params.events.split(",").map((e) => e.trim()).filter(Boolean)
      : null,
    layer: linkFor(links, LAYER_REL, base),
  };
}

/**
 * Body of a layer extension POST: {} for automatic selection (encodingId null), else
 * {mediaId, encodingId}. mediaId comes from the known layers, else from videoMid() (the
 * video transceiver's mid), else "1".
 */
export function layerRequest(encodingId, layers, videoMid) {
  if (encodingId === null || encodingId === undefined) return {};
  const id = String(encodingId);
  const known = layers.find((l) => l.encodingId === id);
  return { mediaId: known?.mediaId ?? videoMid() ?? "1", encodingId: id };
}

/**
 * One subscription to the server-sent events extension. open() POSTs the wanted event names
 * to the extension URL, then reads the event stream that the answer's Location names, again
 * SSE_RETRY_MS after each read ends, until close() or a 404. onEvent({event, data, id}) gets
 * each event, onError(error, message) each non-fatal problem; neither is called after close().
 * timer(fn, ms) schedules the waits.
 */
export class EventSubscription {
  constructor({ fetch, token, timer, onEvent, onError }) {
    this._fetch = fetch;
    this._token = token;
    this._timer = timer;
    this._onEvent = onEvent;
    this._onError = onError;
    this._closed = false;
    this._abort = null;
  }

  async open(url, offeredEvents) {
    const wanted = offeredEvents ? SSE_EVENTS.filter((e) => offeredEvents.includes(e)) : SSE_EVENTS;
    let streamUrl;
    try {
      const response = await this._fetch(url, {
        method: "POST",
        headers: authHeaders(this._token, { "Content-Type": "application/json" }),
        body: JSON.stringify(wanted),
      });
      await checkResponse(response);
      const location = response.headers.get("location");
      if (!location) throw new Error("no Location for the event stream");
      streamUrl = new URL(location, url).href;
    } catch (error) {
      if (!this._closed) this._onError(error, `event stream: ${error.message}`);
      return;
    }
    while (!this._closed) {
      const ended = await this._read(streamUrl);
      if (ended === "gone" || this._closed) return;
      await new Promise((resolve) => this._timer(resolve, SSE_RETRY_MS));
    }
  }

  close() {
    this._closed = true;
    this._abort?.abort();
    this._abort = null;
  }

  /** One long pull of the event stream; "gone" when the server says it no longer exists. */
  async _read(streamUrl) {
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    this._abort = abort;
    try {
      const response = await this._fetch(streamUrl, {
        headers: authHeaders(this._token, { Accept: "text/event-stream" }),
        signal: abort?.signal,
        cache: "no-store",
      });
      if (response.status === 404) return "gone";
      await checkResponse(response);
      const parser = createEventStreamParser((e) => !this._closed && this._onEvent(e));
      if (!response.body?.getReader) {
        parser.feed(await response.text());
        return "ended";
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this._closed) break;
        parser.feed(decoder.decode(value, { stream: true }));
      }
      return "ended";
    } catch (error) {
      if (!this._closed && error?.name !== "AbortError") {
        this._onError(error, `event stream: ${error.message}`);
      }
      return this._closed ? "gone" : "ended";
    } finally {
      if (this._abort === abort) this._abort = null;
    }
  }
}
