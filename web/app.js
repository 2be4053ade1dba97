// The streamgen browser client: pick a source, start a session, steer it live.
//
// One RTCPeerConnection per session: the source video goes up, the processed video comes
// back on the same connection (POST /offer), and a data channel named "control" carries
// parameter changes ({type: "params", id, params}) that the server acknowledges
// ({type: "ack", id, ok, error}) plus the server's periodic {type: "stats"} messages.
// The /offer answer carries the session's own secret: the page sends it (not the admin token)
// to end the session, and puts it after the "#" of the watch link, which browsers never send.
// The "Control" panel (ControlNets, IP-Adapter) lives in control.js and talks through `controlLink`.
import { createControlPanel } from "./control.js";
import { FrameRate, fpsOutText, PLACEHOLDER } from "./overlay.js";
import { authHeaders, errorFrom, iceConfig, localOffer, savedToken, saveToken, watchLink } from "./signaling.js";

const $ = (id) => document.getElementById(id);
const SLIDERS = ["strength", "guidance_scale", "delta", "noise_scale"];
// the live parameters the server's model takes (from /health): image and video models differ
let accepted = null;
const PARAM_DELAY_MS = 120;
const APPLIED_SHOWN_MS = 1500;
const STAT_IDS = ["stat-fps-in", "stat-fps-out", "stat-latency", "stat-rtt", "stat-dropped", "stat-shown"];
const presentedRate = new FrameRate();
let appliedTimer = null;

const session = {
  pc: null,
  channel: null,
  stream: null,
  fileUrl: null,
  id: null,
  secret: null,
  urls: null, // {session, whep, watch}: paths the server gave for this session
  nextMessageId: 1,
  pendingAcks: new Map(),
  pendingParams: {},
  paramTimer: null,
  statsTimer: null,
};

// Counters the page exposes for tests and curious users (see tests/server/test_browser.py).
window.streamgen = {
  outputFrames: 0, paramsApplied: 0, controlAcks: 0, controlErrors: 0, state: "idle", sessionId: null, lastError: null,
};

// ------------------------------------------------------------------ UI helpers
function setStatus(text) {
  $("status").textContent = text;
}

// What went wrong, said for the person at the page: fetch's "Failed to fetch" means the server is gone,
// a 401 means the token section needs filling in (the server's text speaks to API clients).
function explain(error) {
  if (error instanceof TypeError && /fetch|network/i.test(error.message)) {
    return `The server cannot be reached at ${location.origin}. Is streamgen serve still running? Reload the page once it is.`;
  }
  if (error.status === 401) {
    $("token-summary").parentElement.open = true;
    return "This server needs its token: paste the token it was started with (--token) into \"Server token\" below, then press Start.";
  }
  return error.message || String(error);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  window.streamgen.lastError = message;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// A brief "applied" next to the status when the server acknowledged a parameter change.
function showApplied() {
  window.streamgen.paramsApplied += 1;
  $("applied").hidden = false;
  clearTimeout(appliedTimer);
  appliedTimer = setTimeout(() => ($("applied").hidden = true), APPLIED_SHOWN_MS);
}

// Before Start and after Stop the overlay is hidden and empty; while streaming, "–" marks a number not known yet.
function clearOverlay(running = false) {
  for (const id of STAT_IDS) $(id).textContent = running ? PLACEHOLDER : "";
  $("stats").hidden = !running;
  presentedRate.clear();
  clearTimeout(appliedTimer);
  $("applied").hidden = true;
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  $("source").disabled = running;
  window.streamgen.state = running ? "running" : "idle";
}

function currentParams() {
  const params = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    seed: Number.parseInt($("seed").value || "0", 10),
  };
  for (const name of SLIDERS) params[name] = Number.parseFloat($(name).value);
  return onlyAccepted(params);
}

function onlyAccepted(params) {
  // before /health answers, the controls shown (the image model's) decide
  const takes = (name) => (accepted ? accepted.has(name) : !document.querySelector(`[data-param="${name}"]`)?.hidden);
  return Object.fromEntries(Object.entries(params).filter(([name]) => name === "prompt" || takes(name)));
}

// show the controls of the parameters this model takes, hide the others
function showControlsFor(names) {
  accepted = new Set(names);
  for (const label of document.querySelectorAll("[data-param]")) label.hidden = !accepted.has(label.dataset.param);
}

