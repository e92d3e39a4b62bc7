"""The front doors: FastAGI routes, the HTTP recording API and its description, and the
sweeper that closes legs nobody ended. They turn a request into a call on the service."""
