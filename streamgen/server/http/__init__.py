"""HTTP and security: routes (the API, WebRTC signalling, stream keys, static files), credentials, Host and CORS checks, error answers, connection guards."""
