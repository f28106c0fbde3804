"""HTTP routes: each module translates HTTP to the runtime and back, nothing more."""
