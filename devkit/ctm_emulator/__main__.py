"""Run the CTM emulator from a shell until Ctrl-C.

    python -m devkit.ctm_emulator --port 8443 --keys 50 --tenancies 3 --latency 0.15 \\
        --tenancy-read-limit 10 --token-lifetime 300

Prints the base URL, the CA file, the user and password, a refresh token, a JWT and a curl
line that refreshes the first key. Everything printed is a throw-away local credential.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from devkit.ctm_emulator.faults import Faults
from devkit.ctm_emulator.inventory import SORT_FIELDS
from devkit.ctm_emulator.keyset import DEFAULT_REGIONS, generate_keys
from devkit.ctm_emulator.server import DEFAULT_USERS, CtmEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.ctm_emulator",
        description="CipherTrust Manager (CCKM OCI keys) emulator over HTTPS with its own CA.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="port, 0 for any (default 8443)")
    parser.add_argument("--keys", type=int, default=50, help="keys to generate (default 50)")
    parser.add_argument("--tenancies", type=int, default=3, help="OCI tenancies (default 3)")
    parser.add_argument(
        "--regions",
        default=",".join(DEFAULT_REGIONS),
        help="comma-separated OCI regions (default: %(default)s)",
    )
    parser.add_argument("--vaults-per-tenancy", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="key set and fault seed (default 0)")
    parser.add_argument("--user", default=next(iter(DEFAULT_USERS)))
    parser.add_argument("--password", default=next(iter(DEFAULT_USERS.values())))
    parser.add_argument("--token-lifetime", type=float, default=300.0, help="JWT seconds (300)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per key call")
    parser.add_argument(
        "--tenancy-read-limit",
        type=float,
        default=None,
        help="OCI reads per second per tenancy (refresh=2, get=1); unset: unlimited",
    )
    parser.add_argument("--throttle-status", type=int, default=429, help="429, or 500 (wrapped)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of calls failing")
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of calls hung up on")
    parser.add_argument("--max-page-size", type=int, default=None, help="cap list pages")
    parser.add_argument(
        "--ignore-unknown-filters", action="store_true", help="ignore unknown list parameters"
    )
    parser.add_argument(
        "--wildcard-filters", action="store_true", help="'*' in a filter value is a wildcard"
    )
    parser.add_argument(
        "--default-sort", default=None, help="list order without sort, e.g. updatedAt"
    )
    parser.add_argument(
        "--ignore-sort", action="store_true", help="accept sort and answer the default order"
    )
    parser.add_argument(
        "--unstable-order", action="store_true", help="each list call draws a new order"
    )
    parser.add_argument(
        "--sort-fields",
        dest="accepted_sort_fields",
        metavar="FIELD,...",
        type=_sort_fields,
        default=None,
        help="comma-separated fields sort may name, others are a 400 ('': refuse any sort)",
    )
    parser.add_argument(
        "--not-authorized-tenancy",
        dest="not_authorized_tenancies",
        type=_tenancy_status,
        action="append",
        default=[],
        metavar="TENANCY[:STATUS]",
        help="refreshes of the tenancy's keys answer OCI's NotAuthorizedOrNotFound (404)",
    )
    parser.add_argument(
        "--trickle-interval", type=float, default=0.0, help="seconds between answer bytes"
    )
    parser.add_argument("--ca-out", help="also copy the CA certificate to this path")
    parser.add_argument("--json", action="store_true", help="print the connection as one JSON line")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    return parser


def _sort_fields(text: str) -> set[str]:
    fields = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(fields - SORT_FIELDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"cannot sort by {', '.join(unknown)}")
    return fields


def _tenancy_status(text: str) -> tuple[str, int]:
    tenancy, _, status = text.partition(":")
    if not tenancy or not (status or "404").isdigit():
        raise argparse.ArgumentTypeError("expected TENANCY or TENANCY:STATUS")
    return tenancy, int(status or "404")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments (``--help`` lists them)."""
    return _parser().parse_args(argv)


# The faults the command line sets as they are parsed (each argument's dest is its name).
FAULT_SWITCHES = (
    "latency",
    "tenancy_read_limit",
    "throttle_status",
    "error_rate",
    "error_status",
    "drop_rate",
    "max_page_size",
    "ignore_unknown_filters",
    "wildcard_filters",
    "default_sort",
    "ignore_sort",
    "unstable_order",
    "accepted_sort_fields",
    "trickle_interval",
)


def set_faults(faults: Faults, args: argparse.Namespace) -> None:
    """Switch on the faults the command line asks for."""
    for name in FAULT_SWITCHES:
        setattr(faults, name, getattr(args, name))
    faults.not_authorized_tenancies = dict(args.not_authorized_tenancies)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulator as the arguments say, print how to reach it, serve until stopped."""
    args = parse_args(argv)
    keys = generate_keys(
        args.keys,
        tenancies=args.tenancies,
        regions=tuple(r.strip() for r in args.regions.split(",") if r.strip()),
        vaults_per_tenancy=args.vaults_per_tenancy,
        seed=args.seed,
    )
    emulator = CtmEmulator(
        keys=keys,
        users={args.user: args.password},
        token_lifetime=args.token_lifetime,
        seed=args.seed,
        host=args.host,
        port=args.port,
        verbose=args.verbose,
    )
    set_faults(emulator.faults, args)

    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    with emulator:
        ca_file = emulator.ca_file
        if args.ca_out:
            shutil.copyfile(emulator.ca_file, args.ca_out)
            ca_file = args.ca_out
        _announce(emulator, ca_file, as_json=args.json)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop
            stopped.wait()
    return 0


def _announce(emulator: CtmEmulator, ca_file: str, *, as_json: bool) -> None:
    refresh_token = emulator.issue_refresh_token()
    jwt = emulator.mint_jwt(emulator.faults.token_lifetime)
    first = emulator.keys[0]["id"] if emulator.keys else "<id>"
    if as_json:
        print(
            json.dumps(
                {
                    "base_url": emulator.base_url,
                    "ca_file": ca_file,
                    "username": emulator.username,
                    "password": emulator.password,
                    "refresh_token": refresh_token,
                    "jwt": jwt,
                    "keys": len(emulator.keys),
                }
            ),
            flush=True,
        )
        return
    print(
        f"CTM emulator serving {len(emulator.keys)} OCI keys at {emulator.base_url}\n"
        f"  CA file:       {ca_file}\n"
        f"  user/password: {emulator.username} / {emulator.password}\n"
        f"  refresh token: {refresh_token}\n"
        f"  JWT ({int(emulator.faults.token_lifetime)} s):  {jwt}\n"
        f"Try:\n"
        f"  curl --cacert {ca_file} '{emulator.base_url}/api/v1/cckm/oci/keys/{first}/refresh'"
        f" -X POST -H 'Authorization: Bearer {jwt}' -H 'accept: application/json' --compressed\n"
        f"Ctrl-C to stop.",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
