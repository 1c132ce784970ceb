"""pangate: a PCI DSS egress gateway for machine identities, built as mitmproxy addons."""

__version__ = "0.1.0"