// ------------------------------------------------------------------- sources
// A model that generates without input (a video model's txt2vid) adds a "No input" source:
// the offer then sends nothing (recvonly) and asks for that mode.
// Parameters that only shape the input (a video model's noise on it) are hidden and not sent then.
let noInput = null; // {mode, params_not_taken} from /health, or null
let modelParams = null; // the live parameters the model takes, from /health

function offerNoInput(description) {
  noInput = description;
  const select = $("source");
  const existing = select.querySelector('option[value="none"]');
  if (!description) {
    existing?.remove();
    return;
  }
  if (existing) return;
  const option = document.createElement("option");
  option.value = "none";
  option.textContent = `No input (${description.mode}: generated from the prompt)`;
  select.append(option);
}

function generatingSelected() {
  return Boolean(noInput) && $("source").value === "none";
}

// the controls of the parameters this session would take: the model's, less the input's when there is none
function refreshControls() {
  if (!modelParams) return;
  const skip = generatingSelected() ? new Set(noInput.params_not_taken) : new Set();
  showControlsFor(modelParams.filter((name) => !skip.has(name)));
}

// Browsers expose cameras and screen capture only to secure pages (HTTPS, or http://localhost).
const SECURE_PAGE_NEEDED =
  "This page is not secure (plain HTTP from another machine), so the browser offers no camera or screen here. " +
  "Serve HTTPS (streamgen serve --tls-self-signed, or --tls-cert/--tls-key) or open it through a tunnel " +
  "(ssh -L 8000:localhost:8000 <server>, then http://localhost:8000/). A video file or No input works as it is.";

function showSecureContextNote() {
  const note = $("insecure-note");
  if (!note) return;
  note.textContent = window.isSecureContext ? "" : SECURE_PAGE_NEEDED;
  note.hidden = window.isSecureContext;
  window.streamgen.secureContext = window.isSecureContext;
}

async function openSource(kind) {
  if ((kind === "camera" || kind === "screen") && !navigator.mediaDevices) throw new Error(SECURE_PAGE_NEEDED);
  if (kind === "camera") {
    return navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
      audio: false,
    });
  }
  if (kind === "screen") {
    return navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 30 } }, audio: false });
  }
  const file = $("file").files[0];
  if (!file) throw new Error("Choose a video file first.");
  const player = document.createElement("video");
  session.fileUrl = URL.createObjectURL(file);
  Object.assign(player, { src: session.fileUrl, loop: true, muted: true, playsInline: true });
  await player.play();
  const capture = player.captureStream || player.mozCaptureStream; // Firefox names it mozCaptureStream
  if (!capture) throw new Error("This browser cannot stream a video file (no captureStream).");
  session.player = player;
  return capture.call(player);
}

// ------------------------------------------------------------------- session
async function start() {
  clearError();
  setRunning(true);
  clearOverlay(true);
  setStatus("Opening the source…");
  try {
    const token = $("token").value.trim();
    saveToken(token);
    const generating = generatingSelected(); // no input: the model generates (txt2vid), nothing goes up
    let track = null;
    if (!generating) {
      session.stream = await openSource($("source").value);
      $("input").srcObject = session.stream;
      [track] = session.stream.getVideoTracks();
      if (!track) throw new Error("The source has no video track.");
    }

    setStatus("Connecting…");
    const pc = new RTCPeerConnection(await iceConfig(token)); // TURN, if the server names one, for strict NATs
    window.streamgen.iceTransportPolicy = pc.getConfiguration().iceTransportPolicy;
    session.pc = pc;
    session.channel = pc.createDataChannel("control");
    session.channel.onmessage = (event) => onControlMessage(event.data);
    session.channel.onopen = flushParams;
    if (generating) pc.addTransceiver("video", { direction: "recvonly" });
    else pc.addTransceiver(track, { direction: "sendrecv", streams: [session.stream] });
    pc.ontrack = (event) => showOutput(event.track);
    pc.onconnectionstatechange = () => {
      setStatus(`Connection: ${pc.connectionState}`);
      if (pc.connectionState === "failed") {
        showError("The connection to the server failed (ICE). Is a firewall blocking UDP?");
        stop();
      }
    };

    const sdp = await localOffer(pc);
    const response = await fetch("offer", {
      method: "POST",
      headers: authHeaders(token, { "Content-Type": "application/json" }),
      body: JSON.stringify({ sdp, type: "offer", params: { ...currentParams(), ...panel.offerParams(), ...(generating ? { mode: noInput.mode } : {}) } }),
    });
    if (!response.ok) throw await errorFrom(response);
    const answer = await response.json();
    session.id = answer.session_id;
    session.urls = answer.urls; // where this session lives: behind a proxy, the path that reaches its server
    session.secret = answer.session_secret || null;
    window.streamgen.sessionId = answer.session_id;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    showWatchLink(answer.session_id, session.secret);
    session.statsTimer = setInterval(updateRtt, 1000);
    setStatus("Connecting…");
    panel.started();
  } catch (error) {
    showError(explain(error));
    await stop();
  }
}

