-- seckill-proxy demo buyers: every event is one purchase attempt of one unit of a hot SKU.
--   form=txn:        BEGIN; INSERT order; UPDATE inventory ... AND quantity > 0;
--                    COMMIT if the UPDATE sold a unit, else ROLLBACK (the seed's transaction)
--   form=autocommit: UPDATE inventory ... AND quantity > 0; INSERT order if it sold a unit
--   --abandon=P:     in the transaction forms, P% of the buyers who got a unit roll back
--                    instead of committing (a payment that failed): the unit goes back
-- sysbench's Lua API returns nothing for DML, so the UPDATE's answer is read with ROW_COUNT().
sysbench.cmdline.options = {
  sku = {"SKU bought (the first of --skus)", 1001},
  skus = {"number of SKUs, chosen uniformly from --sku on", 1},
  form = {"txn (INSERT first), txn_update_first, or autocommit", "txn"},
  abandon = {"percent of the transaction forms' buyers who got a unit and roll back", 0},
}

local FORMS = {txn = true, txn_update_first = true, autocommit = true}

function thread_init()
  if not FORMS[sysbench.opt.form] then
    -- (an unknown form used to run the autocommit branch, silently)
    error("unknown --form=" .. sysbench.opt.form .. ": txn, txn_update_first or autocommit")
  end
  drv = sysbench.sql.driver()
  con = drv:connect()
  upd = con:prepare("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = ? AND quantity > 0")
  upd_sku = upd:bind_create(sysbench.sql.type.INT)
  upd:bind_param(upd_sku)
  ins = con:prepare("INSERT INTO orders (user_id, sku_id, quantity) VALUES (?, ?, 1)")
  ins_user = ins:bind_create(sysbench.sql.type.INT)
  ins_sku = ins:bind_create(sysbench.sql.type.INT)
  ins:bind_param(ins_user, ins_sku)
end

local function sold()
  return tonumber(con:query_row("SELECT ROW_COUNT()")) == 1
end

local function pays()
  return sysbench.opt.abandon <= 0 or sysbench.rand.uniform(1, 100) > sysbench.opt.abandon
end

function event()
  local sku = sysbench.opt.sku + sysbench.rand.uniform(0, sysbench.opt.skus - 1)
  upd_sku:set(sku)
  ins_sku:set(sku)
  ins_user:set(sysbench.rand.uniform(1, 1000000))
  if sysbench.opt.form == "txn" then
    con:query("BEGIN")
    ins:execute()
    upd:execute()
    if sold() and pays() then con:query("COMMIT") else con:query("ROLLBACK") end
  elseif sysbench.opt.form == "txn_update_first" then
    con:query("BEGIN")
    upd:execute()
    if sold() and pays() then
      ins:execute()
      con:query("COMMIT")
    else
      con:query("ROLLBACK")
    end
  else
    upd:execute()
    if sold() then ins:execute() end
  end
end

function thread_done()
  upd:close()
  ins:close()
  con:disconnect()
end
