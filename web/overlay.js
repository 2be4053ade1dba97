// The stats overlay's arithmetic, kept free of the DOM so node can test it (tests/server/test_web_pages.py).
//
// Why the page measures the output rate itself: the server's fps_out is a sliding two-second
// window that needs two frames inside it to be above zero, so a stream slower than one frame
// every two seconds (a big model on a CPU, a loaded server) reads "out 0" while frames are still
// arriving. The page counts the frames its <video> presents; over a longer window that count
// gives a rate even for such a trickle.

export const PLACEHOLDER = "–";

// Frames per second from (time in ms, running frame count) samples over the last `windowMs`.
export class FrameRate {
  constructor(windowMs = 10_000) {
    this.windowMs = windowMs;
    this.samples = [];
  }

  sample(nowMs, count) {
    this.samples.push([nowMs, count]);
    // keep one sample at or before the window's start, so the window is always fully covered
    while (this.samples.length > 2 && nowMs - this.samples[1][0] >= this.windowMs) this.samples.shift();
  }

  perSecond() {
    if (this.samples.length < 2) return null;
    const [t0, c0] = this.samples[0];
    const [t1, c1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((c1 - c0) * 1000) / (t1 - t0) : null;
  }

  clear() {
    this.samples = [];
  }
}

// The "out" number: the server's rate, or the page's own when the server's window is empty but
// frames did arrive; a placeholder when neither knows.
export function fpsOutText(serverFps, presentedFps) {
  if (typeof serverFps === "number" && serverFps > 0) return String(serverFps);
  if (typeof presentedFps === "number" && presentedFps > 0) return presentedFps >= 1 ? presentedFps.toFixed(1) : presentedFps.toFixed(2);
  return typeof serverFps === "number" ? "0" : PLACEHOLDER;
}
