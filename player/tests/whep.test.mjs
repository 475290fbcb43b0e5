// WHEPClient against a fake fetch, a fake RTCPeerConnection and fake timers.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LAYER_REL,
  SSE_REL,
  WHEPClient,
  createEventStreamParser,
  layersFromEvent,
} from "../whep.js";

const OFFER = [
  "v=0",
  "o=- 1 2 IN IP4 127.0.0.1",
  "s=-",
  "t=0 0",
  "a=group:BUNDLE 0 1",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111",
  "a=mid:0",
  "a=ice-ufrag:uf",
  "a=ice-pwd:pwpwpwpwpwpwpwpwpwpwpw",
  "a=recvonly",
  "m=video 9 UDP/TLS/RTP/SAVPF 96",
  "a=mid:1",
  "a=recvonly",
  "",
].join("\r\n");

class FakePC extends EventTarget {
  static instances = [];
  constructor(config) {
    super();
    this.config = config;
    this.transceivers = [];
    this.localDescription = null;
    this.remoteDescription = null;
    this.iceGatheringState = "complete";
    this.connectionState = "new";
    this.closed = false;
    this.bytes = 0;
    FakePC.instances.push(this);
  }
  addTransceiver(kind, init) {
    const t = { mid: String(this.transceivers.length), direction: init.direction, receiver: { track: { kind } } };
    this.transceivers.push(t);
    return t;
  }
  getTransceivers() {
    return this.transceivers;
  }
  async createOffer() {
    return { type: "offer", sdp: OFFER };
  }
  async setLocalDescription(d) {
    this.localDescription = d;
  }
  async setRemoteDescription(d) {
    this.remoteDescription = d;
  }
  getConfiguration() {
    return { ...this.config };
  }
  setConfiguration(c) {
    this.config = c;
  }
  close() {
    this.closed = true;
  }
  setConnectionState(s) {
    this.connectionState = s;
    this.dispatchEvent(new Event("connectionstatechange"));
  }
  async getStats() {
    return new Map([
      ["v", { id: "v", type: "inbound-rtp", kind: "video", bytesReceived: this.bytes, packetsReceived: 10, packetsLost: 0, codecId: "c" }],
      ["c", { id: "c", type: "codec", mimeType: "video/VP8" }],
    ]);
  }
}

/** fetch that answers from `routes` (method + " " + url -> Response | function) and records calls. */
function fakeFetch(routes) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const method = init.method || "GET";
    calls.push({ url: String(url), method, init });
    let answer = routes[`${method} ${url}`];
    if (Array.isArray(answer)) answer = answer.shift();
    if (typeof answer === "function") answer = await answer(init);
    if (!answer) return new Response("", { status: 404 });
    return answer;
  };
  fetch.calls = calls;
  return fetch;
}

function fakeTimers() {
  const pending = [];
  let id = 0;
  return {
    pending,
    setTimeout: (fn, ms) => {
      const handle = { id: ++id, fn, ms };
      pending.push(handle);
      return handle;
    },
    clearTimeout: (handle) => {
      const i = pending.indexOf(handle);
      if (i >= 0) pending.splice(i, 1);
    },
    /** Run the timers with exactly this delay. */
    fire(ms) {
      const due = pending.filter((t) => t.ms === ms);
      for (const t of due) {
        pending.splice(pending.indexOf(t), 1);
        t.fn();
      }
      return due.length;
    },
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));
async function settle() {
  for (let i = 0; i < 10; i++) await tick();
}

const URL_ = "https://media.example/whep/cam";

function created(extra = {}) {
  return new Response("v=0\r\nanswer\r\n", {
    status: 201,
    headers: {
      "Content-Type": "application/sdp",
      Location: "/whep/cam/s1",
      ETag: '"e1"',
      Link: '<turn:turn.example:3478?transport=udp>; rel="ice-server"; username="u;1"; credential="p,\\"w"',
      ...extra,
    },
  });
}

function client(fetch, timers, options = {}) {
  FakePC.instances.length = 0;
  return new WHEPClient(URL_, {
    fetch,
    RTCPeerConnection: FakePC,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5,
    ...options,
  });
}

