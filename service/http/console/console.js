// convserve browser console: plain JavaScript against the server's own REST endpoints, no build step.
// Vision answers come from POST /v1/models/{name}/{classify|detect|segment|explain} (image bytes in,
// JSON out); the model list, config and statistics from the Open Inference Protocol endpoints (/v2/...).
"use strict";

const $ = (id) => document.getElementById(id);
const models = new Map(); // name -> task
const BOX_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
let lastImage = null; // the Blob last sent, re-sent when the model changes

function headers(extra) {
  const result = Object.assign({}, extra || {});
  const token = $("token").value.trim();
  if (token) result["Authorization"] = "Bearer " + token;
  return result;
}

async function call(method, path, body, contentType) {
  const response = await fetch(path, {method, body, headers: headers(contentType ? {"Content-Type": contentType} : {})});
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}

function setStatus(text) { $("status").textContent = text; }

async function loadModels() {
  const index = await call("POST", "/v2/repository/index", JSON.stringify({ready: true}), "application/json");
  const names = [...new Set(index.map((entry) => entry.name))];
  const select = $("model");
  select.innerHTML = "";
  for (const name of names) {
    const config = await call("GET", "/v2/models/" + encodeURIComponent(name) + "/config");
    const task = ((config.parameters || {}).task || {}).string_value || "classification";
    models.set(name, task);
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name + " (" + task + ")";
    select.appendChild(option);
  }
  await modelChanged();
}

async function modelChanged() {
  const name = $("model").value;
  $("explain-box").hidden = models.get(name) !== "classification";
  const config = await call("GET", "/v2/models/" + encodeURIComponent(name) + "/config");
  $("config").textContent = JSON.stringify(summary(config), null, 1);
  await showStats();
  if (lastImage) await run(lastImage);
}

function summary(config) {
  const parameters = {};
  for (const [key, value] of Object.entries(config.parameters || {})) parameters[key] = value.string_value;
  return {name: config.name, max_batch_size: config.max_batch_size, parameters,
          input: config.input.map((t) => t.name + " " + t.data_type + " " + JSON.stringify(t.dims)),
          output: config.output.map((t) => t.name + " " + t.data_type + " " + JSON.stringify(t.dims)),
          dynamic_batching: config.dynamic_batching, instance_group: config.instance_group};
}

async function showStats() {
  const name = $("model").value;
  const stats = (await call("GET", "/v2/models/" + encodeURIComponent(name) + "/stats")).model_stats[0];
  const ms = (d) => d.count ? (d.ns / d.count / 1e6).toFixed(2) + " ms" : "-";
  const s = stats.inference_stats;
  $("stats").textContent = JSON.stringify({version: stats.version, inference_count: stats.inference_count,
    execution_count: stats.execution_count, success: s.success.count, fail: s.fail.count, mean_request: ms(s.success),
    mean_queue: ms(s.queue), mean_compute_input: ms(s.compute_input), mean_compute_infer: ms(s.compute_infer),
    mean_compute_output: ms(s.compute_output)}, null, 1);
}

function endpoint(name, task) {
  const base = "/v1/models/" + encodeURIComponent(name) + "/";
  if (task === "detection") return base + "detect";
  if (task === "segmentation") return base + "segment?overlay=true";
  return base + "classify?top_k=5" + ($("explain").checked ? "&explain=true" : "");
}

async function run(blob) {
  lastImage = blob;
  const name = $("model").value;
  const task = models.get(name);
  document.body.dataset.state = "running";
  setStatus("");
  try {
    const image = await createImageBitmap(blob);
    const started = performance.now();
    const answer = await call("POST", endpoint(name, task), blob, blob.type || "application/octet-stream");
    const elapsed = performance.now() - started;
    $("latency").textContent = elapsed.toFixed(1) + " ms";
    await draw(task, image, answer);
    await showStats();
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message);
    document.body.dataset.state = "error";
  }
}

function picture(base64, type) {
  return new Promise((resolve, reject) => {
    const element = new Image();
    element.onload = () => resolve(element);
    element.onerror = () => reject(new Error("the server's " + type + " image could not be shown"));
    element.src = "data:image/" + type + ";base64," + base64;
  });
}

async function draw(task, image, answer) {
  const canvas = $("view");
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const results = $("results");
  results.innerHTML = "";
  if (task === "detection") {
    drawBoxes(context, answer.detections);
    for (const d of answer.detections) results.appendChild(row("detection", d.label, d.score, d.score.toFixed(3)));
    if (!answer.detections.length) results.textContent = "no objects above the score threshold";
  } else if (task === "segmentation") {
    if (answer.overlay_png) context.drawImage(await picture(answer.overlay_png, "png"), 0, 0, image.width, image.height);
    for (const c of answer.classes) results.appendChild(row("area", c.label, c.fraction, (100 * c.fraction).toFixed(1) + " %"));
  } else {
    const map = answer.activation_map;
    if (map && map.overlay_jpeg) context.drawImage(await picture(map.overlay_jpeg, "jpeg"), 0, 0, image.width, image.height);
    for (const p of answer.predictions) results.appendChild(row("prediction", p.label, p.score, p.score.toFixed(3)));
    if (map) {
      const note = document.createElement("p");
      note.className = "cam";
      note.textContent = "heat map (" + map.method + ") for class " + map.label;
      results.appendChild(note);
    }
  }
}

function drawBoxes(context, detections) {
  const width = Math.max(2, Math.round(context.canvas.width / 160));
  context.lineWidth = width;
  context.font = Math.max(10, 5 * width) + "px sans-serif";
  detections.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box;
    const color = BOX_COLORS[d.class_index % BOX_COLORS.length];
    context.strokeStyle = color;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = d.label + " " + d.score.toFixed(2);
    const textWidth = context.measureText(text).width + 4;
    const textHeight = 5 * width + 4;
    context.fillStyle = color;
    context.fillRect(x1, Math.max(0, y1 - textHeight), textWidth, textHeight);
    context.fillStyle = "#fff";
    context.fillText(text, x1 + 2, Math.max(textHeight - 3, y1 - 3));
  });
}

function row(kind, label, fraction, value) {
  const element = document.createElement("div");
  element.className = "row " + kind;
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = label;
  const track = document.createElement("span");
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.display = "block";
  bar.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%";
  track.appendChild(bar);
  const number = document.createElement("span");
  number.className = "value";
  number.textContent = value;
  element.append(name, track, number);
  return element;
}

async function startWebcam() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({video: true});
    $("video").srcObject = stream;
    $("video").hidden = false;
    $("snap").hidden = false;
  } catch (error) {
    setStatus("webcam unavailable: " + error.message);
  }
}

function snap() {
  const video = $("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => run(blob), "image/jpeg", 0.9);
}

function wire() {
  $("file").addEventListener("change", (event) => { if (event.target.files[0]) run(event.target.files[0]); });
  $("model").addEventListener("change", () => modelChanged().catch((e) => setStatus(e.message)));
  $("explain").addEventListener("change", () => { if (lastImage) run(lastImage); });
  $("webcam").addEventListener("click", startWebcam);
  $("snap").addEventListener("click", snap);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) run(event.dataTransfer.files[0]);
  });
  $("token").addEventListener("change", () => loadModels().catch((e) => setStatus(e.message)));
  loadModels().then(() => { document.body.dataset.ready = "true"; }).catch((e) => setStatus(e.message));
}

wire();
