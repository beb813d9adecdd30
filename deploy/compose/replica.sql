-- Run once by the MySQL image at first start of the replica: replicate the primary by GTID,
-- then make the server read-only (not on the command line: the image's initialisation writes).
CHANGE REPLICATION SOURCE TO SOURCE_HOST='mysql-primary', SOURCE_USER='repl', SOURCE_PASSWORD='repl',
  SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1;
START REPLICA;
SET PERSIST super_read_only = ON;
