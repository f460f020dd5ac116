"""``python -m newbie_core batch``: read and check the whole list, agree with the other ranks on what is
left, then generate this rank's share batch by batch, each image written whole and recorded once.

Order of work: (1) list, settings and the existing manifest are checked on every rank before anything
loads; (2) recorded images are hashed (shared out over the ranks) and the results combined; (3) the
batches that still miss an image are dealt round-robin; (4) models load once per rank, only if it has
work; (5) counts are combined and rank 0 prints the summary for the whole run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from pathlib import Path

import torch

from ..errors import ConfigError, NewBieError
from . import store
from .distributed import Group, Ranks, pick_device, ranks_from_env
from .manifest import Manifest
from .plan import Job, item_seed, make_batches, share
from .progress import RankProgress, per_minute
from .prompts import FieldSpec, PromptListError, read_prompt_list

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
MAX_LISTED_FAILURES = 20
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda's only


def setting_fields() -> dict[str, FieldSpec]:
    """Keys a list item may set: exactly generate's sampling flags, typed and limited as those flags are."""
    from ..cli import _add_sampling_args

    parser = argparse.ArgumentParser(add_help=False)
    _add_sampling_args(parser)
    fields = {}
    for a in parser._actions:
        if a.dest == "help":
            continue
        switch = isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        fields[a.dest] = FieldSpec(bool if switch else (a.type or str), tuple(a.choices) if a.choices else None)
    return fields


def _check_flags(args, label) -> None:
    """The shared checks of every command (models folder, device, dtype, --lora files...), then batch's own."""
    from .. import validation

    validation.check_args(args, label)
    validation.seed(label("seed"), args.seed)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")


def _item_label(label, item):
    """Name a bad value as the list's key when the line set it, else as the flag it came from."""
    from ..cli import SETTING_FLAGS

    def name(field: str) -> str:
        key = SETTING_FLAGS[field].lstrip("-").replace("-", "_") if field in SETTING_FLAGS else field
        return repr(key) if key in item.overrides else label(field)

    return name


def build_jobs(args, tiny: bool, say, label) -> list[Job]:
    """Every item as full GenerationSettings, each checked by the shared validator; raises PromptListError naming
    the line."""
    from .. import validation
    from ..cli import _settings

    path = Path(args.prompts)
    _settings(args, "", tiny).validate(label)  # the command line's own values, named by their flags
    items = read_prompt_list(path, setting_fields(), args.format)
    jobs = []
    for index, item in enumerate(items):
        ns = argparse.Namespace(**vars(args))
        for key, value in item.overrides.items():
            setattr(ns, key, value)
        if "seed" not in item.overrides:
            ns.seed = item_seed(args.seed, item.id)
        try:
            prompt, warnings = validation.prompt_text("prompt", item.prompt)
            settings = _settings(ns, prompt, tiny)
            settings.validate(_item_label(label, item))
        except ConfigError as exc:
            raise PromptListError(f"{path}:{item.line}: {exc}") from None
        for warning in warnings:
            say(f"warning: {path}:{item.line}: {warning}")
        jobs.append(Job(index, item, settings))
    return jobs


def _model_label(tiny: bool) -> str | None:
    from .. import tiny as tiny_model

    return tiny_model.LABEL if tiny else None


def lora_record(loras) -> list:
    """What the manifest keeps of ``--lora``: file names and strengths (a moved file is still the same LoRA)."""
    return [[Path(path).name, float(strength)] for path, strength in loras]


def check_manifest(
    jobs: list[Job], manifest: Manifest, out: Path, prompts: Path, tiny: bool, loras: list | None = None
) -> list[Job]:
    """Refuse a rerun that would silently keep images made from other settings; returns the orphans to redo."""
    tiny_label = _model_label(True)
    wanted_loras = lora_record(loras or [])
    orphans = []
    for job in jobs:
        entry = manifest.entries.get(job.item.id)
        if entry is None:
            final = out / f"{job.item.id}.png"
            if final.exists():
                if store.batch_info(final) is None:
                    raise PromptListError(
                        f"{final} exists but is not in {manifest.path.name} and was not written by newbie batch; "
                        "move it away or choose another --out"
                    )
                orphans.append(job)  # written by a run killed before it recorded it: made again
            continue
        recorded = entry.get("settings") or {}
        wanted = job.settings.to_dict()
        differ = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        if differ:
            raise PromptListError(
                f"{prompts}:{job.item.line}: id {job.item.id!r} is already in {manifest.path} with other settings "
                f"({', '.join(differ)}); use another --out, or delete that id's line from the manifest to redo it"
            )
        if entry.get("lora", []) != wanted_loras:
            raise PromptListError(
                f"{prompts}:{job.item.line}: id {job.item.id!r} in {manifest.path} was made with LoRAs "
                f"{entry.get('lora', [])}, this run has {wanted_loras}; use another --out"
            )
        if (entry.get("model") == tiny_label) != tiny:
            raise PromptListError(
                f"{prompts}:{job.item.line}: id {job.item.id!r} in {manifest.path} was made with "
                f"{entry.get('model')!r}, not the model of this run; use another --out"
            )
    return orphans


