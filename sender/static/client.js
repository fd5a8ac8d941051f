// Viewer page: WHEP (POST whep, application/sdp) with trickle ICE (PATCH the session
// with application/trickle-ice-sdpfrag bodies), an optional bearer token, live stats.
// Plain JS, no build step; relative URLs only.
//
// Audio: the offer always asks for it (a recvonly audio section); a sender without audio
// answers that section inactive and no audio track comes. The sender's audio plays from
// the video element, muted at first (browsers autoplay only muted media) until the
// Unmute button, shown once an audio track arrives, is pressed.
//
// Several cameras: GET cameras lists them; the page offers a <select> (hidden with one
// camera) and watches whep/NAME, the pick remembered in the URL as ?camera=NAME.
//
// ICE servers: the ones the sender advertises in the POST answer's Link headers
// (rel="ice-server", with this viewer's own TURN credentials). The offer is posted at
// once, but set as local description, which starts gathering, only after the answer:
// setConfiguration() before setLocalDescription(), as the WHIP/WHEP drafts note, so the
// candidates are gathered with those servers, without an ICE restart or an OPTIONS
// round trip first.
"use strict";

const TOKEN_KEY = "webrtc-webcam.token"; // sessionStorage only: gone with the tab
const SDP = "application/sdp";
const SDPFRAG = "application/trickle-ice-sdpfrag";

// The frame stamp (common/stamp.py): two rows of 40 cells at the top of the picture.
const STAMP_BITS = 40;
const STAMP_MODULUS = 2 ** 40;
const STAMP_MIN_WIDTH = 320;
const STAMP_LOW = 64; // bimodality: every cell centre below LOW or above HIGH
const STAMP_HIGH = 192;
const STAMP_THRESHOLD = 128;
const STAMP_READ_INTERVAL_MS = 100;

const FPS_WINDOW_MS = 1000;
const RENDER_INTERVAL_MS = 250;

// For tests and benchmarks; reset on every Start.
const viewerStats = {
  frames: 0, fps: 0, width: 0, height: 0, latencyMs: null, firstFrameMs: null,
  patches: 0, // successful PATCHes of candidates
  answeredMs: null, // Start to the SDP answer received
  state: "idle",
  iceServers: [], // the URLs of the advertised ICE servers in use (no credentials)
  route: null, // "local -> remote" candidate types of the pair in use, e.g. "relay -> host"
  iceErrors: [], // "URL: code text" of failed STUN/TURN requests (icecandidateerror)
  audio: false, // the sender's audio track arrived
};
window.viewerStats = viewerStats;

let current = null; // the running attempt (see start())
let cameras = []; // the sender's camera names (GET cameras), the first the default
let camerasLoaded = Promise.resolve(); // the list, asked for once the page is loaded

function $(id) { return document.getElementById(id); }

function showError(text) { $("error").textContent = text || ""; }

function showState(text) {
  viewerStats.state = text;
  $("state").textContent = text;
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  $("connect").disabled = running;
}

class AuthError extends Error {
  constructor(sentToken) {
    super(sentToken ? "wrong token" : "token required");
    this.sentToken = sentToken;
  }
}

function requestHeaders(attempt, extra) {
  const headers = Object.assign({}, extra || {});
  if (attempt.token) headers.Authorization = "Bearer " + attempt.token;
  return headers;
}

async function errorText(response) {
  let reason = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") reason = body.error;
  } catch (_) { /* not JSON */ }
  return `the sender answered ${response.status}: ${reason}`;
}

// --- signalling: WHEP + trickle ICE ----------------------------------------------

