"""The benchmark harness: run specs, the runner, the result store, suites and the generic report."""
