"""The client side: the connection speaking MySQL to the application (mysql-mimic underneath),
the proxy's own accounts and the login guard against brute force."""
