// The "Control" panel: ControlNets and the IP-Adapter of an image model (shown when /health has "steering").
//
// ControlNets are addressed by position, as the server keeps them: the panel's list index is the
// server's index while a session runs. An update names only the entries and fields that change
// ({controlnets: [{}, {conditioning_scale: 0.3}]}); an entry past the end attaches a new ControlNet.
// There is no removal on a running stream: "remove" disables the entry and hides it (the positions
// of the others stay); after Stop the hidden entries are dropped and the rest go into the next offer.
//
// Small changes go over the data channel (or HTTP PATCH while it is not open yet), throttled while a
// slider moves; the style image always goes by PATCH (the data channel is for small messages, and
// /offer takes smaller bodies than a params update, so one picked before Start follows the offer).
// Every answer is shown next to the control that caused it.

const THROTTLE_MS = 150;
const APPLIED_SHOWN_MS = 1500;
const INSET_REFRESH_MS = 500;
const DEFAULT_SCALE = 1;

const $ = (id) => document.getElementById(id);

// `link` is the page's side: live() (a session exists), send(params) and patch(params)
// (both resolve to {ok, error}), current() (the session's params from the server, or null)
// and controlImage(index) (a fetch Response).
export function createControlPanel(link) {
  let steering = null;
  const entries = []; // {model, preprocessor, scale, enabled, removed, url, node: {...}}
  const pending = new Map(); // entry index -> fields to send
  let pendingScale = null;
  let throttle = null;
  let styleImage = null; // the picked style image (a data: URL): sent at once, and again at each Start
  let insetTimer = null;
  let refreshing = false;
  const hideTimers = new WeakMap();

  // ------------------------------------------------------------ feedback
  // kind: "ok" (the server applied it), "error" (refused) or "later" (no session yet)
  function say(box, kind, text) {
    clearTimeout(hideTimers.get(box));
    box.hidden = false;
    box.dataset.answer = kind;
    box.className = `feedback ${{ ok: "applied", error: "error-text", later: "muted" }[kind]}`;
    box.textContent = text;
    if (kind === "ok") hideTimers.set(box, setTimeout(() => (box.hidden = true), APPLIED_SHOWN_MS));
  }

  function feedback(box, ok, error) {
    if (ok) window.streamgen.controlAcks += 1;
    else window.streamgen.controlErrors += 1;
    say(box, ok ? "ok" : "error", ok ? "✓ applied" : `Parameter rejected: ${error}`);
  }

  function notYet(box) {
    say(box, "later", "applies at Start");
  }

  // show the answer next to each control that took part; after a refusal, show what is in force
  async function answer(promise, boxes) {
    let result;
    try {
      result = await promise;
    } catch (error) {
      result = { ok: false, error: error.message || String(error) };
    }
    if (!link.live()) return result;
    for (const box of boxes) feedback(box, result.ok, result.error);
    if (!result.ok) resync();
    return result;
  }

  // ------------------------------------------------------------ choices
  // preprocessor settings to send with a preprocessor: a model-based one names a loaded estimator
  function settingsFor(preprocessor) {
    const defaults = steering.preprocessor_settings[preprocessor] || {};
    if (!("model" in defaults)) return {};
    const estimator = steering.estimators.find((e) => e.preprocessor === preprocessor);
    return estimator ? { model: estimator.model } : {};
  }

  function usable(preprocessor) {
    const defaults = steering.preprocessor_settings[preprocessor] || {};
    return !("model" in defaults) || steering.estimators.some((e) => e.preprocessor === preprocessor);
  }

  function fillPreprocessors(select, chosen) {
    select.replaceChildren();
    for (const name of steering.preprocessors) {
      const option = new Option(usable(name) ? name : `${name} (no estimator loaded)`, name, false, name === chosen);
      option.disabled = !usable(name);
      select.append(option);
    }
  }

  function entryFields(entry) {
    return {
      model: entry.model,
      preprocessor: entry.preprocessor,
      preprocessor_settings: settingsFor(entry.preprocessor),
      conditioning_scale: entry.scale,
      enabled: entry.enabled,
    };
  }

  // ------------------------------------------------------------ sending
  function queue(index, fields) {
    const entry = entries[index];
    if (!link.live()) return notYet(entry.node.feedback);
    pending.set(index, { ...pending.get(index), ...fields });
    throttle ??= setTimeout(flush, THROTTLE_MS);
  }

  function queueScale(value) {
    if (!link.live()) return notYet($("ip-scale-feedback"));
    pendingScale = value;
    throttle ??= setTimeout(flush, THROTTLE_MS);
  }

  function flush() {
    throttle = null;
    if (!link.live()) return;
    const params = {};
    const boxes = [];
    if (pending.size) {
      const top = Math.max(...pending.keys());
      params.controlnets = Array.from({ length: top + 1 }, (_, i) => pending.get(i) || {});
      for (const index of pending.keys()) boxes.push(entries[index].node.feedback);
      pending.clear();
    }
    if (pendingScale !== null) {
      params.ip_adapter_scale = pendingScale;
      boxes.push($("ip-scale-feedback"));
      pendingScale = null;
    }
    if (boxes.length) answer(link.send(params), boxes);
  }

  // ------------------------------------------------------------ the list
  function addEntry(entry) {
    const node = $("cn-template").content.firstElementChild.cloneNode(true);
    const part = (name) => node.querySelector(`.cn-${name}`);
    entry.node = {
      root: node,
      name: part("name"),
      enabled: part("enabled"),
      remove: part("remove"),
      inset: part("inset"),
      preprocessor: part("preprocessor"),
      scale: part("scale"),
      scaleValue: part("scale-value"),
      feedback: node.querySelector(".feedback"),
    };
    entries.push(entry);
    fillPreprocessors(entry.node.preprocessor, entry.preprocessor);
    show(entry);
    const at = () => entries.indexOf(entry);
    entry.node.preprocessor.addEventListener("change", () => {
      entry.preprocessor = entry.node.preprocessor.value;
      queue(at(), { preprocessor: entry.preprocessor, preprocessor_settings: settingsFor(entry.preprocessor) });
    });
    entry.node.scale.addEventListener("input", () => {
      entry.scale = Number.parseFloat(entry.node.scale.value);
      entry.node.scaleValue.textContent = entry.scale.toFixed(2);
      queue(at(), { conditioning_scale: entry.scale });
    });
    entry.node.enabled.addEventListener("change", () => {
      entry.enabled = entry.node.enabled.checked;
      queue(at(), { enabled: entry.enabled });
    });
    entry.node.remove.addEventListener("click", () => removeEntry(entry));
    $("cn-list").append(node);
    return entry;
  }

  // the entry's controls show its state (after a change elsewhere, or the server's answer)
  function show(entry) {
    const { node } = entry;
    const position = entries.indexOf(entry);
    node.root.dataset.index = position;
    node.name.textContent = `${position + 1}. ${entry.model}`;
    node.preprocessor.value = entry.preprocessor;
    node.scale.value = entry.scale;
    node.scaleValue.textContent = entry.scale.toFixed(2);
    node.enabled.checked = entry.enabled;
    node.inset.alt = `control image of ControlNet ${position + 1}`;
    node.root.hidden = entry.removed;
  }

  function dropEntry(entry) {
    if (entry.url) URL.revokeObjectURL(entry.url);
    entry.node.root.remove();
    entries.splice(entries.indexOf(entry), 1);
    entries.forEach(show);
  }

  async function removeEntry(entry) {
    if (!link.live()) return dropEntry(entry); // nothing on the server yet
    const index = entries.indexOf(entry);
    const fields = { ...pending.get(index), enabled: false };
    pending.delete(index);
    entry.node.remove.disabled = true;
    const list = Array.from({ length: index + 1 }, (_, i) => (i === index ? fields : {}));
    const result = await answer(link.send({ controlnets: list }), [entry.node.feedback]);
    entry.node.remove.disabled = false;
    if (result.ok) {
      entry.enabled = false;
      entry.removed = true;
      show(entry);
    }
  }

  async function addClicked() {
    const model = $("cn-add-model").value;
    const preprocessor = $("cn-add-preprocessor").value;
    const entry = { model, preprocessor, scale: DEFAULT_SCALE, enabled: true, removed: false, url: null };
    const box = $("cn-add-feedback");
    if (!link.live()) {
      addEntry(entry);
      return notYet(box);
    }
    // attach at the end of the server's list; the entry joins the page's list once the server took it
    $("cn-add").disabled = true;
    const list = entries.map(() => ({}));
    list.push(entryFields(entry));
    const result = await answer(link.send({ controlnets: list }), [box]);
    $("cn-add").disabled = false;
    if (result.ok && link.live()) addEntry(entry);
  }

  // after a refusal: show what the server has in force
  async function resync() {
    const params = await link.current().catch(() => null);
    if (!params || !link.live()) return;
    (params.controlnets || []).forEach((held, index) => {
      const entry = entries[index];
      if (!entry || entry.model !== held.model) return;
      Object.assign(entry, { preprocessor: held.preprocessor, scale: held.conditioning_scale, enabled: held.enabled });
      show(entry);
    });
    if (typeof params.ip_adapter_scale === "number") setScaleShown(params.ip_adapter_scale);
  }

  // ------------------------------------------------------------ style image (IP-Adapter)
  function setScaleShown(value) {
    $("ip-scale").value = value;
    $("ip-scale-value").textContent = Number(value).toFixed(2);
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error || new Error("unknown error"));
      reader.readAsDataURL(file);
    });
  }

  async function styleImagePicked() {
    const file = $("ip-image").files[0];
    const box = $("ip-image-feedback");
    if (!file) return;
    let image;
    try {
      image = await readAsDataUrl(file);
    } catch (error) {
      window.streamgen.controlErrors += 1;
      return say(box, "error", `The file could not be read: ${error.message}`);
    }
    styleImage = image;
    if (!link.live()) return notYet(box);
    const result = await answer(link.patch({ ip_adapter_image: image }), [box]);
    if (!result.ok && styleImage === image) styleImage = null; // refused: not one to send again
  }

  // ------------------------------------------------------------ control-image insets
  async function refreshInsets() {
    if (refreshing || !link.live() || document.hidden) return;
    refreshing = true;
    try {
      for (const [index, entry] of entries.entries()) {
        if (entry.removed) continue;
        const response = await link.controlImage(index);
        // 204: no step yet; 400 just after an add: the server acknowledges it before the step that attaches it
        if (response.status !== 200) continue;
        const blob = await response.blob();
        if (!link.live() || entry.removed || !entries.includes(entry)) continue; // stopped or removed meanwhile
        const url = URL.createObjectURL(blob);
        const old = entry.url;
        entry.url = url;
        entry.node.inset.src = url;
        if (old) URL.revokeObjectURL(old);
      }
    } catch (_) {
      /* the session ended meanwhile, or the server is gone: the page's status says so */
    } finally {
      refreshing = false;
    }
  }

  function clearInset(entry) {
    if (entry.url) URL.revokeObjectURL(entry.url);
    entry.url = null;
    entry.node.inset.removeAttribute("src");
  }

  // ------------------------------------------------------------ wiring
  $("cn-add").addEventListener("click", addClicked);
  $("ip-image").addEventListener("change", styleImagePicked);
  $("ip-scale").addEventListener("input", () => {
    $("ip-scale-value").textContent = Number($("ip-scale").value).toFixed(2);
    queueScale(Number.parseFloat($("ip-scale").value));
  });

  return {
    // health's "steering": null (a model that cannot be steered), or nothing loaded, hides the panel
    show(offered) {
      steering = offered && (offered.controlnets.length || offered.ip_adapter) ? offered : null;
      $("control-panel").hidden = !steering;
      if (!steering) return;
      $("cn-add-model").replaceChildren(...offered.controlnets.map((name) => new Option(name, name)));
      fillPreprocessors($("cn-add-preprocessor"), offered.preprocessors.includes("canny") ? "canny" : offered.preprocessors[0]);
      $("cn-add-row").hidden = !offered.controlnets.length;
      $("ip-rows").hidden = !offered.ip_adapter;
    },

    // what the panel adds to the offer's params
    offerParams() {
      if (!steering) return {};
      const params = {};
      const kept = entries.filter((e) => !e.removed);
      if (kept.length) params.controlnets = kept.map(entryFields);
      if (steering.ip_adapter) params.ip_adapter_scale = Number.parseFloat($("ip-scale").value);
      return params;
    },

    // the session exists: the style image follows the offer; the insets start
    async started() {
      if (!steering) return;
      for (const box of $("control-panel").querySelectorAll(".feedback[data-answer=later]")) box.hidden = true;
      insetTimer = setInterval(refreshInsets, INSET_REFRESH_MS);
      if (styleImage) await answer(link.patch({ ip_adapter_image: styleImage }), [$("ip-image-feedback")]);
    },

    // the session ended: removed entries go, the rest are the next Start's choices
    stopped() {
      clearInterval(insetTimer);
      clearTimeout(throttle);
      throttle = null;
      pending.clear();
      pendingScale = null;
      for (const entry of [...entries]) {
        clearInset(entry);
        if (entry.removed) dropEntry(entry);
      }
    },
  };
}
