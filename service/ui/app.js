// The uncertainty viewer: plain JavaScript, no build step, nothing from other origins.
// It calls the service's JSON APIs relative to the page (served at /ui):
//   POST metadata       the model card (class names, input shape, calibrated N, ...)
//   POST predict        drawn images, as raw pixel values, with return_samples
//   POST predict_image  uploaded files and bundled examples (the service converts them)
//   POST generate       GAN images with their predictions, when a generator is configured
"use strict";

const EXAMPLES = "ui/examples/";
const SVG = "http://www.w3.org/2000/svg";

const state = {
  card: null,
  input: null, // {kind: "file", blob, name} | {kind: "pixels", instance, name}
  result: null, // {prediction, latency, seed}
  requests: 0, // predictions asked for; a newer one supersedes an older
  drawCursor: {x: 0, y: 0},
};

const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgElement(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

const number = (value, digits = 3) => Number(value).toFixed(digits);
const percent = (value) => `${(100 * value).toFixed(1)}%`;

// ---------------------------------------------------------------- service calls

async function readError(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return body.error;
  } catch (ignored) { /* not JSON */ }
  return `the service answered ${response.status} ${response.statusText}`.trim();
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const error = new Error(await readError(response));
    error.status = response.status;
    throw error;
  }
  return response.json();
}

async function postForm(path, form) {
  const response = await fetch(path, {method: "POST", body: form});
  if (!response.ok) throw new Error(await readError(response));
  return response.json();
}

// ---------------------------------------------------------------- start-up

async function loadCard() {
  for (;;) {
    try {
      return await postJson("metadata", {});
    } catch (error) {
      if (error.status !== 503) throw error;
      $("model-line").textContent = "The model is loading…";
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function start() {
  wireControls();
  let card;
  try {
    card = await loadCard();
  } catch (error) {
    $("model-line").textContent = "The model card could not be loaded.";
    showError(`metadata: ${error.message}`);
    return;
  }
  state.card = card;
  renderCardLine(card);
  renderNChooser(card);
  renderModelCard(card);
  setUpDrawing(card);
  $("tab-generate").hidden = !card.generator;
  await renderExamples(card);
  document.body.dataset.ready = "true";
}

// Whether uploads and drawings are gray images: the card's image_shape is the shape the
// service reads an upload at (a flat input of a square size is a gray square), or null.
function grayscale(card) {
  const shape = card.image_shape;
  return Boolean(shape) && (shape.length === 2 || shape[2] === 1);
}

function imageShapeText(card) {
  if (!card.image_shape) return "no image shape: send numbers to /predict";
  return `images read at ${card.image_shape.slice(0, 2).join(" × ")}`;
}

function renderCardLine(card) {
  const mc = (card.test_metrics || {}).mc || {};
  const parts = [
    card.model,
    `dataset ${card.dataset}`,
    `input ${card.input_shape.join(" × ")}`,
    `${card.class_names.length} classes`,
  ];
  if (mc.accuracy !== undefined) {
    parts.push(`test accuracy ${percent(mc.accuracy)} (MC, N = ${card.default_n_samples})`);
  }
  parts.push(`calibrated N: ${card.calibrated_n_samples.join(", ")}`);
  $("model-line").textContent = parts.join(" · ");
}

function renderNChooser(card) {
  const select = $("n-samples");
  select.replaceChildren(...card.calibrated_n_samples.map((n) => {
    const option = element("option", {value: String(n)}, String(n));
    if (n === card.default_n_samples) option.textContent = `${n} (default)`;
    return option;
  }));
  select.value = String(card.default_n_samples);
  select.disabled = false;
}

async function renderExamples(card) {
  let examples = [];
  try {
    const response = await fetch(`${EXAMPLES}examples.json`);
    if (response.ok) examples = await response.json();
  } catch (ignored) { /* no examples */ }
  const fits = (example) =>
    Boolean(card.image_shape) && example.shape.join("x") === card.image_shape.slice(0, 2).join("x");
  const button = (example) => {
    const node = element("button", {type: "button", class: "example"});
    const image = element("img", {src: EXAMPLES + example.file, alt: ""});
    node.append(image, element("span", {}, example.class_name));
    node.setAttribute("aria-label", `Example: ${example.class_name} from ${example.dataset}`);
    node.dataset.file = example.file;
    node.addEventListener("click", () => useExample(example));
    return node;
  };
  const matching = examples.filter(fits);
  const others = examples.filter((example) => !fits(example));
  $("examples").replaceChildren(...(matching.length ? matching : others).map(button));
  if (matching.length && others.length) {
    $("other-examples").replaceChildren(...others.map(button));
    $("other-examples-block").hidden = false;
  }
  if (!examples.length) $("examples").textContent = "No bundled examples.";
}

// ---------------------------------------------------------------- controls

function wireControls() {
  const fileInput = $("file-input");
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) useFile(fileInput.files[0]);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) useFile(event.dataTransfer.files[0]);
  });
  $("n-samples").addEventListener("change", () => {
    predict();
    highlightCalibrationRow();
  });
  $("seed").addEventListener("change", () => predict());
  $("new-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 1e9));
    predict();
  });
  $("generate-button").addEventListener("click", generate);
  setUpTabs();
  let pending = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => { if (state.result) renderPlot(state.result.prediction); });
  }).observe($("sample-plot"));
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (state.result && tab.id === "tab-predict") renderPlot(state.result.prediction);
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const visible = tabs.filter((candidate) => !candidate.hidden);
      const index = visible.indexOf(tab);
      const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
      let target = null;
      if (step) target = visible[(index + step + visible.length) % visible.length];
      if (event.key === "Home") target = visible[0];
      if (event.key === "End") target = visible[visible.length - 1];
      if (target) {
        event.preventDefault();
        select(target);
        target.focus();
      }
    });
  }
  state.selectTab = (id) => select($(id));
}

