// WHIPClient against a fake fetch and a fake RTCPeerConnection: `node --test player/tests/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HttpError } from "../signal.js";
import { isRetryable, preferCodec, videoEncodings, WHIPClient } from "../whip.js";

const OFFER = [
  "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly",
  "a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef012345", "a=rtpmap:111 opus/48000/2",
  "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:1", "a=sendonly",
  "a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef012345", "a=rtpmap:96 VP8/90000", "",
].join("\r\n");
const ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
const ENDPOINT = "http://example.test/whip/cam1";

const tick = () => new Promise((resolve) => setImmediate(resolve));
async function settle(rounds = 10) {
  for (let i = 0; i < rounds; i++) await tick();
}

class FakePC extends EventTarget {
  static instances = [];
  static gathering = "complete";
  static autoConnect = true;

  constructor(config) {
    super();
    this.config = config;
    this.iceGatheringState = FakePC.gathering;
    this.connectionState = "new";
    this.transceivers = [];
    this.closed = false;
    FakePC.instances.push(this);
  }
  addTransceiver(track, init) {
    const transceiver = {
      init,
      codecs: null,
      sender: {
        track,
        parameters: { encodings: (init.sendEncodings || [{}]).slice(0, 1).map((e) => ({ ...e })) },
        async replaceTrack(next) { this.track = next; },
        getParameters() { return structuredClone(this.parameters); },
        async setParameters(parameters) { this.parameters = parameters; },
      },
      receiver: { track: { kind: track.kind } },
      setCodecPreferences(codecs) { this.codecs = codecs; },
    };
    this.transceivers.push(transceiver);
    return transceiver;
  }
  getTransceivers() { return this.transceivers; }
  async createOffer() { return { type: "offer", sdp: OFFER }; }
  async setLocalDescription(description) { this.localDescription = description; }
  async setRemoteDescription(description) {
    this.remoteDescription = description;
    if (FakePC.autoConnect) setImmediate(() => this.setConnectionState("connected"));
  }
  getConfiguration() { return this.config; }
  setConfiguration(config) { this.config = config; }
  setConnectionState(state) {
    this.connectionState = state;
    this.dispatchEvent(new Event("connectionstatechange"));
  }
  candidate(candidate, sdpMid = "0") {
    const event = new Event("icecandidate");
    event.candidate = candidate === null ? null : { candidate, sdpMid };
    this.dispatchEvent(event);
  }
  close() { this.closed = true; this.connectionState = "closed"; }
}

function fakeStream() {
  const audio = { kind: "audio", id: "a" };
  const video = { kind: "video", id: "v" };
  return { getAudioTracks: () => [audio], getVideoTracks: () => [video], audio, video };
}

/** A fetch that answers each call with the next responder's result and records the call. */
function fakeFetch(responders) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, ...init, headers: { ...(init.headers || {}) } });
    const respond = init.method === "POST" ? responders.shift() : null;
    if (respond) return respond();
    if (init.method === "PATCH") return new Response(null, { status: 204 });
    if (init.method === "DELETE") return new Response(null, { status: 200 });
    throw new TypeError("no responder");
  };
  return { fetch, calls };
}

const created = (extra = {}) => () =>
  new Response(ANSWER, {
    status: 201,
    headers: {
      "Content-Type": "application/sdp",
      Location: "/whip/cam1/s1",
      ETag: '"e1"',
      Link: '<stun:stun.example.test:3478>; rel="ice-server", ' +
        '<turn:turn.example.test:3478?transport=udp>; rel="ice-server"; username="u"; ' +
        'credential="p"',
      ...extra,
    },
  });

const problem = (status, detail, headers = {}) => () =>
  new Response(JSON.stringify({ title: "x", status, detail }), {
    status,
    headers: { "Content-Type": "application/problem+json", ...headers },
  });

/** setTimeout that only records; tests fire timers themselves. */
function fakeTimers() {
  const timers = [];
  return {
    timers,
    setTimeout: (fn, ms) => { const t = { fn, ms }; timers.push(t); return t; },
    clearTimeout: (t) => { const i = timers.indexOf(t); if (i >= 0) timers.splice(i, 1); },
  };
}

