// The page at GET /: plain JavaScript, no build step, no other origin. It only calls this service's API
// (relative URLs, so it also works behind a path prefix).

const STYLE_AXES = 4; // sliders in "Move through style"
const STYLE_RANGE = 2.5; // +-2.5 standard deviations of the N(0, I) prior: further, images lose their shape
const MAX_ROWS = 32; // /generate's most labels (grid rows) in one request
const GRID_PADDING = 2; // /generate's default padding, which the page does not change
const INK = 20; // stroke width on the 280 px pad: about MNIST's stroke-to-digit proportion
const PEN_STEP = 14; // canvas pixels per arrow key press
const SURE = 0.9; // a reading at least this probable is said without a runner-up
const WALK_STEPS = 8; // tiles in "Walk between hands", both ends included

const KEY_STORAGE = "cvae-api-key"; // sessionStorage: the key lives as long as the tab

const $ = (id) => document.getElementById(id);

/** The served model, as GET /model describes it: its class names by class number, whether those are the digits
 * (named by their numbers), and the pixels of one image (a /generate tile, before `scale`). */
const model = { names: [], digits: false, tileHeight: 0, tileWidth: 0 };
const classNumbers = () => model.names.map((_, label) => label);

/** The model chosen among several the service serves (GET /models), sent as ?model= on every call; null while the
 * service serves one: then no call names it. */
let chosen = null;
const withModel = (path) => (chosen === null ? path : `${path}?model=${encodeURIComponent(chosen)}`);

/** A failed call to the API, with a message for the person (the problem detail's words when there is one). */
class ApiError extends Error {}

function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage refused (private mode, policies): no key
  }
}

async function call(path, init = {}) {
  const key = apiKey();
  const headers = key ? { ...init.headers, "X-API-Key": key } : init.headers;
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (error) {
    throw new ApiError(`The service could not be reached (${error.message}).`);
  }
  if (response.ok) return response;
  if (response.status === 401) {
    $("access").open = true;
    throw new ApiError(
      key
        ? "The service did not accept the API key: enter another under \u201cAPI key\u201d at the top."
        : "The service needs an API key: enter it under \u201cAPI key\u201d at the top.",
    );
  }
  let message = `The service answered ${response.status} ${response.statusText}.`;
  if ((response.headers.get("content-type") || "").includes("json")) {
    try {
      const problem = await response.json(); // RFC 9457: title, detail (and errors[])
      if (problem.detail) message = `${problem.title || "Error"}: ${problem.detail}`;
    } catch {
      // not JSON after all: keep the status line
    }
  }
  throw new ApiError(message);
}

function postJSON(path, body, accept) {
  return call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: accept },
    body: JSON.stringify(body),
  });
}

function showError(id, error) {
  const element = $(id);
  element.textContent = error instanceof ApiError ? error.message : `Something went wrong in the page: ${error}`;
  element.hidden = false;
  if (!(error instanceof ApiError)) console.error(error);
}

function clearError(id) {
  $(id).hidden = true;
  $(id).textContent = "";
}

/** Wraps an async job so that at most one runs at a time; calls made meanwhile collapse into one more run,
 * which reads the controls as they are then: the latest value wins and dragging never floods the server. */
function latestOnly(job) {
  let running = false;
  let again = false;
  return async function schedule() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await job();
      } while (again);
    } finally {
      running = false;
    }
  };
}

function showPng(img, blob) {
  const old = img.dataset.url;
  img.dataset.url = URL.createObjectURL(blob);
  img.src = img.dataset.url;
  img.hidden = false;
  if (old) URL.revokeObjectURL(old);
  return img.dataset.url;
}

function pngBlob(base64) {
  return new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: "image/png" });
}

// ---- Generate ---------------------------------------------------------------------------------------------

const grid = { latents: [], labels: [], columns: 0, scale: 1 };

