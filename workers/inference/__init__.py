"""The co-located inference server: the upstream ``POST /v1/generate`` contract, batched."""
