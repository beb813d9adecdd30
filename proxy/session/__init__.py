"""A client's session: what MySQL keeps per connection (transaction status, variables, the
diagnostics area), the dispatch of each command to a plan and its execution, and the lease."""
