// NewBie XML prompt validation in the browser: the same rules and messages as newbie_core.xml_prompt,
// so the editor shows while typing exactly what the server would reject. No DOM here: also runs in Node.

export const MAX_PROMPT_CHARS = 65536;
export const MAX_DEPTH = 16;

export const CHARACTER_FIELDS = ["n", "gender", "appearance", "clothing", "body_type", "expression", "action", "interaction", "position"];
export const GENERAL_FIELDS = ["count", "artists", "style", "background", "environment", "perspective", "atmosphere", "lighting", "quality", "resolution", "objects", "other"];

const NAME = /[A-Za-z_][A-Za-z0-9_.\-]*/y;
const ENTITY = /&(#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{0,31});/y;
const MARKUP = /<\s*\/?\s*[A-Za-z_][A-Za-z0-9_.\-]*\s*\/?>/;
const PREDEFINED = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
const CHARACTER_TAG = /^character_(\d+)$/;
const REGION_NUMBER = /^\s*(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*$/;

/** A character's <region>x0,y0,x1,y1</region> (0-1000 units): the rules and messages of newbie_core.layout.parse_box. */
export function checkRegionBox(value) {
  const shown = value.trim();
  const parts = shown.split(",");
  const numbers = parts.map((p) => REGION_NUMBER.exec(p));
  if (parts.length !== 4 || !numbers.every(Boolean)) return `needs four numbers x0,y0,x1,y1 from 0 to 1000, got "${shown}"`;
  const v = numbers.map((m) => Number(m[1]));
  const names = ["x0", "y0", "x1", "y1"];
  for (let i = 0; i < 4; i++) if (!(v[i] >= 0 && v[i] <= 1000)) return `${names[i]}=${v[i]} is outside 0-1000`;
  for (const [a, b] of [[0, 2], [1, 3]]) {
    if (v[b] <= v[a]) return `is empty or inverted: ${names[b]} (${v[b]}) must be greater than ${names[a]} (${v[a]})`;
  }
  return null;
}

export class XMLPromptError extends Error {
  constructor(message, line, column, tag = null) {
    super(`line ${line}, column ${column}: ${message}`);
    this.message_ = message;
    this.line = line;
    this.column = column;
    this.tag = tag;
  }
}

function positions(text) {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text[i] === "\n") starts.push(i + 1);
  return (index) => {
    let lo = 0, hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= index) lo = mid; else hi = mid - 1;
    }
    // columns count code points, as Python's str indexing does
    return [lo + 1, Array.from(text.slice(starts[lo], index)).length + 1];
  };
}

/** A tag NewBie prompts use (a section, the root, a character block or a field), as schema.is_newbie_tag. */
export function isNewBieTag(name) {
  return CHARACTER_FIELDS.includes(name) || GENERAL_FIELDS.includes(name) || ["caption", "general_tags", "image", "style"].includes(name)
    || CHARACTER_TAG.test(name);
}

/** True when the prompt is meant as XML: it uses a NewBie tag or closes some tag; otherwise <word> is prose. */
export function looksLikeXML(text) {
  for (const m of text.matchAll(new RegExp(MARKUP.source, "g"))) {
    const body = m[0].slice(1).trimStart();
    if (body.startsWith("/") || isNewBieTag(/^[A-Za-z_][A-Za-z0-9_.\-]*/.exec(body)[0])) return true;
  }
  return false;
}

