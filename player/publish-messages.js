/**
 * What the publisher page (publish.js) tells its user when going live fails: one sentence
 * per server answer (HttpError status) or capture error (DOMException name and the tagged
 * device, see publish-media.js), saying what went wrong and what to do next.
 */

import { HttpError } from "./whip.js";

/** What went wrong and what to do, for #message. */
export function explain(error, stream) {
  if (error instanceof HttpError) {
    const said = error.detail ? ` The server said: “${error.detail}”.` : "";
    switch (error.status) {
      case 401:
      case 403:
        return `The server refused to let you publish (HTTP ${error.status}): check the token in Settings and press Go live again.${said}`;
      case 409:
        return `Someone is already live on “${stream}”, so this broadcast could not start. Stop the other broadcast or use another stream name.${said}`;
      case 400:
      case 415:
      case 422:
        return `The server could not accept this stream (HTTP ${error.status}). Choose another codec or turn simulcast off, then press Go live again.${said}`;
      case 404:
        return `This server has no publishing endpoint for “${stream}” (HTTP 404).${said}`;
      default:
        return `The server refused the stream (HTTP ${error.status}). Press Go live to try again.${said}`;
    }
  }
  const device = error?.device ?? "camera";
  const noun = { camera: "camera", microphone: "microphone", screen: "screen" }[device] ?? device;
  switch (error?.name) {
    case "InsecureContextError":
      return "This page cannot use a camera or microphone because it was not opened over HTTPS " +
        "(browsers allow them only on https:// pages and on http://localhost). Open it over HTTPS and try again.";
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      if (device === "screen") {
        return "Screen sharing was cancelled or not allowed. Press Go live again and pick a screen, window or tab, or choose Camera as the source.";
      }
      return "Camera or microphone permission was denied. Allow it in the address bar's site settings and press Go live again.";
    case "NotFoundError":
    case "DevicesNotFoundError":
      if (device === "microphone") {
        return "No microphone found. Connect one, or choose “No microphone”, and press Go live again.";
      }
      return "No camera found. Connect one, or choose Screen as the source.";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return `The ${noun} could not be started: another application may be using it, or the system blocks it. Close that application (or choose another device) and press Go live again.`;
    case "OverconstrainedError":
      return `The selected ${noun} is not available any more. Choose another one in Settings and press Go live again.`;
    case "NotSupportedError":
      return device === "screen"
        ? "This browser cannot share the screen. Choose Camera as the source."
        : `This browser cannot use the ${noun}.`;
    default:
      return `Could not go live: ${error?.message || error}. Press Go live to try again.`;
  }
}
