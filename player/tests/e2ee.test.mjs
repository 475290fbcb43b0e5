// The end-to-end encryption frame format (e2ee-frame.js) and the fragment/watch helpers
// (e2ee.js) with Node's WebCrypto: `node --test player/tests/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { DecryptWatch, keyFromFragment } from "../e2ee.js";
import {
  clearBytes,
  deriveKey,
  escapeNal,
  FrameCipher,
  MARKER,
  nalUnits,
  TAG_BYTES,
  TRAILER_BYTES,
  unescapeNal,
} from "../e2ee-frame.js";

const bytes = (...parts) => Uint8Array.from(parts.flat());
const random = (n, seed = 7) => Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 17) % 256);
// VP8 keyframe: frame tag (P=0), start code 9d 01 2a, 640x360.
const VP8_KEY = bytes([0x50, 0x2c, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01], [...random(300)]);
const VP8_DELTA = bytes([0x31, 0x05, 0x00], [...random(120, 3)]);
const OPUS = bytes([0x78], [...random(80, 5)]);
// SPS, PPS, then an IDR slice whose body holds zeros that need escaping once encrypted.
const H264 = bytes(
  [0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda], [0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80],
  [0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00], [...random(400, 11)], [0, 0, 3, 1, 5],
);

const keys = { k1: deriveKey("k1"), wrong: deriveKey("wrong") };

test("keyFromFragment reads #key= only", () => {
  assert.equal(keyFromFragment("#key=s3cret"), "s3cret");
  assert.equal(keyFromFragment("#a=1&key=two%20words"), "two words");
  assert.equal(keyFromFragment(""), null);
  assert.equal(keyFromFragment("#key="), null);
});

test("clear bytes per codec", () => {
  assert.equal(clearBytes("vp8", VP8_KEY), 10);
  assert.equal(clearBytes("vp8", VP8_DELTA), 3);
  assert.equal(clearBytes("opus", OPUS), 1);
  assert.deepEqual(nalUnits(H264), [4, 13, 21]);
  assert.equal(clearBytes("h264", H264), 21 + 4); // through the slice header's first 3 bytes
  assert.equal(clearBytes("av1", VP8_KEY), -1);
});

test("escapeNal leaves no start code and unescapeNal undoes it", () => {
  const data = bytes([0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0], [...random(50)], [0, 0]);
  const escaped = escapeNal(data);
  assert.deepEqual(nalUnits(bytes([0xff], [...escaped])), []);
  assert.deepEqual(unescapeNal(escaped), data);
  // A run of zeros before the escaped part counts.
  assert.deepEqual([...escapeNal(bytes([1, 2]), 2)], [3, 1, 2]);
});

for (const [codec, frame] of [["vp8", VP8_KEY], ["vp8", VP8_DELTA], ["opus", OPUS], ["h264", H264]]) {
  test(`${codec} frame of ${frame.length} bytes: clear header, sealed body, trailer`, async () => {
    const sender = new FrameCipher(await keys.k1);
    const clear = clearBytes(codec, frame);
    const sealed = await sender.encrypt(codec, frame);
    assert.deepEqual(sealed.subarray(0, clear), frame.subarray(0, clear));
    assert.ok(sealed.length >= frame.length + TAG_BYTES + TRAILER_BYTES);
    assert.equal(sealed.at(-1), MARKER);
    if (codec === "h264") assert.equal(nalUnits(sealed).length, 3); // no new NAL unit
    else assert.notDeepEqual(sealed.subarray(clear, frame.length), frame.subarray(clear));

    const opened = await new FrameCipher(await keys.k1).decrypt(codec, sealed);
    assert.deepEqual(opened.data, frame);
    assert.deepEqual(await new FrameCipher(await keys.wrong).decrypt(codec, sealed), { error: "key" });
    assert.deepEqual(await new FrameCipher(await keys.k1).decrypt(codec, frame), { error: "plain" });
  });
}

test("every frame gets its own IV; tampering with the clear header is detected", async () => {
  const cipher = new FrameCipher(await keys.k1);
  const a = await cipher.encrypt("vp8", VP8_DELTA);
  const b = await cipher.encrypt("vp8", VP8_DELTA);
  assert.notDeepEqual(a.subarray(-TRAILER_BYTES), b.subarray(-TRAILER_BYTES));
  const tampered = a.slice();
  tampered[1] ^= 1;
  assert.deepEqual(await cipher.decrypt("vp8", tampered), { error: "key" });
  assert.equal(await cipher.encrypt("av1", VP8_KEY), null);
});

test("DecryptWatch speaks after a few seconds of failures only", () => {
  let now = 0;
  const watch = new DecryptWatch({ afterMs: 2500, now: () => now });
  assert.equal(watch.update({ key: 30 }), null);
  now = 1000;
  assert.equal(watch.update({ key: 30 }), null);
  now = 3000;
  assert.equal(watch.update({ key: 30 }), "cannot decrypt: wrong key?");
  now = 4000;
  assert.equal(watch.update({ decrypted: 30, key: 1 }), null);
  now = 8000;
  assert.equal(watch.update({ plain: 30 }), null);
  now = 11000;
  assert.match(watch.update({ plain: 30 }), /not end-to-end encrypted/);
});
