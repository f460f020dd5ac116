// A small canvas on NewBie Character Regions nodes: shows each character's box and lets the user drag a new one.
// It only edits the node's "regions" text widget, so saved and API-format workflows are unchanged.

import { app } from "../../scripts/app.js";
import { boxFromDrag, formatRegionLines, parseRegionLines, SCALE } from "./region_boxes.js";

const NODE_CLASS = "NewBieRegions";
const COLOURS = ["#ff6b6b", "#4dabf7", "#69db7c", "#ffd43b", "#da77f2", "#ffa94d"];

function draw(canvas, text, status) {
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#222";
  ctx.fillRect(0, 0, w, h);
  let boxes = {};
  try {
    boxes = parseRegionLines(text);
    status.textContent = "drag to draw the selected character's box (0-1000 units)";
    status.style.color = "";
  } catch (err) {
    status.textContent = err.message;
    status.style.color = "#ff6b6b";
  }
  for (const [i, [x0, y0, x1, y1]] of Object.entries(boxes)) {
    const colour = COLOURS[(Number(i) - 1) % COLOURS.length];
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.strokeRect((x0 / SCALE) * w, (y0 / SCALE) * h, ((x1 - x0) / SCALE) * w, ((y1 - y0) / SCALE) * h);
    ctx.fillStyle = colour;
    ctx.font = "12px sans-serif";
    ctx.fillText(`character_${i}`, (x0 / SCALE) * w + 4, (y0 / SCALE) * h + 14);
  }
  return boxes;
}

function attach(node) {
  const widget = node.widgets?.find((x) => x.name === "regions");
  if (!widget || !node.addDOMWidget) return;
  const doc = document;
  const wrap = doc.createElement("div");
  wrap.style.cssText = "display:flex;flex-direction:column;gap:4px;font:12px sans-serif";
  const pick = doc.createElement("select");
  for (let i = 1; i <= 6; i++) pick.add(new Option(`character_${i}`, String(i)));
  const canvas = doc.createElement("canvas");
  canvas.width = 256;
  canvas.height = 256;
  canvas.style.cssText = "width:256px;height:256px;cursor:crosshair";
  const status = doc.createElement("div");
  wrap.append(pick, canvas, status);
  node.addDOMWidget("region_canvas", "newbie_region_canvas", wrap, { serialize: false });

  const redraw = () => draw(canvas, widget.value, status);
  let start = null;
  canvas.addEventListener("pointerdown", (e) => {
    start = [e.offsetX, e.offsetY];
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointerup", (e) => {
    if (!start) return;
    const rect = canvas.getBoundingClientRect();
    const box = boxFromDrag(start[0], start[1], e.offsetX, e.offsetY, rect.width || canvas.width, rect.height || canvas.height);
    start = null;
    if (!box) return;
    let boxes;
    try {
      boxes = parseRegionLines(widget.value);
    } catch {
      return; // leave a hand-edited value with an error alone; the status line shows it
    }
    boxes[Number(pick.value)] = box;
    widget.value = formatRegionLines(boxes);
    widget.callback?.(widget.value);
    redraw();
  });
  const original = widget.callback;
  widget.callback = function (...args) {
    const r = original?.apply(this, args);
    redraw();
    return r;
  };
  redraw();
}

app.registerExtension({
  name: "newbie.regions",
  nodeCreated(node) {
    if (node.comfyClass === NODE_CLASS) attach(node);
  },
});
