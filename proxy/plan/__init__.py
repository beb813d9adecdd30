"""Pure decisions per statement: classify the text (classify, builtins), its digest, and the
plan: where it runs and what is tracked. No I/O, no pool, no session: table- and
property-tested beside the code (tests/test_plan.py, tests/test_classify.py)."""