async function stop() {
  const { pc, id, secret, urls } = session;
  clearInterval(session.statsTimer);
  clearTimeout(session.paramTimer);
  session.pc = null;
  session.channel = null;
  session.id = session.secret = session.urls = null;
  if (id && urls) {
    // Tell the server right away instead of letting it notice the closed peer.
    fetch(urls.session, { method: "DELETE", keepalive: true, headers: authHeaders(secret) }).catch(() => {});
  }
  if (pc) pc.close();
  if (session.stream) session.stream.getTracks().forEach((t) => t.stop());
  if (session.player) session.player.pause();
  if (session.fileUrl) URL.revokeObjectURL(session.fileUrl);
  session.stream = session.player = session.fileUrl = null;
  for (const { reject } of session.pendingAcks.values()) reject(new Error("session stopped"));
  session.pendingAcks.clear();
  panel.stopped();
  $("input").srcObject = null;
  $("output").srcObject = null;
  $("watch-link").hidden = true;
  clearOverlay();
  setRunning(false);
  setStatus("Stopped.");
}

function showOutput(track) {
  const video = $("output");
  video.srcObject = new MediaStream([track]);
  countPresentedFrames(video);
}

// Count frames the output <video> actually presents (requestVideoFrameCallback where the
// browser has it, decoded-frame stats otherwise).
function countPresentedFrames(video) {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = () => {
      if (!video.srcObject) return; // stopped: a late callback must not write into the cleared overlay
      window.streamgen.outputFrames += 1;
      $("stat-shown").textContent = window.streamgen.outputFrames;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    const timer = setInterval(async () => {
      if (!session.pc) return clearInterval(timer);
      const pc = session.pc;
      const stats = await pc.getStats();
      if (session.pc !== pc) return; // stopped meanwhile
      stats.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") window.streamgen.outputFrames = s.framesDecoded || 0;
      });
      $("stat-shown").textContent = window.streamgen.outputFrames;
    }, 500);
  }
}

// The link carries the session's secret after "#" (see watchUrl); the text shown hides it, since
// this page may be screen-shared: copy the link's address to use it.
function showWatchLink(id, secret) {
  const link = $("watch-link");
  link.innerHTML = "";
  link.append("Watch this output elsewhere (WHEP, e.g. an OBS browser source; copy the link's address): ");
  const anchor = document.createElement("a");
  anchor.id = "watch-url";
  anchor.href = watchLink(session.urls.watch, location.href, secret);
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer";
  anchor.textContent = watchLink(session.urls.watch, location.href) + (secret ? "#secret=…" : "");
  link.append(anchor);
  link.hidden = false;
}

// ------------------------------------------------------------ control channel
// `quiet`: the sender shows the answer itself (the Control panel, next to its controls)
function sendControl(message, { quiet = false } = {}) {
  const channel = session.channel;
  if (!channel || channel.readyState !== "open") return Promise.reject(new Error("not connected"));
  const id = session.nextMessageId++;
  channel.send(JSON.stringify({ ...message, id }));
  return new Promise((resolve, reject) => session.pendingAcks.set(id, { resolve, reject, type: message.type, quiet }));
}

function onControlMessage(data) {
  let message;
  try {
    message = JSON.parse(data);
  } catch (_) {
    return;
  }
  if (message.type === "ack") {
    const pending = session.pendingAcks.get(message.id);
    session.pendingAcks.delete(message.id);
    if (!pending?.quiet) { // a quiet sender shows the answer itself
      if (!message.ok) showError(`Parameter rejected: ${message.error}`);
      else {
        clearError();
        if (pending && pending.type === "params") showApplied();
      }
    }
    if (pending) pending.resolve(message);
  } else if (message.type === "stats") {
    showStats(message);
  } else if (message.type === "error") {
    showError(message.error);
  } else if (message.type === "closed") {
    showError(`The server ended the session: ${message.reason}`);
    stop();
  }
}

