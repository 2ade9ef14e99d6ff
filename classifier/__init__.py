from classifier.router import Router

__all__ = ["Router"]
