"""The built vatlas web client (static files served by `vatlas serve`)."""
