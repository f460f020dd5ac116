"""Run ``python -m newbie_core batch ARGS`` and SIGKILL this very process at one chosen moment (tests only).

usage: python batch_kill_runner.py POINT BATCH-ARGS...
POINT: after-record (first image written and recorded), mid-write (first PNG half written to its part
file), mid-record (first PNG in place, its manifest line half written).
"""

from __future__ import annotations

import os
import signal
import sys

from newbie_core.batch import manifest, store
from newbie_core.cli import main


def die():
    os.kill(os.getpid(), signal.SIGKILL)


point, argv = sys.argv[1], sys.argv[2:]
if point == "after-record":
    append = manifest.Manifest.append

    def killing_append(self, entry):
        append(self, entry)
        die()

    manifest.Manifest.append = killing_append
elif point == "mid-write":

    def killing_write_part(folder, item_id, data):
        with open(store.part_path(folder, item_id), "wb") as fh:
            fh.write(data[: len(data) // 2])
        die()

    store.write_part = killing_write_part
elif point == "mid-record":

    def torn_append(self, entry):
        os.write(self.fd, b'{"id": "' + entry["id"].encode() + b'", "sha2')
        die()

    manifest.Manifest.append = torn_append
else:
    raise SystemExit(f"unknown kill point {point}")
sys.exit(main(["batch", *argv]))
