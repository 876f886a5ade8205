"""Operator tools: commands that talk to a running cluster (send, status, drill, ...) or run the
engine offline (replay). They may import the runtime (cluster/) and the engine; nothing in the
runtime imports them."""
