"""The HTTP half of the app: routes, request and event schemas, the SSE wire format, security and limits."""
