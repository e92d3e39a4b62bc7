"""Call recording for Asterisk: the domain, its storage, and its front doors (FastAGI now; the
HTTP recording API over AMI beside it)."""

__version__ = "0.1.0"
