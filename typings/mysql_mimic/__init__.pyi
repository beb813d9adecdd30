# Stubs for the part of mysql-mimic whose types the proxy relies on (the package ships none):
# with BaseSession typed, mypy checks every attribute the proxy uses on its sessions. Other
# mysql_mimic modules stay untyped (ignore_missing_imports).
