// The Worker behind e2ee.js: runs each RTCRtpScriptTransform's frames through
// e2ee-frame.js. The page sends {type: "key", passphrase} once; every second this posts
// {type: "counts", counts} with the frames sealed, opened and dropped since the last post.

import { deriveKey, FrameCipher, frameTransform } from "./e2ee-frame.js";

let resolveKey;
const key = new Promise((resolve) => (resolveKey = resolve));
let counts = {};

self.addEventListener("message", (event) => {
  if (event.data?.type === "key") resolveKey(deriveKey(event.data.passphrase));
});

// WebRTC Encoded Transform §5: one event per RTCRtpScriptTransform given to a sender or
// receiver, with the options it was made with. https://w3c.github.io/webrtc-encoded-transform/
self.addEventListener("rtctransform", (event) => {
  const { readable, writable, options } = event.transformer;
  const cipher = key.then((k) => new FrameCipher(k));
  const count = (name) => (counts[name] = (counts[name] ?? 0) + 1);
  readable
    .pipeThrough(frameTransform(options.operation, options.kind, cipher, count))
    .pipeTo(writable)
    .catch(() => undefined); // the sender or receiver went away
});

setInterval(() => {
  if (Object.keys(counts).length === 0) return;
  self.postMessage({ type: "counts", counts });
  counts = {};
}, 1000);
