"""`wearfed model list|show|card|rollback`: the model registry of a running cloud, over HTTP with a bearer token.

Exit codes: 0 done, 2 refused by the cloud (the reason is printed) or the cloud is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="the cloud's model registry: list, show, model cards, rollback")
    model_sub = model.add_subparsers(dest="model_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("WEARFED_CLOUD_URL", "http://127.0.0.1:8080"),
                       help="the cloud (env WEARFED_CLOUD_URL)")
        p.add_argument("--token", default=os.environ.get("WEARFED_TOKEN"),
                       help="your bearer token (env WEARFED_TOKEN)")

    ls = model_sub.add_parser("list", help="every version with its status")
    common(ls)
    ls.set_defaults(func=_list)
    show = model_sub.add_parser("show", help="one version: identity, metrics per source")
    common(show)
    show.add_argument("version", type=int)
    show.set_defaults(func=_show)
    card = model_sub.add_parser("card", help="write a version's model card (Markdown or JSON)")
    common(card)
    card.add_argument("version", type=int)
    card.add_argument("--format", choices=("md", "json"), default="md")
    card.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    card.set_defaults(func=_card)
    back = model_sub.add_parser("rollback", help="return the fleet to the previous production version (one step)")
    common(back)
    back.add_argument("--reason", required=True, help="recorded in the audit ledger")
    back.set_defaults(func=_rollback)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: object):  # noqa: ANN202 - httpx.Response
    import httpx

    if not args.token:
        raise SystemExit("wearfed: error: --token (or WEARFED_TOKEN) is required")
    try:
        with httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.token}"}, timeout=30) as http:
            resp = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        print(f"wearfed: error: cannot reach the cloud at {args.url}: {exc}", file=sys.stderr)
        return None
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text
        print(f"wearfed: refused ({resp.status_code}): {detail}", file=sys.stderr)
        return None
    return resp


def _list(args: argparse.Namespace) -> int:
    resp = _call(args, "GET", "/v1/models")
    if resp is None:
        return 2
    print(f"{'version':>7}  {'status':<12} {'round':>5}  {'replaced':>8}  participants")
    for m in resp.json():
        print(f"{m['version']:>7}  {m['status']:<12} {m['round'] if m['round'] is not None else '-':>5}  "
              f"{m['replaced_version'] if m['replaced_version'] is not None else '-':>8}  "
              f"{', '.join(m['participants'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    model = _call(args, "GET", f"/v1/models/{args.version}")
    evals = _call(args, "GET", f"/v1/models/{args.version}/evaluations") if model is not None else None
    if evals is None:
        return 2
    doc = {k: v for k, v in model.json().items() if k != "weights"}
    doc["metrics_by_source"] = evals.json()["by_source"]
    print(json.dumps(doc, indent=1))
    return 0


def _card(args: argparse.Namespace) -> int:
    resp = _call(args, "GET", f"/v1/models/{args.version}/card", params={"format": args.format})
    if resp is None:
        return 2
    text = resp.text if args.format == "md" else json.dumps(resp.json(), indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"model card of v{args.version} written to {args.out}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    resp = _call(args, "POST", "/v1/models/rollback", json={"reason": args.reason})
    if resp is None:
        return 2
    out = resp.json()
    print(f"rolled back: v{out['rolled_back']} withdrawn, v{out['promoted']} is production again")
    return 0
