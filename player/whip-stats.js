/**
 * Sender statistics for whip.js, from RTCStatsReport (W3C webrtc-stats): one pass over a
 * report gives the totals of a sample (bytes and packets sent, RTT) and the top (largest)
 * video layer's frame size, rate, codec and quality limitation; two samples give what
 * WHIPClient.getStats() returns. Pure functions; no timers, no peer connection.
 */

/** One pass over an RTCStatsReport: totals and the top (largest) video layer. */
export function outboundSample(report) {
  const all = new Map();
  report.forEach((stat) => all.set(stat.id, stat));
  const out = {
    timestamp: 0, videoBytes: 0, audioBytes: 0, packetsSent: 0, fps: null, width: null,
    height: null, rttMs: null, qualityLimitationReason: null, codec: null, layers: 0,
  };
  let top = null;
  for (const stat of all.values()) {
    if (stat.type === "outbound-rtp") {
      out.timestamp = Math.max(out.timestamp, stat.timestamp ?? 0);
      out.packetsSent += stat.packetsSent ?? 0;
      if (stat.kind === "audio") out.audioBytes += stat.bytesSent ?? 0;
      if (stat.kind === "video") {
        out.videoBytes += stat.bytesSent ?? 0;
        if (stat.active !== false) out.layers++;
        if (!top || (stat.frameWidth ?? 0) > (top.frameWidth ?? 0)) top = stat;
      }
    } else if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") {
      if (stat.currentRoundTripTime !== undefined) out.rttMs = stat.currentRoundTripTime * 1000;
    } else if (stat.type === "remote-inbound-rtp" && stat.kind === "video" && out.rttMs === null) {
      if (stat.roundTripTime !== undefined) out.rttMs = stat.roundTripTime * 1000;
    }
  }
  if (!out.timestamp) out.timestamp = Date.now();
  if (top) {
    out.fps = top.framesPerSecond ?? null;
    out.width = top.frameWidth ?? null;
    out.height = top.frameHeight ?? null;
    out.qualityLimitationReason = top.qualityLimitationReason ?? null;
    const codec = all.get(top.codecId);
    out.codec = codec?.mimeType ? codec.mimeType.split("/")[1] : null;
  }
  if (out.rttMs !== null) out.rttMs = Math.round(out.rttMs);
  return out;
}

/** WHIPClient.getStats()'s result: bit rates between samples `before` and `now`, the rest from `now`. */
export function senderStats(before, now) {
  const seconds = (now.timestamp - before.timestamp) / 1000;
  const rate = (bytes, earlier) => (seconds > 0 ? Math.max(0, ((bytes - earlier) * 8) / seconds) : 0);
  return {
    bitrate: Math.round(rate(now.videoBytes + now.audioBytes, before.videoBytes + before.audioBytes)),
    audioBitrate: Math.round(rate(now.audioBytes, before.audioBytes)),
    fps: now.fps,
    width: now.width,
    height: now.height,
    packetsSent: now.packetsSent,
    rttMs: now.rttMs,
    qualityLimitationReason: now.qualityLimitationReason,
    codec: now.codec,
    layers: now.layers,
  };
}