async function start(startedAt) {
  if (current) teardown(current);
  showError("");
  resetStats(startedAt);
  setRunning(true);
  showState("connecting");

  const pc = new RTCPeerConnection({ iceServers: [] });
  const attempt = {
    pc,
    url: null, // the WHEP session URL, from Location
    token: sessionStorage.getItem(TOKEN_KEY),
    queue: [], // local candidates not yet sent
    gathered: false, // ICE gathering finished
    endSent: false, // a=end-of-candidates sent
    patching: false, // a PATCH is in flight
    closed: false,
    startedAt,
    frameHandle: null,
    lastPresented: null,
    fpsSamples: [],
    lastStampRead: -Infinity,
    stream: new MediaStream(), // the video element's: the received video and audio tracks
  };
  current = attempt;

  pc.addEventListener("icecandidate", (event) => {
    if (attempt.closed) return;
    if (event.candidate) {
      if (event.candidate.candidate) attempt.queue.push(event.candidate);
    } else {
      attempt.gathered = true;
    }
    flushCandidates(attempt);
  });
  pc.addEventListener("connectionstatechange", () => {
    if (current !== attempt) return;
    showState(pc.connectionState);
    if (pc.connectionState === "connected") showRoute(attempt);
    if (pc.connectionState === "failed") {
      const turn = viewerStats.iceErrors.length ? ` (${viewerStats.iceErrors.join("; ")})` : "";
      showError(`the connection failed (ICE or DTLS)${turn}; press Start to try again`);
      stop("failed");
    }
  });
  // A TURN server refusing its credentials (401) or not answering: say so if it fails.
  pc.addEventListener("icecandidateerror", (event) => {
    if (current !== attempt || !event.url) return;
    const text = `${event.url}: ${event.errorCode} ${event.errorText || ""}`.trim();
    if (!viewerStats.iceErrors.includes(text)) viewerStats.iceErrors.push(text);
    console.warn("ICE server error:", text);
  });
  pc.addEventListener("track", (event) => {
    if (current !== attempt) return;
    if (event.track.kind === "video") {
      attempt.stream.addTrack(event.track);
      attachVideo(attempt, attempt.stream);
    } else if (event.track.kind === "audio") {
      attempt.stream.addTrack(event.track);
      viewerStats.audio = true;
      $("unmute").hidden = false;
    }
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });

  try {
    await camerasLoaded; // which endpoint: the picked camera's
    const offer = await pc.createOffer();
    // At once: candidates follow by PATCH as they are gathered (after the answer).
    const response = await fetch(whepEndpoint(), {
      method: "POST",
      headers: requestHeaders(attempt, { "Content-Type": SDP }),
      body: offer.sdp,
    }).catch((err) => { throw new Error("cannot reach the sender: " + err.message); });
    const location = response.headers.get("Location");
    if (attempt.closed) { // stopped meanwhile
      if (response.status === 201 && location) deleteSession(attempt, new URL(location, response.url).href);
      return;
    }
    if (response.status === 401) throw new AuthError(Boolean(attempt.token));
    if (response.status !== 201) throw new Error(await errorText(response));
    if (!location) throw new Error("the sender's answer has no Location header");
    attempt.url = new URL(location, response.url).href;
    const answer = await response.text();
    if (attempt.closed) return;
    $("auth").hidden = true;
    viewerStats.answeredMs = performance.now() - startedAt;
    const iceServers = iceServersFromLinks(response.headers.get("Link"));
    if (iceServers.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
    viewerStats.iceServers = iceServers.map((server) => server.urls);
    await pc.setLocalDescription(offer); // gathering starts, with those servers
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    flushCandidates(attempt);
  } catch (err) {
    if (attempt.closed) return;
    teardown(attempt);
    current = null;
    setRunning(false);
    if (err instanceof AuthError) {
      askForToken(err.sentToken);
    } else {
      showState("closed");
      showError(String((err && err.message) || err));
    }
  }
}

// --- several cameras -------------------------------------------------------------------

// "whep" for a sender with one camera (its only endpoint), else "whep/NAME" of the pick.
function whepEndpoint() {
  if (cameras.length < 2) return "whep";
  return "whep/" + encodeURIComponent($("camera").value || cameras[0]);
}

// Fill the picker from GET cameras; the camera in ?camera=NAME is picked if it exists.
async function loadCameras() {
  let listed;
  try {
    const response = await fetch("cameras");
    if (!response.ok) return;
    listed = await response.json();
  } catch (_) {
    return; // an older sender: one camera at "whep"
  }
  cameras = (listed.cameras || []).map((camera) => camera.name);
  const select = $("camera");
  select.replaceChildren(...cameras.map((name) => new Option(name, name)));
  const wanted = new URLSearchParams(window.location.search).get("camera");
  if (wanted && cameras.includes(wanted)) select.value = wanted;
  $("picker").hidden = cameras.length < 2;
}

// Another camera picked: remember it in the URL, and watch it at once if running.
function pickCamera() {
  const url = new URL(window.location.href);
  url.searchParams.set("camera", $("camera").value);
  window.history.replaceState(null, "", url.href);
  if (current) start(performance.now());
}

// RFC 8288 Link header values (fetch joins several with ", ") to RTCIceServers: the
// links with rel="ice-server", with username/credential when given.
function iceServersFromLinks(header) {
  const servers = [];
  for (const link of splitOutside(header || "", ",")) {
    const match = /^\s*<([^>]*)>(.*)$/s.exec(link);
    if (!match) continue;
    const params = {};
    for (const part of splitOutside(match[2], ";")) {
      const eq = part.indexOf("=");
      if (eq < 0) continue;
      const key = part.slice(0, eq).trim().toLowerCase();
      let value = part.slice(eq + 1).trim();
      if (value.startsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, "$1");
      if (!(key in params)) params[key] = value;
    }
    if (!(params.rel || "").toLowerCase().split(/\s+/).includes("ice-server")) continue;
    const server = { urls: match[1] };
    if ("username" in params) {
      server.username = params.username;
      server.credential = params.credential || "";
    }
    servers.push(server);
  }
  return servers;
}

// Split at `separator` outside double quotes and <...>.
function splitOutside(text, separator) {
  const parts = [];
  let current = "";
  let quoted = false;
  let bracket = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted && c === "\\") { current += c + (text[i + 1] || ""); i++; continue; }
    if (c === '"' && !bracket) quoted = !quoted;
    else if (c === "<" && !quoted) bracket = true;
    else if (c === ">" && !quoted) bracket = false;
    else if (c === separator && !quoted && !bracket) { parts.push(current); current = ""; continue; }
    current += c;
  }
  parts.push(current);
  return parts.map((part) => part.trim()).filter((part) => part);
}

