// Data channels in the clients (whep.js, whip.js) and the chat's pure helper (whep-chat.js),
// against a fake RTCPeerConnection whose fetch never answers: only the offer side matters.
import assert from "node:assert/strict";
import { test } from "node:test";

import { CHAT_LABEL, MAX_CHARS, chatEntry } from "../whep-chat.js";
import { WHEPClient } from "../whep.js";
import { WHIPClient } from "../whip.js";

class FakePC extends EventTarget {
  static last = null;
  constructor(config) {
    super();
    this.config = config;
    this.calls = [];
    this.iceGatheringState = "complete";
    this.connectionState = "new";
    FakePC.last = this;
  }
  addTransceiver(what, init) {
    this.calls.push(["transceiver", typeof what === "string" ? what : what.kind]);
    const track = { kind: typeof what === "string" ? what : what.kind };
    return { init, sender: { track }, receiver: { track } };
  }
  createDataChannel(label, init = {}) {
    this.calls.push(["datachannel", label, init]);
    return { label, ...init, readyState: "connecting" };
  }
  getTransceivers() { return []; }
  async createOffer() { return { type: "offer", sdp: "v=0\r\n" }; }
  async setLocalDescription(d) { this.localDescription = d; }
  close() {}
}

const hang = () => new Promise(() => {});
const tick = () => new Promise((resolve) => setImmediate(resolve));
const timers = { setTimeout: () => ({}), clearTimeout: () => {} };

function viewer(options = {}) {
  return new WHEPClient("https://media.example/whep/cam", {
    fetch: hang, RTCPeerConnection: FakePC, MediaStream: null, ...timers, ...options,
  });
}

function remoteChannel(pc, label) {
  const event = new Event("datachannel");
  event.channel = { label, binaryType: "blob" };
  pc.dispatchEvent(event);
  return event.channel;
}

test("WHEP: a data channel after the media sections, so mids 0 and 1 stay audio and video", async () => {
  const c = viewer();
  c.start();
  await tick();
  assert.deepEqual(FakePC.last.calls, [
    ["transceiver", "audio"], ["transceiver", "video"], ["datachannel", "whep", {}],
  ]);
  c.stop();
});

test("WHEP: dataChannel null offers no m=application", async () => {
  const c = viewer({ dataChannel: null });
  c.start();
  await tick();
  assert.ok(FakePC.last.calls.every(([what]) => what !== "datachannel"));
  c.stop();
});

test("WHEP: the server's channels are re-emitted as arraybuffer, not after the session ends", async () => {
  const c = viewer();
  const seen = [];
  c.addEventListener("datachannel", (e) => seen.push(e.detail.channel));
  c.start();
  await tick();
  const pc = FakePC.last;
  const chat = remoteChannel(pc, "chat");
  assert.deepEqual(seen, [chat]);
  assert.equal(chat.binaryType, "arraybuffer");
  c.stop();
  remoteChannel(pc, "late");
  assert.equal(seen.length, 1);
});

test("WHEP: a browser without data channels still plays", async () => {
  class NoData extends FakePC {}
  NoData.prototype.createDataChannel = undefined;
  const c = viewer({ RTCPeerConnection: NoData });
  c.start();
  await tick();
  assert.equal(FakePC.last.localDescription.type, "offer");
  c.stop();
});

test("WHIP: options.dataChannels are opened before each offer and announced", async () => {
  const c = new WHIPClient("https://media.example/whip/cam", {
    fetch: hang, RTCPeerConnection: FakePC, ...timers,
    dataChannels: [{ label: "chat", ordered: true }],
  });
  const seen = [];
  c.addEventListener("datachannel", (e) => seen.push(e.detail.channel));
  c.publish({ getAudioTracks: () => [{ kind: "audio" }], getVideoTracks: () => [] }).catch(() => {});
  await tick();
  assert.deepEqual(FakePC.last.calls, [["transceiver", "audio"], ["datachannel", "chat", { ordered: true }]]);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].label, "chat");
  assert.equal(seen[0].binaryType, "arraybuffer");
  await c.stop();
});

test("chatEntry: text shown as is (no markup), labels other than chat named, binary skipped", () => {
  assert.deepEqual(chatEntry(CHAT_LABEL, "<b>x</b>"), { label: null, text: "<b>x</b>" });
  assert.deepEqual(chatEntry("captions", "hi"), { label: "[captions]", text: "hi" });
  assert.equal(chatEntry("chat", new ArrayBuffer(3)), null);
  const long = chatEntry("chat", "a".repeat(MAX_CHARS + 10));
  assert.equal(long.text.length, MAX_CHARS + 1);
  assert.ok(long.text.endsWith("…"));
});