function chosenLabels() {
  return [...document.querySelectorAll("#digits input:checked")].map((box) => Number(box.value));
}

const generate = latestOnly(async () => {
  clearError("generate-error");
  const labels = chosenLabels();
  const seed = $("seed").valueAsNumber;
  if (labels.length === 0) return showError("generate-error", new ApiError(`Choose at least one ${kind()}.`));
  if (Number.isNaN(seed)) return showError("generate-error", new ApiError("Enter a seed: a whole number from 0."));
  const body = {
    label: labels,
    n: Number($("n").value),
    seed,
    temperature: Number($("temperature").value),
    scale: Number($("scale").value),
  };
  const asked = chosen;
  try {
    const answer = await (await postJSON(withModel("generate"), body, "application/json")).json();
    if (asked !== chosen) return; // another model was chosen meanwhile: its own grid follows
    Object.assign(grid, { latents: answer.latents, labels: answer.labels, columns: answer.columns, scale: body.scale });
    const url = showPng($("grid"), pngBlob(answer.png_base64));
    $("grid").dataset.model = asked ?? ""; // whose grid is shown, once it has arrived (tests wait on it)
    const save = $("save");
    save.href = url;
    save.download = `cvae-digits-seed${answer.seed}.png`;
    save.hidden = false;
    $("grid-caption").textContent =
      `Seed ${answer.seed}, temperature ${body.temperature.toFixed(2)}: ` +
      `${labels.length} ${labels.length > 1 ? kinds() : kind()}, ${body.n} sample${body.n > 1 ? "s" : ""} each.`;
    $("column").max = String(answer.columns);
    $("walk-column").max = String(answer.columns);
    if (!hand.base) await takeTile(0);
  } catch (error) {
    showError("generate-error", error);
  }
});

/** "digit" for a digit model, else "class"; and their plurals. */
const kind = () => (model.digits ? "digit" : "class");
const kinds = () => (model.digits ? "digits" : "classes");

/** The page's words for a digits model, as index.html has them: put back when a digits model is chosen again. */
const DIGIT_WORDS = {
  title: document.title,
  texts: Object.fromEntries(
    ["intro", "classes-legend", "n-label", "draw-title", "upload-label", "style-title", "temperature-help", "pad-help",
     "walk-help"].map((id) => [id, $(id).textContent]),
  ),
  gridAlt: $("grid").alt,
  probabilities: $("probabilities").getAttribute("aria-label"),
};

/** One checkbox per class of the served model, all checked; the words that name the model's kind of image. */
function showClasses() {
  const boxes = model.names.map((name, labelNumber) => {
    const label = document.createElement("label");
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: labelNumber, checked: true });
    label.append(box, ` ${name}`);
    return label;
  });
  $("digits").replaceChildren(...boxes);
  $("probabilities").classList.toggle("named", !model.digits);
  if (model.digits) {
    document.title = DIGIT_WORDS.title;
    for (const [id, text] of Object.entries(DIGIT_WORDS.texts)) $(id).textContent = text;
    $("grid").alt = DIGIT_WORDS.gridAlt;
    $("probabilities").setAttribute("aria-label", DIGIT_WORDS.probabilities);
    return;
  }
  const list = model.names.join(", ");
  document.title = `cvae: try the model (${list})`;
  $("intro").textContent = `A conditional variational autoencoder for ${model.names.length} classes of small images: ` +
    `${list}. Generate them, draw or upload one and let the model read it, then move through its style.`;
  $("classes-legend").textContent = "Classes (one row each)";
  $("n-label").textContent = "Samples per class";
  $("draw-title").textContent = "Draw or upload a picture";
  $("upload-label").textContent = "Or upload a picture of one of its classes";
  $("grid").alt = "Generated images: one row per class";
  $("probabilities").setAttribute("aria-label", "Probability of each class");
  $("style-title").textContent = "Style";
  $("temperature-help").textContent = "Lower is tidier and less varied; 0 draws each class's mean style.";
  $("pad-help").textContent = DIGIT_WORDS.texts["pad-help"].replace("Draw one digit", "Draw one item");
  $("walk-help").textContent = DIGIT_WORDS.texts["walk-help"].replace("as the digit", "as the class");
}

