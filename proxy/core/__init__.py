"""The shared vocabulary every layer speaks: config (loaded, then validated), the one table of
error codes and reasons, a connection's state (character sets, variables), GTID arithmetic and
the metrics registry. Imports only `net`."""
