"""pixelmill's wiring: job spec, CLI, Ray Data plan, sources, sinks."""
