"""The node agent (``wirespan agent``): every pod network namespace on the node captured on
``eth0`` and ``lo``, one correlator for the node, spans with Kubernetes metadata exported over
OTLP, Prometheus metrics and health endpoints."""