function seedValue() {
  const value = Number($("seed").value);
  if (!Number.isSafeInteger(value) || value < 0) {
    $("seed").value = "7";
    return 7;
  }
  return value;
}

function useFile(file) {
  state.input = {kind: "file", blob: file, name: file.name || "uploaded image"};
  showPreviewImage(file, state.input.name);
  predict({show: true});
}

async function useExample(example) {
  try {
    const response = await fetch(EXAMPLES + example.file);
    if (!response.ok) throw new Error(`${response.status}`);
    const blob = await response.blob();
    state.input = {kind: "file", blob, name: example.file};
    showPreviewImage(blob, `${example.class_name} (${example.dataset})`);
    predict({show: true});
  } catch (error) {
    showError(`could not load the example ${example.file}: ${error.message}`);
  }
}

function usePixels(instance, name) {
  state.input = {kind: "pixels", instance, name};
  showPreviewPixels(instance, name);
  predict({show: true});
}

// ---------------------------------------------------------------- prediction

// Predict the current input with the chosen N and seed; `show` brings the result view up.
async function predict({show = false} = {}) {
  if (!state.input || !state.card) return;
  const request = ++state.requests;
  const nSamples = Number($("n-samples").value);
  const seed = seedValue();
  const input = state.input;
  const result = $("result");
  result.setAttribute("aria-busy", "true");
  result.dataset.state = "busy";
  const started = performance.now();
  let answer;
  try {
    if (input.kind === "pixels") {
      answer = await postJson("predict", {
        instances: [input.instance], n_samples: nSamples, seed, return_samples: true,
      });
    } else {
      const form = new FormData();
      form.append("image", input.blob, input.name);
      form.append("n_samples", String(nSamples));
      form.append("seed", String(seed));
      form.append("return_samples", "true");
      answer = await postForm("predict_image", form);
    }
  } catch (error) {
    if (request !== state.requests) return;
    state.result = null;
    result.hidden = true;
    result.removeAttribute("aria-busy");
    result.dataset.state = "error";
    $("placeholder").hidden = true;
    if (show) state.selectTab("tab-predict");
    showError(error.message);
    return;
  }
  if (request !== state.requests) return; // a newer request is on its way
  const latency = performance.now() - started;
  state.result = {prediction: answer.predictions[0], latency, seed, model: answer.model};
  hideError();
  $("placeholder").hidden = true;
  result.hidden = false;
  if (show) state.selectTab("tab-predict");
  renderResult(state.result);
  result.removeAttribute("aria-busy");
  result.dataset.state = "ready";
  result.dataset.request = String(request);
  result.dataset.nSamples = String(state.result.prediction.n_samples);
  result.dataset.seed = String(seed);
}

