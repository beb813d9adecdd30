"""The login guard's rules as properties (pure, no server)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.client.guard import LoginGuard


def test_blocks_after_n_failures_in_the_window_and_expires() -> None:
    g = LoginGuard(max_failures=3, window_s=60, block_s=300)
    assert g.failed("app", "10.0.0.1", 0) == []
    assert g.failed("app", "10.0.0.1", 1) == []
    assert sorted(g.failed("app", "10.0.0.1", 2)) == ["address", "user"]
    assert g.blocked_user("app", 3) and g.blocked_addr("10.0.0.1", 3)
    assert not g.blocked_user("other", 3) and not g.blocked_addr("10.0.0.2", 3)
    assert not g.blocked_user("app", 303) and not g.blocked_addr("10.0.0.1", 303)


def test_failures_outside_the_window_do_not_add_up() -> None:
    g = LoginGuard(max_failures=3, window_s=10, block_s=300)
    for t in (0, 11, 22, 33, 44):
        assert g.failed("app", "a", t) == []
    assert not g.blocked_user("app", 45)


def test_success_clears_failures_but_not_a_block() -> None:
    g = LoginGuard(max_failures=2, window_s=60, block_s=100)
    g.failed("app", "a", 0)
    g.succeeded("app", "a")
    assert g.failed("app", "a", 1) == []
    assert g.failed("app", "a", 2) != []
    g.succeeded("app", "a")
    assert g.blocked_user("app", 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["a1", "a2"]),
                          st.floats(0, 1000)), max_size=60),
       st.integers(1, 5))
def test_never_blocked_without_n_failures_in_a_window(events: list[tuple[str, str, float]],
                                                      n: int) -> None:
    g = LoginGuard(max_failures=n, window_s=30, block_s=50, max_tracked=2)
    events.sort(key=lambda e: e[2])
    seen: list[tuple[str, str, float]] = []
    for user, addr, t in events:
        seen.append((user, addr, t))
        for kind in g.failed(user, addr, t):
            key = user if kind == "user" else addr
            recent = [e for e in seen if (e[0] if kind == "user" else e[1]) == key
                      and t - e[2] <= 30]
            assert len(recent) >= n
    assert len(g.users.rows) <= 2 and len(g.addrs.rows) <= 2  # bounded
