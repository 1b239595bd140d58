"""`selflearn serve`: the rewrite service (contract section 5) on Starlette + uvicorn.

    GET /rewrite?locale=L&text=T  -> {"locale", "key", "rewrite", "kind", "confidence", "run_id"}
    GET /healthz                  -> 200 once a run is loaded, else 503
    GET /metrics                  -> Prometheus text format

Bad requests get a 4xx with {"error": reason}, never a 500: a missing or malformed locale,
a missing text, a text over the served run's `max_utterance_chars` (413), a query that is
not valid UTF-8 once percent-decoded, a repeated parameter. 503 while no run is loaded.
The query string is decoded here, strictly: Starlette's own parser would replace invalid
UTF-8 with U+FFFD and answer for a text the client never sent.

`GET /rewrite` is answered straight from the ASGI callable (`ServeApp.__call__`), without
Starlette's routing, middleware and Request/Response objects: it is the hot path, and the
answer is the same bytes. Everything else (other methods, /healthz, /metrics, lifespan,
404s) goes through Starlette. uvicorn runs on uvloop and httptools when they are installed
(dependencies in pyproject.toml; uvicorn's `auto` choice), else asyncio and h11.
"""
from __future__ import annotations

import bisect
import contextlib
import threading
import time
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from selflearn.serving.rewriter import BadRequest, NotLoaded, Rewriter

# Latency buckets (seconds) of the /rewrite histogram: 50 us .. 1 s.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_JSON = "application/json"


class Metrics:
    """Counters and one histogram, rendered as Prometheus text. Increments happen on the
    event loop thread only (handlers are async and do not await between them)."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.rewrites = {"exact": 0, "pattern": 0, "none": 0}
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def request(self, path: str, status: int) -> None:
        k = (path, status)
        self.requests[k] = self.requests.get(k, 0) + 1

    def observe(self, seconds: float) -> None:
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def render(self, rewriter: Rewriter) -> str:
        out = ["# HELP selflearn_serve_requests_total HTTP requests answered, by path and status.",
               "# TYPE selflearn_serve_requests_total counter"]
        for (path, status), n in sorted(self.requests.items()):
            out.append(f'selflearn_serve_requests_total{{path="{path}",code="{status}"}} {n}')
        out += ["# HELP selflearn_serve_rewrites_total Answered /rewrite requests by what applied (none: no rewrite).",
                "# TYPE selflearn_serve_rewrites_total counter"]
        out += [f'selflearn_serve_rewrites_total{{kind="{k}"}} {v}' for k, v in self.rewrites.items()]
        out += ["# HELP selflearn_serve_request_duration_seconds Time to answer /rewrite, in the handler.",
                "# TYPE selflearn_serve_request_duration_seconds histogram"]
        cum = 0
        for le, n in zip(BUCKETS, self.bucket_counts):
            cum += n
            out.append(f'selflearn_serve_request_duration_seconds_bucket{{le="{le}"}} {cum}')
        out.append(f'selflearn_serve_request_duration_seconds_bucket{{le="+Inf"}} {self.latency_count}')
        out.append(f"selflearn_serve_request_duration_seconds_sum {self.latency_sum:.9f}")
        out.append(f"selflearn_serve_request_duration_seconds_count {self.latency_count}")
        run = rewriter.current
        out += ["# HELP selflearn_serve_run_info The run being served (value 1).", "# TYPE selflearn_serve_run_info gauge"]
        if run is not None:
            out.append(f'selflearn_serve_run_info{{run_id="{run.run_id}"}} 1')
        now = time.time()
        out += ["# HELP selflearn_serve_run_age_seconds Seconds since the served run was published (its _SUCCESS).",
                "# TYPE selflearn_serve_run_age_seconds gauge",
                f"selflearn_serve_run_age_seconds {now - run.published_at:.3f}" if run else "selflearn_serve_run_age_seconds NaN",
                "# HELP selflearn_serve_run_loaded_seconds Seconds since the served run was loaded.",
                "# TYPE selflearn_serve_run_loaded_seconds gauge",
                f"selflearn_serve_run_loaded_seconds {now - run.loaded_at:.3f}" if run else "selflearn_serve_run_loaded_seconds NaN",
                "# HELP selflearn_serve_loaded_rewrites Rewrites of the served run, by kind.",
                "# TYPE selflearn_serve_loaded_rewrites gauge",
                f'selflearn_serve_loaded_rewrites{{kind="exact"}} {run.n_exact if run else 0}',
                f'selflearn_serve_loaded_rewrites{{kind="pattern"}} {run.n_patterns if run else 0}',
                "# HELP selflearn_serve_run_swaps_total Runs swapped in since start.",
                "# TYPE selflearn_serve_run_swaps_total counter",
                f"selflearn_serve_run_swaps_total {rewriter.n_swaps}",
                "# HELP selflearn_serve_runs_refused_total Runs LATEST named that could not be loaded (old run kept).",
                "# TYPE selflearn_serve_runs_refused_total counter",
                f"selflearn_serve_runs_refused_total {rewriter.n_refused}"]
        return "\n".join(out) + "\n"


def _json(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON)


def parse_query(raw: bytes) -> dict[str, str]:
    """The query string's parameters, decoded strictly as UTF-8 (BadRequest otherwise)."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("query is not valid UTF-8") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise BadRequest(f"query parameter '{k}' given more than once")
        params[k] = v
    return params


