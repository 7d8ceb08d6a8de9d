#!/usr/bin/env python3
"""Writes recipes-security/picket/picket-crates.inc from the workspace's Cargo.lock.

Every crate from crates.io that Cargo.lock lists becomes a `crate://` entry in SRC_URI with
the SHA-256 that Cargo.lock records for it, so that BitBake fetches (and checks) the exact
crates the workspace is tested with, and cargo builds offline (`--frozen`).

The output has the layout of OE-core's cargo-update-recipe-crates class (`bitbake -c
update_crates picket`), but is made from the workspace's own Cargo.lock only: that class also
reads fuzz/Cargo.lock, whose crates the agent does not need.

    gen-crates-inc.py            # rewrite the .inc from ../../../Cargo.lock
    gen-crates-inc.py --check    # exit 1 if the .inc is not what Cargo.lock gives

A crate from anywhere else than crates.io (a git repository, another registry), or one without
a checksum, is refused with its name: the recipe could not fetch it.
"""

import argparse
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    sys.exit("gen-crates-inc.py needs Python 3.11 or later (tomllib)")

LAYER = Path(__file__).resolve().parent.parent
DEFAULT_LOCK = LAYER.parent.parent / "Cargo.lock"
DEFAULT_OUT = LAYER / "recipes-security" / "picket" / "picket-crates.inc"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


class LockError(Exception):
    """Cargo.lock cannot be turned into a list of crates the recipe can fetch."""


def render(lock_text: str, origin: str) -> str:
    """The .inc for the Cargo.lock text `lock_text` (read from `origin`, named in errors)."""
    try:
        lock = tomllib.loads(lock_text)
    except tomllib.TOMLDecodeError as e:
        raise LockError(f"{origin}: not valid TOML: {e}") from e
    packages = lock.get("package")
    if not isinstance(packages, list):
        raise LockError(f"{origin}: no [[package]] entries")
    crates = set()
    for index, package in enumerate(packages, start=1):
        name = package.get("name")
        version = package.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            raise LockError(f"{origin}: package #{index} has no name or version")
        source = package.get("source")
        if source is None:
            continue  # a workspace member: part of the source tree
        if source != CRATES_IO:
            raise LockError(
                f"{origin}: {name} {version} comes from {source}, not crates.io: "
                "the recipe only fetches crates.io crates"
            )
        checksum = package.get("checksum")
        if not isinstance(checksum, str) or len(checksum) != 64:
            raise LockError(f"{origin}: {name} {version} has no SHA-256 checksum")
        crates.add((name, version, checksum))
    if not crates:
        raise LockError(f"{origin}: lists no crates.io crates")

    ordered = sorted(crates)
    lines = [
        "# Generated from Cargo.lock by scripts/gen-crates-inc.py: do not edit, regenerate.",
        "# scripts/yocto-check.sh fails when this file does not match Cargo.lock.",
        "",
        'SRC_URI += "\\',
    ]
    lines += [f"    crate://crates.io/{n}/{v};name={n}-{v} \\" for n, v, _ in ordered]
    lines += ['"', ""]
    lines += [f'SRC_URI[{n}-{v}.sha256sum] = "{c}"' for n, v, c in ordered]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help="Cargo.lock to read")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=".inc file to write")
    parser.add_argument(
        "--check", action="store_true", help="only check that --out is up to date"
    )
    args = parser.parse_args()
    try:
        text = render(args.lock.read_text(encoding="utf-8"), str(args.lock))
    except OSError as e:
        print(f"gen-crates-inc.py: reading {args.lock}: {e.strerror}", file=sys.stderr)
        return 1
    except LockError as e:
        print(f"gen-crates-inc.py: {e}", file=sys.stderr)
        return 1
    if args.check:
        try:
            current = args.out.read_text(encoding="utf-8")
        except OSError as e:
            current = None
            reason = e.strerror
        else:
            reason = "it differs from what Cargo.lock gives"
        if current != text:
            print(
                f"gen-crates-inc.py: {args.out} is out of date ({reason}): run "
                f"{Path(__file__).name} to regenerate it",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out}: up to date ({text.count('.sha256sum]')} crates)")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({text.count('.sha256sum]')} crates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