/** Parse into a tree of {tag, start, children} / {text, start}. Throws XMLPromptError. */
export function parseTree(text) {
  const pos = positions(text);
  const fail = (message, index, tag = null) => {
    const [l, c] = pos(index);
    throw new XMLPromptError(message, l, c, tag);
  };
  const root = { tag: "", start: 0, children: [] };
  const stack = [root];
  let i = 0;
  const n = text.length;
  let buf = "", bufStart = 0;
  const flush = () => { if (buf) { stack[stack.length - 1].children.push({ text: buf, start: bufStart }); buf = ""; } };
  const add = (s, at) => { if (!buf) bufStart = at; buf += s; };
  while (i < n) {
    const ch = text[i];
    if (ch === "&") {
      ENTITY.lastIndex = i;
      const m = ENTITY.exec(text);
      if (!m) { add("&", i); i += 1; continue; }
      const ref = m[1];
      if (ref.startsWith("#")) {
        const code = ref[1] === "x" ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
        if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) fail(`character reference &${ref}; is not a valid character`, i);
        add(String.fromCodePoint(code), i);
      } else if (ref in PREDEFINED) {
        add(PREDEFINED[ref], i);
      } else {
        fail(`unknown entity &${ref}; (only &amp; &lt; &gt; &quot; &apos; and numeric references are allowed)`, i);
      }
      i += m[0].length;
      continue;
    }
    if (ch !== "<") {
      let j = i + 1;
      while (j < n && text[j] !== "<" && text[j] !== "&") j++;
      add(text.slice(i, j), i);
      i = j;
      continue;
    }
    if (text.startsWith("<!--", i)) {
      const end = text.indexOf("-->", i + 4);
      if (end < 0) fail("comment <!-- is never closed", i);
      flush(); i = end + 3; continue;
    }
    if (text.startsWith("<![CDATA[", i)) {
      const end = text.indexOf("]]>", i + 9);
      if (end < 0) fail("CDATA section is never closed", i);
      add(text.slice(i + 9, end), i); i = end + 3; continue;
    }
    if (text.startsWith("<!", i)) {
      const word = (/^<!([A-Za-z]*)/.exec(text.slice(i))[1]) || "...";
      fail(`<!${word}> declarations are not allowed in prompts (no DTDs or entity definitions)`, i);
    }
    if (text.startsWith("<?", i)) {
      const end = text.indexOf("?>", i + 2);
      if (end < 0) fail("processing instruction <? is never closed", i);
      if (text.slice(i + 2, i + 5).toLowerCase() !== "xml" || text.slice(0, i).trim()) fail("processing instructions (<?...?>) are not allowed in prompts", i);
      i = end + 2; continue;
    }
    if (text.startsWith("</", i)) {
      NAME.lastIndex = i + 2;
      const m = NAME.exec(text);
      const close = m ? /^\s*>/.exec(text.slice(m.index + m[0].length)) : null;
      if (!m || !close) fail("malformed closing tag", i);
      const name = m[0];
      flush();
      if (stack.length === 1) fail(`</${name}> has no matching opening tag`, i, name);
      const top = stack[stack.length - 1];
      if (top.tag !== name) {
        const [ol, oc] = pos(top.start);
        fail(`</${name}> closes <${top.tag}>, which was opened at line ${ol}, column ${oc}`, i, name);
      }
      stack.pop();
      i = m.index + m[0].length + close[0].length;
      continue;
    }
    NAME.lastIndex = i + 1;
    const m = NAME.exec(text);
    if (!m || m.index !== i + 1) { add("<", i); i += 1; continue; }
    const name = m[0];
    let j = i + 1 + name.length;
    while (j < n && " \t\r\n".includes(text[j])) j++;
    let selfClosing = false, end;
    if (text.startsWith("/>", j)) { selfClosing = true; end = j + 2; }
    else if (j < n && text[j] === ">") { end = j + 1; }
    else if (j >= n) fail(`tag <${name} is not finished (missing '>')`, i, name);
    else fail(`<${name}> has attributes or stray characters; NewBie prompts use plain <tag>value</tag>`, i, name);
    flush();
    const el = { tag: name, start: i, children: [] };
    stack[stack.length - 1].children.push(el);
    if (!selfClosing) {
      if (stack.length > MAX_DEPTH) fail(`<${name}> is nested more than ${MAX_DEPTH} levels deep`, i, name);
      stack.push(el);
    }
    i = end;
  }
  flush();
  if (stack.length > 1) {
    const top = stack[stack.length - 1];
    fail(`<${top.tag}> is never closed`, top.start, top.tag);
  }
  return root.children;
}