def rewrite_body(rewriter: Rewriter, metrics: Metrics, query: bytes) -> tuple[int, bytes]:
    """Status and JSON body of one /rewrite request, its metrics counted."""
    t0 = time.perf_counter()
    try:
        params = parse_query(query)
        answer = rewriter.rewrite(params.get("locale"), params.get("text"))
    except BadRequest as exc:
        metrics.request("/rewrite", exc.status)
        return exc.status, orjson.dumps({"error": str(exc)})
    except NotLoaded as exc:
        metrics.request("/rewrite", 503)
        return 503, orjson.dumps({"error": str(exc)})
    body = orjson.dumps(answer)
    metrics.rewrites[answer["kind"] or "none"] += 1
    metrics.request("/rewrite", 200)
    metrics.observe(time.perf_counter() - t0)
    return 200, body


class ServeApp(Starlette):
    """Starlette, with `GET /rewrite` answered before its routing (module docstring)."""

    rewriter: Rewriter
    metrics: Metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/rewrite" and scope["method"] == "GET":
            status, body = rewrite_body(self.rewriter, self.metrics, scope.get("query_string", b""))
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await super().__call__(scope, receive, send)


def create_app(rewriter: Rewriter, poll_s: float | None = 1.0) -> Starlette:
    """The ASGI app over one Rewriter; with `poll_s` it follows LATEST while running."""
    metrics = Metrics()

    async def rewrite(request: Request) -> Response:  # HEAD; GET is ServeApp's fast path
        status, body = rewrite_body(rewriter, metrics, request.scope.get("query_string", b""))
        return Response(body, status_code=status, media_type=_JSON)

    async def healthz(request: Request) -> Response:
        run = rewriter.current
        if run is None:
            metrics.request("/healthz", 503)
            return _json({"status": "no run loaded", "refused": rewriter.refused}, 503)
        metrics.request("/healthz", 200)
        return _json({"status": "ok", "run_id": run.run_id, "exact": run.n_exact, "patterns": run.n_patterns})

    async def metrics_text(request: Request) -> Response:
        metrics.request("/metrics", 200)
        return Response(metrics.render(rewriter), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if poll_s:
            rewriter.start_watching(poll_s)
        try:
            yield
        finally:
            rewriter.stop()

    app = ServeApp(routes=[Route("/rewrite", rewrite), Route("/healthz", healthz), Route("/metrics", metrics_text)],
                    lifespan=lifespan)
    app.state.rewriter = app.rewriter = rewriter
    app.state.metrics = app.metrics = metrics
    return app


def make_server(root, host: str = "127.0.0.1", port: int = 8080, poll_s: float = 1.0, max_text_chars: int | None = None):
    """A uvicorn Server for ROOT (not started). Its h11 limit is raised so an oversized
    query reaches the app and gets its reason (413) rather than a bare 400."""
    import uvicorn

    rewriter = Rewriter.from_root(root, max_text_chars=max_text_chars)
    config = uvicorn.Config(create_app(rewriter, poll_s), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="on", h11_max_incomplete_event_size=1 << 20)
    return uvicorn.Server(config)


def serve_in_thread(root, poll_s: float = 0.2, **kwargs):
    """Start a server on a free loopback port in a daemon thread (tests, benchmarks):
    (server, thread, base_url). Stop with `server.should_exit = True; thread.join()`."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = make_server(root, port=port, poll_s=poll_s, **kwargs)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"
