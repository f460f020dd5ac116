// Opens a running ComfyUI server's real frontend in headless Chromium and reports, as JSON on stdout:
// the rendered rectangle of every node of each example workflow, the widget order of every pack node as the
// frontend builds it, and each pack node's title with the zh and ja locales. Used by tests/host/test_example_workflows.py.
//   node frontend_check.mjs <server url> <pack root> [screenshot dir]
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, root, shots] = process.argv.slice(2);
const golden = JSON.parse(await readFile(path.join(root, "tests", "node_interface.json"), "utf8")).nodes;
const workflowDir = path.join(root, "example_workflows");
const workflows = (await readdir(workflowDir)).filter((f) => f.endsWith(".json")).sort();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const page = await browser.newPage({ viewport: { width: 1800, height: 1000 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));

async function open(locale) {
  await fetch(`${url}/settings/Comfy.Locale`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(locale) });
  await page.goto(url + "/", { timeout: 120000 });
  await page.waitForFunction((ids) => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    return app?.graph && globalThis.LiteGraph && ids.every((id) => LiteGraph.registered_node_types[id]);
  }, Object.keys(golden), { timeout: 120000 });
  await page.keyboard.press("Escape"); // the template browser opens on first start
}

const result = { workflows: {}, widgets: {}, titles: {}, errors };
await open("en");
for (const name of workflows) {
  const wf = JSON.parse(await readFile(path.join(workflowDir, name), "utf8"));
  result.workflows[name] = await page.evaluate(async (wf) => {
    const app = window.app ?? window.comfyAPI.app.app;
    await app.loadGraphData(wf);
    await new Promise((r) => setTimeout(r, 1000));
    return app.graph._nodes.map((n) => ({ id: n.id, type: n.type, pos: [...n.pos], size: [...n.size],
      flags: { collapsed: !!n.flags?.collapsed } }));
  }, wf);
  if (shots) await page.screenshot({ path: path.join(shots, name.replace(/\.json$/, ".png")) });
}
result.widgets = await page.evaluate((ids) => Object.fromEntries(ids.map((id) =>
  [id, (LiteGraph.createNode(id).widgets ?? []).map((w) => w.name)])), Object.keys(golden));
for (const locale of ["zh", "ja"]) {
  await open(locale);
  result.titles[locale] = await page.evaluate((ids) => Object.fromEntries(ids.map((id) => [id, LiteGraph.createNode(id).title])), Object.keys(golden));
}
await fetch(`${url}/settings/Comfy.Locale`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify("en") });
await browser.close();
process.stdout.write(JSON.stringify(result));
