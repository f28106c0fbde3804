"""HTTP routes: each module translates HTTP to the runtime/service and back, nothing more."""
