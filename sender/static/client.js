// Viewer page: a recvonly offer posted to the sender's own /offer (relative URL).
"use strict";

let pc = null;
const GATHER_TIMEOUT_MS = 2000;

function $(id) { return document.getElementById(id); }

function showState(text) { $("status").textContent = "state: " + text; }

function showError(text) { $("error").textContent = text || ""; }

// Resolve once ICE gathering is complete, or after a short timeout with what we have.
function gatheringDone(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function start() {
  $("start").disabled = true;
  showError("");
  showState("connecting");
  const peer = new RTCPeerConnection({ iceServers: [] });
  pc = peer;
  peer.addEventListener("connectionstatechange", () => {
    if (pc === peer) showState(peer.connectionState);
  });
  peer.addEventListener("track", (event) => {
    if (event.track.kind === "video") $("video").srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  peer.addTransceiver("video", { direction: "recvonly" });
  try {
    await peer.setLocalDescription(await peer.createOffer());
    await gatheringDone(peer);
    const response = await fetch("offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: peer.localDescription.sdp, type: peer.localDescription.type }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    if (pc !== peer) return; // stopped meanwhile
    await peer.setRemoteDescription(body);
    $("stop").disabled = false;
  } catch (err) {
    showError(String(err.message || err));
    stop();
  }
}

function stop() {
  if (pc) { pc.close(); pc = null; }
  $("video").srcObject = null;
  $("stop").disabled = true;
  $("start").disabled = false;
  showState("closed");
}

window.addEventListener("DOMContentLoaded", () => {
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
});
