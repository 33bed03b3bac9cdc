"""Span exporters (OTLP/JSON, OTLP HTTP/gRPC, Zipkin) and metrics; filled in by later issues."""