function client(fetch, timers, options = {}) {
  return new WHIPClient(ENDPOINT, {
    fetch,
    RTCPeerConnection: FakePC,
    RTCRtpSender: { getCapabilities: () => ({ codecs: CODECS }) },
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    gatherTimeout: 20,
    ...options,
  });
}

function reset() {
  FakePC.instances = [];
  FakePC.gathering = "complete";
  FakePC.autoConnect = true;
}

const CODECS = [
  { mimeType: "video/VP8", clockRate: 90000 },
  { mimeType: "video/rtx", clockRate: 90000, sdpFmtpLine: "apt=96" },
  { mimeType: "video/H264", clockRate: 90000, sdpFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640034" },
  { mimeType: "video/H264", clockRate: 90000, sdpFmtpLine: "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f" },
  { mimeType: "video/H264", clockRate: 90000, sdpFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f" },
  { mimeType: "video/VP9", clockRate: 90000, sdpFmtpLine: "profile-id=0" },
  { mimeType: "video/AV1", clockRate: 90000 },
  { mimeType: "video/red", clockRate: 90000 },
  { mimeType: "video/ulpfec", clockRate: 90000 },
  { mimeType: "video/flexfec-03", clockRate: 90000, sdpFmtpLine: "repair-window=10000000" },
];

test("201: answer set, Location resolved, Link ICE servers applied, live", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([created()]);
  const whip = client(fetch, timers, { token: "s3cret" });
  const states = [];
  whip.addEventListener("statechange", (e) => states.push(e.detail.state));
  const stream = fakeStream();
  await whip.publish(stream, { videoCodec: "H264", maxBitrate: 1_000_000 });

  assert.equal(whip.state, "live");
  assert.deepEqual(states, ["connecting", "live"]);
  assert.equal(whip.sessionUrl, "http://example.test/whip/cam1/s1");
  assert.equal(whip.attempts, 0);
  const [post] = calls;
  assert.equal(post.method, "POST");
  assert.equal(post.url, ENDPOINT);
  assert.equal(post.headers["Content-Type"], "application/sdp");
  assert.equal(post.headers.Authorization, "Bearer s3cret");
  assert.equal(post.body, OFFER);
  const pc = FakePC.instances[0];
  assert.deepEqual(pc.remoteDescription, { type: "answer", sdp: ANSWER });
  assert.deepEqual(pc.config.iceServers, [
    { urls: "stun:stun.example.test:3478" },
    { urls: "turn:turn.example.test:3478?transport=udp", username: "u", credential: "p" },
  ]);
  const [audio, video] = pc.transceivers;
  assert.equal(audio.init.direction, "sendonly");
  assert.equal(audio.sender.track, stream.audio);
  assert.equal(video.init.direction, "sendonly");
  assert.deepEqual(video.init.sendEncodings, [{ maxBitrate: 1_000_000 }]);
  assert.equal(video.codecs[0].sdpFmtpLine.includes("packetization-mode=1;profile-level-id=42e01f"), true);
  assert.equal(video.codecs.length, CODECS.length);
});

test("409: failed with the server's detail, no retry", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([problem(409, "someone is already live on cam1")]);
  const whip = client(fetch, timers);
  const errors = [];
  whip.addEventListener("error", (e) => errors.push(e.detail));
  await assert.rejects(whip.publish(fakeStream()), (error) => {
    assert.ok(error instanceof HttpError);
    assert.equal(error.status, 409);
    assert.equal(error.detail, "someone is already live on cam1");
    return true;
  });
  assert.equal(whip.state, "failed");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].fatal, true);
  assert.equal(timers.timers.length, 0, "no reconnect scheduled");
  assert.equal(calls.length, 1);
  assert.equal(FakePC.instances[0].closed, true);
});

