"""A minimal OTLP/HTTP trace receiver: accepts span batches and counts them.

Stands in for an OpenTelemetry collector where none can run (the benchmark's
"tracing on" figures): the services really serialise and send every span.
"""

from __future__ import annotations

import argparse
import logging

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from medbook.runtime import http_server, on_stop_signals, run


class SpanCounter:
    def __init__(self) -> None:
        self.spans = 0
        self.batches = 0


def sink_app(counter: SpanCounter) -> Starlette:
    async def traces(request: Request) -> Response:
        batch = ExportTraceServiceRequest()
        batch.ParseFromString(await request.body())
        counter.batches += 1
        counter.spans += sum(
            len(scope.spans) for resource in batch.resource_spans for scope in resource.scope_spans
        )
        return Response(
            ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf"
        )

    async def stats(_: Request) -> Response:
        return JSONResponse({"spans": counter.spans, "batches": counter.batches})

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/stats", stats)])


async def serve(port: int) -> int:
    server = http_server(sink_app(SpanCounter()), "127.0.0.1", port, grace=1)
    on_stop_signals(lambda _: setattr(server, "should_exit", True))
    await server.serve()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Count OTLP/HTTP trace exports on 127.0.0.1:PORT.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    return run(lambda: serve(args.port))


if __name__ == "__main__":
    raise SystemExit(main())
