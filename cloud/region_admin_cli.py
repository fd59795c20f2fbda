"""`wearfed cloud regions | region-reinstate | approve`: staff commands for region relays over HTTP with a bearer
token. A region suspended after a failed audit (`cloud.regions`) is reinstated by two people: one requests it
(`region-reinstate`, an admin or a compliance officer), a different compliance officer approves the request
(`approve`, which decides any pending two-person request by its id). Exit codes: 0 done, 2 refused (the reason is
printed) or the cloud is unreachable."""

from __future__ import annotations

import argparse
import json

from cloud.model_cli import call, staff_flags


def register(cloud_sub: argparse._SubParsersAction) -> None:
    ls = cloud_sub.add_parser("regions", help="list the enrolled region relays and any suspension")
    staff_flags(ls)
    ls.set_defaults(func=_list)
    again = cloud_sub.add_parser("region-reinstate",
                                 help="request lifting a region's suspension (a second person, a compliance "
                                      "officer, approves it with `wearfed cloud approve ID`)")
    staff_flags(again)
    again.add_argument("--region", required=True, help="the suspended region's id")
    again.add_argument("--reason", required=True, help="what the investigation found (recorded in the audit ledger)")
    again.set_defaults(func=_reinstate)
    approve = cloud_sub.add_parser("approve", help="approve a pending two-person request by its id (not your own)")
    staff_flags(approve)
    approve.add_argument("approval", type=int, help="the request's id (printed when it was made; GET /v1/approvals)")
    approve.set_defaults(func=_approve)


def _list(args: argparse.Namespace) -> int:
    resp = call(args, "GET", "/v1/regions")
    if resp is None:
        return 2
    for r in resp.json():
        print(f"{r['id']:<24} {'suspended: ' + r['suspended'] if r['suspended'] else 'active'}")
    return 0


def _reinstate(args: argparse.Namespace) -> int:
    resp = call(args, "POST", f"/v1/regions/{args.region}/reinstate", json={"reason": args.reason})
    if resp is None:
        return 2
    doc = resp.json()
    print(json.dumps(doc, indent=1))
    print(f"requested: approval {doc['id']}; region {args.region} stays suspended until a compliance officer other "
          f"than you runs `wearfed cloud approve {doc['id']}`")
    return 0


def _approve(args: argparse.Namespace) -> int:
    resp = call(args, "POST", f"/v1/approvals/{args.approval}/approve")
    if resp is None:
        return 2
    doc = resp.json()
    print(json.dumps(doc, indent=1))
    print(f"approved: {doc['action']} {json.dumps(doc['params'], sort_keys=True)}")
    return 0
