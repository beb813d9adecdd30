-- seckill inventory deduction: autocommit hot decrements on 1..skus SKUs (prepared statement).
sysbench.cmdline.options = {
  skus = {"number of hot SKUs (uniformly chosen)", 1},
  hint = {"optimizer hint placed after UPDATE, e.g. /*+ HOTROW(merge) */", ""},
}

function thread_init()
  drv = sysbench.sql.driver()
  con = drv:connect()
  stmt = con:prepare("UPDATE " .. sysbench.opt.hint .. " inventory SET quantity = quantity - 1 " ..
                     "WHERE sku_id = ? AND quantity > 0")
  sku = stmt:bind_create(sysbench.sql.type.INT)
  stmt:bind_param(sku)
end

function event()
  sku:set(sysbench.rand.uniform(1, sysbench.opt.skus))
  stmt:execute()
end

function thread_done()
  stmt:close()
  con:disconnect()
end
