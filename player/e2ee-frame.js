/**
 * End-to-end encryption of encoded media frames, SFrame-style (cf. RFC 9605): the bytes the
 * server and the RTP packetizers read stay in clear, the rest is AES-GCM-256 (WebCrypto),
 * and a trailer says how to open it. Used by e2ee-worker.js (RTCRtpScriptTransform) and by
 * e2ee.js's main-thread fallback (createEncodedStreams). No DOM, no I/O.
 *
 *   frame  = clear | AES-GCM(rest) with its 16-byte tag | IV (12) | key id (1) | 0xE5 (1)
 *   clear  = Opus: the TOC byte. VP8: the payload header, 10 bytes of a keyframe (frame tag,
 *            start code, size: RFC 6386 §9.1), 3 of a delta frame (RFC 7741 §4.3).
 *            H.264: everything up to the first slice's NAL header and the 3 bytes after it
 *            (SPS/PPS, NAL types and the slice header's first_mb/slice_type/pps_id, which
 *            the server and the receiving browser parse); what follows is one opaque NAL
 *            body, so it is escaped with emulation prevention bytes (H.264 §7.4.1) to hold
 *            no start code.
 *   IV     = a random 4-byte prefix per transform, then a 64-bit frame counter: unique per
 *            key without coordination between the audio and video transforms.
 *   AAD    = the clear bytes (H.264: from the slice NAL header on; the receiver rebuilds the
 *            start codes before it, maybe with other lengths).
 * The key is PBKDF2-SHA-256 (100 000 iterations, fixed salt) of the passphrase.
 */

export const IV_BYTES = 12;
export const TAG_BYTES = 16;
export const TRAILER_BYTES = IV_BYTES + 2;
export const MARKER = 0xe5;
export const KEY_ID = 0;
const SALT = "broadcast-e2ee-v1";
const ITERATIONS = 100_000;
const H264_SLICE_CLEAR = 3; // bytes after the slice NAL header left in clear