test("201: session URL resolved against the POST URL, ICE servers from Link", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({ [`POST ${URL_}`]: created() });
  const c = client(fetch, timers, { token: "sekrit" });
  const states = [];
  c.addEventListener("statechange", (e) => states.push(e.detail.state));
  await c.start();
  assert.equal(c.sessionUrl, "https://media.example/whep/cam/s1");
  const post = fetch.calls[0];
  assert.equal(post.method, "POST");
  assert.equal(post.init.headers["Content-Type"], "application/sdp");
  assert.equal(post.init.headers.Authorization, "Bearer sekrit");
  assert.equal(post.init.body, OFFER);
  const pc = FakePC.instances[0];
  assert.deepEqual(pc.transceivers.map((t) => t.direction), ["recvonly", "recvonly"]);
  assert.equal(pc.remoteDescription.type, "answer");
  assert.deepEqual(pc.config.iceServers, [
    { urls: "turn:turn.example:3478?transport=udp", username: "u;1", credential: 'p,"w' },
  ]);
  pc.setConnectionState("connected");
  assert.equal(c.state, "waiting");
  assert.deepEqual(states, ["connecting", "waiting"]);
  c.stop();
});

test("later candidates are trickled with PATCH and If-Match", async () => {
  const timers = fakeTimers();
  const patched = [];
  const fetch = fakeFetch({
    [`POST ${URL_}`]: created(),
    "PATCH https://media.example/whep/cam/s1": (init) => {
      patched.push(init);
      return new Response(null, { status: 204 });
    },
  });
  const c = client(fetch, timers);
  await c.start();
  const pc = FakePC.instances[0];
  const ev = new Event("icecandidate");
  ev.candidate = { candidate: "candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host", sdpMid: "0" };
  pc.dispatchEvent(ev);
  const end = new Event("icecandidate");
  end.candidate = null;
  pc.dispatchEvent(end);
  await settle();
  assert.ok(patched.length >= 1);
  const body = patched.map((p) => p.body).join("");
  assert.match(body, /a=candidate:1 1 udp 2122260223 192\.0\.2\.1 5000 typ host/);
  assert.match(body, /a=end-of-candidates/);
  assert.equal(patched[0].headers["Content-Type"], "application/trickle-ice-sdpfrag");
  assert.equal(patched[0].headers["If-Match"], '"e1"');
  c.stop();
});

test("409 with Retry-After retries after that delay, then media resets attempts", async () => {
  const timers = fakeTimers();
  let now = 0;
  const problem = new Response(JSON.stringify({ detail: "stream is not live" }), {
    status: 409,
    headers: { "Content-Type": "application/problem+json", "Retry-After": "7" },
  });
  const fetch = fakeFetch({ [`POST ${URL_}`]: [problem, created()] });
  const c = client(fetch, timers, { now: () => now });
  const events = [];
  c.addEventListener("statechange", (e) => events.push(e.detail));
  await c.start();
  assert.equal(c.state, "reconnecting");
  const last = events.at(-1);
  assert.equal(last.delayMs, 7000);
  assert.equal(last.reason, "stream is not live");
  assert.equal(c.attempts, 1);
  assert.equal(fetch.calls.length, 1);
  assert.equal(timers.fire(7000), 1);
  await settle();
  assert.equal(fetch.calls.filter((x) => x.method === "POST").length, 2);
  assert.equal(c.sessionUrl, "https://media.example/whep/cam/s1");
  // The watchdog sees bytes growing: playing, attempts reset.
  const pc = FakePC.instances.at(-1);
  pc.bytes = 1000;
  now = 300;
  timers.fire(250);
  await settle();
  assert.equal(c.state, "connecting", "one burst of bytes is not playing yet");
  pc.bytes = 2000;
  now = 1300;
  timers.fire(1000);
  await settle();
  assert.equal(c.state, "playing");
  assert.equal(c.attempts, 0);
  c.stop();
});

test("503 without Retry-After uses backoffDelay; network errors retry too", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({
    [`POST ${URL_}`]: [
      new Response("full", { status: 503 }),
      () => {
        throw new TypeError("Failed to fetch");
      },
      created(),
    ],
  });
  const c = client(fetch, timers);
  const delays = [];
  c.addEventListener("statechange", (e) => e.detail.delayMs !== undefined && delays.push(e.detail.delayMs));
  await c.start();
  assert.deepEqual(delays, [375]); // base 500, attempt 0, random 0.5: 250 + 125
  timers.fire(375);
  await settle();
  assert.deepEqual(delays, [375, 750]); // attempt 1: 500 + 250
  assert.equal(c.state, "reconnecting");
  timers.fire(750);
  await settle();
  assert.equal(c.state, "connecting");
  c.stop();
});

