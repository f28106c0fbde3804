"""HTTP plumbing that knows no endpoint and no model: connections, middleware, access control, problem bodies."""