function showError(message) {
  const node = $("error");
  node.textContent = message;
  node.hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function renderResult({prediction, latency, seed}) {
  const card = state.card;
  $("predicted-class").textContent = prediction.class_name;
  $("confidence").textContent = `${percent(prediction.confidence)} confidence`;
  const risk = prediction.risk;
  const badge = $("risk-badge");
  badge.className = `badge ${risk.flagged ? "flagged" : "ok"}`;
  badge.textContent = risk.flagged ? "Flagged: do not trust this answer" : "Not flagged";
  const why = {error_risk: "likely wrong (error risk)", novelty: "unlike the training data (novelty)"};
  $("risk-reasons").textContent = risk.flagged
    ? `Why: ${risk.reasons.map((reason) => why[reason] || reason).join("; ")}.`
    : "Both scores are within their calibrated thresholds.";

  $("result-n").textContent = String(prediction.n_samples);
  $("result-seed").textContent = String(seed);
  $("result-latency").textContent = `${latency.toFixed(0)} ms`;
  $("result-calibration").textContent = risk.calibrated_n_samples === "auto"
    ? "auto" : `N = ${risk.calibrated_n_samples}`;

  renderPlot(prediction);
  renderEntropies(prediction, card.class_names.length);
  renderRisk(risk);
  $("prediction-set").replaceChildren(
    ...prediction.prediction_set.map((name) => element("li", {}, name)));
  if (!prediction.prediction_set.length) $("prediction-set").append(element("li", {}, "(empty)"));
  const coverage = card.conformal_alpha !== undefined ? percent(1 - card.conformal_alpha) : "";
  $("set-hint").textContent = coverage
    ? `Conformal: the true class is in the set ${coverage} of the time. More than one class: the model hesitates.`
    : "";
}

// A deterministic jitter, so that the same answer draws the same picture.
function jitter(index) {
  const x = Math.sin(index * 12.9898 + 78.233) * 43758.5453;
  return x - Math.floor(x);
}

function renderPlot(prediction) {
  const plot = $("sample-plot");
  const names = state.card.class_names;
  const inSet = new Set(prediction.prediction_set);
  const samples = prediction.samples || [];
  const rows = names.map((name, index) => {
    const row = element("li", {class: "class-row"});
    row.dataset.classIndex = String(index);
    if (index === prediction.label) row.classList.add("predicted-row");
    const mean = prediction.probabilities[index];
    const std = prediction.std[index];
    const values = samples.map((sample) => sample[index]);
    const low = values.length ? Math.min(...values) : mean;
    const high = values.length ? Math.max(...values) : mean;
    const label = element("span", {class: "class-name"}, `${inSet.has(name) ? "● " : ""}${name}`);
    const strip = svgElement("svg", {class: "strip", "aria-hidden": "true"});
    const text = element("span", {class: "class-value"}, `${number(mean)} ± ${number(std)}`);
    const summary = element("span", {class: "visually-hidden"});
    summary.textContent = `: mean ${number(mean)}, standard deviation ${number(std)}, ` +
      `${values.length} samples from ${number(low)} to ${number(high)}` +
      `${inSet.has(name) ? ", in the prediction set" : ""}.`;
    row.append(label, strip, text);
    label.append(summary);
    return {row, strip, mean, std, values};
  });
  plot.replaceChildren(...rows.map(({row}) => row));
  const width = rows.length ? rows[0].strip.getBoundingClientRect().width || 300 : 300;
  const height = 28;
  const pad = 5; // room for a dot at 0 or 1
  const x = (p) => pad + Math.max(0, Math.min(1, p)) * (width - 2 * pad);
  for (const {strip, mean, std, values} of rows) {
    strip.setAttribute("viewBox", `0 0 ${width} ${height}`);
    strip.append(
      svgElement("line", {class: "baseline", x1: x(0), x2: x(1), y1: height - 2, y2: height - 2}),
      svgElement("rect", {
        class: "band", x: x(mean - std), y: 3,
        width: Math.max(1, x(mean + std) - x(mean - std)), height: height - 6,
      }),
    );
    values.forEach((value, index) => {
      strip.append(svgElement("circle", {
        class: "sample-mark", cx: x(value), cy: 5 + jitter(index) * (height - 10), r: 3,
      }));
    });
    strip.append(svgElement("line", {class: "mean", x1: x(mean), x2: x(mean), y1: 1, y2: height - 1}));
  }
  const axis = $("plot-axis");
  axis.setAttribute("viewBox", `0 0 ${width} 20`);
  axis.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].flatMap((tick) => {
    const anchor = tick === 0 ? "start" : tick === 1 ? "end" : "middle";
    const label = svgElement("text", {x: x(tick), y: 14, "text-anchor": anchor});
    label.textContent = String(tick);
    return [svgElement("line", {x1: x(tick), x2: x(tick), y1: 0, y2: 4, stroke: "#8a929e"}), label];
  }));
}

