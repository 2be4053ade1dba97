// WHEP viewer: /watch?session=<id>[&token=...] plays that session's output; without a
// session it lists the open ones. Retries every few seconds while the session is not there
// yet (an OBS browser source may load before the stream starts).
import { authHeaders, errorFrom, localOffer, savedToken } from "./signaling.js";

const query = new URLSearchParams(location.search);
const sessionId = query.get("session");
const token = query.get("token") || savedToken();
const RETRY_MS = 3000;
let resource = null;

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

async function listSessions() {
  const response = await fetch("/api/sessions", { headers: authHeaders(token) });
  if (!response.ok) throw await errorFrom(response);
  const { sessions } = await response.json();
  const pick = document.getElementById("pick");
  pick.hidden = false;
  pick.textContent = sessions.length ? "Open sessions:" : "No open sessions yet.";
  for (const s of sessions) {
    const link = document.createElement("a");
    link.href = `?session=${encodeURIComponent(s.id)}${query.get("token") ? `&token=${encodeURIComponent(token)}` : ""}`;
    link.textContent = `${s.id} (${s.kind})`;
    pick.append(link);
  }
}

async function watch() {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => {
    document.getElementById("output").srcObject = new MediaStream([event.track]);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") {
      pc.close();
      setTimeout(start, RETRY_MS);
    }
  };
  try {
    const response = await fetch(`/whep/${encodeURIComponent(sessionId)}`, {
      method: "POST",
      headers: authHeaders(token, { "Content-Type": "application/sdp" }),
      body: await localOffer(pc),
    });
    if (!response.ok) throw await errorFrom(response);
    resource = response.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    showError("");
  } catch (error) {
    pc.close();
    showError(`${error.message} — retrying…`);
    setTimeout(start, RETRY_MS);
  }
}

function start() {
  (sessionId ? watch() : listSessions()).catch((error) => showError(error.message));
}

window.addEventListener("beforeunload", () => {
  if (resource) fetch(resource, { method: "DELETE", keepalive: true, headers: authHeaders(token) });
});

start();