test("503 with Retry-After: retried after that delay, then live", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([problem(503, "full", { "Retry-After": "7" }), created()]);
  const whip = client(fetch, timers);
  const states = [];
  whip.addEventListener("statechange", (e) => states.push(e.detail.state));
  const published = whip.publish(fakeStream());
  await settle();
  assert.equal(whip.state, "reconnecting");
  assert.equal(whip.attempts, 1);
  assert.equal(calls.length, 1);
  assert.equal(timers.timers.length, 1);
  assert.equal(timers.timers[0].ms, 7000);
  timers.timers[0].fn();
  await published;
  assert.equal(whip.state, "live");
  assert.equal(whip.attempts, 0);
  assert.deepEqual(states, ["connecting", "reconnecting", "live"]);
  assert.equal(calls.filter((c) => c.method === "POST").length, 2);
  assert.equal(FakePC.instances.length, 2);
  assert.equal(FakePC.instances[0].closed, true);
});

test("network error and ICE failure reconnect; the old session is DELETEd first", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([
    () => { throw new TypeError("Failed to fetch"); },
    created(),
    created({ Location: "/whip/cam1/s2" }),
  ]);
  const whip = client(fetch, timers);
  const stream = fakeStream();
  const published = whip.publish(stream);
  await settle();
  assert.equal(whip.state, "reconnecting");
  timers.timers.shift().fn();
  await published;
  assert.equal(whip.sessionUrl, "http://example.test/whip/cam1/s1");

  FakePC.instances[1].setConnectionState("failed");
  assert.equal(whip.state, "reconnecting");
  const retry = timers.timers.find((t) => t.ms < 2000);
  timers.clearTimeout(retry);
  await retry.fn();
  await settle();
  assert.equal(whip.state, "live");
  assert.equal(whip.sessionUrl, "http://example.test/whip/cam1/s2");
  const methods = calls.map((c) => `${c.method} ${c.url}`);
  assert.deepEqual(methods.slice(-2), [
    "DELETE http://example.test/whip/cam1/s1",
    `POST ${ENDPOINT}`,
  ]);
  const [audio, video] = FakePC.instances[2].transceivers;
  assert.equal(audio.sender.track, stream.audio, "same tracks re-used");
  assert.equal(video.sender.track, stream.video);
});

test("disconnected for 5 s reconnects; back to connected in time does not", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch } = fakeFetch([created()]);
  const whip = client(fetch, timers);
  await whip.publish(fakeStream());
  const pc = FakePC.instances[0];
  pc.setConnectionState("disconnected");
  const grace = timers.timers.find((t) => t.ms === 5000);
  assert.ok(grace);
  pc.setConnectionState("connected");
  assert.equal(timers.timers.includes(grace), false);
  pc.setConnectionState("disconnected");
  timers.timers.find((t) => t.ms === 5000).fn();
  assert.equal(whip.state, "reconnecting");
});

test("400/401/403/404/415/422 are not retried", async () => {
  for (const status of [400, 401, 403, 404, 415, 422]) {
    reset();
    const timers = fakeTimers();
    const { fetch } = fakeFetch([problem(status, `nope ${status}`)]);
    const whip = client(fetch, timers);
    await assert.rejects(whip.publish(fakeStream()), { status, detail: `nope ${status}` });
    assert.equal(whip.state, "failed");
    assert.equal(timers.timers.length, 0);
  }
});

test("stop() DELETEs with keepalive and without If-Match, closes the pc, no reconnect", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([created()]);
  const whip = client(fetch, timers, { token: "t" });
  const stream = fakeStream();
  await whip.publish(stream);
  await whip.stop();
  const del = calls.at(-1);
  assert.equal(del.method, "DELETE");
  assert.equal(del.url, "http://example.test/whip/cam1/s1");
  assert.equal(del.keepalive, true);
  assert.equal(del.headers.Authorization, "Bearer t");
  assert.equal(Object.keys(del.headers).some((h) => h.toLowerCase() === "if-match"), false);
  assert.equal(FakePC.instances[0].closed, true);
  assert.equal(whip.state, "stopped");
  assert.equal(whip.sessionUrl, null);
  assert.equal(timers.timers.length, 0);
});

test("stop() while reconnecting rejects publish() and cancels the retry", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([problem(502, "bad gateway")]);
  const whip = client(fetch, timers);
  const published = whip.publish(fakeStream());
  await settle();
  assert.equal(whip.state, "reconnecting");
  await whip.stop();
  await assert.rejects(published, { name: "AbortError" });
  assert.equal(timers.timers.length, 0);
  assert.equal(calls.length, 1);
});

