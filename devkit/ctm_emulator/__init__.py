"""An emulator of CipherTrust Manager's CCKM OCI key API, for the demo, tests and benchmarks.

    from devkit.ctm_emulator import CtmEmulator, generate_keys
    with CtmEmulator(keys=generate_keys(30, seed=1)) as emu:
        ...  # emu.base_url, emu.ca_file, emu.username / emu.password, emu.faults ...

Development only: never part of the Lambda layer. See README.md in this folder.
"""

from devkit.ctm_emulator.faults import MALFORMED_MODES, Faults, KeyFailure, ListChurn
from devkit.ctm_emulator.keyset import generate_keys
from devkit.ctm_emulator.request_log import LoggedRequest
from devkit.ctm_emulator.server import DEFAULT_USERS, CtmEmulator

__all__ = [
    "DEFAULT_USERS",
    "MALFORMED_MODES",
    "CtmEmulator",
    "Faults",
    "KeyFailure",
    "ListChurn",
    "LoggedRequest",
    "generate_keys",
]
