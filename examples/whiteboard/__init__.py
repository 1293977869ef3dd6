"""A collaborative whiteboard in the browser, kept in a room's SyncedDoc.

``python -m examples.whiteboard --homeserver URL --user ID --room ROOM`` serves
one user's page on 127.0.0.1. Modules: :mod:`.model` (what the board keeps in
the pycrdt document: strokes, z-order, presence), :mod:`.server` (the web
server between the page and the document), ``static/`` (the page: HTML, CSS and
vanilla JS, nothing from the internet).
"""