function setUpGenerate() {
  const boxes = $("digits");
  boxes.addEventListener("change", generate);
  for (const [id, digits] of [["n", 0], ["temperature", 2]]) {
    $(id).addEventListener("input", () => {
      $(`${id}-value`).textContent = Number($(id).value).toFixed(digits);
      generate();
    });
  }
  $("seed").addEventListener("input", generate);
  $("scale").addEventListener("change", generate);
  $("new-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
    generate();
  });
  $("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  // A click on a tile takes its latent as the hand to explore.
  $("grid").addEventListener("click", (event) => {
    const img = event.currentTarget;
    const pixels = img.naturalWidth / img.clientWidth / grid.scale; // grid pixels per CSS pixel
    const column = Math.floor((event.offsetX * pixels - GRID_PADDING) / (model.tileWidth + GRID_PADDING));
    const row = Math.floor((event.offsetY * pixels - GRID_PADDING) / (model.tileHeight + GRID_PADDING));
    const index = row * grid.columns + Math.min(Math.max(column, 0), grid.columns - 1);
    if (index >= 0 && index < grid.latents.length) takeTile(index);
  });
}

// ---- Draw, upload, read --------------------------------------------------------------------------------------

const pad = $("pad");
const ink = pad.getContext("2d");
let stroke = null; // [x, y] while a pointer draws
let pen = [pad.width / 2, pad.height / 2]; // the keyboard's pen

function clearPad() {
  // An opaque white ground: the service reads black ink on it (a transparent canvas would be white on white).
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  Object.assign(ink, { fillStyle: "#000", strokeStyle: "#000", lineWidth: INK, lineCap: "round", lineJoin: "round" });
}

function dot([x, y]) {
  ink.beginPath();
  ink.arc(x, y, INK / 2, 0, 2 * Math.PI);
  ink.fill();
}

function line(from, to) {
  ink.beginPath();
  ink.moveTo(...from);
  ink.lineTo(...to);
  ink.stroke();
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [((event.clientX - box.left) * pad.width) / box.width, ((event.clientY - box.top) * pad.height) / box.height];
}

function showPen() {
  const marker = $("pen");
  marker.style.left = `${(pen[0] / pad.width) * pad.clientWidth}px`;
  marker.style.top = `${(pen[1] / pad.height) * pad.clientHeight}px`;
  marker.hidden = false;
}

function setUpPad() {
  clearPad();
  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    stroke = padPoint(event);
    dot(stroke);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!stroke) return;
    const events = event.getCoalescedEvents?.() ?? [];
    for (const each of events.length ? events : [event]) {
      const next = padPoint(each);
      line(stroke, next);
      stroke = next;
    }
  });
  for (const end of ["pointerup", "pointercancel"]) pad.addEventListener(end, () => (stroke = null));

  const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      readDrawing();
      return;
    }
    const step = arrows[event.key];
    if (!step) return;
    event.preventDefault();
    const clamp = (v, max) => Math.min(Math.max(v, INK / 2), max - INK / 2);
    const next = [clamp(pen[0] + step[0] * PEN_STEP, pad.width), clamp(pen[1] + step[1] * PEN_STEP, pad.height)];
    if (!event.shiftKey) line(pen, next);
    pen = next;
    showPen();
  });
  pad.addEventListener("focus", showPen);
  pad.addEventListener("blur", () => ($("pen").hidden = true));

  $("clear").addEventListener("click", clearPad);
  $("encode").addEventListener("click", readDrawing);
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) read(file, file.name, "your picture");
  });
}

