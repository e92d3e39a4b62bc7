"""Running it as a service: settings and the config file, checks, logs, metrics, allow lists,
the event loop and the supervisor of several processes."""
