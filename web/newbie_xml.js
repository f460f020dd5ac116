// NewBie XML prompt editor for ComfyUI: syntax highlighting, live validation with line and column,
// add/remove character blocks, and import of an XML prompt into builder nodes.
// The widget value stays a plain string, so API-format workflows are unaffected.

import { app } from "../../scripts/app.js";
import { buildPrompt, CHARACTER_FIELDS, GENERAL_FIELDS, highlightTokens, parsePrompt, XMLPromptError } from "./xml_validate.js";

const NODE_CLASS = "NewBieXMLPrompt";
const STYLE_ID = "newbie-xml-editor-style";
const CSS = `
.nb-xml-wrap { position: relative; width: 100%; height: 100%; }
.nb-xml-wrap textarea.nb-xml-input { position: absolute; inset: 0; background: transparent !important;
  color: transparent !important; caret-color: var(--input-text, #ddd); z-index: 1; resize: none; }
.nb-xml-highlight { position: absolute; inset: 0; margin: 0; overflow: hidden; pointer-events: none;
  white-space: pre-wrap; word-wrap: break-word; color: var(--input-text, #ddd); z-index: 0; }
.nb-xml-highlight .nb-tag { color: #7cc4ff; }
.nb-xml-highlight .nb-entity { color: #f7b267; }
.nb-xml-highlight .nb-comment { color: #7f8c8d; font-style: italic; }
.nb-xml-highlight .nb-error-line { background: rgba(255, 80, 80, 0.25); }
.nb-xml-panel { font: 12px sans-serif; display: flex; flex-direction: column; gap: 4px; }
.nb-xml-toolbar button { margin-right: 4px; font-size: 11px; }
.nb-xml-status { white-space: pre-wrap; }
.nb-xml-status.nb-ok { color: #6fcf97; }
.nb-xml-status.nb-error { color: #ff6b6b; }
.nb-xml-status.nb-warn { color: #f2c94c; }
`;

function ensureStyle(doc) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  doc.head.appendChild(style);
}

