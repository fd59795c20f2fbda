"""The compliance dashboard: a static page (``static/``, plain HTML/CSS/JS, SVG plots drawn client-side) served by the
cloud, the read models its views need that no other route serves (`views`), and the live change feed (`feed`).

The page holds no data and no secret: it signs in with the user's bearer token (kept in the browser's sessionStorage,
sent as an Authorization header, never in a URL) and reads the API's own routes, so what a role sees is exactly what
`cloud.rbac.PERMISSIONS` lets it read. Routes: `cloud.api.dashboard`; documentation: docs/dashboard.md.
"""
