/**
 * End-to-end encryption for whip.js and whep.js: every audio and video frame is sealed in
 * the publisher's browser and opened in the viewer's, so the server forwards ciphertext
 * (frame format in e2ee-frame.js). The passphrase comes from the page's URL fragment
 * (`#key=...`), which browsers never send in a request; nothing here sends it anywhere.
 *
 *   import { E2EE, keyFromFragment } from "/player/e2ee.js";
 *   const passphrase = keyFromFragment(location.hash);      // null: no encryption
 *   const e2ee = new E2EE(passphrase);
 *   new WHIPClient(url, { e2ee });  // or new WHEPClient(url, { e2ee })
 *   e2ee.addEventListener("counts", (e) => e.detail);  // {encrypted, decrypted, key, plain, unsupported}
 *   e2ee.close();
 *
 * Frames go through an RTCRtpScriptTransform in a Worker (e2ee-worker.js); where that is
 * missing, or the worker cannot be started (a page on another origin than this module),
 * through createEncodedStreams() on the main thread, which needs the peer connection
 * made with peerConfig(). The clients call peerConfig(), sender() and receiver().
 */

import { deriveKey, FrameCipher, frameTransform } from "./e2ee-frame.js";

/** The `key` parameter of a URL fragment ("#key=s3cret"), or null. */
export function keyFromFragment(hash) {
  const value = new URLSearchParams(String(hash || "").replace(/^#/, "")).get("key");
  return value ? value : null;
}

/** Whether this browser can encrypt frames at all. */
export function e2eeSupported() {
  return Boolean(
    globalThis.RTCRtpScriptTransform || globalThis.RTCRtpSender?.prototype?.createEncodedStreams,
  );
}

export class E2EE extends EventTarget {
  constructor(passphrase) {
    super();
    if (!passphrase) throw new TypeError("an end-to-end encryption key is needed");
    if (!e2eeSupported()) throw new Error("this browser cannot encrypt media end to end");
    this._worker = null;
    if (globalThis.RTCRtpScriptTransform) {
      try {
        this._worker = new Worker(new URL("./e2ee-worker.js", import.meta.url), {
          type: "module",
          name: "e2ee",
        });
        this._worker.addEventListener("message", (e) => {
          if (e.data?.type === "counts") this._report(e.data.counts);
        });
        this._worker.postMessage({ type: "key", passphrase });
      } catch {
        this._worker = null; // cross-origin module: fall back to the main thread
      }
    }
    if (!this._worker) {
      this._key = deriveKey(passphrase);
      this._counts = {};
      this._timer = setInterval(() => this._flush(), 1000);
    }
  }

  /** Extra RTCConfiguration members the peer connection must be created with. */
  peerConfig() {
    return this._worker ? {} : { encodedInsertableStreams: true };
  }

  /** Encrypt what `sender` sends (every simulcast encoding goes through it). */
  sender(sender, kind) {
    this._attach(sender, "encrypt", kind);
  }

  /** Decrypt what `receiver` receives; frames that do not open are dropped. */
  receiver(receiver, kind) {
    this._attach(receiver, "decrypt", kind);
  }

  close() {
    this._worker?.terminate();
    this._worker = null;
    clearInterval(this._timer);
    this._timer = null;
  }

  _attach(endpoint, operation, kind) {
    if (this._worker) {
      endpoint.transform = new RTCRtpScriptTransform(this._worker, { operation, kind });
      return;
    }
    const { readable, writable } = endpoint.createEncodedStreams();
    const cipher = this._key.then((key) => new FrameCipher(key));
    const count = (name) => (this._counts[name] = (this._counts[name] ?? 0) + 1);
    readable
      .pipeThrough(frameTransform(operation, kind, cipher, count))
      .pipeTo(writable)
      .catch(() => undefined);
  }

  _flush() {
    if (Object.keys(this._counts).length === 0) return;
    const counts = this._counts;
    this._counts = {};
    this._report(counts);
  }

  _report(counts) {
    this.dispatchEvent(new CustomEvent("counts", { detail: counts }));
  }
}

/**
 * Turns the per-second counts of a receiving E2EE into what a viewer is told: null while
 * frames open (or none arrive), a message once they have failed for `afterMs`.
 */
export class DecryptWatch {
  constructor({ afterMs = 2500, now = Date.now } = {}) {
    this.afterMs = afterMs;
    this._now = now;
    this._failingSince = null;
  }

  /** The message to show after this second's `counts`, or null. */
  update(counts) {
    const failed = (counts.key ?? 0) + (counts.plain ?? 0) + (counts.unsupported ?? 0);
    if ((counts.decrypted ?? 0) > 0 || failed === 0) {
      this._failingSince = null;
      return null;
    }
    this._failingSince ??= this._now();
    if (this._now() - this._failingSince < this.afterMs) return null;
    if (counts.key) return "cannot decrypt: wrong key?";
    if (counts.plain) return "cannot decrypt: this stream is not end-to-end encrypted";
    return "cannot decrypt: the stream's codec cannot be end-to-end encrypted";
  }
}