function renderEntropies(prediction, classCount) {
  const maximum = Math.log(classCount);
  const rows = [
    ["Predictive entropy", prediction.predictive_entropy],
    ["Expected entropy", prediction.expected_entropy],
    ["Mutual information", prediction.mutual_information],
  ];
  $("entropies").replaceChildren(...rows.map(([name, value]) => {
    const block = element("div", {class: "entropy"});
    const head = element("div", {class: "entropy-head"});
    head.append(element("span", {}, name), element("span", {}, number(value)));
    const bar = element("div", {
      class: "entropy-bar", role: "img",
      "aria-label": `${name} ${number(value)} of at most ${number(maximum)}`,
    });
    const fill = element("div");
    fill.style.width = `${Math.min(100, (100 * value) / maximum)}%`;
    bar.append(fill);
    block.append(head, bar);
    return block;
  }));
}

// A threshold as the page shows it: below 0 the calibration met no target and flags every
// answer; at ln K (the most a score can be) novelty is off.
function threshold(value, classCount) {
  if (value < 0) return `${number(value, 1)} (flags every answer)`;
  if (classCount && value >= Math.log(classCount) - 1e-9) return `${number(value, 4)} (off)`;
  return number(value, 4);
}

function renderRisk(risk) {
  const classCount = state.card.class_names.length;
  const rule = (name, metric, score, limit, fires, isNovelty) => {
    const row = element("tr");
    row.append(
      element("th", {scope: "row"}, `${name} (${metric.replaceAll("_", " ")})`),
      element("td", {}, number(score, 4)),
      element("td", {}, threshold(limit, isNovelty ? classCount : 0)),
      element("td", {class: fires ? "fires" : ""}, fires ? "yes" : "no"),
    );
    return row;
  };
  $("risk-rows").replaceChildren(
    rule("Error risk", risk.metric, risk.score, risk.threshold,
      risk.reasons.includes("error_risk"), false),
    rule("Novelty", risk.novelty.metric, risk.novelty.score, risk.novelty.threshold,
      risk.reasons.includes("novelty"), true),
  );
}

// ---------------------------------------------------------------- input previews

function showPreviewImage(blob, name) {
  const image = $("preview-image");
  if (image.src) URL.revokeObjectURL(image.src);
  image.onerror = () => { image.hidden = true; };
  image.src = URL.createObjectURL(blob);
  image.alt = `The input: ${name}`;
  image.hidden = false;
  $("preview-canvas").hidden = true;
  $("preview-name").textContent = name;
}

function showPreviewPixels(instance, name) {
  paintImage($("preview-canvas"), instance, state.card);
  $("preview-canvas").hidden = false;
  $("preview-image").hidden = true;
  $("preview-name").textContent = name;
}

// An image of raw pixel values shaped like the input ([h, w] or [h, w, c]) onto a canvas.
function paintImage(canvas, image, card) {
  const [low, high] = card.value_range;
  const height = image.length;
  const width = image[0].length;
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const level = (value) => Math.round((255 * (value - low)) / (high - low));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const value = image[y][x];
      const rgb = Array.isArray(value)
        ? (value.length === 3 ? value.map(level) : [level(value[0]), level(value[0]), level(value[0])])
        : [level(value), level(value), level(value)];
      const offset = 4 * (y * width + x);
      pixels.data.set([...rgb, 255], offset);
    }
  }
  context.putImageData(pixels, 0, 0);
}

// ---------------------------------------------------------------- drawing

