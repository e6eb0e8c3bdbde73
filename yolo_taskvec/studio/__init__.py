"""``yolo-taskvec studio``: an interactive merge studio in the browser (``pip install "yolo-taskvec[studio]"``).

``session.Studio`` is the engine (a recipe prepared once, one hot-swapped YOLO, predictions, scoring, saving; no
web framework);
``app`` builds the Gradio page over it and serves it on 127.0.0.1 by default.
"""

from __future__ import annotations

from .session import Setting, Studio, StudioError

__all__ = ["Setting", "Studio", "StudioError", "launch"]


def launch(*args, **kwargs):
    """Check, load and serve a studio (see ``app.launch``)."""
    from .app import launch as serve

    return serve(*args, **kwargs)