function queueParam(name, value) {
  if (accepted && !accepted.has(name)) return;
  session.pendingParams[name] = value;
  clearTimeout(session.paramTimer);
  session.paramTimer = setTimeout(flushParams, PARAM_DELAY_MS);
}

function flushParams() {
  const params = session.pendingParams;
  if (!Object.keys(params).length || !session.channel || session.channel.readyState !== "open") return;
  session.pendingParams = {};
  sendControl({ type: "params", params }).catch(() => {});
}

// ------------------------------------------------------------ the Control panel's link
// Its changes go over the data channel when it is open, by HTTP PATCH otherwise (and always for the
// style image); either way the answer is {ok, error}. HTTP uses the session's own secret.
function sessionPath(suffix = "") {
  return `${session.urls.session}${suffix}`;
}

function sessionHeaders(extra = {}) {
  return authHeaders(session.secret || $("token").value.trim(), extra);
}

const controlLink = {
  live: () => session.id !== null,
  async send(params) {
    if (!session.channel || session.channel.readyState !== "open") return controlLink.patch(params);
    const ack = await sendControl({ type: "params", params }, { quiet: true });
    return { ok: ack.ok, error: ack.error };
  },
  async patch(params) {
    const response = await fetch(sessionPath("/params"), {
      method: "PATCH",
      headers: sessionHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(params),
    });
    if (!response.ok) return { ok: false, error: (await errorFrom(response)).message };
    return { ok: true };
  },
  async current() {
    const response = await fetch(sessionPath(), { headers: sessionHeaders() });
    return response.ok ? (await response.json()).params : null;
  },
  controlImage: (index) => fetch(sessionPath(`/controlnets/${index}/image`), { headers: sessionHeaders(), cache: "no-store" }),
};
const panel = createControlPanel(controlLink);

// ---------------------------------------------------------------------- stats
function fmt(value, unit = "") {
  return value === null || value === undefined ? "–" : `${value}${unit}`;
}

function showStats(stats) {
  if (!session.pc) return;
  presentedRate.sample(performance.now(), window.streamgen.outputFrames);
  $("stat-fps-in").textContent = fmt(stats.fps_in);
  $("stat-fps-out").textContent = fpsOutText(stats.fps_out, presentedRate.perSecond());
  $("stat-latency").textContent = fmt(stats.latency_ms_p50, " ms");
  $("stat-dropped").textContent = fmt(stats.dropped);
}

async function updateRtt() {
  const pc = session.pc;
  if (!pc) return;
  const stats = await pc.getStats();
  if (session.pc !== pc) return; // stopped meanwhile: leave the cleared overlay alone
  stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
      $("stat-rtt").textContent = `${Math.round(s.currentRoundTripTime * 1000)} ms`;
    }
  });
}

// ---------------------------------------------------------------------- wiring
function wire() {
  showSecureContextNote();
  $("token").value = savedToken();
  $("source").addEventListener("change", () => {
    $("file-row").hidden = $("source").value !== "file";
    refreshControls();
  });
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  for (const name of SLIDERS) {
    $(name).addEventListener("input", () => {
      $(`${name}-value`).textContent = $(name).value;
      queueParam(name, Number.parseFloat($(name).value));
    });
  }
  $("prompt").addEventListener("input", () => queueParam("prompt", $("prompt").value));
  $("negative_prompt").addEventListener("input", () => queueParam("negative_prompt", $("negative_prompt").value));
  $("seed").addEventListener("change", () => queueParam("seed", Number.parseInt($("seed").value || "0", 10)));
  $("new-seed").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 2 ** 31);
    queueParam("seed", Number.parseInt($("seed").value, 10));
  });
  window.addEventListener("beforeunload", () => {
    if (session.id) stop();
  });
  fetch("health")
    .then((r) => r.json())
    .then((h) => {
      $("model").textContent = `model: ${h.model}${h.kind === "video" ? " (video)" : ""}`;
      $("model-note").hidden = !["tiny", "tiny-video"].includes(h.model);
      if (Array.isArray(h.params)) modelParams = h.params;
      offerNoInput(h.no_input || null);
      refreshControls();
      panel.show(h.steering || null);
    })
    .catch((error) => showError(explain(error)));
}

wire();