// The candidate types of the pair in use ("relay -> host"): shown, and for the tests.
async function showRoute(attempt, tries = 0) {
  let report;
  try {
    report = await attempt.pc.getStats();
  } catch (_) {
    return; // closed meanwhile
  }
  if (current !== attempt) return;
  let pair = null;
  report.forEach((entry) => {
    if (entry.type === "transport" && entry.selectedCandidatePairId) {
      pair = report.get(entry.selectedCandidatePairId);
    }
  });
  if (!pair) { // the stats can lag the state change a little
    if (tries < 10) setTimeout(() => showRoute(attempt, tries + 1), 300);
    return;
  }
  const local = report.get(pair.localCandidateId);
  const remote = report.get(pair.remoteCandidateId);
  viewerStats.route = `${local ? local.candidateType : "?"} -> ${remote ? remote.candidateType : "?"}`;
  $("route").textContent = viewerStats.route;
}

// Send every queued candidate (and end-of-candidates once gathering is over) in one
// PATCH; one PATCH at a time, what arrives meanwhile goes in the next.
async function flushCandidates(attempt) {
  if (!attempt.url || attempt.patching || attempt.closed || attempt.endSent) return;
  const end = attempt.gathered;
  if (!attempt.queue.length && !end) return;
  const batch = attempt.queue.splice(0);
  attempt.patching = true;
  try {
    const response = await fetch(attempt.url, {
      method: "PATCH",
      headers: requestHeaders(attempt, { "Content-Type": SDPFRAG }),
      body: sdpFragment(attempt.pc, batch, end),
    });
    if (response.ok) {
      if (current === attempt) viewerStats.patches += 1;
    } else if (!attempt.closed) {
      console.warn("PATCH of candidates refused:", await errorText(response));
    }
  } catch (err) {
    if (!attempt.closed) console.warn("PATCH of candidates failed:", err);
  } finally {
    attempt.patching = false;
    if (end) attempt.endSent = true;
  }
  flushCandidates(attempt);
}

// An RFC 8840 fragment: ICE credentials, the first media section's m= line and mid,
// the candidates, and a=end-of-candidates when gathering is over.
function sdpFragment(pc, candidates, end) {
  const lines = pc.localDescription.sdp.split(/\r?\n/);
  const first = (prefix, from) => {
    const found = lines.slice(from || 0).find((line) => line.startsWith(prefix));
    return found === undefined ? null : found.slice(prefix.length);
  };
  const mIndex = lines.findIndex((line) => line.startsWith("m="));
  const mid = first("a=mid:", mIndex) || "0";
  const out = [
    "a=ice-ufrag:" + first("a=ice-ufrag:"),
    "a=ice-pwd:" + first("a=ice-pwd:"),
    lines[mIndex],
    "a=mid:" + mid,
  ];
  for (const candidate of candidates) {
    if (candidate.sdpMid === mid || candidate.sdpMLineIndex === 0) out.push("a=" + candidate.candidate);
  }
  if (end) out.push("a=end-of-candidates");
  return out.join("\r\n") + "\r\n";
}