function escapeHTML(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** Render highlighted HTML for the text; the error line (1-based) gets a background. */
export function renderHighlight(text, errorLine = null) {
  const html = highlightTokens(text)
    .map((t) => (t.kind === "text" ? escapeHTML(t.text) : `<span class="nb-${t.kind}">${escapeHTML(t.text)}</span>`))
    .join("");
  if (errorLine == null) return html + "\n";
  return html.split("\n").map((line, k) => (k + 1 === errorLine ? `<span class="nb-error-line">${line || " "}</span>` : line)).join("\n") + "\n";
}

/** Validate and describe: {ok, text, line, column, prompt}. */
export function describe(text) {
  try {
    const prompt = parsePrompt(text);
    if (prompt.plain !== null) {
      const parts = ["plain prompt (tags or text): passed through unchanged"];
      for (const w of prompt.warnings) parts.push(`warning line ${w.line}, column ${w.column}: ${w.message}`);
      return { ok: true, level: prompt.warnings.length ? "warn" : "ok", text: parts.join("\n"), prompt };
    }
    const n = prompt.characters.length;
    const parts = [`valid NewBie XML: ${n} character${n === 1 ? "" : "s"}${Object.keys(prompt.general_tags).length ? ", general tags" : ""}`];
    for (const w of prompt.warnings) parts.push(`warning line ${w.line}, column ${w.column}: ${w.message}`);
    return { ok: true, level: prompt.warnings.length ? "warn" : "ok", text: parts.join("\n"), prompt };
  } catch (err) {
    if (!(err instanceof XMLPromptError)) throw err;
    return { ok: false, level: "error", text: err.message, line: err.line, column: err.column };
  }
}

function setText(widget, textarea, value) {
  textarea.value = value;
  widget.value = value;
  textarea.dispatchEvent(new Event("input", { bubbles: true }));
}

/** Turn a node's "text" textarea into the editor. Returns the controller (used by tests and the buttons). */
export function enhance(node, doc = globalThis.document) {
  const widget = node.widgets?.find((w) => w.name === "text");
  const textarea = widget?.inputEl ?? widget?.element;
  if (!widget || !textarea || textarea.__newbieEditor) return textarea?.__newbieEditor ?? null;
  if (!textarea.parentNode) return null; // the frontend has not mounted the widget yet
  ensureStyle(doc);

  const wrap = doc.createElement("div");
  wrap.className = "nb-xml-wrap";
  const highlight = doc.createElement("pre");
  highlight.className = "nb-xml-highlight";
  textarea.parentNode.insertBefore(wrap, textarea);
  wrap.appendChild(highlight);
  wrap.appendChild(textarea);
  textarea.classList.add("nb-xml-input");
  textarea.spellcheck = false;
  const computed = globalThis.getComputedStyle ? getComputedStyle(textarea) : null;
  if (computed) for (const p of ["fontFamily", "fontSize", "lineHeight", "padding", "letterSpacing"]) highlight.style[p] = computed[p];

  const panel = doc.createElement("div");
  panel.className = "nb-xml-panel";
  const toolbar = doc.createElement("div");
  toolbar.className = "nb-xml-toolbar";
  const status = doc.createElement("div");
  status.className = "nb-xml-status";
  panel.append(toolbar, status);

  const editor = {
    node, widget, textarea, highlight, status, toolbar,
    refresh() {
      const d = describe(textarea.value);
      status.textContent = d.text;
      status.className = `nb-xml-status nb-${d.level}`;
      highlight.innerHTML = renderHighlight(textarea.value, d.ok ? null : d.line);
      highlight.scrollTop = textarea.scrollTop;
      return d;
    },
    parsed() {
      const d = describe(textarea.value);
      if (!d.ok) {
        status.textContent = `fix this first: ${d.text}`;
        return null;
      }
      const p = d.prompt;
      if (p.plain !== null) {
        if (p.plain.trim()) {
          this.notice = "this is a plain prompt: clear it or write XML before using the character tools";
          return null;
        }
        return { characters: [], general_tags: {}, caption: null, sections: {} };
      }
      return p;
    },
    addCharacter() {
      const p = this.parsed();
      if (!p) return false;
      const next = Math.max(0, ...p.characters.map((c) => c.index)) + 1;
      p.characters.push({ index: next, fields: { n: "", gender: "1girl" } });
      setText(widget, textarea, buildPrompt(p));
      return true;
    },
    removeCharacter() {
      const p = this.parsed();
      if (!p || !p.characters.length) return false;
      const last = Math.max(...p.characters.map((c) => c.index));
      p.characters = p.characters.filter((c) => c.index !== last);
      setText(widget, textarea, buildPrompt(p));
      return true;
    },
    format() {
      const p = this.parsed();
      if (!p) return false;
      setText(widget, textarea, buildPrompt(p));
      return true;
    },
    /** What the builder nodes cannot hold (they would silently drop it): sections, unknown fields, gaps in numbering. */
    builderLosses(p) {
      const lost = Object.keys(p.sections ?? {}).map((name) => `<${name}>`);
      for (const c of p.characters) {
        for (const f of Object.keys(c.fields)) if (!CHARACTER_FIELDS.includes(f)) lost.push(`<${f}> in <character_${c.index}>`);
      }
      for (const f of Object.keys(p.general_tags)) if (!GENERAL_FIELDS.includes(f)) lost.push(`<${f}> in <general_tags>`);
      const indices = p.characters.map((c) => c.index).sort((a, b) => a - b);
      if (indices.some((v, k) => v !== k + 1)) lost.push(`the numbering ${indices.map((i) => `character_${i}`).join(", ")}`);
      return lost;
    },
    importToBuilder() {
      const p = this.parsed();
      const LG = globalThis.LiteGraph;
      const graph = node.graph ?? app.graph;
      if (!p || !LG || !graph) return [];
      const lost = this.builderLosses(p);
      if (lost.length) {
        this.notice = `To builder nodes: ${lost.join(", ")} cannot be carried by the builder nodes; nothing was created (keep this prompt in the XML node)`;
        return [];
      }
      const created = [];
      const GAP = 40, TITLE = 30;
      const make = (type) => {
        const n = LG.createNode(type);
        graph.add(n);
        created.push(n);
        return n;
      };
      const setWidgets = (n, values) => {
        for (const w of n.widgets ?? []) if (w.name in values) w.value = values[w.name];
      };
      // one column of characters, then general tags, then the assembler: laid out by the sizes the nodes report
      let x = node.pos[0] + node.size[0] + GAP, y = node.pos[1], width = 0, previous = null;
      [...p.characters].sort((a, b) => a.index - b.index).forEach((c) => {
        const n = make("NewBieCharacter");
        setWidgets(n, { ...Object.fromEntries(CHARACTER_FIELDS.map((f) => [f, ""])), ...c.fields, normalize_tags: false });
        n.pos = [x, y];
        y += n.size[1] + TITLE + GAP;
        width = Math.max(width, n.size[0]);
        if (previous) previous.connect(0, n, 0);
        previous = n;
      });
      if (width) x += width + GAP;
      const general = make("NewBieGeneralTags");
      setWidgets(general, { ...Object.fromEntries(GENERAL_FIELDS.map((f) => [f, ""])), ...p.general_tags, normalize_tags: false });
      general.pos = [x, node.pos[1]];
      const assemble = make("NewBieXMLAssemble");
      setWidgets(assemble, { caption: p.caption ?? "" });
      assemble.pos = [x + general.size[0] + GAP, node.pos[1]];
      if (previous) previous.connect(0, assemble, 0);
      general.connect(0, assemble, 1);
      graph.setDirtyCanvas?.(true, true);
      return created;
    },
  };
  const button = (label, title, fn) => {
    const b = doc.createElement("button");
    b.textContent = label;
    b.title = title;
    b.addEventListener("click", () => {
      editor.notice = null;
      fn.call(editor);
      editor.refresh();
      if (editor.notice) { // why a button did nothing, shown instead of the validator's line
        status.textContent = editor.notice;
        status.className = "nb-xml-status nb-warn";
      }
    });
    toolbar.appendChild(b);
    return b;
  };
  button("+ Character", "Append a <character_N> block", editor.addCharacter);
  button("− Character", "Remove the last character block", editor.removeCharacter);
  button("Format", "Re-layout as in the model card", editor.format);
  button("To builder nodes", "Create NewBie Character / General Tags / Assemble nodes from this XML", editor.importToBuilder);

  textarea.addEventListener("input", () => { widget.value = textarea.value; editor.refresh(); });
  textarea.addEventListener("scroll", () => { highlight.scrollTop = textarea.scrollTop; });
  if (typeof node.addDOMWidget === "function") {
    node.addDOMWidget("newbie_xml_tools", "div", panel, { serialize: false, hideOnZoom: false });
  } else {
    wrap.parentNode.appendChild(panel);
  }
  textarea.__newbieEditor = editor;
  editor.refresh();
  return editor;
}

/** The frontend may mount a node's DOM widgets after nodeCreated: retry for a few frames. */
export function attachWhenMounted(node, doc = globalThis.document, framesLeft = 240) {
  if (enhance(node, doc) || framesLeft <= 0) return;
  const next = globalThis.requestAnimationFrame ?? ((fn) => setTimeout(fn, 16));
  next(() => attachWhenMounted(node, doc, framesLeft - 1));
}

app.registerExtension({
  name: "newbie.xmlPromptEditor",
  async nodeCreated(node) {
    if (node?.comfyClass === NODE_CLASS) attachWhenMounted(node);
  },
});
