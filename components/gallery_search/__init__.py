"""GallerySearch: the search companion servable after the Pusher (``component.py``,
``executor.py``)."""
