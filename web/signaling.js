// Talking to the streamgen server: HTTP with a bearer credential (the admin token, or a session's
// own secret), JSON errors, and offers that carry all ICE candidates (the server does not take
// trickled ones). Credentials never go in a URL the server sees: links carry them after "#".

const TOKEN_KEY = "streamgen.token";

export function savedToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function saveToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(credential, extra = {}) {
  return credential ? { ...extra, Authorization: `Bearer ${credential}` } : { ...extra };
}

// The watch page of a session; with its secret in the fragment, which browsers never send.
export function watchUrl(origin, id, secret = null) {
  const url = `${origin}/watch?session=${encodeURIComponent(id)}`;
  return secret ? `${url}#secret=${encodeURIComponent(secret)}` : url;
}

// A watch link from the path the server gave (behind a proxy it names this server), absolute against the page.
export function watchLink(path, pageUrl, secret = null) {
  const url = new URL(path, pageUrl).href;
  return secret ? `${url}#secret=${encodeURIComponent(secret)}` : url;
}

// {secret, token} from a URL fragment such as "#secret=..." or "#token=..." (missing ones are "").
export function fragmentCredentials(hash) {
  const fields = new URLSearchParams(hash.startsWith("#") ? hash.slice(1) : hash);
  return { secret: fields.get("secret") || "", token: fields.get("token") || "" };
}

// The STUN/TURN servers to use, with this client's own TURN credentials (GET api/ice; relative: works under a
// proxy's path prefix). A server that names none answers {iceServers: []}; an error reaches the caller.
export async function iceConfig(credential) {
  const response = await fetch("api/ice", { headers: authHeaders(credential), cache: "no-store" });
  if (!response.ok) throw await errorFrom(response);
  const config = await response.json();
  return { iceServers: config.iceServers || [], iceTransportPolicy: config.iceTransportPolicy || "all" };
}

// The server answers every error as JSON {error: "..."}; turn it into an Error with that text.
export async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch (_) { /* not JSON: keep the status line */ }
  const error = new Error(message);
  error.status = response.status;
  return error;
}

// Resolve once ICE gathering is complete (or after `timeoutMs`, with what was gathered).
export function iceGatheringComplete(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

export async function localOffer(pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const sdp = pc.localDescription.sdp;
  // Relay only and no relayed candidate: nothing could ever connect. Say why now instead of waiting forever.
  if (pc.getConfiguration().iceTransportPolicy === "relay" && !/^a=candidate:.* typ relay/m.test(sdp)) {
    throw new Error(
      "This server relays media through TURN, but no relay could be opened: the TURN server refused the " +
      "credentials or cannot be reached from here. Reload to get fresh credentials, or ask the operator.",
    );
  }
  return sdp;
}
