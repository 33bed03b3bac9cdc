"""Where a command's spans go: a file writer (``-o``) and/or exporters to endpoints.

``SpanOutputs.open(...)`` builds them from the command-line options; the CLI feeds it spans
with ``add`` and ends with ``close``, then puts ``summary()`` into its summary:
``spans_written`` (the file) and, when an endpoint is used, ``spans_exported``,
``spans_dropped`` (by reason) and ``export_errors``.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import IO, Any

from sniffer.errors import UsageError, WirespanError

from .otlp_json import OtlpJsonWriter, default_resource
from .sink import Exporter
from .spans import SpanRecord

FORMATS = ("otlp-json", "zipkin-json")


class SpanOutputs:
    def __init__(self, writer: Any = None, out: IO[str] | None = None,
                 exporters: list[tuple[str, Exporter]] | None = None) -> None:
        self.writer = writer
        self.out = out
        self.exporters = exporters or []
        self._exp = [e for _, e in self.exporters]

    @classmethod
    def open(cls, *, output: str | None = None, fmt: str = "otlp-json",
             otlp_endpoint: str | None = None, otlp_protocol: str = "http/protobuf",
             zipkin_endpoint: str | None = None, service_name: str = "wirespan",
             version: str = "", max_queue: int = 10_000) -> SpanOutputs:
        if max_queue < 1:
            raise UsageError("--export-queue must be at least 1")
        resource = default_resource(service_name)
        exporters: list[tuple[str, Exporter]] = []
        try:
            if otlp_endpoint:
                from .otlp import OtlpGrpcTransport, OtlpHttpTransport

                t: Any = (OtlpGrpcTransport if otlp_protocol == "grpc"
                          else OtlpHttpTransport)(otlp_endpoint, resource, version)
                exporters.append((otlp_endpoint, Exporter(t, max_queue=max_queue, name="otlp")))
            if zipkin_endpoint:
                from .zipkin import ZipkinHttpTransport

                t = ZipkinHttpTransport(zipkin_endpoint, resource, version)
                exporters.append((zipkin_endpoint,
                                  Exporter(t, max_queue=max_queue, name="zipkin")))
        except ValueError as e:
            for _, x in exporters:
                x.close(0)
            raise UsageError(str(e), "give the endpoint as http://HOST:PORT") from None
        writer = out = None
        if output:
            if output == "-":
                out = sys.stdout
            else:
                try:
                    out = open(output, "w", encoding="utf-8")  # noqa: SIM115
                except OSError as e:
                    for _, x in exporters:
                        x.close(0)
                    raise WirespanError(f"{output}: cannot write spans: {e.strerror}",
                                        "choose a writable path, or '-' for stdout") from None
            if fmt == "zipkin-json":
                from .zipkin import ZipkinJsonWriter

                writer = ZipkinJsonWriter(out, resource, version=version)
            else:
                writer = OtlpJsonWriter(out, resource, version=version)
        return cls(writer, out, exporters)

    def add(self, span: SpanRecord) -> None:
        if self.writer is not None:
            self.writer.add(span)
        for e in self._exp:
            e.add(span)

    @property
    def written(self) -> int:
        return self.writer.written if self.writer is not None else 0

    def close(self, timeout: float = 10.0) -> None:
        """Flush the file and the exporters (all within ``timeout`` seconds), then close."""
        if self.writer is not None:
            self.writer.flush()
            if self.out is not sys.stdout and self.out is not None:
                self.out.close()
        for e in self._exp:
            e.close(timeout)

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.writer is not None:
            d["spans_written"] = self.written
        if self._exp:
            dropped: Counter[str] = Counter()
            for e in self._exp:
                dropped.update(e.spans_dropped)
            d["spans_exported"] = sum(e.spans_exported for e in self._exp)
            d["spans_dropped"] = dict(dropped)
            d["export_errors"] = sum(e.export_errors for e in self._exp)
        return d

    def warnings(self) -> list[str]:
        out = []
        for url, e in self.exporters:
            lost = sum(e.spans_dropped.values())
            if lost:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(e.spans_dropped.items()))
                out.append(f"{url}: {lost} spans not exported ({reasons})"
                           + (f"; last error: {e.last_error}" if e.last_error else ""))
        return out


__all__ = ["FORMATS", "SpanOutputs"]
