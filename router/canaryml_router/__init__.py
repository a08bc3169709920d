"""canaryml's builtin traffic router: a reverse proxy in front of one ModelDeployment's model
servers (`canaryml router`).

- `core`: the decisions as pure functions (which track answers, whether to mirror, whether the
  shadow agreed, the routing table a ModelDeployment stands for); no I/O, an import-linter
  contract holds it;
- `app`: the ASGI app, composed of `routes` (the current table and its upstream pools),
  `proxy` (forwarding), `mirror` (shadow traffic and comparisons) and `admin` (the router's
  own endpoints), over the ASGI helpers of `asgi`;
- `upstream`: the pooled HTTP/1.1 client to the model servers;
- `metrics`: the router's Prometheus series (names from `canaryml_api.telemetry`);
- `follow`: the weight source in a cluster, a watch on the ModelDeployment;
- `settings`: the command's settings; `cli`: what the command runs with them; `server`: uvicorn
  tuned for the router.

It shares nothing with the model server (`canaryml_server`) but the contract package
`canaryml_api`.
"""