test("trickle: later candidates PATCHed as sdpfrag with If-Match, in order", async () => {
  reset();
  FakePC.gathering = "gathering";
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([created()]);
  const whip = client(fetch, timers, { token: "t" });
  await whip.publish(fakeStream());
  const pc = FakePC.instances[0];
  pc.candidate("candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host");
  pc.candidate("candidate:2 1 udp 1686052607 203.0.113.9 50001 typ srflx raddr 192.0.2.1 rport 50000");
  pc.candidate(null);
  await settle();
  const patches = calls.filter((c) => c.method === "PATCH");
  assert.ok(patches.length >= 1);
  for (const patch of patches) {
    assert.equal(patch.url, "http://example.test/whip/cam1/s1");
    assert.equal(patch.headers["Content-Type"], "application/trickle-ice-sdpfrag");
    assert.equal(patch.headers["If-Match"], '"e1"');
    assert.equal(patch.headers.Authorization, "Bearer t");
  }
  const body = patches.map((p) => p.body).join("");
  assert.match(body, /a=ice-ufrag:abcd\r\n/);
  assert.match(body, /a=mid:0\r\n/);
  assert.ok(body.indexOf("192.0.2.1 50000 typ host") < body.indexOf("typ srflx"));
  assert.match(patches.at(-1).body, /a=end-of-candidates\r\n$/);
});

test("candidates from before the POST are not PATCHed again", async () => {
  reset();
  FakePC.gathering = "gathering";
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch([created()]);
  const whip = client(fetch, timers);
  const published = whip.publish(fakeStream());
  await tick();
  FakePC.instances[0].candidate("candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host");
  await published;
  await settle();
  assert.equal(calls.filter((c) => c.method === "PATCH").length, 0);
});

test("simulcast: rids l/m/h low to high, maxBitrate on the top layer", async () => {
  reset();
  const encodings = videoEncodings({ simulcast: true, maxBitrate: 3_000_000 });
  assert.deepEqual(encodings.map((e) => [e.rid, e.scaleResolutionDownBy]), [["l", 4], ["m", 2], ["h", 1]]);
  assert.equal(encodings[2].maxBitrate, 3_000_000);
  assert.ok(encodings[0].maxBitrate < encodings[1].maxBitrate);
  const timers = fakeTimers();
  const { fetch } = fakeFetch([created()]);
  const whip = client(fetch, timers);
  await whip.publish(fakeStream(), { simulcast: true, maxBitrate: 3_000_000 });
  const video = FakePC.instances[0].transceivers[1];
  assert.deepEqual(video.init.sendEncodings, encodings);
  assert.equal(whip.state, "live");
  // The answer had no a=simulcast: the one layer left is made full size, full bitrate.
  assert.deepEqual(video.sender.parameters.encodings, [
    { rid: "l", scaleResolutionDownBy: 1, maxBitrate: 3_000_000 },
  ]);
});

test("simulcast accepted by the answer: the encodings stay as offered", async () => {
  reset();
  const timers = fakeTimers();
  const answer = ANSWER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=simulcast:recv l;m;h\r\n";
  const { fetch } = fakeFetch([() => new Response(answer, { status: 201, headers: { Location: "/whip/cam1/s1" } })]);
  const whip = client(fetch, timers);
  await whip.publish(fakeStream(), { simulcast: true, maxBitrate: 3_000_000 });
  const video = FakePC.instances[0].transceivers[1];
  assert.equal(video.sender.parameters.encodings[0].scaleResolutionDownBy, 4);
});

