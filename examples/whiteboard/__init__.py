"""A collaborative whiteboard in the browser, kept in a room's SyncedDoc.

``python -m examples.whiteboard --homeserver URL --user ID --room ROOM`` serves
one user's page on 127.0.0.1. The page is a Yjs app: its ``Y.Doc`` syncs with a
stock y-websocket provider to an :class:`mxsync.gateway.Gateway` in the server,
and presence and cursors are awareness states. Modules: :mod:`.model` (the
document's schema, and the board's operations for Python), :mod:`.server` (the
page, its config and the gateway), :mod:`.build` (bundles ``web/`` into
``static/`` with esbuild; the bundle is committed, nothing comes from the
internet at run time).
"""