function readDrawing() {
  pad.toBlob((blob) => read(blob, "drawing.png", "your drawing"), "image/png");
}

async function read(blob, filename, what) {
  clearError("encode-error");
  $("inferred").textContent = `Reading ${what}…`;
  const form = new FormData();
  form.append("file", blob, filename);
  try {
    const answer = await (await call(withModel("encode"), { method: "POST", body: form })).json();
    showReading(answer);
    if (what === "your drawing") drawn = { latent: answer.mean, label: answer.label };
    setHand(answer.mean, answer.log_var, `${what[0].toUpperCase()}${what.slice(1)}, read as ${answer.name}`, what);
  } catch (error) {
    $("inferred").textContent = "";
    showError("encode-error", error);
  }
}

/** A class by its number, in words: "a 6", "an 8", "a coat", "an ankle boot". */
const aClass = (label) => {
  const name = model.names[label] ?? String(label);
  return `${/^[aeiou8]|^1[18]$/i.test(name) ? "an" : "a"} ${name}`;
};

/** The reading in words: a bare verdict only when the model is sure (the probabilities are calibrated: of the
 * readings given at 90%, about nine in ten are right); below that, the runner-up is named beside it. */
export function readingInWords(label, probabilities) {
  const percent = (p) => `${(100 * p).toFixed(p > 0.995 || p < 0.005 ? 0 : 1)}%`;
  const top = probabilities[label];
  if (top >= SURE) return { certainty: "sure", text: `The model reads ${aClass(label)} (${percent(top)}).` };
  const others = probabilities.map((_, other) => other).filter((other) => other !== label);
  const runnerUp = others.reduce((a, b) => (probabilities[b] > probabilities[a] ? b : a));
  const both = `${aClass(label)}, or perhaps ${aClass(runnerUp)} (${percent(top)} against ${percent(probabilities[runnerUp])})`;
  if (top >= 0.5) return { certainty: "likely", text: `The model reads ${both}.` };
  return { certainty: "unsure", text: `The model is not sure: it reads ${both}.` };
}

function showReading({ label, probabilities }) {
  const percent = (p) => `${(100 * p).toFixed(p > 0.995 || p < 0.005 ? 0 : 1)}%`;
  const { certainty, text } = readingInWords(label, probabilities);
  $("inferred").textContent = text;
  $("inferred").dataset.certainty = certainty;
  const list = $("probabilities");
  list.replaceChildren(
    ...probabilities.map((p, d) => {
      const item = document.createElement("li");
      const meter = Object.assign(document.createElement("meter"), { min: 0, max: 1, value: p });
      const name = model.names[d] ?? String(d);
      meter.setAttribute("aria-label", `probability of ${name}`);
      item.append(Object.assign(document.createElement("span"), { textContent: name }), meter, percent(p));
      item.classList.toggle("top", d === label);
      return item;
    }),
  );
  list.hidden = false;
}

// ---- Handwriting (style): one latent drawn as every class, moved along latent axes ------------------------------

const hand = { base: null, axes: [], what: "" };

function setHand(base, logVar, description, what) {
  // The axes the encoder is surest about (smallest posterior variance) are the ones the decoder uses: in a
  // trained VAE, axes it ignores keep the prior's variance (log_var near 0) and move nothing.
  hand.axes = logVar
    .map((value, axis) => [value, axis])
    .sort((a, b) => a[0] - b[0])
    .slice(0, STYLE_AXES)
    .map(([, axis]) => axis);
  Object.assign(hand, { base, what });
  $("hand-source").textContent = `${description}, ${everyClass()}.`;
  const shown = model.digits ? `written as the digits 0 to ${model.names.length - 1}` : `drawn as ${model.names.join(", ")}`;
  $("restyled").alt = `${description}, ${shown}`;
  hand.axes.forEach((axis, i) => {
    $(`axis-${i}`).value = "0";
    $(`axis-${i}-label`).textContent = `Latent axis z${axis + 1}`;
    $(`axis-${i}-value`).textContent = "+0.0";
  });
  restyle();
}

