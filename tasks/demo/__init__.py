"""Small built-in tasks for the quickstart, tests and benchmarks (no models, no downloads)."""

TASKS = {
    "demo.quadratic": "tasks.demo.task:quadratic",
    "demo.noop": "tasks.demo.task:noop",
    "demo.sleep": "tasks.demo.task:sleep",
    "demo.produce": "tasks.demo.task:produce",
    "demo.flaky": "tasks.demo.task:flaky",
    "demo.allocate": "tasks.demo.task:allocate",
    "demo.vector": "tasks.demo.task:vector",
    "demo.vector_sum": "tasks.demo.task:vector_sum",
    "demo.lookup": "tasks.demo.task:lookup",
    "demo.spin": "tasks.demo.task:spin",
    "demo.curve": "tasks.demo.task:curve",
    "demo.tradeoff": "tasks.demo.task:tradeoff",
}
