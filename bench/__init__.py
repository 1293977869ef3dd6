"""mxsync benchmarks: ``python -m bench`` runs them all against one fresh devserver."""
