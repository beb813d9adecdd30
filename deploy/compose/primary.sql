-- Run once by the MySQL image at first start (docker-entrypoint-initdb.d).
-- Accounts: replication, and the proxy's application/monitor account `app` (MySQL 8.4's
-- default caching_sha2_password: the proxy logs in with it, RSA key exchange without TLS).
CREATE USER 'repl'@'%' IDENTIFIED WITH caching_sha2_password BY 'repl';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
CREATE USER 'app'@'%' IDENTIFIED BY 'app';
-- the application's rights on its schema, and what the monitor reads (replication status)
GRANT ALL PRIVILEGES ON shop.* TO 'app'@'%';
GRANT ALL PRIVILEGES ON seckill_proxy.* TO 'app'@'%';
GRANT REPLICATION CLIENT, PROCESS ON *.* TO 'app'@'%';
-- the schema the default hot-row rule names (shop.inventory)
CREATE DATABASE shop;
CREATE TABLE shop.inventory (sku_id BIGINT PRIMARY KEY, quantity INT NOT NULL,
                             CHECK (quantity >= 0)) ENGINE=InnoDB;
CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, sku_id BIGINT NOT NULL,
                          user_id BIGINT NOT NULL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)
  ENGINE=InnoDB;
INSERT INTO shop.inventory VALUES (1, 1000), (2, 1000), (3, 1000);