/** How the page says "one latent, every class": in words for the served model. */
const everyClass = () => {
  const count = model.names.length;
  return model.digits ? `written as all ${count === 10 ? "ten" : count} digits` : "drawn as every class";
};

const restyle = latestOnly(async () => {
  if (!hand.base) return;
  clearError("style-error");
  const latent = [...hand.base];
  hand.axes.forEach((axis, i) => (latent[axis] += Number($(`axis-${i}`).value)));
  try {
    const body = { label: classNumbers().slice(0, MAX_ROWS), n: 1, latent, columns: 5, scale: 3 };
    const response = await postJSON(withModel("generate"), body, "image/png");
    const img = $("restyled");
    showPng(img, await response.blob());
    img.dataset.source = hand.what; // which hand is shown, once its image has arrived (tests wait on it)
  } catch (error) {
    showError("style-error", error);
  }
});

async function takeTile(index) {
  const row = Math.floor(index / grid.columns) + 1;
  const column = (index % grid.columns) + 1;
  const latent = grid.latents[index];
  const label = grid.labels[index];
  try {
    // The tile's posterior variances pick the axes: draw it alone and read it back as the class it is.
    const tile = await (await postJSON(withModel("generate"), { label, n: 1, latent, padding: 0 }, "image/png")).blob();
    const form = new FormData();
    form.append("file", tile, "tile.png");
    form.append("label", String(label));
    const answer = await (await call(withModel("encode"), { method: "POST", body: form })).json();
    setHand(latent, answer.log_var, `The hand of the grid's row ${row}, column ${column}`, "grid");
  } catch (error) {
    showError("style-error", error);
  }
}

function setUpStyle() {
  const sliders = $("sliders");
  for (let i = 0; i < STYLE_AXES; i++) {
    const control = document.createElement("div");
    control.className = "control";
    const label = Object.assign(document.createElement("label"), { htmlFor: `axis-${i}`, id: `axis-${i}-label` });
    label.textContent = `Latent axis ${i + 1}`;
    const slider = Object.assign(document.createElement("input"), {
      type: "range",
      id: `axis-${i}`,
      min: -STYLE_RANGE,
      max: STYLE_RANGE,
      step: 0.1,
      value: 0,
    });
    slider.setAttribute("aria-describedby", `axis-${i}-value`);
    const output = Object.assign(document.createElement("output"), { id: `axis-${i}-value`, textContent: "+0.0" });
    output.htmlFor = slider.id;
    slider.addEventListener("input", () => {
      const value = Number(slider.value);
      output.textContent = `${value >= 0 ? "+" : "\u2212"}${Math.abs(value).toFixed(1)}`;
      restyle();
    });
    control.append(label, slider, output);
    sliders.append(control);
  }
  $("reset-style").addEventListener("click", () => {
    for (let i = 0; i < STYLE_AXES; i++) {
      $(`axis-${i}`).value = "0";
      $(`axis-${i}-value`).textContent = "+0.0";
    }
    restyle();
  });
  $("use-column").addEventListener("click", () => {
    const column = $("column").valueAsNumber;
    if (!(column >= 1 && column <= grid.columns)) {
      showError("style-error", new ApiError(`Choose a column from 1 to ${grid.columns}.`));
      return;
    }
    takeTile(column - 1);
  });
}

// ---- Walk: from the drawn hand to a grid column's, by /interpolate ------------------------------------------

let drawn = null; // the latent /encode gave for the drawing, and the class it was read as

