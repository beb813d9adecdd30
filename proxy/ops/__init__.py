"""What operators use: the admin console (SQL on its own port) and the HTTP endpoints
(/metrics, /healthz, /readyz)."""