test("404 on POST fails with the server's detail and no retry", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({
    [`POST ${URL_}`]: new Response(JSON.stringify({ detail: "no such stream" }), {
      status: 404,
      headers: { "Content-Type": "application/problem+json" },
    }),
  });
  const c = client(fetch, timers);
  let detail;
  c.addEventListener("statechange", (e) => (detail = e.detail));
  await c.start();
  assert.equal(c.state, "failed");
  assert.equal(detail.reason, "no such stream");
  assert.equal(detail.error.status, 404);
  assert.equal(timers.pending.length, 0);
  assert.equal(fetch.calls.length, 1);
});

test("no-reconnect turns a 503 into failed", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({ [`POST ${URL_}`]: new Response("", { status: 503 }) });
  const c = client(fetch, timers, { reconnect: false });
  await c.start();
  assert.equal(c.state, "failed");
});

test("stop() DELETEs the session with keepalive and closes the pc", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({
    [`POST ${URL_}`]: created(),
    "DELETE https://media.example/whep/cam/s1": new Response("", { status: 200 }),
  });
  const c = client(fetch, timers, { token: "t" });
  await c.start();
  c.stop();
  await settle();
  const del = fetch.calls.find((x) => x.method === "DELETE");
  assert.equal(del.url, "https://media.example/whep/cam/s1");
  assert.equal(del.init.keepalive, true);
  assert.equal(del.init.headers.Authorization, "Bearer t");
  assert.equal(FakePC.instances[0].closed, true);
  assert.equal(c.state, "stopped");
  assert.equal(timers.pending.length, 0);
});

test("connection failure DELETEs the old session and reconnects with a new POST", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({ [`POST ${URL_}`]: [created(), created({ Location: "/whep/cam/s2" })] });
  const c = client(fetch, timers);
  await c.start();
  FakePC.instances[0].setConnectionState("failed");
  await settle();
  assert.equal(c.state, "reconnecting");
  const del = fetch.calls.find((x) => x.method === "DELETE");
  assert.equal(del.url, "https://media.example/whep/cam/s1");
  assert.equal(FakePC.instances[0].closed, true);
  timers.fire(375);
  await settle();
  assert.equal(c.sessionUrl, "https://media.example/whep/cam/s2");
  assert.equal(FakePC.instances.length, 2);
  // The new pc uses the ICE servers learnt from the first 201.
  assert.equal(FakePC.instances[1].config.iceServers[0].urls, "turn:turn.example:3478?transport=udp");
  c.stop();
});

test("no media for noMediaTimeoutMs reconnects", async () => {
  const timers = fakeTimers();
  let now = 0;
  const fetch = fakeFetch({ [`POST ${URL_}`]: [created(), created()] });
  const c = client(fetch, timers, { now: () => now, noMediaTimeoutMs: 3000 });
  await c.start();
  FakePC.instances[0].setConnectionState("connected");
  timers.fire(250);
  await settle();
  assert.equal(c.state, "waiting");
  now = 3100;
  timers.fire(1000);
  await settle();
  assert.equal(c.state, "reconnecting");
  assert.equal(c.attempts, 1);
  c.stop();
});

test("a 404 on PATCH means the session is gone: reconnect", async () => {
  const timers = fakeTimers();
  const fetch = fakeFetch({ [`POST ${URL_}`]: created() });
  const c = client(fetch, timers);
  await c.start();
  const ev = new Event("icecandidate");
  ev.candidate = { candidate: "candidate:1 1 udp 1 192.0.2.1 5000 typ host", sdpMid: "0" };
  FakePC.instances[0].dispatchEvent(ev);
  await settle();
  assert.equal(c.state, "reconnecting");
  c.stop();
});

