"""Span exporters and metrics.

- ``spans``: exchange/hop -> ``SpanRecord`` (the span model);
- ``otlp_json``: OTLP/JSON lines (``fast_json_line``; ``encode`` + ``to_json_line`` is the
  json_format reference); ``otlp_proto``: the protobuf bytes of the same request, fast;
- ``zipkin``: Zipkin v2 JSON (file lines and ``POST /api/v2/spans``);
- ``sink``: ``Exporter`` — bounded queue, batching, background sender, retries, counters;
- ``otlp``: OTLP/HTTP and OTLP/gRPC transports; ``outputs``: what the CLI opens.
"""
