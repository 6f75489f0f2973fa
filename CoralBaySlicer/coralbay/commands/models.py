"""`coralbay models`: list the bundles the catalog knows; add or remove user bundles."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the model bundles the catalog knows",
                              description="List built-in bundles (Resources/Models) and bundles you "
                                          "added; add or forget a bundle folder.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument("--add", metavar="FOLDER", help="validate a bundle folder and add it to your catalog")
    p.add_argument("--remove", metavar="NAME", help="forget a bundle you added (files are kept)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.bundle.catalog import add_model, list_models, remove_model

    if args.add:
        manifest = add_model(args.add)
        print(f"Added {manifest.name} ({manifest.folder}).")
        return 0
    if args.remove:
        remove_model(args.remove)
        print(f"Removed {args.remove} from your catalog.")
        return 0
    models = [m.summary() for m in list_models()]
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("No models found.")
    for m in models:
        what = ", ".join(m.get("labels") or m.get("classes") or [])
        print(f"{m['name']:24} {m['task']:15} {m['title']}\n{'':24} {what}\n{'':24} {m['path']}")
    return 0
