// The OBS browser source: /obs#stream=<key>&secret=<follow secret> shows whatever is published to that
// WHIP stream key now, and switches by itself when OBS stops and starts streaming again (each start is
// a new session). It asks GET /api/streams/<key> which session is current, about once a second while
// one plays and a little less often while none does, and watches it through POST /whep/streams/<key>.
// Credentials come after "#" (never sent to the server); the page moves them to sessionStorage and
// drops them from the address bar, as /watch does. ?bg=transparent leaves the letterbox transparent.
import { authHeaders, errorFrom, iceConfig, localOffer } from "./signaling.js";

const STORAGE_KEY = "streamgen.obs";
const PLAYING_POLL_MS = 1000;
const IDLE_POLL_MS = [500, 1000, 1500, 2000, 3000];  // while nothing plays: quick at first, then a steady 3 s
const query = new URLSearchParams(location.search);
const follow = takeFollowCredential();
const video = document.getElementById("output");

// What tests (and a curious operator, in the console) can read.
const status = { stream: follow.stream, sessionId: null, connects: 0, presented: 0, state: "starting" };
window.streamgenObs = status;

let viewer = null;  // {pc, resource, sessionId, broken}
let idlePolls = 0;

function takeFollowCredential() {
  const fields = new URLSearchParams(location.hash.slice(1));
  const given = { stream: fields.get("stream") || "default", credential: fields.get("secret") || fields.get("token") || "" };
  if (given.credential) {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(given));
    history.replaceState(null, "", location.pathname + location.search);
    return given;
  }
  try {
    return JSON.parse(sessionStorage.getItem(STORAGE_KEY)) || given;
  } catch (_) {
    return given;
  }
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const streamPath = (prefix) => `${prefix}/${encodeURIComponent(follow.stream)}`;

// {current: the id of the stream's newest live session or null, live: the ids of all its live sessions}.
async function lookAtStream() {
  const response = await fetch(streamPath("api/streams"), { headers: authHeaders(follow.credential), cache: "no-store" });
  if (!response.ok) throw await errorFrom(response);
  const { session, live_sessions: live } = await response.json();
  return { current: session ? session.id : null, live };
}

async function watch() {
  const pc = new RTCPeerConnection(await iceConfig(follow.credential));
  const current = { pc, resource: null, sessionId: null, broken: false };
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => { video.srcObject = new MediaStream([event.track]); };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") current.broken = true;
  };
  try {
    const response = await fetch(streamPath("whep/streams"), {
      method: "POST",
      headers: authHeaders(follow.credential, { "Content-Type": "application/sdp" }),
      body: await localOffer(pc),
    });
    if (!response.ok) throw await errorFrom(response);
    current.resource = response.headers.get("Location");  // [/prefix]/whep/<session>/<viewer>
    const parts = current.resource.split("/");
    current.sessionId = parts[parts.length - 2];
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  } catch (error) {
    pc.close();
    throw error;
  }
  viewer = current;
  status.sessionId = current.sessionId;
  status.connects += 1;
  status.state = "playing";
}

// Stop playing; `leave`: also tell the server, whose session still holds this viewer (not when it ended).
function stopWatching(leave) {
  if (!viewer) return;
  const { pc, resource } = viewer;
  viewer = null;
  status.sessionId = null;
  status.state = "waiting";
  pc.close();
  video.srcObject = null;
  if (leave && resource) fetch(resource, { method: "DELETE", keepalive: true, headers: authHeaders(follow.credential) }).catch(() => {});
}

// One look at the stream: switch to its current session if that is not the one playing.
async function step() {
  const { current, live } = await lookAtStream();
  if (viewer && (viewer.broken || viewer.sessionId !== current)) stopWatching(live.includes(viewer.sessionId));
  if (!viewer && current) await watch();
  showError("");
}

async function followForever() {
  for (;;) {
    try {
      await step();
    } catch (error) {
      status.state = "error";
      // 404 from the WHEP offer: the session ended between the two requests; the next look finds the new one
      if (error.status !== 404) showError(`${error.message} — retrying…`);
    }
    idlePolls = viewer ? 0 : idlePolls + 1;
    await sleep(viewer ? PLAYING_POLL_MS : IDLE_POLL_MS[Math.min(idlePolls, IDLE_POLL_MS.length) - 1]);
  }
}

function countPresentedFrames() {
  if (!video.requestVideoFrameCallback) return;
  const onFrame = () => {
    status.presented += 1;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

if (query.get("bg") === "transparent") document.documentElement.classList.add("transparent");
window.addEventListener("beforeunload", () => stopWatching(true));

if (query.has("secret") || query.has("token")) {
  // a credential in the query string went to the server with the page request: it is not used
  showError('Put the secret after "#" (/obs#stream=KEY&secret=...): in the query string it is sent to the server.');
} else if (!follow.credential) {
  showError("Open this page with the browser-source URL streamgen gives for a WHIP stream: /obs#stream=KEY&secret=...");
} else {
  countPresentedFrames();
  followForever();
}
