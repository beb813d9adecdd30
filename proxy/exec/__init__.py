"""Execution of a plan: the fast lane (compiled, forwards what needs nothing else), the general
path (primary, replica, tracked commits), answers the proxy gives itself (local), prepared
statements, LOAD DATA, user variables. Works against the statement context it is handed, never
the session class or the client connection."""
