"""The backend side: a MySQL connection speaking raw packets with its reply scanner (backend),
the login (aiomysql), the pools, and the lease: a session's one hold on backend connections,
one state machine with a reason on every transition."""