const elementsOf = (node) => node.children.filter((c) => c.tag !== undefined);
const textOf = (node) => node.children.filter((c) => c.text !== undefined).map((c) => c.text).join("");

/** Validate and read a prompt: {characters, general_tags, caption, sections, plain, warnings}. Throws XMLPromptError. */
export function parsePrompt(text) {
  if (text.length > MAX_PROMPT_CHARS) {
    const count = Array.from(text).length; // code points, as Python counts
    if (count > MAX_PROMPT_CHARS) throw new XMLPromptError(`prompt is ${count} characters long; the limit is ${MAX_PROMPT_CHARS}`, 1, 1);
  }
  const nul = text.indexOf("\u0000");
  const pos = positions(text);
  if (nul >= 0) { const [l, c] = pos(nul); throw new XMLPromptError("NUL character in prompt", l, c); }
  const out = { characters: [], general_tags: {}, caption: null, sections: {}, plain: null, warnings: [] };
  if (!looksLikeXML(text)) {
    out.plain = text;
    const stray = MARKUP.exec(text);
    if (stray) {
      const [l, c] = pos(stray.index);
      out.warnings.push({ message: `${stray[0]} is not a NewBie tag and no tag is closed, so the prompt is read as plain text`, line: l, column: c, tag: null });
    }
    return out;
  }
  const fail = (message, index, tag = null) => { const [l, c] = pos(index); throw new XMLPromptError(message, l, c, tag); };
  const warn = (message, index, tag = null) => { const [l, c] = pos(index); out.warnings.push({ message, line: l, column: c, tag }); };
  const seen = {};
  const once = (key, el, what) => {
    if (key in seen) { const [l, c] = pos(seen[key]); fail(`<${el.tag}> appears twice${what} (first at line ${l}, column ${c})`, el.start, el.tag); }
    seen[key] = el.start;
  };
  const noStray = (nodes, where) => {
    for (const node of nodes) {
      if (node.text !== undefined && node.text.trim()) {
        let snippet = node.text.trim();
        if (snippet.length > 30) snippet = snippet.slice(0, 27) + "...";
        const offset = node.start + (node.text.length - node.text.trimStart().length);
        fail(`stray text '${snippet}' ${where}`, offset);
      }
    }
  };
  const fields = (block, known) => {
    noStray(block.children, `inside <${block.tag}>; put it inside a tag such as <${known[1]}>`);
    const res = {}, first = {};
    for (const el of elementsOf(block)) {
      if (el.tag in first) { const [l, c] = pos(first[el.tag]); fail(`<${el.tag}> appears twice in <${block.tag}> (first at line ${l}, column ${c})`, el.start, el.tag); }
      first[el.tag] = el.start;
      const inner = elementsOf(el);
      if (inner.length) fail(`<${inner[0].tag}> cannot be nested inside <${el.tag}>`, inner[0].start, inner[0].tag);
      if (el.tag === "region" && CHARACTER_TAG.test(block.tag)) {
        const problem = checkRegionBox(textOf(el));
        if (problem) {
          const first = el.children.find((c) => c.text !== undefined && c.text.trim());
          const at = first ? first.start + (first.text.length - first.text.trimStart().length) : el.start;
          fail(`<region> of <${block.tag}> ${problem}`, at, "region");
        }
      } else if (!known.includes(el.tag)) warn(`unknown tag <${el.tag}> in <${block.tag}> (kept; the model was not trained on it)`, el.start, el.tag);
      res[el.tag] = textOf(el).trim();
    }
    return res;
  };
  const section = (el) => {
    const m = CHARACTER_TAG.exec(el.tag);
    if (m) {
      const index = parseInt(m[1], 10);
      if (index < 1 || m[1].startsWith("0")) fail(`character blocks are numbered from 1: <${el.tag}>`, el.start, el.tag);
      once(el.tag, el, "");
      out.characters.push({ index, fields: fields(el, CHARACTER_FIELDS) });
      return;
    }
    if (el.tag === "general_tags") { once(el.tag, el, ""); out.general_tags = fields(el, GENERAL_FIELDS); return; }
    once(el.tag, el, " at the top level");
    const inner = elementsOf(el);
    if (inner.length) fail(`<${inner[0].tag}> cannot be nested inside <${el.tag}>`, inner[0].start, inner[0].tag);
    if (el.tag === "caption") { out.caption = textOf(el).trim(); return; }
    if (el.tag !== "style") warn(`unknown section <${el.tag}> (kept as text; the model was not trained on it)`, el.start, el.tag);
    out.sections[el.tag] = textOf(el).trim();
  };
  let nodes = parseTree(text);
  const elements = nodes.filter((x) => x.tag !== undefined);
  const roots = elements.filter((e) => e.tag === "image");
  if (roots.length === 1 && elements.every((e) => e === roots[0] || e.tag === "style")) {
    for (const e of elements) if (e !== roots[0]) section(e);
    nodes = roots[0].children;
    noStray(nodes, "inside <image>; put it inside a tag such as <caption>");
  } else {
    noStray(nodes, "outside any tag; put it inside a tag such as <caption>");
  }
  for (const el of nodes) if (el.tag !== undefined) section(el);
  return out;
}

