"""The sample shop: the schema the default config's hot-row rule and the README's examples use.

`make run` (via `python -m proxy.tools.sandbox start`) and `seckill-proxy demo` create it. Every
statement is idempotent: tables are created if missing and the seed SKUs inserted only if absent,
so a DBA's changes to stock survive a restart.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "shop"

TABLES = (
    """CREATE TABLE IF NOT EXISTS {db}.inventory (
      sku_id INT NOT NULL PRIMARY KEY,
      name VARCHAR(64) NOT NULL DEFAULT '',
      price DECIMAL(10,2) NOT NULL DEFAULT 0,
      quantity INT NOT NULL
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {db}.inventory_log (
      id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
      sku_id INT NOT NULL,
      delta INT NOT NULL,
      created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
      KEY (sku_id)
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {db}.orders (
      order_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
      user_id INT NOT NULL,
      sku_id INT NOT NULL,
      quantity INT NOT NULL DEFAULT 1,
      status VARCHAR(16) NOT NULL DEFAULT 'paid',
      created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
      KEY (sku_id),
      KEY (user_id)
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {db}.order_items (
      order_id BIGINT NOT NULL,
      sku_id INT NOT NULL,
      quantity INT NOT NULL,
      price DECIMAL(10,2) NOT NULL,
      PRIMARY KEY (order_id, sku_id)
    ) ENGINE=InnoDB""",
)

# (sku_id, name, price, quantity): SKU 1 is the hot one of the README's examples.
SKUS = (
    (1, "flash-sale phone", 999.00, 1000),
    (2, "earbuds", 59.00, 5000),
    (3, "charger", 19.90, 5000),
    (4, "phone case", 9.90, 10000),
    (5, "smart watch", 199.00, 2000),
)


def statements(db: str = SCHEMA) -> list[str]:
    seed = ", ".join(f"({s}, '{n}', {p:.2f}, {q})" for s, n, p, q in SKUS)
    return [
        f"CREATE DATABASE IF NOT EXISTS `{db}`",
        *(t.replace("{db}", f"`{db}`") for t in TABLES),
        f"INSERT IGNORE INTO `{db}`.inventory (sku_id, name, price, quantity) VALUES {seed}",
    ]


def ensure(conn: Any, db: str = SCHEMA) -> None:
    """Create the shop on a PyMySQL connection to the primary (idempotent)."""
    with conn.cursor() as cur:
        for sql in statements(db):
            cur.execute(sql)
    conn.commit()
