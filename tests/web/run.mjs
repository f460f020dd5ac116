// Loads the extension in headless Chromium on a static page with a stand-in app, drives it like a user,
// and checks the in-browser validator against newbie_core's messages. Prints "N passed, N failed".
import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const routes = {
  "/": path.join(here, "index.html"),
  "/scripts/app.js": path.join(here, "stub_app.js"),
  "/node_interface.json": path.join(root, "tests", "node_interface.json"),
};

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://localhost").pathname;
  let file = routes[url];
  if (!file && url.startsWith("/extensions/newbie/")) file = path.join(root, "web", url.slice("/extensions/newbie/".length));
  try {
    const body = await readFile(file);
    res.writeHead(200, { "Content-Type": file.endsWith(".html") ? "text/html" : "text/javascript" });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;

const CASES = [
  "<character_1>\n<n>a</n>\n",
  "<character_1>\n<gender>1girl</appearance>\n</character_1>",
  "<caption>x</caption>\n</general_tags>",
  "masterpiece\n<character_1><n>a</n></character_1>",
  "<character_1>\n  smiling\n</character_1>",
  "<character_1></character_1>\n<character_1></character_1>",
  "<character_1><n>a</n><n>b</n></character_1>",
  "<character_1><gender><b>x</b></gender></character_1>",
  "<character_0></character_0>",
  '<character_1 id="1"></character_1>',
  "<caption>&nbsp;</caption>",
  "<!DOCTYPE x [<!ENTITY a \"b\">]><caption>&a;</caption>",
  "<caption>\u00e9t\u00e9 \u2764</caption>\n<caption>y</caption>",
  "<a>".repeat(40),
  "<character_1><hair>x</hair></character_1>",
  "1girl, <3, >_<",
  "say <hello> to her, <br> twice",
  "line one <br>\n<b>bold</b>",
  "< /x> closes",
];
const corpus = JSON.parse(await readFile(path.join(root, "tests", "xml_prompt_corpus.json"), "utf8")).cases;
const python = process.env.PYTHON || "python3";
const expected = JSON.parse(execFileSync(python, ["-c", `
import json, sys
sys.path.insert(0, ${JSON.stringify(root)})
from newbie_core.xml_prompt import CHARACTER_FIELDS, GENERAL_FIELDS, XMLPromptError, parse
out = [{"character": list(CHARACTER_FIELDS), "general": list(GENERAL_FIELDS)}]
for text in json.load(sys.stdin):
    try:
        p = parse(text)
        out.append({"ok": True, "warnings": [str(w) for w in p.warnings], "characters": len(p.characters)})
    except XMLPromptError as e:
        out.append({"ok": False, "message": str(e)})
print(json.dumps(out))
`], { input: JSON.stringify(CASES) }).toString());
const pythonFields = expected.shift();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
await page.goto(base + "/");
await page.waitForFunction(() => window.ready === true && window.__extensions?.length === 1);

let passed = 0, failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
function eq(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: ${JSON.stringify(a)} !== ${JSON.stringify(b)}`);
}
async function type(text) {
  await page.fill("#text", text);
  return page.evaluate(() => document.querySelector(".nb-xml-status").textContent);
}

await check("extension registers under a dotted name", async () => {
  eq(await page.evaluate(() => window.__extensions[0].name), "newbie.xmlPromptEditor", "name");
});
await check("nodeCreated builds highlight layer, toolbar and status", async () => {
  await page.evaluate(() => window.makeNode());
  eq(await page.evaluate(() => !!document.querySelector(".nb-xml-highlight")), true, "highlight");
  eq(await page.evaluate(() => document.querySelectorAll(".nb-xml-toolbar button").length), 4, "buttons");
  eq(await page.evaluate(() => window.node.domWidgets[0].options.serialize), false, "panel not serialized");
});
await check("live validation shows line and column for malformed XML", async () => {
  const status = await type("<character_1>\n<n>a</n>\n<gender>1girl</appearance>\n</character_1>");
  eq(status, "line 3, column 14: </appearance> closes <gender>, which was opened at line 3, column 1", "status");
  eq(await page.evaluate(() => document.querySelector(".nb-error-line") !== null), true, "error line marked");
});
await check("valid XML is highlighted and the widget value stays a plain string", async () => {
  const status = await type("<character_1>\n<n>rem</n>\n</character_1>");
  eq(status, "valid NewBie XML: 1 character", "status");
  eq(await page.evaluate(() => document.querySelectorAll(".nb-xml-highlight .nb-tag").length), 4, "tag spans");
  eq(await page.evaluate(() => typeof window.node.widgets[0].value), "string", "widget type");
  eq(await page.evaluate(() => window.node.widgets[0].value), "<character_1>\n<n>rem</n>\n</character_1>", "widget value");
});
await check("add and remove character blocks", async () => {
  await page.click("text=+ Character");
  await page.click("text=+ Character");
  const after = await page.evaluate(() => window.validate.parsePrompt(window.node.widgets[0].value).characters.map((c) => c.index));
  eq(after, [1, 2, 3], "indices after adding");
  await page.click("text=− Character");
  const value = await page.evaluate(() => window.node.widgets[0].value);
  eq(value, "<character_1>\n<n>rem</n>\n</character_1>\n\n<character_2>\n<n></n>\n<gender>1girl</gender>\n</character_2>", "value");
  eq(await page.inputValue("#text"), value, "textarea mirrors widget");
});
await check("character tools refuse to touch malformed XML", async () => {
  await type("<character_1>");
  await page.click("text=+ Character");
  eq(await page.inputValue("#text"), "<character_1>", "unchanged");
  eq((await page.evaluate(() => document.querySelector(".nb-xml-status").textContent)).startsWith("line 1, column 1:"), true, "status");
});
await check("import XML into builder nodes", async () => {
  await type("<caption>Two friends.</caption>\n<character_1><n>a</n><gender>1girl</gender></character_1>\n<character_2><n>b</n><appearance>red_hair</appearance></character_2>\n<general_tags><count>2girls</count></general_tags>");
  await page.click("text=To builder nodes");
  const made = await page.evaluate(() => window.app.graph.nodes.map((n) => [n.type, Object.fromEntries(n.widgets.filter((w) => w.value !== "" && w.value !== false).map((w) => [w.name, w.value]))]));
  eq(made, [
    ["NewBieCharacter", { n: "a", gender: "1girl" }],
    ["NewBieCharacter", { n: "b", appearance: "red_hair" }],
    ["NewBieGeneralTags", { count: "2girls" }],
    ["NewBieXMLAssemble", { caption: "Two friends." }],
  ], "nodes");
  eq(await page.evaluate(() => window.__links), [
    ["NewBieCharacter", 0, "NewBieCharacter", 0], ["NewBieCharacter", 0, "NewBieXMLAssemble", 0], ["NewBieGeneralTags", 0, "NewBieXMLAssemble", 1],
  ], "links");
});
await check("imported builder nodes do not overlap each other or the prompt node", async () => {
  const rects = await page.evaluate(() => [window.node, ...window.app.graph.nodes].map((n) => [n.pos[0], n.pos[1] - 30, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]));
  for (let i = 0; i < rects.length; i++) for (let j = i + 1; j < rects.length; j++) {
    const [a, b] = [rects[i], rects[j]];
    if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) throw new Error(`nodes ${i} and ${j} overlap: ${a} / ${b}`);
  }
});
await check("To builder nodes refuses what the builders would drop, and says what", async () => {
  await page.evaluate(() => { window.app.graph.nodes = []; window.__links = []; });
  await type("<style>sketch</style>\n<character_1><n>a</n><hair>long</hair></character_1>\n<character_3><n>c</n></character_3>");
  await page.click("text=To builder nodes");
  eq(await page.evaluate(() => window.app.graph.nodes.length), 0, "nodes created");
  eq(await page.evaluate(() => document.querySelector(".nb-xml-status").textContent),
     "To builder nodes: <style>, <hair> in <character_1>, the numbering character_1, character_3 cannot be carried by the builder nodes; nothing was created (keep this prompt in the XML node)", "status");
});
await check("browser validator matches newbie_core on every case", async () => {
  const got = await page.evaluate((cases) => cases.map((text) => {
    try {
      const p = window.validate.parsePrompt(text);
      return { ok: true, warnings: p.warnings.map((w) => `line ${w.line}, column ${w.column}: ${w.message}`), characters: p.characters.length };
    } catch (e) {
      return { ok: false, message: e.message };
    }
  }), CASES);
  for (let k = 0; k < CASES.length; k++) eq(got[k], expected[k], `case ${k} ${JSON.stringify(CASES[k]).slice(0, 40)}`);
});
await check("field lists are newbie_core's", async () => {
  eq(await page.evaluate(() => [window.validate.CHARACTER_FIELDS, window.validate.GENERAL_FIELDS]), [pythonFields.character, pythonFields.general], "fields");
});
await check("shared corpus: parse -> build gives Python's text and keeps every value", async () => {
  const got = await page.evaluate((cases) => cases.map(({ text }) => {
    const v = window.validate;
    try {
      const p = v.parsePrompt(text);
      const formatted = v.buildPrompt(p);
      const again = v.parsePrompt(formatted);
      return { formatted, warnings: p.warnings.map((w) => `line ${w.line}, column ${w.column}: ${w.message}`), stable: v.buildPrompt(again) === formatted };
    } catch (e) {
      return { error: e.message };
    }
  }), corpus);
  for (let k = 0; k < corpus.length; k++) {
    const c = corpus[k];
    const want = "error" in c ? { error: c.error } : { formatted: c.formatted, warnings: c.warnings ?? [], stable: true };
    eq(got[k], want, `corpus case "${c.name}"`);
  }
});
await check("Format keeps <style>, unknown tags and sections", async () => {
  await type("<notes>keep me</notes>\n<character_1><n>a</n><hair>long</hair></character_1>\n<style>sketch</style>");
  await page.click("text=Format");
  eq(await page.evaluate(() => window.node.widgets[0].value),
     "<style>sketch</style>\n\n<character_1>\n<n>a</n>\n<hair>long</hair>\n</character_1>\n\n<notes>keep me</notes>", "value");
});
await check("no errors in the page", async () => eq(errors, [], "page errors"));

await browser.close();
server.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