def verified(jobs: list[Job], manifest: Manifest, out: Path, ranks: Ranks, group: Group) -> list[bool]:
    """Which items already have a whole file (sha256 as recorded); the hashing is shared out over the ranks."""
    recorded = [job for job in jobs if job.item.id in manifest.entries]
    ok = [0] * len(jobs)
    for k, job in enumerate(recorded):
        if k % ranks.world == ranks.rank:
            entry = manifest.entries[job.item.id]
            path = out / f"{job.item.id}.png"
            ok[job.index] = int(entry.get("file") == path.name and store.sha256_file(path) == entry.get("sha256"))
    return [bool(v) for v in group.max(ok).tolist()] if jobs else []


def _load(args, device, err, loras=()):
    """generate's loader (models, --vram profile, --lora, --compile) on this rank's device."""
    from ..cli import _load_pipeline

    pipe, _ = _load_pipeline(argparse.Namespace(**{**vars(args), "device": str(device)}), err, loras)
    return pipe


class _Writer:
    """Writes one image whole and records it once, even if another process made the same id meanwhile."""

    def __init__(self, out: Path, manifest: Manifest, prompts: Path, ranks: Ranks, loras=()):
        self.out, self.manifest, self.prompts, self.ranks = out, manifest, prompts, ranks
        self.lora = lora_record(loras)
        self.known_until = manifest.size()

    def write(self, job: Job, result, pos: int, seconds: float, batch: list[Job]) -> bool:
        """Sample ``pos`` of the batch ``result``; False when another process recorded this id first."""
        item_id = job.item.id
        one = dataclasses.replace(  # every other field (model label, LoRAs...) as the batch's
            result, images=result.images[pos : pos + 1], latents=result.latents[pos : pos + 1], settings=job.settings
        )
        data = store.encode_png(one, {"id": item_id, "line": job.item.line, "list": self.prompts.name})
        entry = {
            "id": item_id,
            "file": f"{item_id}.png",
            "sha256": store.sha256_bytes(data),
            "bytes": len(data),
            "seed": job.settings.seed,
            "settings": job.settings.to_dict(),
            "model": result.model_label,
            "lora": self.lora,
            "seconds": round(seconds, 3),
            "batch": [j.item.id for j in batch],  # the items it shared its forward with (they fix its last bits)
            "line": job.item.line,
            "rank": self.ranks.rank,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = store.write_part(self.out, item_id, data)
        try:
            with self.manifest.locked():
                self.manifest.refresh()
                if self.manifest.offsets.get(item_id, -1) >= self.known_until:
                    return False  # recorded by another process after this run looked: keep theirs
                store.commit(tmp, self.out / entry["file"])
                self.manifest.append(entry)
            return True
        finally:
            if tmp.exists():
                tmp.unlink()


def run_batch(args, out, err, label=None) -> int:
    start = time.perf_counter()
    try:
        ranks = ranks_from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    lead = ranks.rank == 0

    def say(text: str) -> None:
        if lead:
            print(text, file=err)

    tiny = not args.models_dir
    out_dir = Path(args.out)
    prompts = Path(args.prompts)
    try:
        label = label or (lambda name: "--" + name.replace("_", "-"))
        _check_flags(args, label)
        loras = args.lora_files  # parsed and checked by the shared validator
        jobs = build_jobs(args, tiny, say, label)
        device = pick_device(args.device, ranks)
        if args.models_dir:
            from ..pipeline import find_model_files

            find_model_files(args.models_dir)  # headers only: a wrong folder is named before any work
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(out_dir)
    except (NewBieError, OSError) as exc:
        say(f"error: {exc}")
        return EXIT_BAD_INPUT
    try:
        orphans = check_manifest(jobs, manifest, out_dir, prompts, tiny, loras)
    except NewBieError as exc:
        say(f"error: {exc}")
        manifest.close()
        return EXIT_BAD_INPUT
    removed = store.remove_dead_parts(out_dir)
    if removed:
        print(f"{ranks.label}: removed {removed} unfinished part files of killed runs", file=err)

    group = Group(ranks, device)
    interrupted = False
    ok: list[bool] = []
    failures: list[tuple[Job, str]] = []
    written = lost_race = 0
    try:
        ok = verified(jobs, manifest, out_dir, ranks, group)
        stale = [j for j in jobs if j.item.id in manifest.entries and not ok[j.index]]
        for job in stale:
            say(f"warning: {job.item.id}: recorded in the manifest but its file is missing or changed; making it again")
        for job in orphans:
            say(f"warning: {job.item.id}: {job.item.id}.png was never recorded (a killed run); making it again")
        batches = make_batches(jobs, args.batch_size)
        pending = [b for b in batches if not all(ok[j.index] for j in b)]
        mine = share(pending, ranks.rank, ranks.world)
        todo = sum(1 for b in mine for j in b if not ok[j.index])
        say(
            f"{prompts}: {len(jobs)} items in {len(batches)} batches; {sum(ok)} already done, "
            f"{len(jobs) - sum(ok)} to make on {ranks.world} process{'es' if ranks.world > 1 else ''}"
        )
        progress = RankProgress(todo, ranks.label, err, live=None if ranks.world == 1 else False)
        if mine:
            print(
                f"{ranks.label}: loading models on {device} for {todo} image{'s' if todo != 1 else ''} ...",
                file=err,
                flush=True,
            )
            try:
                pipe = _load(args, device, err, loras)
            except NewBieError as exc:
                print(f"error: {ranks.label}: {exc}", file=err)
                return EXIT_BAD_INPUT
            writer = _Writer(out_dir, manifest, prompts, ranks, loras)
            progress.start = time.perf_counter()
            for batch in mine:
                missing = [j for j in batch if not ok[j.index]]
                t0 = time.perf_counter()
                try:
                    result = pipe.generate(batch[0].settings, progress=progress.step, items=[j.settings for j in batch])
                except (NewBieError, RuntimeError, ValueError) as exc:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    if isinstance(exc, _OUT_OF_MEMORY):
                        reason += f" (batch of {len(batch)}: rerun with a smaller --batch-size, or --low-vram)"
                    failures += [(j, reason) for j in missing]
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    progress.batch_done(0, len(missing))
                    continue
                seconds = (time.perf_counter() - t0) / len(batch)
                made = 0
                for pos, job in enumerate(batch):
                    if ok[job.index]:
                        continue
                    try:
                        recorded = writer.write(job, result, pos, seconds, batch)
                    except OSError as exc:  # disk full, folder gone: this image is not recorded, a rerun makes it
                        failures.append((job, f"cannot write {out_dir / (job.item.id + '.png')}: {exc}"))
                        continue
                    written += recorded
                    made += recorded
                    lost_race += not recorded
                progress.batch_done(made)
            progress.finish()
    except KeyboardInterrupt:
        interrupted = True
        print(f"\n{ranks.label}: interrupted; images in flight were not written, rerun to finish", file=err)
    finally:
        manifest.close()

    elapsed = time.perf_counter() - start
    print(_rank_summary(ranks, written, lost_race, failures, elapsed), file=err)
    for job, reason in failures[:MAX_LISTED_FAILURES]:
        print(f"  failed {job.item.id} ({prompts}:{job.item.line}): {reason}", file=err)
    if len(failures) > MAX_LISTED_FAILURES:
        print(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more", file=err)
    if interrupted:
        return 130
    total = group.sum([written, lost_race, len(failures)]).tolist()
    slowest = float(group.max_float([elapsed])[0])
    group.close()
    if lead:
        final = Manifest(out_dir)
        have = sum(1 for j in jobs if j.item.id in final.entries)
        final.close()
        print(
            f"summary: done {total[0]}, skipped {sum(ok)} (already done), failed {total[2]}"
            + (f", {total[1]} made by another process meanwhile" if total[1] else "")
            + f"; {per_minute(total[0], slowest):.1f} images/min; {out_dir / Manifest.NAME} has {have} of {len(jobs)}",
            file=out,
        )
    return EXIT_FAILED if total[2] else 0


def _rank_summary(ranks: Ranks, written: int, lost: int, failures: list, elapsed: float) -> str:
    text = f"{ranks.label}: done {written}, failed {len(failures)}"
    if lost:
        text += f", {lost} already made by another process"
    return text + f", {per_minute(written, elapsed):.1f} images/min over {elapsed:.1f}s"