const walk = latestOnly(async () => {
  clearError("walk-error");
  const column = $("walk-column").valueAsNumber;
  const what = model.digits ? "a digit" : "a picture";
  if (!drawn) return showError("walk-error", new ApiError(`Draw ${what} and read it first: the walk starts there.`));
  if (!(column >= 1 && column <= grid.columns)) {
    return showError("walk-error", new ApiError(`Choose a column from 1 to ${grid.columns}.`));
  }
  // Every row of a grid column shares one latent (the column is one hand across classes): the first row's will do.
  const body = { label: drawn.label, from: drawn.latent, to: grid.latents[column - 1], steps: WALK_STEPS, scale: 3 };
  try {
    const response = await postJSON(withModel("interpolate"), body, "image/png");
    const img = $("walk-strip");
    showPng(img, await response.blob());
    img.alt = `Your drawing's hand walking, in ${WALK_STEPS} steps, to the hand of grid column ${column}, as ${aClass(drawn.label)}`;
    $("walk-caption").textContent = `From your drawing to grid column ${column}, as ${aClass(drawn.label)}.`;
    img.dataset.column = String(column); // which walk is shown, once its image has arrived (tests wait on it)
  } catch (error) {
    showError("walk-error", error);
  }
});

function setUpWalk() {
  $("walk").addEventListener("click", walk);
}

// ---- Start: the model's own temperature, then a grid without any click -------------------------------------

function setUpKey() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    } catch {
      showError("generate-error", new ApiError("This browser does not let the page keep the key."));
      return;
    }
    $("access").open = false;
    load();
  });
}

// ---- Models: a selector when the service serves several -------------------------------------------------------

/** The served models (GET /models): with more than one, a selector of them, the chosen one (else the default)
 * selected; with one, no selector and no ?model= on any call. */
async function showModels() {
  const { models } = await (await call("models")).json();
  const choice = $("model-choice");
  if (models.length < 2) {
    chosen = null;
    choice.hidden = true;
    return;
  }
  if (!models.some((m) => m.name === chosen)) chosen = models.find((m) => m.default).name;
  const options = models.map((m) => {
    const text = `${m.name}: ${m.classes.map((c) => c.name).join(", ")}${m.default ? " (default)" : ""}`;
    return Object.assign(document.createElement("option"), { value: m.name, textContent: text, selected: m.name === chosen });
  });
  $("model").replaceChildren(...options);
  choice.hidden = false;
}

/** Another model chosen: what the page showed of the last one goes, then the new one's classes and grid come. */
function chooseModel() {
  chosen = $("model").value;
  Object.assign(hand, { base: null, axes: [], what: "" });
  drawn = null;
  Object.assign(grid, { latents: [], labels: [], columns: 0, scale: 1 });
  for (const id of ["grid", "restyled", "walk-strip", "save", "probabilities"]) $(id).hidden = true;
  delete $("restyled").dataset.source;
  delete $("walk-strip").dataset.column;
  for (const id of ["inferred", "walk-caption", "hand-source"]) $(id).textContent = "";
  $("grid-caption").textContent = "Loading the grid…";
  for (const id of ["generate-error", "encode-error", "style-error", "walk-error"]) clearError(id);
  load();
}

function setUpModels() {
  $("model").addEventListener("change", chooseModel);
}

async function start() {
  setUpKey();
  setUpModels();
  setUpGenerate();
  setUpPad();
  setUpStyle();
  setUpWalk();
  $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  await load();
}

async function load() {
  clearError("generate-error");
  try {
    await showModels();
    const manifest = await (await call(withModel("model"))).json();
    const [, tileHeight, tileWidth] = manifest.image_shape;
    const names = manifest.classes.map((c) => c.name);
    Object.assign(model, { names, digits: names.every((name, label) => name === String(label)), tileHeight, tileWidth });
    showClasses();
    const temperature = manifest.prior?.temperature ?? 1;
    $("temperature").value = String(temperature);
    $("temperature-value").textContent = Number(temperature).toFixed(2);
  } catch (error) {
    showError("generate-error", error); // without the model's classes there is nothing to ask for (a key, perhaps)
    return;
  }
  await generate();
}

start();
