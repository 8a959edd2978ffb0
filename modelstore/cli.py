"""``loraplane modelstore publish|verify|check|list|show|gc|set-current|schema``.

Exit codes for scripts and Jobs: 0 ok, 1 verification or check failure,
2 usage or store error (bad name, missing version, refused publish, ...).
Every read command takes ``--json`` and then prints exactly one JSON
document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import StoreError

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--root", default=None, help="store root (default: $MODEL_STORE_ROOT)")
    p.add_argument("--owner", default="default", help="owner (namespace-like) of the entries (default: default)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _ref(p: argparse.ArgumentParser, version_help: str = "version (default: the current pointer)") -> None:
    p.add_argument("kind", choices=["base", "adapter"])
    p.add_argument("name")
    p.add_argument("--version", default=None, help=version_help)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ms_command", metavar="ACTION", required=True)
    _publish_parser(sub)
    _inspect_parsers(sub)
    _maintenance_parsers(sub)
    _backup_parsers(sub)


def _publish_parser(sub) -> None:
    """``publish``: a local directory or a hub snapshot becomes a new version."""
    p = sub.add_parser("publish", help="publish a local dir (or a hub snapshot) as a new version")
    _common(p)
    p.add_argument("src", nargs="?", help="local directory (save_pretrained model or PEFT adapter)")
    p.add_argument("--kind", choices=["base", "adapter"], required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing version atomically")
    p.add_argument("--license", default=None)
    p.add_argument("--task", default=None, help="adapter task name (e.g. synthesizer)")
    p.add_argument("--base-name", default=None, help="adapter: the base it was trained on")
    p.add_argument("--base-version", default=None, help="adapter: base version (default: base current)")
    p.add_argument("--no-set-current", action="store_true", help="do not move the current pointer")
    p.add_argument("--hf-repo", default=None, help="publish from the Hugging Face hub instead of SRC")
    p.add_argument("--revision", default=None, help="hub revision (a commit sha pins it)")
    p.add_argument("--token-env", default="HF_TOKEN", help="env var holding the hub token (default: HF_TOKEN)")
    p.add_argument("--workers", type=int, default=None)


def _inspect_parsers(sub) -> None:
    """Read-only actions: ``verify``, ``check``, ``list``, ``show``."""
    p = sub.add_parser("verify", help="check files against the manifest (exit 1 on damage)")
    _common(p)
    _ref(p)
    p.add_argument("--quick", action="store_true", help="sizes only, no hashing")
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser("check", help="check_model_store: manifests, VRAM bounds, adapter->base checksums")
    _common(p)
    p.add_argument("--dry-run", action="store_true", default=None,
                   help="paths and manifests only, read no weights (also MODEL_STORE_DRY_RUN=1)")
    p.add_argument("--all-owners", action="store_true", help="check every owner, not only --owner")
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser("list", help="list committed versions")
    _common(p)
    p.add_argument("--kind", choices=["base", "adapter"], default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--all-owners", action="store_true")

    p = sub.add_parser("show", help="print one version's manifest")
    _common(p)
    _ref(p)


def _maintenance_parsers(sub) -> None:
    """Actions that change what is kept or current: ``gc``, ``set-current``; and ``schema``."""
    p = sub.add_parser("gc", help="delete old versions (keeps current and protected ones)")
    _common(p)
    p.add_argument("--keep", type=int, default=3, help="newest versions to keep per name (default 3)")
    p.add_argument("--protect", action="append", default=[], metavar="OWNER/KIND/NAME/VERSION")
    p.add_argument("--dry-run", action="store_true")

    p = sub.add_parser("set-current", help="point current at an existing version (rollback)")
    _common(p, json_flag=False)
    _ref(p, "version to make current")

    sub.add_parser("schema", help="print the manifest JSON schema")


def _backup_parsers(sub) -> None:
    """``backup``, ``restore``, ``snapshots``: the store's copies on a bucket."""
    p = sub.add_parser("backup", help="snapshot the store to s3://bucket/prefix (incremental by sha256, rotated)")
    _common(p)
    p.add_argument("--to", required=True, metavar="S3_URL", help="s3://bucket/prefix (credentials: AWS_* env)")
    p.add_argument("--keep-daily", type=int, default=7, help="newest snapshot of each of the last N days (default 7)")
    p.add_argument("--keep-weekly", type=int, default=4, help="newest snapshot of each of the last M ISO weeks (default 4)")
    p.add_argument("--only-owner", default=None, help="back up one owner (default: every owner)")

    p = sub.add_parser("restore", help="restore a snapshot from s3://bucket/prefix into the store")
    _common(p)
    p.add_argument("--from", dest="from_url", required=True, metavar="S3_URL")
    p.add_argument("--snapshot", default="latest", help="snapshot id (default: latest)")

    p = sub.add_parser("snapshots", help="list the snapshots at s3://bucket/prefix")
    _common(p)
    p.add_argument("--at", required=True, metavar="S3_URL")


def _store(args):
    from .s3 import open_store

    return open_store(args.root)  # a directory, or s3://bucket/prefix (publish/list/show/verify/set-current)


def _progress():
    from .progress import ProgressPrinter

    return ProgressPrinter()


