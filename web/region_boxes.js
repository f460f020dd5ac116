// Character-region boxes as the NewBie Character Regions widget holds them ("character_N=x0,y0,x1,y1" per line,
// 0-1000 units): parse, format and drag-to-box, with newbie_core.layout's rules and messages. No DOM: runs in Node.

import { checkRegionBox } from "./xml_validate.js";

export const SCALE = 1000;

/** "character_1=0,0,500,1000\n..." -> {1: [x0, y0, x1, y1], ...}. Throws Error with the server's message. */
export function parseRegionLines(text) {
  const out = {};
  for (const raw of (text || "").split(/[;\n]/)) {
    const entry = raw.trim();
    if (!entry) continue;
    const eq = raw.indexOf("=");
    if (eq < 0) throw new Error(`${entry}: needs the form character_N=x0,y0,x1,y1`);
    const name = raw.slice(0, eq);
    const m = /^character_([1-9][0-9]*)$/.exec(name.trim());
    if (!m) throw new Error(`${entry}: "${name}" is not a character name; use character_1, character_2, ...`);
    const value = raw.slice(eq + 1);
    const problem = checkRegionBox(value);
    if (problem) throw new Error(`${entry}: ${problem}`);
    const index = parseInt(m[1], 10);
    if (index in out) throw new Error(`${entry}: character_${index} is given twice`);
    out[index] = value.split(",").map((v) => Number(v.trim()));
  }
  return out;
}

/** {1: [x0, y0, x1, y1]} -> widget text, characters in order. */
export function formatRegionLines(boxes) {
  return Object.keys(boxes)
    .map(Number)
    .sort((a, b) => a - b)
    .map((i) => `character_${i}=${boxes[i].map((v) => Math.round(v)).join(",")}`)
    .join("\n");
}

/** A drag from (ax, ay) to (bx, by) on a w x h canvas -> box in 0-1000 units (clamped, ordered), or null if empty. */
export function boxFromDrag(ax, ay, bx, by, w, h) {
  const ux = (x) => Math.round(Math.min(Math.max(x / w, 0), 1) * SCALE);
  const uy = (y) => Math.round(Math.min(Math.max(y / h, 0), 1) * SCALE);
  const box = [Math.min(ux(ax), ux(bx)), Math.min(uy(ay), uy(by)), Math.max(ux(ax), ux(bx)), Math.max(uy(ay), uy(by))];
  return box[2] > box[0] && box[3] > box[1] ? box : null;
}