test("layer extension: SSE layers event, then selectLayer POSTs the draft's JSON", async () => {
  const timers = fakeTimers();
  const layersEvent = {
    1: {
      active: [{ id: "h" }, { id: "l" }],
      inactive: [],
      layers: [
        { encodingId: "h", simulcastIdx: 1, temporalLayerId: 1, bitrate: 2500000, width: 1280, height: 720 },
        { encodingId: "h", simulcastIdx: 1, temporalLayerId: 0, bitrate: 1500000, width: 1280, height: 720 },
        { encodingId: "l", simulcastIdx: 0, bitrate: 300000, width: 320, height: 180 },
      ],
    },
  };
  const sse = `event: viewercount\ndata: {"viewercount":3}\n\n: comment\nevent: layers\ndata: ${JSON.stringify(layersEvent)}\n\n`;
  const layerPosts = [];
  const sseReady = [];
  const fetch = fakeFetch({
    [`POST ${URL_}`]: created({
      Link: `</whep/cam/s1/sse>; rel="${SSE_REL}"; events="active,inactive,layers,viewercount", </whep/cam/s1/layer>; rel="${LAYER_REL}"`,
    }),
    "POST https://media.example/whep/cam/s1/sse": (init) => {
      sseReady.push(JSON.parse(init.body));
      return new Response(null, { status: 201, headers: { Location: "/whep/cam/s1/sse/x" } });
    },
    "GET https://media.example/whep/cam/s1/sse/x": [
      new Response(sse, { status: 200, headers: { "Content-Type": "text/event-stream" } }),
    ],
    "POST https://media.example/whep/cam/s1/layer": (init) => {
      layerPosts.push({ body: JSON.parse(init.body), type: init.headers["Content-Type"] });
      return new Response(null, { status: 200 });
    },
  });
  const c = client(fetch, timers);
  const seen = { layers: null, viewers: null };
  c.addEventListener("layers", (e) => (seen.layers = e.detail.layers));
  c.addEventListener("viewercount", (e) => (seen.viewers = e.detail.viewerCount));
  await c.start();
  await settle();
  assert.deepEqual(sseReady, [["active", "inactive", "layers", "viewercount"]]);
  assert.equal(seen.viewers, 3);
  assert.equal(c.viewerCount, 3);
  assert.deepEqual(
    seen.layers.map((l) => [l.mediaId, l.encodingId, l.width, l.height]),
    [["1", "h", 1280, 720], ["1", "l", 320, 180]],
  );
  await c.selectLayer("l");
  assert.deepEqual(layerPosts[0], { body: { mediaId: "1", encodingId: "l" }, type: "application/json" });
  assert.equal(c.layer, "l");
  assert.equal((await c.getStats()).layer, "l");
  await c.selectLayer(null);
  assert.deepEqual(layerPosts[1].body, {});
  assert.equal(c.layer, null);
  c.stop();
});

test("selectLayer without the extension rejects", async () => {
  const timers = fakeTimers();
  const c = client(fakeFetch({ [`POST ${URL_}`]: created() }), timers);
  await c.start();
  await assert.rejects(c.selectLayer("h"), /layer selection/);
  c.stop();
});

test("getStats computes bitrate between calls and names the codec", async () => {
  const timers = fakeTimers();
  let now = 1000;
  const c = client(fakeFetch({ [`POST ${URL_}`]: created() }), timers, { now: () => now });
  await c.start();
  const pc = FakePC.instances[0];
  pc.bytes = 1000;
  const first = await c.getStats();
  assert.equal(first.bitrate, null);
  assert.equal(first.codec, "VP8");
  pc.bytes = 1000 + 250000;
  now = 2000;
  const second = await c.getStats();
  assert.equal(second.bitrate, 2000000);
  assert.equal(second.lossPct, 0);
  c.stop();
});

test("event-stream parser handles any chunking and CRLF", () => {
  const got = [];
  const p = createEventStreamParser((e) => got.push(e));
  const text = "event: a\r\ndata: 1\r\n\r\ndata: x\ndata: y\n\n";
  for (const ch of text) p.feed(ch);
  assert.deepEqual(got.map((e) => [e.event, e.data]), [["a", "1"], ["message", "x\ny"]]);
});

test("layersFromEvent tolerates junk", () => {
  assert.deepEqual(layersFromEvent(null), []);
  assert.deepEqual(layersFromEvent({ 0: null, 1: { layers: [{ spatialLayerId: 0 }] } }), []);
});
