"""The shipped firmware profiles (`*.toml`), installed with the package; `device.profiles` loads them."""