function setUpDrawing(card) {
  if (!grayscale(card)) {
    $("draw-source").querySelector(".draw-area").hidden = true;
    $("draw-unavailable").hidden = false;
    return;
  }
  const [height, width] = card.image_shape;
  const canvas = $("draw-canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.setAttribute("aria-label",
    `Drawing canvas, ${width} by ${height} pixels, the model's input size`);
  const context = canvas.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, width, height);
  };
  clear();
  context.lineCap = "round";
  context.lineJoin = "round";
  context.strokeStyle = "#fff";
  context.fillStyle = "#fff";
  context.lineWidth = Math.max(1.2, width / 11);

  let last = null;
  let timer = 0;
  const submitSoon = () => {
    clearTimeout(timer);
    timer = setTimeout(() => usePixels(readDrawing(canvas, card), "your drawing"), 250);
  };
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (width / box.width),
      (event.clientY - box.top) * (height / box.height)];
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    clearTimeout(timer);
    last = point(event);
    context.beginPath();
    context.arc(last[0], last[1], context.lineWidth / 2, 0, 2 * Math.PI);
    context.fillStyle = "#fff";
    context.fill();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    context.beginPath();
    context.moveTo(...last);
    context.lineTo(...next);
    context.stroke();
    last = next;
  });
  const end = () => {
    if (!last) return;
    last = null;
    submitSoon();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  // keyboard: a cursor on the pixel grid; Space paints a pixel, Delete clears it
  const cursor = $("draw-cursor");
  const placeCursor = () => {
    const {x, y} = state.drawCursor;
    cursor.style.left = `${(100 * x) / width}%`;
    cursor.style.top = `${(100 * y) / height}%`;
    cursor.style.width = `${100 / width}%`;
    cursor.style.height = `${100 / height}%`;
  };
  canvas.addEventListener("focus", () => {
    if (canvas.matches(":focus-visible")) {
      placeCursor();
      cursor.hidden = false;
    }
  });
  canvas.addEventListener("blur", () => { cursor.hidden = true; });
  canvas.addEventListener("keydown", (event) => {
    const moves = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
    const {x, y} = state.drawCursor;
    if (moves[event.key]) {
      const [dx, dy] = moves[event.key];
      state.drawCursor = {
        x: Math.max(0, Math.min(width - 1, x + dx)), y: Math.max(0, Math.min(height - 1, y + dy)),
      };
      placeCursor();
      cursor.hidden = false;
    } else if (event.key === " " || event.key === "Enter") {
      context.fillStyle = "#fff";
      context.fillRect(x, y, 1, 1);
      submitSoon();
    } else if (event.key === "Delete" || event.key === "Backspace") {
      context.fillStyle = "#000";
      context.fillRect(x, y, 1, 1);
      submitSoon();
    } else {
      return;
    }
    event.preventDefault();
  });
  $("clear-drawing").addEventListener("click", () => {
    clearTimeout(timer);
    clear();
  });
}

// The drawing as one instance of raw pixel values, shaped like the model's input.
function readDrawing(canvas, card) {
  const [low, high] = card.value_range;
  const {width, height} = canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = [];
    for (let x = 0; x < width; x++) {
      const value = low + (data[4 * (y * width + x)] / 255) * (high - low);
      row.push(card.input_shape.length === 3 ? [value] : value);
    }
    rows.push(row);
  }
  return card.input_shape.length === 1 ? rows.flat() : rows;
}

// ---------------------------------------------------------------- generated samples

async function generate() {
  const button = $("generate-button");
  const count = Number($("generate-count").value);
  const nSamples = Number($("n-samples").value);
  const seed = seedValue();
  button.disabled = true;
  $("generate-error").hidden = true;
  $("generate-status").textContent = "Generating…";
  let answer;
  try {
    answer = await postJson("generate", {count, n_samples: nSamples, seed});
  } catch (error) {
    $("generate-error").textContent = error.message;
    $("generate-error").hidden = false;
    $("generate-status").textContent = "";
    button.disabled = false;
    return;
  }
  button.disabled = false;
  const flagged = answer.samples.filter((sample) => sample.prediction.risk.flagged).length;
  $("generate-status").textContent =
    `${answer.samples.length} images from ${answer.generator}, N = ${answer.n_samples}, ` +
    `seed ${answer.seed}: ${flagged} flagged.`;
  $("generated").replaceChildren(...answer.samples.map((sample, index) => {
    const prediction = sample.prediction;
    const item = element("li", {class: "generated-sample"});
    if (prediction.risk.flagged) item.classList.add("flagged");
    const canvas = element("canvas", {"aria-hidden": "true"});
    paintImage(canvas, sample.image, state.card);
    const badge = element("p", {class: `badge ${prediction.risk.flagged ? "flagged" : "ok"}`},
      prediction.risk.flagged
        ? `Flagged: ${prediction.risk.reasons.map((reason) => reason.replace("_", " ")).join(", ")}`
        : "Not flagged");
    const inspect = element("button", {type: "button", class: "secondary"}, "Inspect");
    inspect.setAttribute("aria-label", `Inspect generated image ${index + 1}`);
    inspect.addEventListener("click", () => usePixels(sample.image, `generated image ${index + 1}`));
    item.append(
      canvas,
      element("p", {class: "generated-class"},
        `${prediction.class_name} · ${percent(prediction.confidence)}`),
      element("p", {}, `MI ${number(prediction.mutual_information)} · set {${prediction.prediction_set.join(", ")}}`),
      badge,
      inspect,
    );
    return item;
  }));
}

