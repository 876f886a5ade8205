"""Benchmarks (`orderbook-cluster bench ...`): figures, never pass/fail tests. They may import the
tools (the workload, send), the runtime and the engine; nothing else imports them."""