const escape = (v) => v.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * Build XML in the model-card layout (no root, blank lines between blocks), exactly as newbie_core.xml_prompt.build:
 * <style> first, then caption, characters in index order, general tags, and every other section last. Nothing a
 * parsed prompt holds is dropped except empty values; tests/xml_prompt_corpus.json pins the output in both languages.
 */
export function buildPrompt({ characters = [], general_tags = {}, caption = null, sections = {}, plain = null } = {}) {
  if (plain !== null && plain !== undefined) return plain;
  const blocks = [];
  if ("style" in sections) blocks.push(`<style>${escape(String(sections.style).trim())}</style>`);
  if (caption && caption.trim()) blocks.push(`<caption>${escape(caption.trim())}</caption>`);
  const numbered = characters.map((c, k) => ({ index: c.index ?? k + 1, fields: c.fields ?? {} }));
  numbered.sort((a, b) => a.index - b.index);
  for (const c of numbered) {
    const f = { n: "", ...c.fields };
    const names = [...CHARACTER_FIELDS, ...Object.keys(f).filter((x) => !CHARACTER_FIELDS.includes(x))];
    const lines = [`<character_${c.index}>`];
    for (const name of names) {
      if (!(name in f)) continue;
      const v = String(f[name]).trim();
      if (v || name === "n") lines.push(`<${name}>${escape(v)}</${name}>`);
    }
    lines.push(`</character_${c.index}>`);
    blocks.push(lines.join("\n"));
  }
  const g = Object.entries(general_tags).filter(([, v]) => String(v).trim());
  if (g.length) {
    const order = [...GENERAL_FIELDS, ...g.map(([k]) => k).filter((k) => !GENERAL_FIELDS.includes(k))];
    const map = Object.fromEntries(g);
    blocks.push(["<general_tags>", ...order.filter((k) => k in map).map((k) => `<${k}>${escape(String(map[k]).trim())}</${k}>`), "</general_tags>"].join("\n"));
  }
  for (const [name, value] of Object.entries(sections)) {
    if (name !== "style" && String(value).trim()) blocks.push(`<${name}>${escape(String(value).trim())}</${name}>`);
  }
  return blocks.join("\n\n");
}

/** Token classes for syntax highlighting: [{kind, text}] with kind in tag, entity, text, comment. */
export function highlightTokens(text) {
  const out = [];
  const re = /(<!--[\s\S]*?(?:-->|$))|(<\/?[A-Za-z_][A-Za-z0-9_.\-]*\s*\/?>)|(&#?[A-Za-z0-9]+;)/g;
  let last = 0, m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) out.push({ kind: "text", text: text.slice(last, m.index) });
    out.push({ kind: m[1] ? "comment" : m[2] ? "tag" : "entity", text: m[0] });
    last = m.index + m[0].length;
    if (m[0].length === 0) re.lastIndex++;
  }
  if (last < text.length) out.push({ kind: "text", text: text.slice(last) });
  return out;
}
