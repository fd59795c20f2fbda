"""The gateway tier (and the hospital node): durable ingest, DP-SGD training, encrypted signed submissions."""
