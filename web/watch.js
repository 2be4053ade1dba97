// WHEP viewer: /watch?session=<id>#secret=<the session's secret> plays that session's output
// (#token=<admin token> works for any session); /watch#token=<admin token> lists the open ones.
// Credentials come after "#": a browser never sends the fragment to the server, so they stay out of
// its requests and logs. The page then drops the fragment from the address bar (and the history
// entry) and keeps the credential in this tab's sessionStorage, so a reload still works.
// Retries every few seconds while the session is not there yet (an OBS browser source may load
// before the stream starts).
import { authHeaders, errorFrom, fragmentCredentials, iceConfig, localOffer, savedToken } from "./signaling.js";

const query = new URLSearchParams(location.search);
const sessionId = query.get("session");
const STORAGE_KEY = `streamgen.watch.${sessionId || "list"}`;
const fromUrl = takeFragmentCredential();
const credential = fromUrl || savedToken();
const RETRY_MS = 3000;
let resource = null;

function takeFragmentCredential() {
  const { secret, token } = fragmentCredentials(location.hash);
  const given = secret || token;
  if (given) {
    sessionStorage.setItem(STORAGE_KEY, given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return given || sessionStorage.getItem(STORAGE_KEY) || "";
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

async function listSessions() {
  const response = await fetch("api/sessions", { headers: authHeaders(credential) });
  if (!response.ok) throw await errorFrom(response);
  const { sessions } = await response.json();
  const pick = document.getElementById("pick");
  pick.hidden = false;
  pick.textContent = sessions.length ? "Open sessions:" : "No open sessions yet.";
  for (const s of sessions) {
    const link = document.createElement("a");
    link.href = `?session=${encodeURIComponent(s.id)}${fromUrl ? `#token=${encodeURIComponent(fromUrl)}` : ""}`;
    link.textContent = `${s.id} (${s.kind})`;
    pick.append(link);
  }
}

async function watch() {
  const pc = new RTCPeerConnection(await iceConfig(credential));
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
    const response = await fetch(`whep/${encodeURIComponent(sessionId)}`, {
      method: "POST",
      headers: authHeaders(credential, { "Content-Type": "application/sdp" }),
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
  if (resource) fetch(resource, { method: "DELETE", keepalive: true, headers: authHeaders(credential) });
});

if (query.has("token") || query.has("secret")) {
  // a credential in the query string went to the server with the page request: it is not used
  showError('Put the token or secret after "#" (/watch?session=ID#secret=...): in the query string it is sent to the server.');
} else {
  start();
}
