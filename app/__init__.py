"""nibble's HTTP layer: a FastAPI app over `quant_core` (see `app.main.create_app`)."""
