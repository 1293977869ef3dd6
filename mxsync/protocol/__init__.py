"""Sans-I/O core of mxsync: event schemas, codecs, chunking and policies.

Nothing in this package performs I/O or imports anyio or nio, so it is tested
without a server or an event loop.
"""
