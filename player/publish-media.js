/**
 * Capture for the publisher page (publish.js): camera, screen and microphone tracks from
 * getUserMedia/getDisplayMedia with the page's settings ({source, camera, microphone, width,
 * height, frameRate}) as constraints, capture errors tagged with the device they concern
 * (error.device: "camera" | "microphone" | "screen"), and the device <select> lists.
 */

export function insecureError() {
  const error = new Error("navigator.mediaDevices is missing");
  error.name = "InsecureContextError";
  return error;
}

function videoConstraints(s) {
  const video = { width: { ideal: s.width }, height: { ideal: s.height }, frameRate: { ideal: s.frameRate } };
  if (s.camera) video.deviceId = { exact: s.camera };
  return video;
}

function audioConstraints(s) {
  if (s.microphone === "none") return false;
  return s.microphone ? { deviceId: { exact: s.microphone } } : true;
}

/** Tag a capture error with the device it concerns, finding out which one is missing. */
async function tagged(error, device, wantsAudio) {
  if (error && typeof error === "object" && !error.device) {
    error.device = device;
    if (device === "camera" && /NotFound|DevicesNotFound/.test(error.name)) {
      try {
        const devices = await navigator.mediaDevices.enumerateDevices();
        const has = (kind) => devices.some((d) => d.kind === kind);
        if (has("videoinput") && wantsAudio && !has("audioinput")) error.device = "microphone";
      } catch {
        // keep "camera"
      }
    }
  }
  return error;
}

/** A camera or screen video track, as settings `s` say. */
export async function captureVideo(s) {
  if (!navigator.mediaDevices?.getUserMedia) throw insecureError();
  if (s.source === "screen") {
    if (!navigator.mediaDevices.getDisplayMedia) {
      const error = new Error("getDisplayMedia is missing");
      error.name = "NotSupportedError";
      error.device = "screen";
      throw error;
    }
    try {
      const display = await navigator.mediaDevices.getDisplayMedia({
        video: { width: { ideal: s.width }, height: { ideal: s.height }, frameRate: { ideal: s.frameRate } },
        audio: false,
      });
      const track = display.getVideoTracks()[0];
      if ("contentHint" in track) track.contentHint = "detail"; // keep text sharp, drop frames
      return track;
    } catch (error) {
      throw await tagged(error, "screen", false);
    }
  }
  try {
    const captured = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(s) });
    return captured.getVideoTracks()[0];
  } catch (error) {
    throw await tagged(error, "camera", false);
  }
}

/** A microphone track, or null for "No microphone". */
export async function captureAudio(s) {
  if (s.microphone === "none") return null;
  if (!navigator.mediaDevices?.getUserMedia) throw insecureError();
  try {
    const captured = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(s) });
    return captured.getAudioTracks()[0];
  } catch (error) {
    throw await tagged(error, "microphone", true);
  }
}

/**
 * {stream, video, audio (null without a microphone), source}: camera and microphone in one
 * request (one permission prompt); screen, then microphone.
 */
export async function capture(s) {
  if (!navigator.mediaDevices?.getUserMedia) throw insecureError();
  let video = null;
  let audio = null;
  if (s.source === "camera") {
    const wantsAudio = s.microphone !== "none";
    try {
      const captured = await navigator.mediaDevices.getUserMedia({
        video: videoConstraints(s),
        audio: audioConstraints(s),
      });
      video = captured.getVideoTracks()[0];
      audio = captured.getAudioTracks()[0] ?? null;
    } catch (error) {
      throw await tagged(error, "camera", wantsAudio);
    }
  } else {
    video = await captureVideo(s);
    try {
      audio = await captureAudio(s);
    } catch (error) {
      video.stop();
      throw error;
    }
  }
  const stream = new MediaStream([video, ...(audio ? [audio] : [])]);
  return { stream, video, audio, source: s.source };
}

/** The media input and output devices, or null where the browser does not list them. */
export async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return null;
  try {
    return await navigator.mediaDevices.enumerateDevices();
  } catch {
    return null;
  }
}

/**
 * Fill the camera and microphone <select>s from `devices`, keeping the current choice or
 * the device that `media` ({video, audio, source} as from capture()) is using.
 */
export function fillDevices(cameraSelect, microphoneSelect, devices, media) {
  const current = (kind) => media?.[kind]?.getSettings?.().deviceId;
  fill(cameraSelect, devices.filter((d) => d.kind === "videoinput"), "Default camera", "Camera",
    media?.source === "camera" ? current("video") : undefined);
  fill(microphoneSelect, devices.filter((d) => d.kind === "audioinput"), "Default microphone", "Microphone",
    current("audio"), true);
}

function fill(select, devices, defaultLabel, noun, activeId, withNone = false) {
  const selected = activeId || select.value;
  const options = [new Option(defaultLabel, "")];
  devices
    .filter((d) => d.deviceId && d.deviceId !== "default")
    .forEach((d, i) => options.push(new Option(d.label || `${noun} ${i + 1}`, d.deviceId)));
  if (withNone) options.push(new Option("No microphone", "none"));
  select.replaceChildren(...options);
  select.value = options.some((o) => o.value === selected) ? selected : "";
}
