"""Custom actions for embedding applications (see docs/embedding.md): the registry and
its context live in :mod:`wyseman.gateway.actions`; this name is the one applications
import."""

from wyseman.gateway.actions import ActionContext, ActionRegistry, load_handler

__all__ = ["ActionContext", "ActionRegistry", "load_handler"]