const DELETE_TIMEOUT_MS = 3000;

// DELETE the session; resolves when answered (or failed, or after DELETE_TIMEOUT_MS).
function deleteSession(attempt, url, keepalive) {
  const init = { method: "DELETE", headers: requestHeaders(attempt), keepalive: Boolean(keepalive) };
  if (window.AbortSignal && AbortSignal.timeout) init.signal = AbortSignal.timeout(DELETE_TIMEOUT_MS);
  return fetch(url, init).catch(() => { /* the sender may be gone already */ });
}

// End an attempt: the session is DELETEd first and the peer connection closed once the
// sender has answered, so the sender ends it for the DELETE rather than for the DTLS
// close racing it. The picture stops at once.
function teardown(attempt, leaving) {
  attempt.closed = true;
  detachVideo(attempt);
  const url = attempt.url;
  attempt.url = null;
  if (url && !leaving) {
    deleteSession(attempt, url).then(() => attempt.pc.close());
  } else {
    if (url) deleteSession(attempt, url, true);
    attempt.pc.close();
  }
}

function stop(state) {
  const attempt = current;
  current = null;
  if (attempt) teardown(attempt);
  setRunning(false);
  showState(state || "closed");
  viewerStats.fps = 0;
  render();
}

// --- the token -----------------------------------------------------------------------

function askForToken(sentToken) {
  showState(sentToken ? "token refused" : "token needed");
  if (sentToken) {
    sessionStorage.removeItem(TOKEN_KEY);
    showError("wrong token: the sender refused it (401). Check the token and press Connect.");
  } else {
    showError("this sender needs a token: enter it and press Connect.");
  }
  $("auth").hidden = false;
  $("token").value = "";
  $("token").focus();
}

function connectWithToken(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    showError("enter the token first");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  start(event.timeStamp || performance.now());
}

// --- the video and its stats ----------------------------------------------------------

function resetStats(startedAt) {
  Object.assign(viewerStats, {
    frames: 0, fps: 0, width: 0, height: 0, latencyMs: null, firstFrameMs: null, patches: 0,
    answeredMs: null, iceServers: [], route: null, iceErrors: [], audio: false,
  });
  setMuted(true); // every start is muted again: autoplay needs it
  $("unmute").hidden = true;
  $("route").textContent = "-";
  viewerStats.startedAt = startedAt;
  $("latency").textContent = "-";
  render();
}

function attachVideo(attempt, stream) {
  const video = $("video");
  video.srcObject = stream;
  video.play().catch(() => { /* autoplay muted: play() only helps where it is blocked */ });
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (now, meta) => {
      if (current !== attempt) return;
      const presented = meta.presentedFrames;
      const added = attempt.lastPresented === null || presented <= attempt.lastPresented
        ? 1 : presented - attempt.lastPresented;
      attempt.lastPresented = presented;
      // expectedDisplayTime is on the performance clock; the stamp on the wall clock
      const displayedAt = Date.now() + (meta.expectedDisplayTime - performance.now());
      frameArrived(attempt, added, meta.presentationTime || now, displayedAt);
      attempt.frameHandle = video.requestVideoFrameCallback(onFrame);
    };
    attempt.frameHandle = video.requestVideoFrameCallback(onFrame);
  } else {
    attempt.pollTimer = setInterval(() => pollDecoded(attempt), STAMP_READ_INTERVAL_MS);
  }
}

// Without requestVideoFrameCallback: framesDecoded from getStats.
async function pollDecoded(attempt) {
  if (current !== attempt) return;
  const report = await attempt.pc.getStats();
  report.forEach((entry) => {
    if (entry.type !== "inbound-rtp" || entry.kind !== "video") return;
    const decoded = entry.framesDecoded || 0;
    const added = decoded - viewerStats.frames;
    if (added > 0 && current === attempt) frameArrived(attempt, added, performance.now(), Date.now());
  });
}

