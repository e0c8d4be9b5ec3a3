"""The HTTP side of a node: /healthz, Prometheus /metrics and (later) the web UI."""
