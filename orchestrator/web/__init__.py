"""The web console: campaigns in the browser, live, as a client of the Coordinator.

    nnmd serve web --port 8080 --coordinator 127.0.0.1:50051     # token: $NNMD_TOKEN
    nnmd serve coordinator --port 50051 --web-port 8080           # or inside the coordinator

The console holds no campaign state: every page reads the Coordinator gRPC service
through orchestrator.client.Client (list, start, history, watch, stop, export_bytes,
report_html). See docs/console.md.

Why aiohttp: it is asyncio-native, like the grpc.aio server the coordinator runs on, so
the console can share the coordinator's event loop (``--web-port``); its StreamResponse
serves server-sent events without extra packages; it is already in the dependency tree
(through ray[default]); and it is a maintained project with regular releases. Plots use
plotly.js (MIT) as the ``plotly`` PyPI package ships it (plotly/package_data/
plotly.min.js), served from /static/: nothing comes from a CDN. The console's own
script and style sheet (static/) are plain JavaScript and CSS with no build step.
"""

from orchestrator.web.app import make_app, start_console

__all__ = ["make_app", "start_console"]
