// The demo page: show the chosen images, post them to /predict in one request, draw each top-k answer as bars.
"use strict";

const fileInput = document.getElementById("file");
const dropZone = document.getElementById("drop-zone");
const preview = document.getElementById("preview");
const dropHint = document.getElementById("drop-hint");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const latency = document.getElementById("latency");
const gallery = document.getElementById("gallery");

const keyInput = document.getElementById("api-key");
// Kept for this tab only: a key pasted on a shared machine goes when the tab does.
keyInput.value = sessionStorage.getItem("apiKey") || "";

// The pasted key, as the service takes it; no header at all when none is pasted (a service without keys).
function keyHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function showPredictions(list, predictions) {
  list.replaceChildren(...predictions.map((p) => {
    const row = document.createElement("li");
    row.className = "prediction";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    label.title = `${p.label} (class ${p.index})`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(p.probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const probability = document.createElement("span");
    probability.className = "probability";
    probability.textContent = `${(p.probability * 100).toFixed(1)}%`;
    row.append(label, bar, probability);
    return row;
  }));
}

// One image: its preview and bars. Several: one card each, in the order chosen, each with its own answer or error.
async function classify(files) {
  if (!files.length) return;
  const several = files.length > 1;
  preview.hidden = several;
  if (!several) preview.src = URL.createObjectURL(files[0]);
  dropHint.replaceChildren(Object.assign(document.createElement("strong"), {
    textContent: several ? `${files.length} images` : files[0].name }), " · choose or drop others");
  results.replaceChildren();
  gallery.replaceChildren();
  latency.textContent = "";
  showStatus("Classifying...");

  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  const started = performance.now();
  let body;
  try {
    const response = await fetch("/predict", { method: "POST", body: form, headers: keyHeaders() });
    body = await response.json();
  } catch (error) {
    showStatus(`The service did not answer: ${error.message}`, true);
    return;
  }
  const roundTrip = performance.now() - started;
  if (!body.success) {
    showStatus(`${body.error.message} (${body.error.code})`, true);
    return;
  }
  if (several) {
    showStatus(`${files.length} images, one request, by ${body.model}:`);
    gallery.replaceChildren(...body.results.map((result, i) => imageCard(files[i], result)));
    latency.textContent = `${Math.round(roundTrip)} ms round trip for all ${files.length}`;
    return;
  }
  showStatus(`Top ${body.predictions.length} of ${body.model}:`);
  showPredictions(results, body.predictions);
  const t = body.timing;
  latency.textContent = `${Math.round(roundTrip)} ms round trip · server ${t.total_ms.toFixed(0)} ms ` +
    `(preprocess ${t.preprocess_ms.toFixed(0)}, queue ${t.queue_ms.toFixed(0)}, ` +
    `inference ${t.inference_ms.toFixed(0)} in a batch of ${t.batch_size})`;
}

function imageCard(file, result) {
  const card = document.createElement("article");
  card.className = "card";
  const thumbnail = Object.assign(document.createElement("img"), { src: URL.createObjectURL(file), alt: file.name });
  const name = Object.assign(document.createElement("p"), { className: "name", textContent: file.name });
  if (!result.success) {
    const error = Object.assign(document.createElement("p"), { className: "error",
      textContent: `${result.error.message} (${result.error.code})` });
    card.append(thumbnail, name, error);
    return card;
  }
  const list = Object.assign(document.createElement("ol"), { className: "card-results" });
  showPredictions(list, result.predictions.slice(0, 3));
  card.append(thumbnail, name, list);
  return card;
}

fileInput.addEventListener("change", () => classify([...fileInput.files]));
for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  classify([...event.dataTransfer.files]);
});

function describeModel() {
  fetch("/model", { headers: keyHeaders() })
    .then((response) => response.json())
    .then((model) => {
      document.getElementById("model").textContent = model.name
        ? `${model.name}${model.arch !== model.name ? ` (${model.arch})` : ""} · ${model.num_classes} classes · ` +
          `${model.backend} on ${model.device} · ${model.workers} worker${model.workers === 1 ? "" : "s"}`
        : model.error.code === "unauthorized" ? `Paste an API key above: ${model.error.message}`
          : `No model is being served right now: ${model.error.message}`;
    })
    .catch(() => { document.getElementById("model").textContent = "The service did not answer."; });
}

keyInput.addEventListener("change", () => {
  sessionStorage.setItem("apiKey", keyInput.value.trim());
  describeModel();
});
describeModel();