test("preferCodec puts the chosen codec first and keeps rtx/red/ulpfec/flexfec", () => {
  const vp9 = preferCodec(CODECS, "VP9");
  assert.equal(vp9[0].mimeType, "video/VP9");
  assert.equal(vp9.length, CODECS.length);
  for (const aux of ["video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"]) {
    assert.ok(vp9.some((c) => c.mimeType === aux), aux);
  }
  // Auxiliary entries come straight after the chosen codec, before the fallbacks.
  assert.deepEqual(vp9.slice(1, 5).map((c) => c.mimeType), ["video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"]);
  assert.equal(preferCodec(CODECS, "video/av1")[0].mimeType, "video/AV1");
  const h264 = preferCodec(CODECS, "H264");
  assert.deepEqual(h264.slice(0, 3).map((c) => /profile-level-id=(\w+)/.exec(c.sdpFmtpLine)[1] + /packetization-mode=(\d)/.exec(c.sdpFmtpLine)[1]),
    ["42e01f1", "42e01f0", "6400341"]);
  assert.deepEqual(preferCodec(CODECS, undefined), CODECS);
  assert.notEqual(preferCodec(CODECS, undefined), CODECS, "a copy");
  assert.deepEqual(preferCodec(CODECS, "video/H265").slice(0, 4).map((c) => c.mimeType), ["video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"]);
});

test("isRetryable: network, 5xx, 408, 429, ICE failure; not other 4xx", () => {
  assert.equal(isRetryable(new TypeError("Failed to fetch")), true);
  for (const s of [500, 502, 503, 408, 429]) assert.equal(isRetryable(new HttpError(s, "")), true, s);
  for (const s of [400, 401, 403, 404, 405, 409, 412, 415, 422]) assert.equal(isRetryable(new HttpError(s, "")), false, s);
  assert.equal(isRetryable(Object.assign(new Error("x"), { name: "OperationError" })), false);
});

test("replaceTrack swaps the sender's track and is used on reconnect", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch } = fakeFetch([created(), created()]);
  const whip = client(fetch, timers);
  await whip.publish(fakeStream());
  const screen = { kind: "video", id: "screen" };
  await whip.replaceTrack("video", screen);
  assert.equal(FakePC.instances[0].transceivers[1].sender.track, screen);
  FakePC.instances[0].setConnectionState("failed");
  const retry = timers.timers.find((t) => t.ms < 2000);
  await retry.fn();
  await settle();
  assert.equal(FakePC.instances[1].transceivers[1].sender.track, screen);
});

test("getStats: bitrate between calls, top layer, codec, rtt, layers", async () => {
  reset();
  const timers = fakeTimers();
  const { fetch } = fakeFetch([created()]);
  const whip = client(fetch, timers);
  await whip.publish(fakeStream());
  const pc = FakePC.instances[0];
  let t = 1000;
  let bytes = 0;
  pc.getStats = async () => {
    const report = new Map();
    const add = (s) => report.set(s.id, { timestamp: t, ...s });
    add({ id: "c1", type: "codec", mimeType: "video/VP8" });
    add({ id: "v-l", type: "outbound-rtp", kind: "video", rid: "l", bytesSent: bytes / 4, packetsSent: 10, frameWidth: 320, frameHeight: 180, framesPerSecond: 30, codecId: "c1", active: true });
    add({ id: "v-h", type: "outbound-rtp", kind: "video", rid: "h", bytesSent: bytes, packetsSent: 100, frameWidth: 1280, frameHeight: 720, framesPerSecond: 29, codecId: "c1", qualityLimitationReason: "bandwidth", active: true });
    add({ id: "v-m", type: "outbound-rtp", kind: "video", rid: "m", bytesSent: 0, packetsSent: 0, active: false });
    add({ id: "a", type: "outbound-rtp", kind: "audio", bytesSent: 0, packetsSent: 50 });
    add({ id: "p", type: "candidate-pair", nominated: true, state: "succeeded", currentRoundTripTime: 0.012 });
    return report;
  };
  await whip.getStats(); // first call samples over a short interval
  t += 1000;
  bytes += 250_000;
  const stats = await whip.getStats();
  assert.equal(stats.bitrate, (250_000 + 62_500) * 8);
  assert.equal(stats.fps, 29);
  assert.equal(stats.width, 1280);
  assert.equal(stats.height, 720);
  assert.equal(stats.codec, "VP8");
  assert.equal(stats.rttMs, 12);
  assert.equal(stats.layers, 2);
  assert.equal(stats.packetsSent, 160);
  assert.equal(stats.qualityLimitationReason, "bandwidth");
});