function detachVideo(attempt) {
  const video = $("video");
  if (attempt.frameHandle !== null && video.cancelVideoFrameCallback) {
    video.cancelVideoFrameCallback(attempt.frameHandle);
  }
  attempt.frameHandle = null;
  if (attempt.pollTimer) clearInterval(attempt.pollTimer);
  if (current === attempt || current === null) {
    video.srcObject = null;
    $("unmute").hidden = true; // no audio without a stream; the next one starts muted
    setMuted(true);
  }
}

function setMuted(muted) {
  $("video").muted = muted;
  $("unmute").textContent = muted ? "Unmute" : "Mute";
}

function frameArrived(attempt, added, when, wallMs) {
  if (viewerStats.firstFrameMs === null) viewerStats.firstFrameMs = when - attempt.startedAt;
  viewerStats.frames += added;
  const video = $("video");
  viewerStats.width = video.videoWidth;
  viewerStats.height = video.videoHeight;
  const samples = attempt.fpsSamples;
  samples.push([when, viewerStats.frames]);
  while (samples.length > 2 && when - samples[1][0] >= FPS_WINDOW_MS) samples.shift();
  const [t0, f0] = samples[0];
  if (when > t0) viewerStats.fps = ((viewerStats.frames - f0) * 1000) / (when - t0);
  if (when - attempt.lastStampRead >= STAMP_READ_INTERVAL_MS) {
    attempt.lastStampRead = when;
    const captureUs = readStamp(video);
    if (captureUs === null) {
      viewerStats.latencyMs = null;
      $("latency").textContent = "no stamp";
    } else {
      let ageUs = (((wallMs * 1000 - captureUs) % STAMP_MODULUS) + STAMP_MODULUS) % STAMP_MODULUS;
      if (ageUs > STAMP_MODULUS / 2) ageUs -= STAMP_MODULUS; // clocks apart: a negative age
      viewerStats.latencyMs = ageUs / 1000;
      $("latency").textContent = String(Math.round(ageUs / 1000));
    }
  }
}

let stampCanvas = null;

// The capture time (µs mod 2**40) from the stamp's first row, or null when the picture
// carries no stamp: every cell centre of both rows must be clearly black or white.
function readStamp(video) {
  const width = video.videoWidth;
  if (width < STAMP_MIN_WIDTH || video.videoHeight < 2 * Math.floor(width / STAMP_BITS)) return null;
  const s = Math.floor(width / STAMP_BITS);
  const height = 2 * s;
  if (!stampCanvas) stampCanvas = document.createElement("canvas");
  if (stampCanvas.width !== width || stampCanvas.height !== height) {
    stampCanvas.width = width;
    stampCanvas.height = height;
  }
  const ctx = stampCanvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, width, height, 0, 0, width, height);
  const pixels = ctx.getImageData(0, 0, width, height).data;
  const rows = [];
  for (let row = 0; row < 2; row++) {
    const y = row * s + (s >> 1);
    let value = 0;
    for (let bit = 0; bit < STAMP_BITS; bit++) {
      const x = bit * s + (s >> 1);
      const green = pixels[(y * width + x) * 4 + 1];
      if (green >= STAMP_LOW && green <= STAMP_HIGH) return null;
      if (green >= STAMP_THRESHOLD) value += 2 ** bit;
    }
    rows.push(value);
  }
  return rows[0];
}

function render() {
  if (current && current.fpsSamples.length) {
    const last = current.fpsSamples[current.fpsSamples.length - 1][0];
    if (performance.now() - last > 2 * FPS_WINDOW_MS) viewerStats.fps = 0; // stalled
  }
  $("frames").textContent = String(viewerStats.frames);
  $("fps").textContent = viewerStats.frames ? viewerStats.fps.toFixed(1) : "-";
  $("resolution").textContent = viewerStats.width ? `${viewerStats.width}x${viewerStats.height}` : "-";
}

window.addEventListener("DOMContentLoaded", () => {
  $("start").addEventListener("click", (event) => start(event.timeStamp || performance.now()));
  $("stop").addEventListener("click", () => stop("closed"));
  $("auth").addEventListener("submit", connectWithToken);
  $("video").addEventListener("resize", render);
  $("camera").addEventListener("change", pickCamera);
  $("unmute").addEventListener("click", () => setMuted(!$("video").muted));
  setInterval(render, RENDER_INTERVAL_MS);
  camerasLoaded = loadCameras();
});

window.addEventListener("pagehide", () => { if (current) teardown(current, true); });
