"""Research tasks: pure functions of (params, context) -> rows, one package per family.

Each family's `__init__.py` holds a `TASKS = {"family.name": "tasks.family.module:function"}` map and
nothing heavy, so `plan` can list and validate tasks without importing torch.
"""
