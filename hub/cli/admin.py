"""Commands that talk to the running hub's API with the configured token: status, confirm, jobs, cache,
goals; and ``pin-hash`` which needs no hub."""

from __future__ import annotations

import argparse
import getpass
import sys
import urllib.parse
from typing import Any

from hub.cli.common import add_config_arg, api_call, load_or_exit, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="one screen: spine, store, cache, vectors, jobs, confirmations")
    p.add_argument("--json", action="store_true")
    add_config_arg(p)
    p.set_defaults(func=_status)

    c = sub.add_parser("confirm", help="pending hazard confirmations")
    csub = c.add_subparsers(dest="confirm_command", required=True)
    lst = csub.add_parser("list", help="pending confirmations")
    add_config_arg(lst)
    lst.set_defaults(func=_confirm_list)
    ap = csub.add_parser("approve", help="approve one (you act as an authenticated user)")
    ap.add_argument("id")
    ap.add_argument("--pin", help="the PIN, for pin-level hazards (prompted when '-')")
    add_config_arg(ap)
    ap.set_defaults(func=_confirm_approve)
    ca = csub.add_parser("cancel", help="cancel one")
    ca.add_argument("id")
    add_config_arg(ca)
    ca.set_defaults(func=_confirm_cancel)

    j = sub.add_parser("jobs", help="schedules and runs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    jl = jsub.add_parser("list")
    add_config_arg(jl)
    jl.set_defaults(func=_jobs_list)
    jr = jsub.add_parser("run")
    jr.add_argument("name")
    add_config_arg(jr)
    jr.set_defaults(func=_jobs_run)
    jh = jsub.add_parser("history")
    jh.add_argument("name", nargs="?")
    jh.add_argument("--limit", type=int, default=20)
    add_config_arg(jh)
    jh.set_defaults(func=_jobs_history)

    g = sub.add_parser("goals", help="goals for the autonomous routines")
    gsub = g.add_subparsers(dest="goals_command", required=True)
    gl = gsub.add_parser("list")
    add_config_arg(gl)
    gl.set_defaults(func=_goals_list)
    ga = gsub.add_parser("add")
    ga.add_argument("title")
    ga.add_argument("--description", default="")
    add_config_arg(ga)
    ga.set_defaults(func=_goals_add)

    k = sub.add_parser("cache", help="the semantic cache")
    ksub = k.add_subparsers(dest="cache_command", required=True)
    ks = ksub.add_parser("stats")
    add_config_arg(ks)
    ks.set_defaults(func=_cache_stats)
    ki = ksub.add_parser("invalidate")
    which = ki.add_mutually_exclusive_group(required=True)
    which.add_argument("--key")
    which.add_argument("--tag")
    which.add_argument("--all", action="store_true")
    add_config_arg(ki)
    ki.set_defaults(func=_cache_invalidate)

    ph = sub.add_parser("pin-hash", help="print a salted hash of a PIN for hazards.pin_hash")
    ph.set_defaults(func=_pin_hash)


def _status(args: argparse.Namespace) -> int:
    status = _api(args, "GET", "/api/v1/status")
    if args.json:
        print_json(status)
        return 0
    print(f"KITT hub {status.get('hub_id')}: {'READY' if status.get('ready') else 'NOT READY'}"
          f"  (up {status.get('uptime_s')} s)")
    for name, check in (status.get("checks") or {}).items():
        print(f"  {name:<14} {'ok' if check['ok'] else check['reason']}")
    spine = status.get("spine") or {}
    print(f"  {'spine':<14} connected={spine.get('connected')} routes={spine.get('routes')} "
          f"in_flight={spine.get('in_flight')}")
    for section in ("cache", "vectors", "embedder", "jobs", "confirmations"):
        if section in status:
            print(f"  {section:<14} {_one_line(status[section])}")
    failed = (status.get("plugins") or {}).get("failed") or {}
    for plugin, why in failed.items():
        print(f"  plugin {plugin} FAILED: {why}")
    return 0


def _api(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the running hub's API with the token of the config named on the command line."""
    return api_call(load_or_exit(args.config), method, path, body)


def _one_line(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list))
    return str(value)


def _confirm_list(args: argparse.Namespace) -> int:
    items = _api(args, "GET", "/api/v1/confirmations?state=pending")["confirmations"]
    if not items:
        print("no pending confirmations")
    for c in items:
        print(f"{c['id']}  {c.get('level', ''):<4} {c.get('prompt', '')}  (site {c.get('site')}, "
              f"expires {c.get('expires_at')})")
    return 0


def _confirm_approve(args: argparse.Namespace) -> int:
    pin = getpass.getpass("PIN: ") if args.pin == "-" else args.pin
    body = {"pin": pin} if pin else {}
    result = _api(args, "POST", f"/api/v1/confirmations/{urllib.parse.quote(args.id)}/approve", body)
    print(f"{args.id}: {result.get('state', result)}")
    return 0


def _confirm_cancel(args: argparse.Namespace) -> int:
    result = _api(args, "POST", f"/api/v1/confirmations/{urllib.parse.quote(args.id)}/cancel", {})
    print(f"{args.id}: {result.get('state', result)}")
    return 0


def _jobs_list(args: argparse.Namespace) -> int:
    jobs = _api(args, "GET", "/api/v1/jobs")["jobs"]
    for job in jobs:
        print(f"{job.get('name', ''):<28} {job.get('expr', ''):<14} next={job.get('next_run_at')} "
              f"last={job.get('last_status')} enabled={job.get('enabled')}")
    return 0


def _jobs_run(args: argparse.Namespace) -> int:
    result = _api(args, "POST", f"/api/v1/jobs/{urllib.parse.quote(args.name)}/run", {})
    print(f"queued run {result.get('run_id', result)}")
    return 0


def _jobs_history(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({k: v for k, v in {"name": args.name, "limit": args.limit}.items() if v})
    runs = _api(args, "GET", f"/api/v1/jobs/history?{query}")["runs"]
    for run in runs:
        print(f"{run.get('id')}  {run.get('job') or run.get('name')}  {run.get('status'):<10} "
              f"attempts={run.get('attempts')} {run.get('duration_ms') or ''}  {run.get('last_error') or ''}")
    return 0


def _goals_list(args: argparse.Namespace) -> int:
    print_json(_api(args, "GET", "/api/v1/goals")["goals"])
    return 0


def _goals_add(args: argparse.Namespace) -> int:
    print_json(_api(args, "POST", "/api/v1/goals", {"title": args.title, "description": args.description}))
    return 0


def _cache_stats(args: argparse.Namespace) -> int:
    stats = _api(args, "GET", "/api/v1/cache/stats")
    ratio = stats.get("hit_ratio")
    print(f"entries={stats.get('entries')} hits={stats.get('hits')} misses={stats.get('misses')} "
          f"hit_ratio={'n/a' if ratio is None else f'{ratio:.1%}'} evictions={stats.get('evictions')}")
    return 0


def _cache_invalidate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"all": True} if args.all else ({"key": args.key} if args.key else {"tag": args.tag})
    result = _api(args, "POST", "/api/v1/cache/invalidate", body)
    print(f"invalidated {result.get('removed', result)}")
    return 0


def _pin_hash(args: argparse.Namespace) -> int:
    from hub.confirmations import hash_pin

    pin = getpass.getpass("PIN (4-12 digits): ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    try:
        print(hash_pin(pin))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0