// ---------------------------------------------------------------- model card

function highlightCalibrationRow() {
  const n = $("n-samples").value;
  for (const row of $("calibration-table").querySelectorAll("tbody tr")) {
    row.classList.toggle("current", row.dataset.n === n);
  }
}

function renderModelCard(card) {
  const facts = [
    ["Model", card.model],
    ["Dataset", card.dataset],
    ["Classes", card.class_names.join(", ")],
    ["Input", `${card.input_shape.join(" × ")}, values ${card.value_range.join(" to ")}; ` +
      imageShapeText(card)],
    ["Architecture", card.architecture || "—"],
    ["Default N", String(card.default_n_samples)],
    ["Conformal α", card.conformal_alpha !== undefined ? String(card.conformal_alpha) : "—"],
    ["Generator", card.generator ? card.generator.tag : "none configured"],
  ];
  $("card-facts").replaceChildren(...facts.flatMap(([name, value]) =>
    [element("dt", {}, name), element("dd", {}, value)]));

  const metrics = card.test_metrics || {};
  const kinds = Object.keys(metrics);
  const names = [...new Set(kinds.flatMap((kind) => Object.keys(metrics[kind])))];
  const metricsTable = $("metrics-table");
  metricsTable.replaceChildren();
  const head = element("tr");
  head.append(element("th", {scope: "col"}, "Metric"),
    ...kinds.map((kind) => element("th", {scope: "col"},
      kind === "mc" ? `MC dropout (N = ${card.default_n_samples})` : kind)));
  const body = element("tbody");
  for (const name of names) {
    const row = element("tr");
    row.append(element("th", {scope: "row"}, name.replaceAll("_", " ")),
      ...kinds.map((kind) => element("td", {},
        metrics[kind][name] === undefined ? "—" : number(metrics[kind][name], 4))));
    body.append(row);
  }
  const thead = element("thead");
  thead.append(head);
  metricsTable.append(element("caption", {class: "visually-hidden"}, "Test metrics"), thead, body);

  const calibrationTable = $("calibration-table");
  const columns = ["N", "Risk metric", "Threshold", "Target error", "Conformal quantile",
    "Novelty threshold", "Novelty false alarms"];
  const calibrationHead = element("thead");
  const headRow = element("tr");
  headRow.append(...columns.map((column) => element("th", {scope: "col"}, column)));
  calibrationHead.append(headRow);
  const calibrationBody = element("tbody");
  for (const calibration of card.calibrations || []) {
    const risk = calibration.risk_policy || {};
    const novelty = calibration.novelty_policy || {};
    const row = element("tr");
    row.dataset.n = String(calibration.n_samples);
    row.append(
      element("th", {scope: "row"}, String(calibration.n_samples)),
      element("td", {}, (risk.metric || "—").replaceAll("_", " ")),
      element("td", {}, risk.threshold === undefined ? "—" : threshold(risk.threshold, 0)),
      element("td", {}, risk.target_error === undefined ? "—" : percent(risk.target_error)),
      element("td", {}, number(calibration.conformal_quantile, 4)),
      element("td", {}, novelty.threshold === undefined
        ? "—" : threshold(novelty.threshold, card.class_names.length)),
      element("td", {}, novelty.false_alarm_rate === undefined ? "—" : percent(novelty.false_alarm_rate)),
    );
    calibrationBody.append(row);
  }
  calibrationTable.replaceChildren(
    element("caption", {class: "visually-hidden"}, "Calibration per N"), calibrationHead, calibrationBody);
  highlightCalibrationRow();
}

document.addEventListener("DOMContentLoaded", start);
