"""check_model_store: is every stored version usable and consistent?

Why: the operator places pods by the VRAM figures in manifests and the
worker loads an adapter on top of a base; a bad figure or an adapter
trained against a different base checkpoint must be caught before either
happens. Dry-run (``--dry-run`` / ``MODEL_STORE_DRY_RUN=1`` / ``DRY_RUN=1``)
only stats files and reads manifests: it never reads weight bytes. A full
check additionally hashes every file and recounts parameters from the
safetensors headers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .errors import StoreError
from .layout import KIND_DIRS, VERSIONS, read_current, validate_part
from .manifest import Manifest, load_manifest
from .verify import verify_dir
from .vram import count_parameters, vram_problem

DRY_RUN_ENVS = ("MODEL_STORE_DRY_RUN", "DRY_RUN")
_VARIANT_ORDER = ("fp16", "bnb-int8", "bnb-4bit")  # each needs no more VRAM than the previous


def dry_run_from_env() -> bool:
    return any(os.environ.get(e, "").strip().lower() in ("1", "true", "yes") for e in DRY_RUN_ENVS)


@dataclass
class Problem:
    where: str
    message: str


@dataclass
class CheckReport:
    dry_run: bool
    versions_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def summary(self) -> str:
        mode = "dry-run" if self.dry_run else "full"
        head = f"{'OK' if self.ok else 'FAILED'}: {self.versions_checked} versions checked ({mode}), {len(self.problems)} problems"
        return "\n".join([head] + [f"  {p.where}: {p.message}" for p in self.problems])

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def base_problems(m: Manifest) -> list[str]:
    """Pure: implausible VRAM figures for a base manifest."""
    out = []
    for variant, info in (m.variants or {}).items():
        why = vram_problem(variant, info.vram_mib, m.parameters or 0)
        if why:
            out.append(why)
    present = [v for v in _VARIANT_ORDER if m.variants and v in m.variants]
    for hi, lo in zip(present, present[1:]):
        if m.variants[lo].vram_mib > m.variants[hi].vram_mib:
            out.append(f"{lo} needs more VRAM ({m.variants[lo].vram_mib} MiB) than {hi} ({m.variants[hi].vram_mib} MiB)")
    return out


def check_model_store(store, dry_run: bool | None = None, owner: str | None = None, workers: int | None = None) -> CheckReport:
    dry = dry_run_from_env() if dry_run is None else dry_run
    rep = CheckReport(dry_run=dry)
    bases: dict[tuple[str, str, str], Manifest] = {}
    adapters: list[tuple[str, Manifest]] = []
    for stray in store.strays(owner):
        rep.add(str(stray.relative_to(store.root)), "directory name not allowed by the store layout; ignored by list/resolve")
    for o in [owner] if owner else store.owners():
        for kind, kdir in KIND_DIRS.items():
            for name in store.names(o, kind):
                for where, v, path, m in _check_name(store, rep, o, kind, kdir, name):
                    vr = verify_dir(path, full=not dry, workers=workers, manifest=m)
                    if not vr.ok:
                        rep.add(where, vr.summary().replace("\n", ";"))
                    if kind == "base":
                        _check_base(rep, where, path, m, verified=not dry and vr.ok)
                        bases[(o, name, v)] = m
                    else:
                        adapters.append((where, m))
    for where, m in adapters:
        _check_adapter_base(store, rep, where, m, bases)
    return rep


def _check_name(store, rep: CheckReport, o: str, kind: str, kdir: str, name: str):
    """The versions of one name whose manifest loads and describes them: (where, version, path, manifest)."""
    where_name = f"{o}/{kdir}/{name}"
    try:
        validate_part("name", name)
    except StoreError as e:
        rep.add(where_name, str(e))
        return
    versions = store.versions(o, kind, name)
    try:
        cur = read_current(store.layout.current_link(o, kind, name))
        if cur is not None and cur not in versions:
            rep.add(where_name, f"current points to missing version {cur!r}")
    except StoreError as e:
        rep.add(where_name, str(e))
    if not versions:
        rep.add(where_name, "no versions")
    for v in versions:
        where = f"{where_name}/{VERSIONS}/{v}"
        rep.versions_checked += 1
        try:
            validate_part("version", v)
            path = store.layout.checked(store.layout.versions_dir(o, kind, name) / v)
            m = load_manifest(path)
        except StoreError as e:
            rep.add(where, str(e))
            continue
        if (m.owner, m.kind, m.name, m.version) != (o, kind, name, v):
            rep.add(where, f"manifest describes {m.owner}/{m.kind}/{m.name}@{m.version}")
            continue
        yield where, v, path, m


def _check_base(rep: CheckReport, where: str, path, m: Manifest, verified: bool) -> None:
    for why in base_problems(m):
        rep.add(where, why)
    if verified:
        try:
            n, how = count_parameters(path)
            if how == "safetensors-header" and n != m.parameters:
                rep.add(where, f"manifest says {m.parameters} parameters, safetensors headers hold {n}")
        except StoreError as e:
            rep.add(where, str(e))


def _check_adapter_base(store, rep: CheckReport, where: str, m: Manifest,
                        bases: dict[tuple[str, str, str], Manifest]) -> None:
    """The adapter's base is in the store and has the checksum it was trained against."""
    a = m.adapter
    key = (a.base_owner or m.owner, a.base_name, a.base_version)
    base = bases.get(key)
    if base is None:
        try:
            base = store.resolve(key[0], "base", a.base_name, a.base_version).manifest
        except StoreError as e:
            rep.add(where, f"base {a.base_name}@{a.base_version} unusable: {e}")
            return
    if base.checksum != a.base_checksum:
        rep.add(where, f"base {a.base_name}@{a.base_version} checksum {base.checksum[:12]}... does not match "
                       f"the checksum the adapter was trained against ({a.base_checksum[:12]}...)")
