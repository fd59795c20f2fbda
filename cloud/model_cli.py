"""`wearfed model list|show|card|rollback|evaluate`: the model registry of a running cloud, over HTTP with a bearer
token. `model evaluate` scores a version on a data scientist's held-out file (`federation.evaluation.score_windows`:
the scores hospitals compute) and, with `--post`, posts them as the round's held-out metrics.

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

    common = staff_flags
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
    ev = model_sub.add_parser("evaluate", help="score a model version on held-out data (rmse, mae, Clarke A+B, hypo "
                                               "sensitivity at +30/+60 min); --post sends them as the round's metrics")
    common(ev)
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="fetch this version from the cloud (GET /v1/models/N)")
    which.add_argument("--model", type=Path, help="a model saved earlier: the JSON of GET /v1/models/N (no cloud)")
    ev.add_argument("--data", type=Path, required=True,
                    help="held-out data: a hospital CSV (format: wearfed hospital check --help) or a .npz of "
                         "windows x, y (federation/evaluation.py)")
    ev.add_argument("--post", action="store_true",
                    help="POST the scores to /v1/rounds/{the model's round}/metrics (role data_scientist)")
    ev.set_defaults(func=_evaluate)


def staff_flags(p: argparse.ArgumentParser) -> None:
    """--url, --token and --ca-file: a staff command's way to the cloud (also `cloud.region_admin_cli`)."""
    p.add_argument("--url", default=os.environ.get("WEARFED_CLOUD_URL", "http://127.0.0.1:8080"),
                   help="the cloud (env WEARFED_CLOUD_URL)")
    p.add_argument("--token", default=os.environ.get("WEARFED_TOKEN"),
                   help="your bearer token (env WEARFED_TOKEN)")
    p.add_argument("--ca-file", type=Path, default=os.environ.get("WEARFED_CA_FILE"),
                   help="PEM CA bundle the cloud's https certificate is checked against (env WEARFED_CA_FILE; "
                        "default: the system's CAs)")


def call(args: argparse.Namespace, method: str, path: str, **kwargs: object):  # noqa: ANN202 - httpx.Response
    """One request with the caller's bearer token; None (the reason on stderr) when refused or unreachable."""
    import httpx

    from federation.tls import tls_context

    if not args.token:
        raise SystemExit("wearfed: error: --token (or WEARFED_TOKEN) is required")
    try:
        with httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.token}"}, timeout=30,
                          verify=tls_context(args.ca_file)) as http:
            resp = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        print(f"wearfed: error: cannot reach the cloud at {args.url}: {exc}", file=sys.stderr)
        return None
    if resp.status_code >= 400:
        from federation.responses import refusal_detail

        print(f"wearfed: refused ({resp.status_code}): {refusal_detail(resp)}", file=sys.stderr)
        return None
    return resp


def _list(args: argparse.Namespace) -> int:
    resp = call(args, "GET", "/v1/models")
    if resp is None:
        return 2
    print(f"{'version':>7}  {'status':<12} {'round':>5}  {'replaced':>8}  participants")
    for m in resp.json():
        print(f"{m['version']:>7}  {m['status']:<12} {m['round'] if m['round'] is not None else '-':>5}  "
              f"{m['replaced_version'] if m['replaced_version'] is not None else '-':>8}  "
              f"{', '.join(m['participants'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    model = call(args, "GET", f"/v1/models/{args.version}")
    evals = call(args, "GET", f"/v1/models/{args.version}/evaluations") if model is not None else None
    if evals is None:
        return 2
    doc = {k: v for k, v in model.json().items() if k != "weights"}
    doc["metrics_by_source"] = evals.json()["by_source"]
    print(json.dumps(doc, indent=1))
    return 0


def _card(args: argparse.Namespace) -> int:
    resp = call(args, "GET", f"/v1/models/{args.version}/card", params={"format": args.format})
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
    resp = call(args, "POST", "/v1/models/rollback", json={"reason": args.reason})
    if resp is None:
        return 2
    out = resp.json()
    print(f"rolled back: v{out['rolled_back']} withdrawn, v{out['promoted']} is production again")
    return 0


def _held_out(path: Path):  # noqa: ANN202 - (x, y) arrays
    from federation.evaluation import load_validation_set
    from federation.windows import windows_from_series
    from gateway.hospital import check_clinical_data

    if path.suffix == ".npz":
        x, y, _meta = load_validation_set(path)
        return x, y
    w = windows_from_series(check_clinical_data(path).data.series, resampled=True)
    return w.x, w.y


def _evaluate(args: argparse.Namespace) -> int:
    import base64

    import numpy as np

    from federation.errors import SchemaError
    from federation.evaluation import score_windows

    x, y = _held_out(args.data)  # bad data fails before any request
    if args.model is not None:
        try:
            model = json.loads(args.model.read_text())
            weights = np.frombuffer(base64.b64decode(model["weights"]), dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaError(f"--model {args.model}: not the JSON of GET /v1/models/N ({exc})") from exc
    else:
        resp = call(args, "GET", f"/v1/models/{args.version}")
        if resp is None:
            return 2
        model = resp.json()
        weights = np.frombuffer(base64.b64decode(model["weights"]), dtype=np.float32)
    scores = score_windows(weights, x, y)
    print(json.dumps({"version": model.get("version"), "round": model.get("round"), "data": str(args.data),
                      "metrics": scores}, indent=1))
    if not args.post:
        return 0
    if model.get("round") is None:
        print(f"wearfed: error: v{model.get('version')} came from no round: nothing to post to", file=sys.stderr)
        return 2
    if call(args, "POST", f"/v1/rounds/{model['round']}/metrics", json={"metrics": scores}) is None:
        return 2
    print(f"posted as the held-out metrics of round {model['round']}")
    return 0
