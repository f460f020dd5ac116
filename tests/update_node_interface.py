"""Regenerate the pinned node interface ``tests/node_interface.json`` (no ComfyUI needed).

    python -m tests.update_node_interface              # record additive changes (new nodes, optional inputs
                                                       # appended after existing ones, appended outputs)
    python -m tests.update_node_interface --breaking "why"   # deliberate breaking change: bumps interface_version
    python -m tests.update_node_interface --print      # print the current interface as JSON

Run it from the repository root after adding a node or an input, and commit the JSON with the change. The pack is
imported with ``tests/comfy_stub.py`` standing in for ComfyUI, in this process only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

import comfy_stub  # noqa: E402
import node_interface as ni  # noqa: E402


def pack_node_classes() -> list:
    comfy_stub.install()
    spec = importlib.util.spec_from_file_location(
        "newbie_pack_interface", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.update_node_interface", description=__doc__.split("\n")[0])
    parser.add_argument("--print", action="store_true", help="print the current interface and exit")
    parser.add_argument("--breaking", metavar="WHY", help="accept a breaking change and bump interface_version")
    parser.add_argument("--current", metavar="JSON", help=argparse.SUPPRESS)  # tests: an interface instead of the pack
    args = parser.parse_args(argv)

    if args.current:
        current = json.loads(Path(args.current).read_text(encoding="utf-8"))
    else:
        current = ni.describe_all(pack_node_classes())
    if args.print:
        sys.stdout.write(json.dumps(current, ensure_ascii=False))
        return 0
    golden = ni.load_golden() if ni.GOLDEN.exists() else {"interface_version": 1, "nodes": {}}
    broken = ni.breaking_changes(golden["nodes"], current)
    version = golden["interface_version"]
    if broken and not args.breaking:
        print("refusing to record a breaking interface change (saved workflows would load wrongly):", file=sys.stderr)
        for line in broken:
            print("  " + line, file=sys.stderr)
        print(
            'Keep old ids/inputs/order and add optional inputs at the end, or rerun with --breaking "why" '
            "(and register a deprecation / node replacement for old graphs).",
            file=sys.stderr,
        )
        return 1
    if broken:
        version += 1
    for line in ni.additions(golden["nodes"], current) + broken:
        print(line)
    out = {
        "about": "Pinned public interface of every node. Regenerate with: " + ni.REGENERATE + " (see its --help).",
        "interface_version": version,
        "changes": golden.get("changes", []) + ([f"v{version}: {args.breaking}"] if broken else []),
        "nodes": current,
    }
    ni.GOLDEN.write_text(ni.dump(out), encoding="utf-8")
    print(f"wrote {ni.GOLDEN} ({len(current)} nodes, interface_version {version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
