"""Changes the proxy makes to its own interpreter at start (cli.py), as `uvloop.install()` does.

Enum member reads. On Python 3.11, `enum.EnumType` defines `__getattr__`; a class whose
metaclass has one reads every attribute through CPython's slow getattr hook, so each
`LeaseState.SOFT` took about 145 ns instead of 25, in compiled and interpreted code alike.
The proxy reads a dozen or more enum members per statement (lease states, reasons, routes):
5% of its CPU per statement on the fast lane (perf, stop 44). Python 3.12 removed that
`__getattr__` (python/cpython#106762): since 3.11 every member is set in its class's
`__dict__` (enum.py, `_proto_member.__set_name__`), so the hook only ever looked up names that
are members anyway, and answered any other name with AttributeError, as the plain lookup does.
Removing it here gives 3.11 the lookup 3.12 has. (Only an explicit `Color.__getattr__("RED")`
call would notice; nothing in the proxy or its dependencies makes one.)
"""

from __future__ import annotations

import enum
import sys


def fast_enum_members() -> bool:
    """Give enum classes 3.12's attribute lookup; True if this interpreter needed it."""
    if sys.version_info >= (3, 12) or "__getattr__" not in vars(enum.EnumType):
        return False
    del enum.EnumType.__getattr__  # type: ignore[attr-defined, misc]
    return True