def _emit(args, data, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def run(args) -> int:
    try:
        return _dispatch(args)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # unreadable root, permissions: a store error for scripts too
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


def _dispatch(args) -> int:
    cmd = args.ms_command
    if cmd == "schema":
        from .manifest import manifest_json_schema

        print(json.dumps(manifest_json_schema(), indent=2))
        return EXIT_OK
    if cmd == "snapshots":
        from .backup import list_snapshots
        from .s3 import S3ModelStore

        ids = list_snapshots(S3ModelStore(args.at))
        _emit(args, ids, "\n".join(ids) or "(none)")
        return EXIT_OK
    store = _store(args)
    from .s3 import S3ModelStore

    if isinstance(store, S3ModelStore) and cmd == "gc":
        if args.keep != 3 or args.protect:
            raise StoreError("gc on an S3 store only sweeps stale staging uploads (--keep/--protect are local-only)")
        swept = store.sweep_staging(dry_run=args.dry_run)
        _emit(args, {"staging_removed": swept, "dry_run": args.dry_run},
              "\n".join(f"{'would remove' if args.dry_run else 'removed'} stale staging: {s}" for s in swept)
              or "(nothing)")
        return EXIT_OK
    if isinstance(store, S3ModelStore) and cmd in ("check", "backup", "restore"):
        raise StoreError(f"{cmd} works on a local store root; {args.root or 'the root'} is an S3 store")
    action = _ACTIONS.get(cmd)
    if action is None:
        raise StoreError(f"unknown action {cmd!r}")
    return action(args, store)


def _cmd_publish(args, store) -> int:
    kw = dict(owner=args.owner, kind=args.kind, name=args.name, version=args.version, force=args.force,
              license=args.license, task=args.task, base_name=args.base_name,
              base_version=args.base_version, set_current=not args.no_set_current,
              workers=args.workers, progress=_progress())
    if args.hf_repo:
        if args.src:
            raise StoreError("give either SRC or --hf-repo, not both")
        from .hub import publish_from_hub

        m = publish_from_hub(store, args.hf_repo, args.revision, os.environ.get(args.token_env), **kw)
    else:
        if not args.src:
            raise StoreError("publish needs SRC (a local directory) or --hf-repo")
        m = store.publish(args.src, **kw)
    _emit(args, m.model_dump(mode="json", exclude_none=True),
          f"published {m.owner}/{m.kind}/{m.name}@{m.version} checksum {m.checksum} ({m.total_size} bytes)")
    return EXIT_OK


def _cmd_verify(args, store) -> int:
    rep = store.verify(args.owner, args.kind, args.name, args.version, full=not args.quick,
                       workers=args.workers, progress=_progress())
    _emit(args, rep.to_dict(), rep.summary())
    return EXIT_OK if rep.ok else EXIT_FAILED


def _cmd_check(args, store) -> int:
    rep = store.check(dry_run=args.dry_run, owner=None if args.all_owners else args.owner, workers=args.workers)
    _emit(args, rep.to_dict(), rep.summary())
    return EXIT_OK if rep.ok else EXIT_FAILED


def _cmd_backup(args, store) -> int:
    from .backup import backup

    rep = backup(store, args.to, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly, owner=args.only_owner)
    _emit(args, rep.to_dict(), rep.summary())
    return EXIT_OK


def _cmd_restore(args, store) -> int:
    from .backup import restore

    rep = restore(store, args.from_url, snapshot=args.snapshot)
    _emit(args, rep.to_dict(), rep.summary())
    return EXIT_OK


def _cmd_list(args, store) -> int:
    from .s3 import S3ModelStore

    if isinstance(store, S3ModelStore):
        rows = store.list(owner=None if args.all_owners else args.owner, kind=args.kind, name=args.name)
        text = "\n".join(f"{'*' if r['current'] else ' '} {r['owner']}/{r['kind']}/{r['name']}@{r['version']}  "
                         f"{r['total_size']} bytes  {r['checksum'][:12]}" for r in rows) or "(empty)"
        _emit(args, rows, text)
        return EXIT_OK
    rows = store.list(owner=None if args.all_owners else args.owner, kind=args.kind, name=args.name)
    text = "\n".join(
        f"{'*' if r.current else ' '} {r.owner}/{r.kind}/{r.name}@{r.version}  "
        + (f"{r.manifest.total_size} bytes  {r.manifest.checksum[:12]}  {r.manifest.created:%Y-%m-%d %H:%M}"
           if r.manifest else f"ERROR {r.error}")
        for r in rows
    ) or "(empty)"
    _emit(args, [r.to_dict() for r in rows], text)
    return EXIT_OK


def _cmd_show(args, store) -> int:
    sv = store.resolve(args.owner, args.kind, args.name, args.version)
    data = {"path": str(sv.path), "manifest": sv.manifest.model_dump(mode="json", exclude_none=True)}
    _emit(args, data, json.dumps(data, indent=2))
    return EXIT_OK


def _cmd_gc(args, store) -> int:
    rep = store.gc(keep=args.keep, protect=args.protect or None, dry_run=args.dry_run, owner=args.owner)
    text = "\n".join([f"{'would delete' if rep.dry_run else 'deleted'}: {d}" for d in rep.deleted]
                     + [f"kept: {k}" for k in rep.kept]
                     + [f"removed stale staging: {s}" for s in rep.staging_removed]) or "(nothing)"
    _emit(args, rep.to_dict(), text)
    return EXIT_OK


def _cmd_set_current(args, store) -> int:
    if not args.version:
        raise StoreError("set-current needs --version")
    store.set_current(args.owner, args.kind, args.name, args.version)
    print(f"current of {args.owner}/{args.kind}/{args.name} -> {args.version}")
    return EXIT_OK


#: ``loraplane modelstore ACTION`` -> its handler (``schema`` needs no store and is handled first)
_ACTIONS = {"publish": _cmd_publish, "verify": _cmd_verify, "check": _cmd_check, "list": _cmd_list,
            "show": _cmd_show, "gc": _cmd_gc, "set-current": _cmd_set_current, "backup": _cmd_backup,
            "restore": _cmd_restore}
