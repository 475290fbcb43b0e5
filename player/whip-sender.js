/**
 * The video sender's configuration for whip.js: the codec preference order passed to
 * setCodecPreferences (preferCodec, with RTX/RED/FEC kept and H.264 Constrained Baseline
 * first) and the sendEncodings of one layer or simulcast rids l/m/h (videoEncodings).
 * Pure functions of their arguments.
 */

// Repair and redundancy entries: they refer to a media codec by payload type, so they
// must stay in the list whatever codec is chosen (RFC 4588, RFC 2198, RFC 5109).
const AUXILIARY = /\/(rtx|red|ulpfec|flexfec(-03)?)$/i;

/**
 * `codecs` (RTCRtpCodec[] from getCapabilities) reordered so that `mime` ("video/VP8" or
 * just "VP8") comes first, RTX/RED/FEC and the remaining codecs after it in their original
 * order. H.264 entries put Constrained Baseline with packetization-mode=1 first, the
 * profile every WHIP server and Chromium's OpenH264 share. Pure; no `mime` → a copy.
 */
export function preferCodec(codecs, mime) {
  if (!mime) return codecs.slice();
  const wanted = (mime.includes("/") ? mime : `video/${mime}`).toLowerCase();
  const chosen = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (wanted === "video/h264") chosen.sort((a, b) => h264Rank(a) - h264Rank(b));
  const auxiliary = codecs.filter((c) => !chosen.includes(c) && AUXILIARY.test(c.mimeType));
  const rest = codecs.filter((c) => !chosen.includes(c) && !auxiliary.includes(c));
  return [...chosen, ...auxiliary, ...rest];
}

function h264Rank(codec) {
  const fmtp = codec.sdpFmtpLine || "";
  const profile = /profile-level-id=([0-9a-f]{6})/i.exec(fmtp)?.[1]?.toLowerCase() ?? "";
  const mode1 = /packetization-mode=1/.test(fmtp) ? 0 : 1;
  const baseline = profile.startsWith("42e0") ? 0 : profile.startsWith("4200") ? 1 : 2;
  return baseline * 2 + mode1;
}

/** sendEncodings for a video transceiver: rids l/m/h low to high, or one layer. */
export function videoEncodings({ maxBitrate, simulcast = false } = {}) {
  if (!simulcast) return maxBitrate ? [{ maxBitrate }] : [{}];
  const top = maxBitrate || 2_500_000;
  return [
    { rid: "l", scaleResolutionDownBy: 4, maxBitrate: Math.round(top / 8) },
    { rid: "m", scaleResolutionDownBy: 2, maxBitrate: Math.round(top / 3) },
    { rid: "h", scaleResolutionDownBy: 1, maxBitrate: top },
  ];
}
