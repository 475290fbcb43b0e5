/**
 * Receiver statistics for whep.js, from RTCStatsReport (W3C webrtc-stats): one pass over a
 * report gives the raw totals of a sample (bytes received, the inbound-rtp entries, codecs,
 * the selected candidate pair), and two consecutive samples give what WHEPClient.getStats()
 * returns (bitrate, loss, jitter, RTT, latency estimate, frame size and rate, codec). Pure
 * functions; no timers, no peer connection.
 */

/** Raw totals from an RTCStatsReport (any object with forEach) taken at `timestamp` (ms). */
export function inboundSample(report, timestamp) {
  const out = {
    timestamp,
    bytes: 0,
    video: null,
    audio: null,
    codecs: new Map(),
    pair: null,
    selectedPairId: null,
    remoteRtt: null,
  };
  const pairs = new Map();
  report.forEach((s) => {
    if (s.type === "inbound-rtp") {
      out.bytes += s.bytesReceived || 0;
      const kind = s.kind || s.mediaType;
      if (kind === "video") out.video = s;
      else if (kind === "audio") out.audio = s;
    } else if (s.type === "codec") out.codecs.set(s.id, s);
    else if (s.type === "candidate-pair") pairs.set(s.id, s);
    else if (s.type === "transport" && s.selectedCandidatePairId) {
      out.selectedPairId = s.selectedCandidatePairId;
    } else if (
      (s.type === "remote-outbound-rtp" || s.type === "remote-inbound-rtp") &&
      typeof s.roundTripTime === "number"
    ) {
      out.remoteRtt = s.roundTripTime;
    }
  });
  out.pair =
    pairs.get(out.selectedPairId) ||
    [...pairs.values()].find((p) => p.nominated && p.state === "succeeded") ||
    null;
  return out;
}

/**
 * WHEPClient.getStats()'s result from sample `s` and the previous sample `prev` (or null):
 * rates and loss are measured between the two, else over the whole session where possible.
 */
export function receiverStats(s, prev, layer) {
  const v = s.video;
  const a = s.audio;
  let bitrate = null;
  if (prev && s.timestamp > prev.timestamp && s.bytes >= prev.bytes) {
    bitrate = Math.round(((s.bytes - prev.bytes) * 8 * 1000) / (s.timestamp - prev.timestamp));
  }
  const lost = (v?.packetsLost || 0) + (a?.packetsLost || 0);
  const received = (v?.packetsReceived || 0) + (a?.packetsReceived || 0);
  let lossPct = null;
  if (prev) {
    const dLost = lost - ((prev.video?.packetsLost || 0) + (prev.audio?.packetsLost || 0));
    const dRecv =
      received - ((prev.video?.packetsReceived || 0) + (prev.audio?.packetsReceived || 0));
    if (dLost + dRecv > 0) lossPct = Math.max(0, (100 * dLost) / (dLost + dRecv));
  }
  if (lossPct === null && lost + received > 0) lossPct = (100 * Math.max(0, lost)) / (lost + received);

  const rtt = s.pair?.currentRoundTripTime ?? s.remoteRtt;
  const rttMs = typeof rtt === "number" ? rtt * 1000 : null;
  const jb = v && v.jitterBufferEmittedCount ? v : a;
  let latencyMs = null;
  if (jb?.jitterBufferEmittedCount) {
    latencyMs = (1000 * jb.jitterBufferDelay) / jb.jitterBufferEmittedCount + (rttMs ?? 0) / 2;
  }
  const jitter = v?.jitter ?? a?.jitter;
  const codec = v?.codecId ? s.codecs.get(v.codecId)?.mimeType : null;
  const fps =
    v?.framesPerSecond ??
    (prev?.video && v && s.timestamp > prev.timestamp
      ? ((v.framesDecoded - prev.video.framesDecoded) * 1000) / (s.timestamp - prev.timestamp)
      : null);
  return {
    width: v?.frameWidth ?? null,
    height: v?.frameHeight ?? null,
    fps: fps ?? null,
    bitrate,
    packetsLost: lost,
    lossPct,
    jitterMs: typeof jitter === "number" ? jitter * 1000 : null,
    rttMs,
    latencyMs,
    codec: codec ? codec.replace(/^[a-z]+\//i, "") : null,
    audioPackets: a?.packetsReceived ?? 0,
    videoFramesDecoded: v?.framesDecoded ?? 0,
    layer,
  };
}
