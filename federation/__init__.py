"""The contract every wearfed tier shares: model, wire formats, crypto helpers, privacy units, metrics."""
