"""stagectl: the engineers' command line (plan, model build, ...)."""
