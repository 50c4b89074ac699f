"""Dashboard pages of the monitoring app, one module per page family."""