/** The AES-GCM key for `passphrase` (non-extractable). */
export async function deriveKey(passphrase, subtle = globalThis.crypto.subtle) {
  const utf8 = new TextEncoder();
  const base = await subtle.importKey("raw", utf8.encode(passphrase), "PBKDF2", false, ["deriveKey"]);
  return subtle.deriveKey(
    { name: "PBKDF2", hash: "SHA-256", salt: utf8.encode(SALT), iterations: ITERATIONS },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

/** "vp8" | "h264" | "opus" | another lower-case name, from an RTCEncoded*Frame. */
export function codecOf(frame, kind) {
  const mime = frame.getMetadata?.().mimeType;
  if (mime) return mime.split("/").pop().toLowerCase();
  return kind === "audio" ? "opus" : "unknown";
}

/** Start offsets of the NAL units of an Annex B byte stream (H.264 Annex B.1). */
export function nalUnits(data) {
  const starts = [];
  for (let i = 2; i < data.length; i++) {
    if (data[i] === 1 && data[i - 1] === 0 && data[i - 2] === 0) starts.push(i + 1);
  }
  return starts;
}

/** How many leading bytes of `data` stay in clear, or -1 for a codec this cannot carry. */
export function clearBytes(codec, data) {
  const n = data.length;
  if (codec === "opus") return Math.min(1, n);
  if (codec === "vp8") return Math.min(n && !(data[0] & 1) ? 10 : 3, n);
  if (codec === "h264") {
    for (const start of nalUnits(data)) {
      const type = data[start] & 0x1f;
      if (type === 1 || type === 5) return Math.min(start + 1 + H264_SLICE_CLEAR, n);
    }
    return n; // parameter sets only: nothing to hide
  }
  return -1;
}

function aadStart(codec, clear) {
  return codec === "h264" ? Math.max(0, clear - 1 - H264_SLICE_CLEAR) : 0;
}

// Zeros right before `end`: an escape (or unescape) of what follows continues that run.
function zerosBefore(data, end) {
  let zeros = 0;
  while (zeros < 2 && end - zeros - 1 >= 0 && data[end - zeros - 1] === 0) zeros++;
  return zeros;
}

/** H.264 §7.4.1: insert 0x03 after two zeros when the next byte is 0..3. */
export function escapeNal(bytes, zeros = 0) {
  const out = new Uint8Array(bytes.length + Math.ceil(bytes.length / 2) + 1);
  let o = 0;
  for (const b of bytes) {
    if (zeros >= 2 && b <= 3) {
      out[o++] = 3;
      zeros = 0;
    }
    out[o++] = b;
    zeros = b === 0 ? zeros + 1 : 0;
  }
  // A NAL unit must not end in 0x00 (trailing_zero_8bits would eat it): the trailer ends
  // in MARKER, so it never does.
  return out.subarray(0, o);
}

/** The inverse of escapeNal(). */
export function unescapeNal(bytes, zeros = 0) {
  const out = new Uint8Array(bytes.length);
  let o = 0;
  for (const b of bytes) {
    if (zeros >= 2 && b === 3) {
      zeros = 0;
      continue;
    }
    out[o++] = b;
    zeros = b === 0 ? zeros + 1 : 0;
  }
  return out.subarray(0, o);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Seals and opens frames with one key; keeps the IV counter of one transform. */
export class FrameCipher {
  constructor(key, { subtle = globalThis.crypto.subtle, random = globalThis.crypto } = {}) {
    this.key = key;
    this.subtle = subtle;
    this.prefix = random.getRandomValues(new Uint8Array(4));
    this.counter = 0n;
  }

  _nextIv() {
    const iv = new Uint8Array(IV_BYTES);
    iv.set(this.prefix);
    new DataView(iv.buffer).setBigUint64(4, this.counter++);
    return iv;
  }

  /** The encrypted frame, or null for a codec whose frames cannot be carried. */
  async encrypt(codec, data) {
    const clear = clearBytes(codec, data);
    if (clear < 0) return null;
    const iv = this._nextIv();
    const sealed = new Uint8Array(
      await this.subtle.encrypt(
        { name: "AES-GCM", iv, additionalData: data.subarray(aadStart(codec, clear), clear) },
        this.key,
        data.subarray(clear),
      ),
    );
    const body = concat(sealed, iv, Uint8Array.of(KEY_ID, MARKER));
    const head = data.subarray(0, clear);
    return concat(head, codec === "h264" ? escapeNal(body, zerosBefore(head, clear)) : body);
  }

  /**
   * {data} with the plain frame, or {error}: "unsupported" (codec), "plain" (no trailer:
   * the publisher does not encrypt) or "key" (another key, or damaged).
   */
  async decrypt(codec, data) {
    const clear = clearBytes(codec, data);
    if (clear < 0) return { error: "unsupported" };
    let body = data.subarray(clear);
    if (codec === "h264") body = unescapeNal(body, zerosBefore(data, clear));
    const n = body.length;
    if (n < TAG_BYTES + TRAILER_BYTES || body[n - 1] !== MARKER) return { error: "plain" };
    if (body[n - 2] !== KEY_ID) return { error: "key" };
    const iv = body.subarray(n - TRAILER_BYTES, n - 2);
    try {
      const plain = await this.subtle.decrypt(
        { name: "AES-GCM", iv, additionalData: data.subarray(aadStart(codec, clear), clear) },
        this.key,
        body.subarray(0, n - TRAILER_BYTES),
      );
      return { data: concat(data.subarray(0, clear), new Uint8Array(plain)) };
    } catch {
      return { error: "key" };
    }
  }
}

/**
 * A TransformStream of RTCEncoded*Frames for one sender ("encrypt") or receiver
 * ("decrypt"). `count(name)` is told "encrypted", "decrypted" or the reason a frame was
 * dropped ("unsupported", "plain", "key"): a frame that cannot be sealed or opened never
 * goes on, so no plain media leaves and no garbage reaches a decoder.
 */
export function frameTransform(operation, kind, cipher, count) {
  return new TransformStream({
    async transform(frame, controller) {
      const data = new Uint8Array(frame.data);
      if (data.length === 0) {
        controller.enqueue(frame); // an empty frame (e.g. a skipped one) carries nothing
        return;
      }
      const codec = codecOf(frame, kind);
      const c = await cipher;
      if (operation === "encrypt") {
        const out = await c.encrypt(codec, data);
        if (!out) return count("unsupported");
        frame.data = out.buffer;
        count("encrypted");
      } else {
        const result = await c.decrypt(codec, data);
        if (result.error) return count(result.error);
        frame.data = result.data.buffer;
        count("decrypted");
      }
      controller.enqueue(frame);
    },
  });
}
