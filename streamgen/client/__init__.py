"""A Python WebRTC client of streamgen servers (``/offer``, WHIP, WHEP) and synthetic video tracks: what the tests and benchmarks drive servers with."""
