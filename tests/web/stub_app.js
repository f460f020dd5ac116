// Minimal stand-in for ComfyUI's app object and LiteGraph, enough to load and drive the extension.
export const registered = [];

class FakeNode {
  constructor(type) {
    this.type = type;
    this.comfyClass = type;
    this.pos = [0, 0];
    this.size = [400, 300];
    this.widgets = (window.__schemas[type] || []).map((name) => ({ name, value: "" }));
    this.links = [];
    this.domWidgets = [];
  }
  connect(slot, target, targetSlot) {
    this.links.push({ slot, target: target.type, targetSlot });
    window.__links.push([this.type, slot, target.type, targetSlot]);
  }
  addDOMWidget(name, type, element, options) {
    this.domWidgets.push({ name, type, element, options });
    document.getElementById("dom-widgets").appendChild(element);
    return { name, element };
  }
}

window.__links = [];
// widget names per node type, from the pinned interface (tests/node_interface.json) rather than a copy
const pinned = (await (await fetch("/node_interface.json")).json()).nodes;
window.__schemas = Object.fromEntries(
  Object.entries(pinned).map(([id, n]) => [id, n.widgets_values.filter((w) => !w.includes(":"))]),
);
window.LiteGraph = { createNode: (type) => new FakeNode(type) };
window.FakeNode = FakeNode;

export const app = {
  graph: { nodes: [], add(n) { this.nodes.push(n); }, setDirtyCanvas() {} },
  registerExtension(ext) { registered.push(ext); window.__extensions = registered; },
};
