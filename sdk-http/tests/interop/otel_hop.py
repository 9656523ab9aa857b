"""A hop in the middle of a chain that nobody at prodbox wrote, for sdk-http/tests/interop_python.rs.

Two kinds of service, chosen on the command line:

* ``--next URL`` (default mode): an ordinary service instrumented with the official
  OpenTelemetry Python SDK. For each request it extracts the context with the W3C propagators
  (``tracecontext,baggage``, OpenTelemetry's default), starts a server span, adds a baggage
  member of its own (``hop.python=otel``), and calls ``URL`` with the context injected by
  ``opentelemetry.propagate.inject``.
* ``--next URL --legacy PREFIX`` with PREFIX ``ot-baggage-`` or ``uberctx-``: a service behind
  an old OpenTracing or Jaeger client. It reads baggage only from ``PREFIX<key>`` headers,
  ignores ``baggage``, and forwards only ``PREFIX<key>`` headers. Like jaeger-client, it
  URL-encodes ``uberctx-`` values (and decodes them on the way in); like basictracer, it writes
  ``ot-baggage-`` values as they are.

Either answers with JSON: what baggage it saw (``baggage``), the raw ``baggage`` header it
received, and the downstream status and answer. It listens on 127.0.0.1 on a free port and
prints the port, alone on the first line of stdout, once it is ready.
"""

import argparse
import http.client
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEGACY_PREFIXES = ("ot-baggage-", "uberctx-")


def otel_setup():
    """The OpenTelemetry default: W3C trace context and baggage, and an SDK tracer provider."""
    from opentelemetry import propagate, trace
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # Set explicitly, so that an OTEL_PROPAGATORS in the environment changes nothing.
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
    trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer("prodbox-interop-otel-hop")


def call(url, headers):
    """GETs ``url`` with ``headers`` (a list of pairs); returns (status, body as text)."""
    target = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    try:
        connection.putrequest("GET", target.path or "/", skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def make_handler(next_url, legacy, tracer):
    class Hop(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            received = self.headers.get_all("baggage") or []
            if legacy:
                seen, outbound = self.legacy_hop()
            else:
                seen, outbound = self.otel_hop()
            try:
                status, body = call(next_url, outbound)
            except OSError as error:
                status, body = None, f"calling {next_url} failed: {error}"
            try:
                downstream = json.loads(body)
            except ValueError:
                downstream = body
            answer = {
                "hop": legacy or "otel",
                "baggage": seen,
                "received_baggage": received,
                "sent": [[name, value] for name, value in outbound],
                "downstream_status": status,
                "downstream": downstream,
            }
            self.reply(200 if status == 200 else 502, answer)

        def otel_hop(self):
            from opentelemetry import baggage, context, propagate, trace

            # Header names are case-insensitive; the propagators look them up in lower case.
            carrier = {}
            for name, value in self.headers.items():
                carrier.setdefault(name.lower(), []).append(value)
            extracted = propagate.extract(carrier)
            seen = dict(baggage.get_all(extracted))
            token = context.attach(extracted)
            try:
                with tracer.start_as_current_span("otel_hop", kind=trace.SpanKind.SERVER):
                    cx = baggage.set_baggage("hop.python", "otel")
                    outbound = {}
                    propagate.inject(outbound, context=cx)
            finally:
                context.detach(token)
            return seen, sorted(outbound.items())

        def legacy_hop(self):
            seen = {}
            outbound = []
            for name, value in self.headers.items():
                if not name.lower().startswith(legacy):
                    continue  # `baggage` included: this client predates it
                key = name[len(legacy):].lower()
                if legacy == "uberctx-":
                    value = urllib.parse.unquote(value)
                seen[key] = value
            for key, value in seen.items():
                if legacy == "uberctx-":
                    value = urllib.parse.quote(value)
                outbound.append((legacy + key, value))
            return seen, outbound

        def reply(self, status, answer):
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            pass  # one line per request on stderr is noise in test output

    return Hop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--next", required=True, help="URL of the next hop")
    parser.add_argument(
        "--legacy",
        choices=LEGACY_PREFIXES,
        help="speak only these legacy baggage headers (no OpenTelemetry)",
    )
    args = parser.parse_args()
    tracer = None if args.legacy else otel_setup()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args.next, args.legacy, tracer))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
