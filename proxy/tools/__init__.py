"""Tools around the proxy, not on its data path: the shop schema, `demo`, `top`."""
