"""Rewrites made for speed keep what they replaced: speedups.fast_enum_members (with
EnumType's __getattr__ gone, as in Python 3.12, every enum the proxy uses reads its members,
and misses names, exactly as before) and the metrics kept as native numbers."""

from __future__ import annotations

import ast
import enum
import http
import re
import signal
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString

from proxy.backends.lease import LeaseState
from proxy.compiled import HOT
from proxy.core import errors
from proxy.core import metrics as M
from proxy.core.speedups import fast_enum_members
from proxy.plan.plan import Route, Track

from .conftest import ROOT


def _enums() -> list[type[enum.Enum]]:
    ours = [v for v in vars(errors).values()
            if isinstance(v, type) and issubclass(v, enum.Enum) and v is not errors.Label]
    return [*ours, LeaseState, Route, Track, http.HTTPStatus, signal.Signals, socket.AddressFamily,
            re.RegexFlag, enum.Enum]


def test_members_and_misses_read_as_before() -> None:
    fast_enum_members()
    assert "__getattr__" not in vars(enum.EnumType)
    for e in _enums():
        for name, member in e.__members__.items():  # aliases included
            assert getattr(e, name) is member
            assert e[name] is member
            assert e(member.value) is member
        with pytest.raises(AttributeError):
            e.NOT_A_MEMBER  # noqa: B018
        with pytest.raises(AttributeError):
            e.__not_a_dunder__  # noqa: B018
    assert fast_enum_members() is False  # once is enough


def test_a_new_enum_with_member_names_that_are_properties_elsewhere() -> None:
    """Members named like Enum's own properties (`name`, `value`) are reached through the
    redirect enum.py puts in the class dict, not through the removed __getattr__."""
    fast_enum_members()

    class Odd(enum.Enum):
        name = "n"
        value = "v"
        PLAIN = "p"

    assert Odd.PLAIN.value == "p"
    assert Odd["name"].value == "n"
    assert Odd.name is Odd["name"] and Odd.value is Odd["value"]  # type: ignore[comparison-overlap]


# metrics._Hist: a histogram kept as native numbers must export what prometheus-client's
# own Histogram would for the same observations (bucket edges inclusive, +Inf, count, sum).


_EDGES = [0.0, *M._LAT, 1e-9, 7.0]  # exactly on every bound, and around them


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_EDGES), st.floats(0, 10, allow_nan=False)),
                max_size=40))
def test_a_plain_histogram_exports_what_prometheus_client_s_would(values: list[float]) -> None:
    ours = M._Hist(M._LAT)
    reg = CollectorRegistry()
    theirs = Histogram("h", "h", buckets=M._LAT, registry=reg)
    for v in values:
        ours.add(v)
        theirs.observe(v)
    want = {s.labels["le"]: s.value for s in next(iter(reg.collect())).samples
            if s.name == "h_bucket"}
    got = dict(ours.cumulative())
    assert [got[le] for le in ours.les] == [want[le] for le in
                                            [*map(floatToGoString, M._LAT), "+Inf"]]
    assert ours.sum == pytest.approx(sum(values))


def _bare_raises_after_await(tree: ast.AST) -> list[int]:
    """Lines of a bare `raise` in an except block after an `await` in that block."""
    out = []
    for h in ast.walk(tree):
        if isinstance(h, ast.ExceptHandler):
            body = list(ast.walk(ast.Module(body=h.body, type_ignores=[])))
            if any(isinstance(n, ast.Await) for n in body):
                out += [n.lineno for n in body if isinstance(n, ast.Raise) and n.exc is None]
    return out


def test_compiled_modules_never_reraise_bare_after_an_await() -> None:
    """mypyc (2.4.1) compiles a bare `raise` as "raise the exception being handled now": after
    an `await` inside the except block that is whatever the task that ran meanwhile left, so
    one task raised another's exception (seen: a batch's first-try check failure surfacing in
    other buyers' statements, their connections lost, the exception object reused after it
    was freed). The compiled modules name the exception instead (`except E as e: ... raise e`)."""
    found = {m: _bare_raises_after_await(ast.parse((ROOT / "proxy" / f"{m}.py").read_text()))
             for m in HOT}
    assert {m: lines for m, lines in found.items() if lines} == {}
    sample = ast.parse("async def f():\n    try:\n        pass\n    except E:\n"
                       "        await g()\n        raise\n")
    assert _bare_raises_after_await(sample) == [6]  # the check finds what it looks for
