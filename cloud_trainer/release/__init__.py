"""Release: evaluate a candidate, gate it against production, export, sign and register it."""
