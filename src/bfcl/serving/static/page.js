// bfcl web page: asks this server (relative URLs only) and draws the answer. No dependencies.
//
// One click sends the post twice, as a form: POST /explain/upload with the picture (names, scores and a
// co-attention map per name) and POST /predict/upload without it, so the two columns show what the
// picture changes. Offsets from the server count code points; Array.from(text) does too.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TYPE_NAMES = { PER: "person", LOC: "location", ORG: "organisation", MISC: "miscellaneous" };
  const STATUS_TITLES = {
    0: "No answer from the server",
    400: "The server could not read the request",
    413: "Too large for this server",
    415: "The server does not take this kind of request",
    422: "The server could not use the post or its picture",
    500: "The server failed",
  };
  const state = { info: null, file: null, imagePromise: Promise.resolve(null), url: null, withImage: null, selected: -1, runs: 0 };

  class ServerError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // ------------------------------------------------------------------ server calls

  async function call(path, options) {
    let resp;
    try {
      resp = await fetch(path, options);
    } catch (e) {
      throw new ServerError(0, "The server could not be reached, or it closed the connection " +
        "(it cuts off a request over its size limit that way). Is bfcl serve still running?");
    }
    const raw = await resp.text();
    let body = null;
    try {
      body = raw ? JSON.parse(raw) : null;
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : (raw.trim().slice(0, 300) || resp.statusText || "no details");
      throw new ServerError(resp.status, detail);
    }
    if (body === null || typeof body !== "object") {
      throw new ServerError(resp.status, "the server's answer is not JSON");
    }
    return body;
  }

  function postForm(path, text, file) {
    const form = new FormData();
    form.append("text", text);
    if (file) form.append("image", file, file.name || "image");
    return call(path, { method: "POST", body: form });
  }

  // ------------------------------------------------------------------ messages

  function showError(err, where) {
    const box = $("error");
    box.replaceChildren();
    const title = document.createElement("strong");
    const status = err instanceof ServerError ? err.status : -1;
    let head = STATUS_TITLES[status] || (status > 0 ? `The server answered ${status}` : "Something went wrong");
    if (status > 0) head += ` (HTTP ${status})`;
    title.textContent = where ? `${where}: ${head}` : head;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = err && err.message ? err.message : String(err);
    box.append(title, detail);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function setNotice(text) {
    $("notice").textContent = text || "";
    $("notice").hidden = !text;
  }

  // A model that cannot (or never learned to) read a picture: explain would have nothing to show.
  function modelReadsImages() {
    const info = state.info;
    return !info || (info.uses_image && info.train_posts_with_image !== 0);
  }

  async function loadInfo() {
    try {
      const info = await call("info");
      state.info = info;
      const parts = [`Model: ${info.text_encoder} text encoder`, info.uses_image ? `${info.image_encoder} image encoder` : "no image encoder"];
      if (Number.isInteger(info.train_posts_with_image)) parts.push(`trained on ${info.train_posts_with_image} posts with a picture`);
      parts.push(`bfcl ${info.version}`);
      $("model-info").textContent = parts.join(" · ");
      if (info.limits) $("text-limit").textContent = ` (at most ${info.limits.max_text_chars})`;
      // trained without images first: such a model also reports uses_image false (it runs no CNN)
      if (info.train_posts_with_image === 0) {
        setNotice("This model was trained without images (none of its training posts had a picture): " +
          "it never learned to read one, so a picture is checked, then ignored, and there are no heat maps.");
      } else if (!info.uses_image) {
        setNotice("This model reads text only: a picture you add is checked, then ignored, and there are no heat maps.");
      }
    } catch (err) {
      $("model-info").textContent = "";
      showError(err, "Model details");
    }
  }

  // ------------------------------------------------------------------ the picture

  function setFile(file) {
    if (state.url) URL.revokeObjectURL(state.url);
    state.file = file || null;
    state.url = null;
    $("image-name").textContent = file ? `${file.name} (${formatBytes(file.size)})` : "";
    $("clear-image").hidden = !file;
    if (!file) {
      state.imagePromise = Promise.resolve(null);
      return;
    }
    state.url = URL.createObjectURL(file);
    const url = state.url;
    // null when the browser cannot show it (a TIFF, or a broken file: the server will say why).
    state.imagePromise = new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => resolve(null);
      img.src = url;
    });
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} bytes`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  // ------------------------------------------------------------------ asking

  async function ask(event) {
    event.preventDefault();
    clearError();
    const text = $("text").value;
    if (!text.trim()) {
      showError(new Error("Type or paste a post first."), "Nothing to read");
      $("text").focus();
      return;
    }
    const file = state.file;
    busy(true);
    try {
      let withImage = null;
      if (file) {
        withImage = modelReadsImages() ? await postForm("explain/upload", text, file) : await postForm("predict/upload", text, file);
      }
      const textOnly = await postForm("predict/upload", text, null);
      const img = file ? await state.imagePromise : null;
      show(text, withImage, textOnly, img);
    } catch (err) {
      showError(err);
      $("results").hidden = true;
    } finally {
      busy(false);
    }
  }

  function busy(on) {
    $("submit").disabled = on;
    $("results").setAttribute("aria-busy", on ? "true" : "false");
    $("status").textContent = on ? "Reading the post\u2026" : "";
  }

  // ------------------------------------------------------------------ the answer

  function show(text, withImage, textOnly, img) {
    state.withImage = withImage;
    state.img = img;
    state.selected = -1;
    const selectable = !!(withImage && withImage.grid);
    const other = withImage ? textOnly : null;
    fillPanel($("with-image"), text, withImage, other, selectable);
    fillPanel($("text-only"), text, textOnly, null, false);
    $("diff").textContent = withImage ? describeDiff(withImage.entities, textOnly.entities) : "";
    const look = $("look");
    look.hidden = !selectable;
    if (selectable) {
      const first = withImage.entities.findIndex((e) => e.heatmap);
      if (first >= 0) select(first, false);
      else drawHeat(null);
    }
    state.runs += 1;
    $("results").dataset.runs = String(state.runs);
    $("results").hidden = false;
  }

  function fillPanel(panel, text, answer, compareTo, selectable) {
    const post = panel.querySelector('[data-role="post"]');
    const summary = panel.querySelector('[data-role="summary"]');
    post.replaceChildren();
    if (!answer) {
      post.textContent = "No picture given: add the post's picture to see what it changes and where the model looked.";
      post.classList.add("muted");
      summary.textContent = "";
      return;
    }
    post.classList.remove("muted");
    const chars = Array.from(text);
    const ents = answer.entities.map((e, i) => ({ ...e, index: i })).sort((a, b) => a.start - b.start);
    const byOffsets = new Map((compareTo ? compareTo.entities : []).map((e) => [`${e.start}:${e.end}`, e]));
    let at = 0;
    for (const ent of ents) {
      if (ent.start < at) continue; // entities never overlap; be safe if a checkpoint's do
      if (ent.start > at) post.append(chars.slice(at, ent.start).join(""));
      post.append(entityElement(ent, chars.slice(ent.start, ent.end).join(""), selectable, compareTo ? byOffsets.get(`${ent.start}:${ent.end}`) : undefined, !!compareTo));
      at = ent.end;
    }
    if (at < chars.length) post.append(chars.slice(at).join(""));
    const n = answer.entities.length;
    const parts = [n === 0 ? "No names found." : `${n} name${n === 1 ? "" : "s"}.`];
    if (panel.id === "with-image" && answer.has_image === false) parts.push("The picture was not used by this model.");
    for (const note of answer.notes || []) parts.push(`Note: ${note}.`);
    summary.textContent = parts.join(" ");
  }

  function entityElement(ent, surface, selectable, twin, comparing) {
    const el = document.createElement(selectable ? "button" : "mark");
    el.className = "ent";
    if (selectable) {
      el.type = "button";
      el.setAttribute("aria-pressed", "false");
      el.addEventListener("click", () => select(ent.index, true));
    }
    el.dataset.entity = String(ent.index);
    el.dataset.type = ent.type;
    el.dataset.start = String(ent.start);
    el.dataset.end = String(ent.end);
    el.dataset.score = String(ent.score);
    const name = TYPE_NAMES[ent.type] || ent.type;
    let title = `${name}, score ${ent.score.toFixed(3)} (probability of exactly this span and type)`;
    if (comparing && (!twin || twin.type !== ent.type)) {
      title += twin ? `; text alone says ${twin.type}` : "; text alone finds no name here";
    }
    el.title = title;
    const words = document.createElement("span");
    words.className = "ent-text";
    words.textContent = surface;
    const tag = document.createElement("span");
    tag.className = "ent-tag";
    tag.textContent = `${ent.type} ${ent.score.toFixed(2)}`;
    el.append(words, tag);
    return el;
  }

  function describeDiff(withEnts, textEnts) {
    const key = (e) => `${e.start}:${e.end}`;
    const textByKey = new Map(textEnts.map((e) => [key(e), e]));
    const withByKey = new Map(withEnts.map((e) => [key(e), e]));
    const changes = [];
    for (const e of withEnts) {
      const t = textByKey.get(key(e));
      if (!t) changes.push(`"${e.text}" is ${e.type} only with the picture`);
      else if (t.type !== e.type) changes.push(`"${e.text}" is ${e.type} with the picture, ${t.type} from the text alone`);
    }
    for (const t of textEnts) {
      if (!withByKey.has(key(t))) changes.push(`"${t.text}" (${t.type}) is found only without the picture`);
    }
    return changes.length ? `The picture changed: ${changes.join("; ")}.` : "The picture changed no name or type (scores may differ).";
  }

  // ------------------------------------------------------------------ heat maps

  function select(index, fromUser) {
    const ents = state.withImage ? state.withImage.entities : [];
    if (index < 0 || index >= ents.length) return;
    state.selected = index;
    for (const el of $("with-image").querySelectorAll("button.ent")) {
      el.setAttribute("aria-pressed", el.dataset.entity === String(index) ? "true" : "false");
    }
    drawHeat(ents[index]);
    if (fromUser) $("heat").scrollIntoView({ block: "nearest" });
  }

  function jet(x) {
    const c = (v) => Math.round(255 * Math.min(1, Math.max(0, v)));
    return [c(1.5 - Math.abs(4 * x - 3)), c(1.5 - Math.abs(4 * x - 2)), c(1.5 - Math.abs(4 * x - 1))];
  }

  function drawHeat(ent) {
    const canvas = $("heat-canvas");
    const ctx = canvas.getContext("2d");
    const img = state.img;
    const side = 448;
    const scale = img ? Math.min(side / img.naturalWidth, side / img.naturalHeight) : 1;
    canvas.width = img ? Math.max(1, Math.round(img.naturalWidth * scale)) : side;
    canvas.height = img ? Math.max(1, Math.round(img.naturalHeight * scale)) : side;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (img) ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    else {
      ctx.fillStyle = "#d0d0d0";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    const fig = $("heat");
    const caption = $("heat-caption");
    const unseen = img ? "" : " (this browser cannot show the picture's format: the map alone)";
    if (!ent) {
      fig.dataset.entity = "";
      caption.textContent = "No name has a map." + unseen;
      canvas.setAttribute("aria-label", "The picture");
      return;
    }
    fig.dataset.entity = String(state.selected);
    if (!ent.heatmap) {
      caption.textContent = `"${ent.text}" (${ent.type}): no map. ${ent.note || ""}${unseen}`;
      canvas.setAttribute("aria-label", `The picture; no map for ${ent.text}`);
      return;
    }
    const rows = ent.heatmap.length;
    const cols = ent.heatmap[0].length;
    let peak = 0;
    let pr = 0;
    let pc = 0;
    ent.heatmap.forEach((row, r) => row.forEach((v, c) => {
      if (v > peak) { peak = v; pr = r; pc = c; }
    }));
    // The model saw the picture resized to a square and cut into rows x cols regions; each
    // cell stretches back over the same share of the original picture. Colours run from 0
    // to this map's own peak; faint regions stay nearly clear so the picture shows through.
    const cells = document.createElement("canvas");
    cells.width = cols;
    cells.height = rows;
    const cctx = cells.getContext("2d");
    const data = cctx.createImageData(cols, rows);
    ent.heatmap.forEach((row, r) => row.forEach((v, c) => {
      const x = peak > 0 ? v / peak : 0;
      const [R, G, B] = jet(x);
      const o = 4 * (r * cols + c);
      data.data[o] = R;
      data.data[o + 1] = G;
      data.data[o + 2] = B;
      data.data[o + 3] = Math.round(255 * (0.12 + 0.5 * x));
    }));
    cctx.putImageData(data, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(cells, 0, 0, canvas.width, canvas.height);
    const where = `${["top", "middle", "bottom"][Math.min(2, Math.floor((3 * pr) / rows))]} ${["left", "centre", "right"][Math.min(2, Math.floor((3 * pc) / cols))]}`;
    const uniform = 100 / (rows * cols);
    caption.textContent = `"${ent.text}" (${ent.type} ${ent.score.toFixed(2)}): strongest in the ${where} ` +
      `(row ${pr + 1}, column ${pc + 1} of ${rows} \u00d7 ${cols}), ${(100 * peak).toFixed(1)}% of the attention ` +
      `in that region; a uniform map would give ${uniform.toFixed(1)}% each.${unseen}`;
    canvas.setAttribute("aria-label", `Heat map for ${ent.text}: strongest in the ${where} of the picture`);
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $("post-form").addEventListener("submit", ask);
    $("text").addEventListener("input", () => {
      $("text-count").textContent = String(Array.from($("text").value).length);
    });
    $("text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        $("post-form").requestSubmit();
      }
    });
    $("image").addEventListener("change", () => setFile($("image").files[0]));
    $("clear-image").addEventListener("click", () => {
      $("image").value = "";
      setFile(null);
      $("image").focus();
    });
    // A file dropped beside the zone must not replace the page with the file.
    for (const kind of ["dragover", "drop"]) window.addEventListener(kind, (e) => e.preventDefault());
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) {
        $("image").files = files;
        setFile(files[0]);
      }
    });
  }

  wire();
  loadInfo();
})();
